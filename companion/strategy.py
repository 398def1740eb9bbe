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
subclass, not more branches in the loop. :func:`current_strategy` picks one for this process.

This module imports :mod:`companion.distributed` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

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

__all__ = ["DDPStrategy", "SingleDeviceStrategy", "Strategy", "current_strategy"]

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


def current_strategy() -> Strategy:
    """:class:`DDPStrategy` in an initialized process group (under ``torchrun``), else :class:`SingleDeviceStrategy`."""
    return DDPStrategy() if is_distributed() else SingleDeviceStrategy()
