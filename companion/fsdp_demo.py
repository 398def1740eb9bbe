"""The digits trained sharded with FSDP2, saved as a distributed checkpoint, and DDP's traffic measured (chapter 10).

Launch it on two processes of this machine::

    torchrun --nproc_per_node=2 -m companion.fsdp_demo --out runs/fsdp

Each rank joins the process group (:func:`companion.distributed.setup`) and, in one launch:

1. trains :mod:`companion.ddp_demo`'s model on the same global batches as ``ddp_demo``, but sharded
   over the ranks (:func:`companion.strategy.shard_model`; :func:`companion.fit` then trains with
   :class:`~companion.strategy.FSDPStrategy`), and measures what this rank holds of the parameters, of
   the gradients before every optimizer step and of the optimizer's momentum
   (:func:`companion.strategy.shard_sizes`);
2. saves the model and the optimizer with ``torch.distributed.checkpoint`` to ``--out/dcp``: every rank
   writes its own shards, and a file of metadata says where each piece of each tensor lies, so that
   another number of processes (one, without a process group) can load it;
3. measures DDP's communication on the same model and batches (:func:`measure_traffic`): the
   all-reduces per step with the default 25 MB buckets, with one bucket per parameter
   (``bucket_cap_mb=0``), and with the gradients compressed to bfloat16 by the communication hook
   ``bf16_compress_hook``; the elements and bytes each all-reduce hands to the backend, as
   ``torch.profiler`` records them; the seconds per step, interleaved round by round
   (:func:`companion.perf.compare`); and trains the compressed run for ``--epochs`` to see where its
   weights end.

Every rank prints what it holds, one line at a time, each starting with ``rank <r>:``; rank 0 writes
``results.pt`` (the gathered weights after each epoch, the history, the shares, the traffic and the
timings) beside ``dcp/``. Without ``torchrun`` there is nothing to shard: it says so and exits.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook, bf16_compress_hook
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile

from companion import ddp_demo
from companion.callbacks import Callback
from companion.distributed import (
    barrier,
    gather_objects,
    is_distributed,
    is_main_process,
    rank,
    setup,
    teardown,
    world_size,
)
from companion.perf import compare
from companion.seeding import seed_everything
from companion.strategy import current_strategy, shard_sizes

__all__ = ["COMMUNICATION", "Shares", "bytes_of", "in_bucket_order", "main", "measure_traffic", "traffic_of"]

EPOCHS = 3  # of ddp_demo's training, sharded and compressed: ddp_demo keeps the weights after each epoch
DTYPES = {"float": "float32", "double": "float64", "c10::BFloat16": "bfloat16", "c10::Half": "float16"}
COMMUNICATION = {  # DDP's settings compared: (bucket_cap_mb, communication hook)
    "float32, 25 MB buckets": (25.0, allreduce_hook),
    "float32, a bucket per tensor": (0.0, allreduce_hook),
    "bf16_compress_hook": (25.0, bf16_compress_hook),
}


class Shares(Callback):
    """This rank's share ``(here, whole)`` of the elements of the parameters, of the gradients before
    each optimizer step (``gradients``, one pair per step), and of the optimizer's state after the
    last epoch (``optimizer_state``), counted with :func:`~companion.strategy.shard_sizes`."""

    def __init__(self) -> None:
        self.gradients: list[tuple[int, int]] = []
        self.parameters = self.optimizer_state = (0, 0)
        self.strategy = ""

    def on_before_optimizer_step(self, state) -> None:
        self.gradients.append(shard_sizes(p.grad for p in state.model.parameters() if p.grad is not None))

    def on_fit_end(self, state) -> None:
        self.strategy = type(current_strategy(state.model)).__name__
        self.parameters = shard_sizes(state.model.parameters())
        self.optimizer_state = shard_sizes(
            t for s in state.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)
        )


def traffic_of(step: Callable[[], Any]) -> list[tuple[str, int]]:
    """``(dtype, elements)`` of every all-reduce that one call of ``step`` hands to the backend, in order,
    as ``torch.profiler`` records the collectives (``gloo:all_reduce``, ``nccl:all_reduce``); the dtype
    by its name in ``torch`` (``"float32"``, ``"bfloat16"``)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = [event for event in prof.events() if event.name.endswith(":all_reduce")]
    if not all(hasattr(event, "input_dtypes") for event in events):  # torch 2.6 records shapes, not dtypes
        raise RuntimeError(
            f"traffic_of reads each collective's dtype from torch.profiler, which this torch ({torch.__version__}) "
            "does not record (its events have no input_dtypes); count the bucket sizes with a "
            "communication hook instead, or use a newer torch (2.14 records them)"
        )
    return [
        (DTYPES.get(event.input_dtypes[0], event.input_dtypes[0]), math.prod(event.input_shapes[0]))
        for event in events
    ]


