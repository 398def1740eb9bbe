"""How the loop runs on one process or on many (chapters 6 and 10): the *strategy*, fit's one door to distribution.

:func:`companion.train.fit` is written once. Where one process and several differ, it calls a point of
a :class:`Strategy`, in this order::

    strategy.setup(train_loader, batches, device)     # before anything changes: can this run at all?
    net = strategy.wrap_model(model, device)           # what the batches go through
    for each epoch:
        strategy.start_epoch(train_loader, epoch)      # the sampler shuffles this epoch anew
        for each batch:
            with strategy.block_backward_sync(net, block):  # accumulate without communicating
                ... forward, loss, backward ...
        meter = strategy.reduce(meter, train_loader)   # the epoch's metrics, over every rank
        row = strategy.broadcast(row)                  # one history on every rank
        state.should_stop = strategy.any_rank(state.should_stop)
    # progress is shown where strategy.is_global_zero

:class:`SingleDeviceStrategy` does what one process needs (only ``set_epoch``); :class:`DDPStrategy`
(``DistributedDataParallel``) checks the set-up on all ranks at once, wraps the model, skips the gradient
all-reduce of the batches before a group's last, gathers the metrics and shares the decisions. The names
are those of PyTorch Lightning's ``Strategy`` where it has one; sharded training (FSDP2) is one more
subclass, not more branches in the loop: :class:`FSDPStrategy`, for a model that :func:`shard_model`
sharded over the ranks. :func:`current_strategy` picks one for this process and model.

This module imports :mod:`companion.distributed` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from companion.distributed import (
    any_rank,
    broadcast,
    check_fit_setup,
    distributed_sampler,
    gather_meter,
    is_distributed,
    is_main_process,
    repeats_in_last_batch,
    set_epoch,
    wrap,
)

__all__ = [
    "DDPStrategy",
    "FSDPStrategy",
    "SingleDeviceStrategy",
    "Strategy",
    "current_strategy",
    "shard_model",
    "shard_sizes",
]

_NO_CONTEXT = contextlib.nullcontext()


class Strategy:
    """The points where the loop meets the processes it runs on; each does what one process needs."""

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes: shows progress (callbacks that write check for themselves)."""
        return True

    def setup(self, loader: Iterable, batches: int | None, device: torch.device) -> None:
        """Refuse, before anything changes, a training loader this strategy cannot train on."""

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the batches go through."""
        return model

    def block_backward_sync(self, net: nn.Module, block: bool) -> contextlib.AbstractContextManager:
        """A context for a batch's forward and backward; ``block``: a batch before its group's last."""
        return _NO_CONTEXT

    def start_epoch(self, loader: Iterable, epoch: int) -> None:
        """Tell ``loader``'s sampler that ``epoch`` (1-based) starts, so it shuffles anew."""
        set_epoch(loader, epoch - 1)

    def repeats(self, loader: Iterable) -> int:
        """How many samples at the end of ``loader``'s last batch repeat others (trained on, counted once)."""
        return 0

    def reduce(self, meter: Any, loader: Iterable) -> Any:
        """The :class:`~companion.metrics.EpochMeter` of the whole pass over ``loader``."""
        return meter

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``."""
        return obj

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank: a decision every rank then takes together."""
        return flag


class SingleDeviceStrategy(Strategy):
    """One process, on one device: every point as :class:`Strategy` has it."""


class DDPStrategy(Strategy):
    """One process per rank, the model in ``DistributedDataParallel`` (see :mod:`companion.distributed`).

    - ``setup``: on all ranks at once, the loader has a ``DistributedSampler`` for this rank, every rank
      as many batches, and the backend suits the device (:func:`~companion.distributed.check_fit_setup`);
    - ``wrap_model``: ``DistributedDataParallel``, which averages the gradients in ``backward()``;
      ``block_backward_sync`` runs the batches before a group's last under its ``no_sync()``, so one
      all-reduce serves the group (the forward pass belongs inside too: DDP prepares the all-reduce there);
    - ``reduce`` gathers the epoch's batches of every rank, leaving out the samples the sampler
      repeated; ``broadcast`` and ``any_rank`` make the history and the decision to stop every rank's.
    """

    @property
    def is_global_zero(self) -> bool:
        return is_main_process()

    def setup(self, loader: Iterable, batches: int | None, device: torch.device) -> None:
        check_fit_setup(loader, batches, "train_loader", device)  # a collective: every rank gets here

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        return wrap(model, device)

    def block_backward_sync(self, net: nn.Module, block: bool) -> contextlib.AbstractContextManager:
        return net.no_sync() if block else _NO_CONTEXT

    def repeats(self, loader: Iterable) -> int:
        return repeats_in_last_batch(loader) if distributed_sampler(loader) is not None else 0

    def reduce(self, meter: Any, loader: Iterable) -> Any:
        return gather_meter(meter) if distributed_sampler(loader) is not None else meter

    def broadcast(self, obj: Any) -> Any:
        return broadcast(obj)

    def any_rank(self, flag: bool) -> bool:
        return any_rank(flag)


