r"""Training on several processes at once (chapter 10): ``DistributedDataParallel``.

Data parallelism runs one process per device (a *rank*), each with a full copy of the model. Every step,
each rank computes the gradient on its own shard of the batch, then one *all-reduce* averages the
gradients over the :math:`W` ranks,

.. math:: g = \frac{1}{W} \sum_{r=1}^{W} g_r, \qquad
          g_r = \nabla \frac{1}{b} \sum_{i \in B_r} \ell_i
          = \nabla \frac{1}{W b} \sum_{i \in B} \ell_i ,

so every rank takes the same step, the one a single process would take on the *global batch*
:math:`B = B_1 \cup \dots \cup B_W` of :math:`W b` samples. ``torch.nn.parallel.DistributedDataParallel``
(DDP) does the all-reduce during ``backward()``; ``torchrun`` starts the processes and tells each its
rank (environment variables ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).

This module holds what :func:`companion.train.fit` needs to run unchanged under ``torchrun``:

- where this process stands: :func:`is_distributed`, :func:`rank`, :func:`world_size`,
  :func:`is_main_process`, :func:`barrier`; joining the group: :func:`setup` and :func:`teardown`;
- the checks that turn a hang or a silent error into a clear one (:func:`check_fit_setup`): a training
  loader without a ``DistributedSampler``, ranks that disagree on the number of batches, NCCL (which
  moves only CUDA tensors) for a model on the CPU;
- the reduction of an epoch's metrics over the ranks (:func:`gather_meter`), with the samples that a
  ``DistributedSampler`` repeats to give every rank as many left out (:func:`repeats_in_last_batch`);
- :class:`GlobalOrderSampler`, the order in which one process sees the global batches of :math:`W` ranks.

The loop meets these pieces through one door, :class:`companion.strategy.DDPStrategy`. Launching
``torchrun`` is :mod:`companion.launch`. This module imports nothing of the companion but
:mod:`companion.checks`, so every module above it may use it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler

from companion.checks import is_int

__all__ = [
    "GlobalOrderSampler",
    "any_rank",
    "barrier",
    "broadcast",
    "check_backend",
    "check_fit_setup",
    "distributed_sampler",
    "gather_meter",
    "gather_objects",
    "is_distributed",
    "is_main_process",
    "rank",
    "repeats_in_last_batch",
    "set_epoch",
    "setup",
    "teardown",
    "world_size",
    "wrap",
]


# --- where this process stands ----------------------------------------------------------------------


def is_distributed() -> bool:
    """Whether this process belongs to an initialized process group (``torch.distributed``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, 0 to ``world_size() - 1``; 0 without a group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the group; 1 without a group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that shows progress, writes logs and saves checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for without a group)."""
    if is_distributed():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (unless it already is): one replica per rank, on ``device``.

    Wrapping broadcasts rank 0's weights and buffers to every rank, so all start alike.
    """
    if isinstance(model, DistributedDataParallel):
        return model
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index])
    return DistributedDataParallel(model)


# --- joining the group ----------------------------------------------------------------------------


def check_backend(backend: str, device: torch.device) -> None:
    """Raise ``ValueError`` when ``backend`` cannot move the tensors of ``device``: NCCL moves CUDA tensors only."""
    name = str(backend).lower()
    if "nccl" in name and "cpu:" not in name and device.type != "cuda":
        raise ValueError(
            f"the process group uses NCCL, which all-reduces CUDA tensors only, but this rank computes on "
            f"{device.type}: use the 'gloo' backend on CPUs (torch.distributed.init_process_group('gloo'), "
            "or companion.distributed.setup('gloo')), or train on GPUs, one per rank (cuda:LOCAL_RANK)"
        )


