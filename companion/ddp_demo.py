"""The digits trained with ``DistributedDataParallel``, one process per rank (chapter 10).

Launch it on two processes of this machine::

    torchrun --nproc_per_node=2 -m companion.ddp_demo --out runs/ddp

``torchrun`` starts two copies of this module; each joins the process group (:func:`companion.distributed.setup`:
gloo on CPUs, NCCL with one GPU per rank), builds the same model, trains on its own shard of every
global batch with :func:`companion.fit`, and prints what it saw, one line at a time, each starting with
``rank <r>:``. Rank 0 writes ``history.csv``, the checkpoint ``last.pt`` and ``weights.pt`` (the
weights after every epoch, the history, and the wall-clock and CPU seconds ``fit`` took in each of
``--repeats`` runs) to ``--out``. Run without ``torchrun`` (``python -m companion.ddp_demo``), the same
code trains in one process. ``--strategy fsdp`` shards the model over the ranks with FSDP2
(:func:`companion.strategy.shard_model`) instead of replicating it; rank 0 then writes no ``last.pt``
(:class:`~companion.callbacks.Checkpoint` would save rank 0's shard only: sharded runs save with
``torch.distributed.checkpoint``, as :mod:`companion.fsdp_demo` does).

The model is a small MLP with neither dropout nor batch normalization, so that the run is the same
computation as one process's on the global batch. Batch normalization would normalize each rank's local
batch by its own statistics. Dropout would draw its masks from each rank's own generator: seeded alike,
as :func:`train` seeds every rank (so that the initial weights agree), every rank would draw the same
masks for the same positions of its local batch, which one process on the global batch never does;
seeded differently, other masks than one process's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from companion.callbacks import Callback, Checkpoint, CSVLogger
from companion.checkpoint import plain_state_dict
from companion.datasets import digits_splits
from companion.distributed import (
    GlobalOrderSampler,
    gather_objects,
    is_distributed,
    is_main_process,
    rank,
    repeats_in_last_batch,
    setup,
    teardown,
    world_size,
)
from companion.history import History
from companion.seeding import seed_everything
from companion.strategy import shard_model
from companion.train import fit

__all__ = ["Run", "digits_datasets", "main", "make_model", "train", "train_loader", "val_loader"]

EPOCHS, GLOBAL_BATCH, LR, SEED = 8, 64, 0.05, 0


def digits_datasets() -> tuple[TensorDataset, TensorDataset]:
    """The digits' training and validation splits: 64 pixels per image, normalized by the training split."""
    splits = digits_splits(seed=0)
    pixels = splits["train"][0].float().flatten(1) / 255
    mean, std = pixels.mean(), pixels.std()

    def dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDataset:
        return TensorDataset((images.float().flatten(1) / 255 - mean) / std, labels)

    return dataset(*splits["train"]), dataset(*splits["val"])