def in_bucket_order(traffic: Sequence[tuple[str, int]], sizes: Sequence[int]) -> list[tuple[str, int]]:
    """:func:`traffic_of`'s all-reduces in the order DDP handed its buckets to the backend, ``sizes`` (the
    elements of each bucket, as its communication hook saw them, in the order of its calls).

    DDP hands its buckets over in a fixed order, the last layer's first; the profiler records each
    all-reduce when the backend runs it, and gloo runs two at a time on its worker threads, so on a busy
    machine its events can come in another order. Raises ``ValueError`` if the two do not pair up.
    """
    left = list(traffic)
    ordered = []
    for elements in sizes:
        found = next((i for i, (_, n) in enumerate(left) if n == elements), None)
        if found is None:
            break
        ordered.append(left.pop(found))
    if left or len(ordered) != len(sizes):
        raise ValueError(
            f"the all-reduces the profiler recorded, {list(traffic)}, are not the buckets the hook handed over, "
            f"{list(sizes)}: record both over the same step"
        )
    return ordered


def bytes_of(traffic: Sequence[tuple[str, int]]) -> int:
    r"""The bytes of :func:`traffic_of`'s all-reduces: :math:`\sum_i n_i \cdot s_i`, for :math:`n_i`
    elements of a dtype of :math:`s_i` bytes each."""
    total = 0
    for dtype, elements in traffic:
        found = getattr(torch, dtype, None)
        if not isinstance(found, torch.dtype):
            raise ValueError(
                f"{dtype!r} is not the name of a torch dtype: pass (dtype, elements) pairs such as "
                "('float32', 9610), as traffic_of returns them"
            )
        total += found.itemsize * elements
    return total