def setup(backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` prepared, and return the device this rank computes on.

    Launched by ``torchrun`` (``WORLD_SIZE`` is set), it calls ``init_process_group``. ``backend=None``
    picks ``"nccl"`` with one GPU per rank (``cuda:LOCAL_RANK``) when this machine has a GPU for each of
    its ranks, else ``"gloo"`` on the CPU. Run as a plain script, it joins nothing and returns the CPU
    (or the GPU, for ``"nccl"``), so the same script trains in one process.

    Raises:
        ValueError: ``backend="nccl"`` without a CUDA GPU for this rank.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend is None:
        backend = "nccl" if gpus and gpus >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")) else "gloo"
    device = torch.device("cuda", local_rank) if "nccl" in backend.lower() and gpus else torch.device("cpu")
    check_backend(backend, device)
    if device.type == "cuda" and local_rank >= gpus:
        raise ValueError(
            f"rank {local_rank} of this machine would compute on cuda:{local_rank}, but it has {gpus} GPU(s): "
            f"launch one process per GPU (torchrun --nproc_per_node={gpus}), or pass backend='gloo'"
        )
    if "WORLD_SIZE" not in os.environ or is_distributed():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    return device


def teardown() -> None:
    """Leave the process group (at the end of a script run by ``torchrun``); nothing without one."""
    if is_distributed():
        dist.destroy_process_group()


# --- collectives on Python objects (once per epoch, never per batch) ----------------------------------


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on every rank; ``None`` without a group."""
    if not is_distributed():
        return None
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself without a group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank: a decision every rank then takes together."""
    flags = gather_objects(bool(flag))
    return bool(flag) if flags is None else any(flags)


# --- the training loader ----------------------------------------------------------------------------


def distributed_sampler(loader: Any) -> Any:
    """The sampler that shards ``loader`` over the ranks (one with ``num_replicas`` and ``rank``), or None."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if isinstance(sampler, DistributedSampler) or (
            hasattr(sampler, "num_replicas") and hasattr(sampler, "rank") and hasattr(sampler, "set_epoch")
        ):
            return sampler
    return None


def set_epoch(loader: Any, epoch: int) -> None:
    """Tell ``loader``'s sampler which epoch starts (0-based), if it has ``set_epoch``.

    A ``DistributedSampler`` shuffles with the seed ``seed + epoch``: without this call every epoch
    would visit the samples in the first epoch's order.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    for sampler in (getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)
            return


def _sampler_problem(loader: Any, name: str) -> str | None:
    sampler = distributed_sampler(loader)
    if sampler is None:
        kind = type(getattr(loader, "sampler", None)).__name__
        return (
            f"{name} has no DistributedSampler (its sampler is a {kind}), so every rank would train on "
            "the whole dataset: build it with DataLoader(dataset, batch_size=..., sampler=DistributedSampler("
            "dataset, shuffle=True, seed=0)), without shuffle=True (the sampler shuffles), and let fit call "
            "its set_epoch"
        )
    if (sampler.num_replicas, sampler.rank) != (world_size(), rank()):
        return (
            f"{name}'s DistributedSampler was built for rank {sampler.rank} of {sampler.num_replicas}, but this "
            f"process is rank {rank()} of {world_size()}: build it inside the process group with "
            "DistributedSampler(dataset) (it reads the rank and world size from the group)"
        )
    return None


def check_fit_setup(loader: Any, steps: int | None, name: str, device: torch.device) -> None:
    """Check, on every rank at once, what ``fit`` needs under DDP; raise the same ``ValueError`` on all.

    - ``loader`` shards the data with a ``DistributedSampler`` built for this rank and world size;
    - every rank has as many batches per epoch: DDP all-reduces at every ``backward()``, so a rank with
      one batch more would wait forever for the others;
    - the backend can move the model's tensors (:func:`check_backend`).

    One ``all_gather`` carries every rank's answer, so a problem on one rank stops them all with the
    same message instead of leaving the others waiting. Does nothing without a process group.
    """
    if not is_distributed():
        return
    try:
        check_backend(dist.get_backend(), device)
        problem = _sampler_problem(loader, name)
    except ValueError as error:
        problem = str(error)
    if problem is None and steps is None:
        problem = (
            f"{name} has no length: under DDP the ranks compare their number of batches before training "
            "(a rank with more batches would wait forever for the others), so pass a DataLoader over a "
            "dataset with __len__"
        )
    answers = gather_objects((problem, steps)) or []
    for r, (problem, _) in enumerate(answers):
        if problem is not None:
            raise ValueError(f"rank {r}: {problem}")
    counts = [s for _, s in answers]
    if len(set(counts)) > 1:
        listed = ", ".join(f"rank {r} has {s}" for r, s in enumerate(counts))
        raise ValueError(
            f"the ranks disagree on the number of batches per epoch of {name} ({listed}): DDP all-reduces "
            "the gradients at every step, so the ranks with more batches would wait forever. Give every rank "
            "as many samples: a DistributedSampler(dataset) over the same dataset on every rank does (it "
            "repeats a few samples to even them out, or drops them with drop_last=True)"
        )


# --- the samples a DistributedSampler repeats --------------------------------------------------------


def repeats_in_last_batch(loader: Any) -> int:
    r"""How many samples at the end of ``loader``'s last batch on this rank are repeats (0 or 1).

    A ``DistributedSampler`` over :math:`N` samples gives each of :math:`W` ranks
    :math:`m = \lceil N / W \rceil` of them: it lays out the shuffled indices, appends the first
    :math:`mW - N` again, and gives rank :math:`r` the positions :math:`r, r + W, r + 2W, \dots`. The
    appended ones are the last position of the ranks :math:`r \ge N - (m - 1) W`: at most one per rank,
    at the end of its last batch. Every rank trains on its repeat (they must take as many steps); the
    epoch's metrics leave it out, so they count each sample of the dataset once. ``drop_last=True`` on
    the sampler drops :math:`N - W \lfloor N/W \rfloor` samples instead and repeats none.

    Only for a ``DistributedSampler`` in a ``DataLoader`` that batches it in order; 0 otherwise.
    """
    batch_sampler = getattr(loader, "batch_sampler", None)
    sampler = getattr(batch_sampler, "sampler", None)
    if (
        not (type(batch_sampler) is BatchSampler and isinstance(sampler, DistributedSampler))
        or sampler.drop_last
    ):
        return 0
    n, w, m, r = len(sampler.dataset), sampler.num_replicas, sampler.num_samples, sampler.rank
    if r < n - (m - 1) * w:
        return 0
    if batch_sampler.drop_last and m % batch_sampler.batch_size:
        return 0  # the last, incomplete batch, and the repeat in it, are never yielded
    return 1


class GlobalOrderSampler(Sampler[int]):
    """The samples ``num_replicas`` ranks' ``DistributedSampler``\\s draw, in the order one process sees them.

    Rank :math:`r` gets positions :math:`r, r + W, \\dots` of the (shuffled, padded) index list, so its
    :math:`j`-th batch of :math:`b` samples holds positions :math:`W j b + r, W j b + r + W, \\dots`: the
    :math:`W` local batches :math:`j` together are positions :math:`W j b` to :math:`W (j + 1) b - 1`. This
    sampler yields the index list itself, so a single process with batches of :math:`W b` trains on the
    same global batches, repeats included, as the ranks do. Call :meth:`set_epoch` as for the ranks'
    samplers (``fit`` does).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if not is_int(num_replicas) or num_replicas < 1:
            raise ValueError(
                f"num_replicas must be a positive int (the number of ranks), got {num_replicas!r}"
            )
        self.samplers = [
            DistributedSampler(dataset, num_replicas, r, shuffle=shuffle, seed=seed, drop_last=drop_last)
            for r in range(num_replicas)
        ]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        shards = [list(s) for s in self.samplers]
        for position in range(len(shards[0])):
            for shard in shards:
                yield shard[position]

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)


# --- an epoch's metrics, over every rank --------------------------------------------------------------


def _cpu(x: Any) -> Any:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


def gather_meter(meter: Any) -> Any:
    """An :class:`~companion.metrics.EpochMeter` holding every rank's batches, on every rank.

    Each rank sends what it recorded (per batch: the loss, the batch size, the predicted and true
    labels, each metric's value) in one ``all_gather``, once per epoch; the merged meter's
    ``compute()`` is then the loss, accuracy and metrics of the samples of all ranks together, by the
    same formulas as in one process (:mod:`companion.metrics`).
    """
    mine = {
        "losses": meter.loss_values(),
        "sizes": list(meter.sizes),
        "classifying": meter.classifying,
        "predictions": torch.cat(meter.predictions).cpu() if meter.predictions else None,
        "labels": torch.cat(meter.labels).cpu() if meter.labels else None,
        "values": {name: [(_cpu(t), _cpu(c)) for t, c in pairs] for name, pairs in meter.values.items()},
    }
    parts = gather_objects(mine)
    if parts is None:
        return meter
    merged = copy.copy(meter)
    merged.losses = [v for p in parts for v in p["losses"]]
    merged.sizes = [n for p in parts for n in p["sizes"]]
    merged.classifying = next((p["classifying"] for p in parts if p["classifying"] is not None), None)
    merged.predictions = [p["predictions"] for p in parts if p["predictions"] is not None]
    merged.labels = [p["labels"] for p in parts if p["labels"] is not None]
    merged.values = {name: [pair for p in parts for pair in p["values"][name]] for name in meter.values}
    return merged