def fsdp_on_cpu_supported() -> bool:
    """Whether this torch can run FSDP2 on the CPU: ``fully_shard`` records events on the device's streams,
    which CPU streams can do in torch 2.14 and could not in 2.6 (``torch.cpu.Stream`` had no ``record_event``)."""
    return hasattr(torch.cpu.Stream, "record_event")


def shard_model(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    r"""``model`` sharded over the ranks with FSDP2 (``fully_shard``), in place; returns it. Build the optimizer after.

    Every submodule that holds parameters of its own is one unit, children first, then the whole model:
    each parameter becomes a ``DTensor`` of which each of the :math:`W` ranks keeps
    :math:`\lceil n_0 / W \rceil` of the :math:`n_0` rows of dimension 0 (``Shard(0)``, the last rank
    fewer when :math:`W` does not divide :math:`n_0`), so about :math:`1/W` of the elements. A unit's
    forward all-gathers its whole weights and frees them after; its backward reduce-scatters the
    gradient, so each rank holds the average over the ranks of its own rows (what DDP's all-reduce
    gives every rank whole), and the optimizer updates, and keeps state for, those rows only.

    The device mesh is one dimension over every rank of the group, on ``device``'s type (``"cpu"`` with
    gloo, ``"cuda"`` with NCCL). A model already sharded is returned as it is.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, FSDPModule):
        return model
    if not is_distributed():
        raise ValueError(
            "shard_model shards over the ranks of a process group, and none is initialized: launch with "
            "torchrun and call companion.distributed.setup() first (one process trains the model whole)"
        )
    if torch.device(device).type == "cpu" and not fsdp_on_cpu_supported():
        raise RuntimeError(
            f"FSDP2 cannot shard on the CPU with torch {torch.__version__}: its CPU streams have no "
            "record_event, which fully_shard uses. Use a newer torch (2.14 works), shard on GPUs, or train "
            "with DDP (companion.fit wraps a model that is not sharded in DDP)"
        )
    mesh = init_device_mesh(torch.device(device).type, (torch.distributed.get_world_size(),))
    for module in reversed(list(model.modules())):  # children before their parents
        if module is not model and any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def shard_sizes(tensors: Iterable[torch.Tensor]) -> tuple[int, int]:
    """``(on this rank, whole)``: the elements of ``tensors`` this rank holds, and the tensors' full size.

    A ``DTensor`` (a sharded parameter, its gradient, its optimizer state) counts its local shard on
    this rank; a plain tensor counts whole in both (every rank holds it all, as under DDP).
    """
    mine = whole = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors must hold tensors only, got a {type(t).__name__}")
        mine += t.to_local().numel() if isinstance(t, DTensor) else t.numel()
        whole += t.numel()
    return mine, whole


@contextlib.contextmanager
def _gradient_sync_off(net: FSDPModule) -> Iterator[None]:
    net.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        net.set_requires_gradient_sync(True)


class FSDPStrategy(DDPStrategy):
    """One process per rank, the model sharded over them with FSDP2 (:func:`shard_model`).

    As :class:`DDPStrategy` (the same checks of the set-up, metrics gathered, decisions shared), but the
    model communicates itself: ``wrap_model`` takes it as :func:`shard_model` left it (it must be
    sharded before the optimizer is built, which then holds the shards); ``block_backward_sync`` turns
    the gradient's reduce-scatter off for the batches before a group's last
    (``set_requires_gradient_sync(False)``), so the whole unsharded gradient accumulates on each rank
    and one reduce-scatter serves the group.
    """

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not isinstance(model, FSDPModule):
            raise ValueError(
                f"FSDPStrategy trains a model sharded with fully_shard, got a {type(model).__name__}: call "
                "companion.strategy.shard_model(model) before building the optimizer over model.parameters()"
            )
        return model

    def block_backward_sync(self, net: nn.Module, block: bool) -> contextlib.AbstractContextManager:
        return _gradient_sync_off(net) if block else _NO_CONTEXT


def current_strategy(model: nn.Module | None = None) -> Strategy:
    """The strategy for this process and ``model``.

    In an initialized process group (under ``torchrun``): :class:`FSDPStrategy` for a model that
    :func:`shard_model` (or ``fully_shard``) sharded, else :class:`DDPStrategy`. Without a group:
    :class:`SingleDeviceStrategy`.
    """
    if not is_distributed():
        return SingleDeviceStrategy()
    return FSDPStrategy() if isinstance(model, FSDPModule) else DDPStrategy()