def make_model() -> nn.Module:
    """64 pixels -> 128 -> 10 scores; no dropout, no batch norm (see the module's docstring)."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def train_loader(
    dataset: TensorDataset, global_batch: int, seed: int, replicas: int | None = None
) -> DataLoader:
    """The training loader: ``global_batch`` samples per step, over all ranks together.

    Under ``torchrun``: a ``DistributedSampler`` gives this rank its shard, in batches of
    ``global_batch / world_size``. In one process, with ``replicas=W``: the same global batches as
    ``W`` ranks would train on (:class:`~companion.distributed.GlobalOrderSampler`), whole.
    """
    if replicas is None and is_distributed():
        if global_batch % world_size():
            raise ValueError(
                f"the global batch ({global_batch}) must split evenly over the {world_size()} ranks: "
                "pass a multiple of the number of processes"
            )
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)  # rank, world size: the group's
        return DataLoader(dataset, batch_size=global_batch // world_size(), sampler=sampler)
    sampler = GlobalOrderSampler(dataset, replicas or 1, seed=seed)
    return DataLoader(dataset, batch_size=global_batch, sampler=sampler)


def val_loader(dataset: TensorDataset) -> DataLoader:
    """The validation loader: a shard per rank under ``torchrun`` (``evaluate`` gathers them), else whole."""
    sampler = DistributedSampler(dataset, shuffle=False) if is_distributed() else None
    return DataLoader(dataset, batch_size=256, sampler=sampler)


class WeightsEachEpoch(Callback):
    """Keeps a copy of the whole weights after every epoch (a sharded model's gathered: every rank calls it)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, state) -> None:
        self.weights.append(
            {k: _whole(v).detach().cpu().clone() for k, v in plain_state_dict(state.model).items()}
        )


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded ``DTensor`` gathered from every rank (a collective); a plain tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


@dataclass
class Run:
    """What :func:`train` returns: the model, its history, the weights after each epoch, the seconds
    ``fit`` took: wall-clock (``seconds``) and this process's CPU time, all its threads (``cpu_seconds``),
    and the optimizer (what a distributed checkpoint saves with the model)."""

    model: nn.Module
    history: History
    weights: list[dict[str, torch.Tensor]]
    seconds: float
    cpu_seconds: float = math.nan
    optimizer: torch.optim.Optimizer | None = None


def train(
    epochs: int = EPOCHS,
    global_batch: int = GLOBAL_BATCH,
    lr: float = LR,
    seed: int = SEED,
    *,
    replicas: int | None = None,
    out: str | Path | None = None,
    device: torch.device | str = "cpu",
    sharded: bool = False,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train :func:`make_model` on the digits with SGD (momentum 0.9) and :func:`companion.fit`.

    Every rank (or the one process) starts from the weights ``seed`` draws. ``out``: a folder where
    rank 0 writes ``history.csv`` and the checkpoint ``last.pt``. ``sharded``: under ``torchrun``, shard
    the model with FSDP2 before building the optimizer (``fit`` then trains with
    :class:`~companion.strategy.FSDPStrategy`); rank 0 writes ``history.csv`` only. ``wrap``: a
    function that wraps the new model before the optimizer is built, e.g. in a
    ``DistributedDataParallel`` of other buckets or with a communication hook (``fit`` takes a model
    already in DDP as it is). ``callbacks``: more callbacks for ``fit``, after the weights' snapshots.
    """
    if sharded and wrap is not None:
        raise ValueError(
            "pass sharded=True (FSDP2 shards the model) or a wrap function (e.g. DistributedDataParallel), "
            "not both: a model is either sharded or replicated"
        )
    train_set, val_set = digits_datasets()
    seed_everything(seed)
    model = make_model()
    if sharded:
        model = shard_model(model, device)  # before the optimizer: it must hold the shards
    elif wrap is not None:
        model = wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    snapshots = WeightsEachEpoch()
    given: list[Callback] = [snapshots, *callbacks]
    if out is not None:
        given += [CSVLogger(Path(out) / "history.csv")]
        given += [] if sharded else [Checkpoint(Path(out) / "last.pt")]
    loader = train_loader(train_set, global_batch, seed, replicas)
    started, cpu_started = time.perf_counter(), time.process_time()
    history = fit(
        model,
        loader,
        nn.CrossEntropyLoss(),
        optimizer,
        epochs,
        val_loader=val_loader(val_set),
        device=device,
        callbacks=given,
        progress=False,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return Run(model, history, snapshots.weights, seconds, cpu_seconds, optimizer)


def _say(text: str) -> None:
    # one write of the whole line, flushed: the ranks share torchrun's stdout, and a line written in
    # one piece (under 4096 bytes) never mixes with another rank's, even when Python is unbuffered
    sys.stdout.write(f"rank {rank()}: {text}\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--global-batch", type=int, default=GLOBAL_BATCH)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--backend", default=None, help="gloo (CPUs) or nccl (GPUs); default: nccl if CUDA")
    parser.add_argument("--out", type=Path, default=None, help="folder for rank 0's files")
    parser.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="replicate the model (ddp) or shard it (fsdp)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="train this many times, to time fit")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")

    device = setup(args.backend)
    sharded = args.strategy == "fsdp" and is_distributed()  # one process trains the model whole
    train_set, _ = digits_datasets()
    loader = train_loader(train_set, args.global_batch, args.seed)
    shard, repeated = len(loader.sampler), repeats_in_last_batch(loader)
    backend = torch.distributed.get_backend() if is_distributed() else "no process group"
    _say(f"one of {world_size()} processes ({backend}, {device.type})")
    _say(
        f"{shard} of the {len(train_set)} training images ({repeated} repeated), "
        f"{len(loader)} batches of {loader.batch_size} per epoch"
    )
    runs = [
        train(
            args.epochs,
            args.global_batch,
            args.lr,
            args.seed,
            out=args.out,
            device=device,
            sharded=sharded,
        )
        for _ in range(args.repeats)
    ]
    run = runs[0]  # every repeat computes the same: the same seed, the same batches
    last = run.history.rows[-1]
    _say(f"trained {len(run.history)} epochs; val accuracy >= 0.9: {last['val_accuracy'] >= 0.9}")
    mine = [run.history.rows, [w for weights in run.weights for w in weights.values()]]
    everyone = gather_objects(mine) or [mine]
    same_history = all(other[0] == mine[0] for other in everyone)
    same_weights = all(all(torch.equal(a, b) for a, b in zip(other[1], mine[1])) for other in everyone)
    _say(f"the same history as every rank: {same_history}; the same weights: {same_weights}")
    if is_main_process() and args.out is not None:
        torch.save(
            {
                "weights": run.weights,
                "history": run.history.rows,
                "seconds": [r.seconds for r in runs],
                "cpu_seconds": [r.cpu_seconds for r in runs],
                "world_size": world_size(),
            },
            args.out / "weights.pt",
        )
        written = "history.csv and weights.pt" if sharded else "history.csv, last.pt and weights.pt"
        _say(f"wrote {written} to {args.out.name}/")
    teardown()


if __name__ == "__main__":
    main()