def _ddp(
    bucket_cap_mb: float, hook: Callable, calls: list[int], device: torch.device
) -> Callable[[nn.Module], nn.Module]:
    """A function that wraps a model on ``device`` in DDP with these buckets and ``hook``, counting its calls."""

    def counting(state, bucket):  # unannotated: DDP checks a hook's annotations against its own types
        calls.append(bucket.buffer().numel())  # one call per bucket all-reduced
        return hook(state, bucket)

    def wrap(model: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None  # one GPU per rank, or the CPU
        wrapped = DistributedDataParallel(model.to(device), device_ids=ids, bucket_cap_mb=bucket_cap_mb)
        wrapped.register_comm_hook(None, counting)
        return wrapped

    return wrap


def measure_traffic(steps: int = 10, rounds: int = 6, device: torch.device | str = "cpu") -> dict[str, Any]:
    r"""DDP's communication for each of :data:`COMMUNICATION`, on this rank's batches of the digits.

    For each setting: ``all_reduces`` per step (counted by a communication hook over the timed steps),
    ``traffic`` (:func:`traffic_of` one step: dtype and elements of each all-reduce, in the
    order DDP handed them over, :func:`in_bucket_order`) and ``bytes`` (its
    size); and ``seconds``: per call of ``steps`` optimizer steps, in ``rounds`` interleaved rounds of
    :func:`~companion.perf.compare` (one untimed call of each first). Every rank must call it alike.
    """
    device = torch.device(device)
    train_set, _ = ddp_demo.digits_datasets()
    local = ddp_demo.GLOBAL_BATCH // world_size()
    inputs = train_set.tensors[0][rank() * local : (rank() + 1) * local].to(device)
    targets = train_set.tensors[1][rank() * local : (rank() + 1) * local].to(device)
    loss_fn = nn.CrossEntropyLoss()
    results: dict[str, dict[str, Any]] = {}
    steppers: dict[str, Callable[[], None]] = {}
    for name, (cap, hook) in COMMUNICATION.items():
        seed_everything(ddp_demo.SEED)
        calls: list[int] = []
        model = _ddp(cap, hook, calls, device)(ddp_demo.make_model())
        optimizer = torch.optim.SGD(model.parameters(), lr=ddp_demo.LR, momentum=0.9)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()

        for _ in range(2):  # DDP sorts the gradients into its buckets anew after the first step
            step()
        handed = len(calls)
        traffic = in_bucket_order(traffic_of(step), calls[handed:])
        results[name] = {"traffic": traffic, "bytes": bytes_of(traffic), "calls": calls}
        steppers[name] = lambda step=step: [step() for _ in range(steps)]
    before = {name: len(found["calls"]) for name, found in results.items()}
    timing = compare(steppers, warmup=1, repeat=rounds)
    for name, found in results.items():
        found["all_reduces"] = (len(found.pop("calls")) - before[name]) / ((1 + rounds) * steps)
        found["seconds"] = timing.seconds[name]
        found["steps"] = steps
    return results


def _say(text: str) -> None:
    sys.stdout.write(f"rank {rank()}: {text}\n")  # one write per line: the ranks share torchrun's stdout
    sys.stdout.flush()


def _kilobytes(pair: tuple[int, int], bytes_per_element: int = 4) -> str:
    here, whole = pair
    return f"{here:,} of {whole:,} ({bytes_per_element * here / 1e3:.1f} of {bytes_per_element * whole / 1e3:.1f} kB)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--backend", default=None, help="gloo (CPUs) or nccl (GPUs); default: nccl if CUDA")
    parser.add_argument("--out", type=Path, required=True, help="folder for dcp/ and rank 0's results.pt")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds timing DDP's settings")
    args = parser.parse_args(argv)
    device = setup(args.backend)
    if not is_distributed():
        parser.exit(
            2,
            "companion.fsdp_demo shards over the ranks of torchrun: launch it with "
            "torchrun --nproc_per_node=2 -m companion.fsdp_demo --out FOLDER\n",
        )

    args.out.mkdir(parents=True, exist_ok=True)

    # 1. sharded training, and what this rank holds of it
    shares = Shares()
    run = ddp_demo.train(args.epochs, device=device, sharded=True, callbacks=[shares])
    last = run.history.rows[-1]
    _say(f"{shares.strategy}, {len(run.history)} epochs; val accuracy >= 0.9: {last['val_accuracy'] >= 0.9}")
    _say(f"parameters {_kilobytes(shares.parameters)}")
    distinct = set(shares.gradients)
    _say(
        f"gradients  {_kilobytes(shares.gradients[0])}, the same at all {len(shares.gradients)} "
        f"steps: {len(distinct) == 1}"
    )
    _say(f"momentum   {_kilobytes(shares.optimizer_state)}")

    # 2. a distributed checkpoint: every rank writes its shards
    weights, optim = get_state_dict(run.model, run.optimizer)  # each rank's shards, under the plain names
    if is_main_process():
        shutil.rmtree(args.out / "dcp", ignore_errors=True)  # this run's checkpoint replaces the last
    barrier()
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=args.out / "dcp")
    _say(f"saved its shards to {args.out.name}/dcp/")

    # 3. DDP's communication: buckets, and gradients compressed to bfloat16
    traffic = measure_traffic(rounds=args.rounds, device=device)
    compressed = ddp_demo.train(
        args.epochs, device=device, wrap=_ddp(*COMMUNICATION["bf16_compress_hook"], [], device)
    )
    mine = {
        "strategy": shares.strategy,
        "parameters": shares.parameters,
        "gradients": shares.gradients,
        "optimizer_state": shares.optimizer_state,
    }
    everyone = gather_objects(mine)  # every rank's shares, on rank 0
    if is_main_process():
        torch.save(
            {
                "world_size": world_size(),
                "weights": run.weights,
                "history": run.history.rows,
                "shares": everyone,
                "traffic": traffic,
                "bf16_weights": compressed.weights,
            },
            args.out / "results.pt",
        )
        _say(f"wrote results.pt to {args.out.name}/")
    teardown()


if __name__ == "__main__":
    main()
