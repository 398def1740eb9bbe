"""Callbacks for :func:`companion.train.fit` (chapter 6): the hooks, early stopping, checkpoints, a CSV log.

A callback sees the loop through one object, the :class:`FitState`: the model, optimizer, scheduler,
history, epoch and step counters, and ``should_stop``. It never sees the loop itself. The hooks carry
PyTorch Lightning's names, and ``fit`` calls them in this order::

    on_fit_start(state)                       # once; reset per-run state here
    for each epoch:
        on_train_epoch_start(state)
        for each batch:
            ... forward, loss, backward (every accumulated batch) ...
            on_before_optimizer_step(state)   # the gradients are final: read, log or change them
            ... clip the gradients (gradient_clip_val), optimizer.step() ...
            on_train_batch_end(state, loss, batch_idx)
        ... validation; the epoch's row appended to state.history ...
        on_validation_epoch_end(state)        # only with a val_loader
        on_train_epoch_end(state)             # the row is complete; set state.should_stop to stop
    on_fit_end(state)                         # once, when training ends without an error
    on_exception(state, error)                # instead, when an error or an interrupt ends it

Subclass :class:`Callback` and override the hooks you need: ``fit`` calls a per-batch hook only on the
callbacks that override it, so the others cost nothing per batch. Callbacks run in the order given,
except that :class:`Checkpoint` callbacks run after all others (as in Lightning), so that they save the
state every other callback reached at that epoch. A callback with state to save in checkpoints has
``state_dict()`` and ``load_state_dict(state)``.

Under DDP (chapter 10) every rank runs every callback, on the same history (``fit`` gives every rank
rank 0's row), and ``fit`` makes a stop asked for on any rank the decision of all, before the
checkpoints run. :class:`CSVLogger` and :class:`Checkpoint` write on rank 0 only.

Chapter 8 adds weight averaging: :class:`EMAWeightAveraging` (an exponential moving average of the
weights, after every optimizer step) and :class:`StochasticWeightAveraging` (the mean of the weights at
the end of each epoch from a start epoch), both :class:`WeightAveraging` callbacks over
``torch.optim.swa_utils.AveragedModel``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from companion.checkpoint import (
    check_file_path,
    check_not_sharded,
    load_plain_state_dict,
    plain_state_dict,
    rng_state,
    save_checkpoint,
)
from companion.checks import is_int, is_number
from companion.distributed import barrier, gather_objects, is_distributed, is_main_process
from companion.history import History, check_mode
from companion.wrappers import unwrap

__all__ = [
    "HOOKS",
    "CSVLogger",
    "Callback",
    "Checkpoint",
    "EMAWeightAveraging",
    "EarlyStopping",
    "FitState",
    "StochasticWeightAveraging",
    "WeightAveraging",
    "check_callbacks",
    "hook_callers",
    "run_order",
]

HOOKS = (
    "on_fit_start",
    "on_train_epoch_start",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_epoch_end",
    "on_train_epoch_end",
    "on_fit_end",
    "on_exception",
)
RENAMED = {"on_epoch_end": "on_train_epoch_end(state), and set state.should_stop = True to stop"}


@dataclass(eq=False)
class FitState:
    """What a callback may look at, and change, during :func:`companion.train.fit`.

    ``epoch`` is the current epoch (1-based; the last one finished at ``on_train_epoch_end``),
    ``global_step`` the number of optimizer steps taken so far (a step a ``GradScaler`` skipped is
    none), ``epochs`` the epoch fit stops after. Set ``should_stop = True`` to end training after the
    current epoch. ``accumulate_grad_batches``, ``gradient_clip_val`` and ``precision`` (``"32"``,
    ``"bf16"`` or ``"16"``) are fit's settings, which a checkpoint records.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    epochs: int
    device: torch.device
    history: History
    callbacks: Sequence[Any] = ()
    train_loader: Iterable | None = None
    scaler: Any = None
    epoch: int = 0
    global_step: int = 0
    should_stop: bool = False
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    precision: str = "32"

    def fit_settings(self) -> dict[str, Any]:
        """The settings that shape every optimizer step: a checkpoint records them, and a resumed run
        must have the same (another ``k`` would, for one, take another number of steps per epoch)."""
        return {
            "accumulate_grad_batches": self.accumulate_grad_batches,
            "gradient_clip_val": self.gradient_clip_val,
            "precision": self.precision,
        }


class Callback:
    """Base class of callbacks: every hook does nothing until a subclass overrides it."""

    def on_fit_start(self, state: FitState) -> None:
        """Before the first epoch (and before a checkpoint's state is restored): reset per-run state."""

    def on_train_epoch_start(self, state: FitState) -> None:
        """At the start of epoch ``state.epoch``, with the model in train mode."""

    def on_before_optimizer_step(self, state: FitState) -> None:
        """After the backward pass(es) of a step, before clipping and ``optimizer.step()``: the
        parameters' ``.grad`` are what the step will use (unscaled under ``precision="16"``)."""

    def on_train_batch_end(self, state: FitState, loss: torch.Tensor | float, batch_idx: int) -> None:
        """After each training batch (``batch_idx`` counts from 0 within the epoch). ``loss`` is the
        batch's loss: a float on a CPU, a detached tensor on an accelerator (``.item()`` waits for it)."""

    def on_validation_epoch_end(self, state: FitState) -> None:
        """After the epoch's validation; ``state.history.rows[-1]`` holds its ``val_`` metrics."""

    def on_train_epoch_end(self, state: FitState) -> None:
        """After each epoch; ``state.history.rows[-1]`` is its complete row. Set ``state.should_stop``
        to end training here."""

    def on_fit_end(self, state: FitState) -> None:
        """Once, after the last epoch (also when a callback stopped training early)."""

    def on_exception(self, state: FitState, exception: BaseException) -> None:
        """When an error or an interrupt (``KeyboardInterrupt``) ends training, in place of
        ``on_fit_end``; the state is as the error left it. Then fit puts the model in eval mode,
        clears the gradients and raises the error."""


def _overrides(callback: Any, hook: str) -> bool:
    method = getattr(type(callback), hook, None)
    if isinstance(callback, Callback):
        return method is not getattr(Callback, hook)
    return callable(getattr(callback, hook, None))


def check_callbacks(callbacks: Iterable[Any]) -> tuple[Any, ...]:
    """The callbacks as a tuple, after checking that each implements at least one hook and no unknown one."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}: pass callbacks=[...]")
    callbacks = tuple(callbacks)
    for cb in callbacks:
        names = [n for n in dir(cb) if n.startswith("on_") and callable(getattr(cb, n, None))]
        for name in names:
            if name in RENAMED:
                raise TypeError(
                    f"callback {type(cb).__name__} has {name}(), which fit no longer calls: rename it "
                    f"{RENAMED[name]}. The hooks are {', '.join(HOOKS)}"
                )
            if name not in HOOKS:
                raise TypeError(
                    f"callback {type(cb).__name__} has {name}(), which is not a hook fit calls (a typo?); "
                    f"the hooks are {', '.join(HOOKS)}"
                )
        if not any(_overrides(cb, hook) for hook in HOOKS):
            raise TypeError(
                f"{cb!r} implements none of the hooks {', '.join(HOOKS)}: subclass "
                "companion.callbacks.Callback and override the ones you need"
            )
    return callbacks


def run_order(callbacks: Sequence[Any]) -> tuple[Any, ...]:
    """The order fit runs them in: as given, with :class:`Checkpoint` callbacks moved after all others."""
    return tuple(c for c in callbacks if not isinstance(c, Checkpoint)) + tuple(
        c for c in callbacks if isinstance(c, Checkpoint)
    )


def hook_callers(callbacks: Sequence[Any], hook: str) -> list[Callable[..., Any]]:
    """The bound ``hook`` methods of the callbacks that implement it (an empty list costs no call per batch)."""
    return [getattr(cb, hook) for cb in callbacks if _overrides(cb, hook)]


def _monitored(row: dict[str, float], monitor: str, who: str) -> float:
    if monitor not in row:
        raise ValueError(
            f"{who} monitors {monitor!r}, which this fit does not record; it records "
            f"{[k for k in row if k != 'epoch']}: pass val_loader to fit, or monitor one of those"
        )
    return float(row[monitor])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally keep the best weights.

    An epoch improves on the best value :math:`b` so far when :math:`v < b - \\delta` (``mode="min"``,
    the default for losses) or :math:`v > b + \\delta` (``mode="max"``, the default for accuracies),
    with :math:`\\delta` = ``min_delta``; a non-finite value never improves. With
    ``restore_best_weights=True`` the model ends with the weights of the best epoch, not the last:
    model selection on the validation split. Its state starts afresh at every fit, so one instance
    can serve several runs.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        *,
        mode: Literal["min", "max"] | None = None,
        min_delta: float = 0.0,
        restore_best_weights: bool = True,
    ):
        if not is_int(patience) or patience < 1:
            raise ValueError(
                f"patience must be a positive int (epochs without improvement before stopping), got {patience!r}"
            )
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}; pass 0 to count any improvement")
        self.monitor, self.patience, self.mode = monitor, patience, check_mode(mode, monitor)
        self.min_delta, self.restore_best_weights = min_delta, restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best, self.best_epoch, self.wait, self.stopped_epoch = math.nan, 0, 0, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if not math.isfinite(value):
            return False
        if math.isnan(self.best):
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_fit_start(self, state: FitState) -> None:
        self._reset()

    def on_train_epoch_end(self, state: FitState) -> None:
        value = _monitored(state.history.rows[-1], self.monitor, "EarlyStopping")
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best_weights:
                self.best_weights = {k: v.detach().clone() for k, v in plain_state_dict(state.model).items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = state.epoch
            state.should_stop = True

    def on_fit_end(self, state: FitState) -> None:
        if self.restore_best_weights and self.best_weights is not None and self.best_epoch != state.epoch:
            load_plain_state_dict(state.model, self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch, self.best_weights = state["stopped_epoch"], state["best_weights"]

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, mode={self.mode!r})"


def _file_argument(path: str | os.PathLike, who: str) -> Path:
    path = Path(path)
    try:
        check_file_path(path)
    except ValueError as error:
        raise ValueError(f"{who}: {error}") from None
    return path


class Checkpoint(Callback):
    """Save a resumable checkpoint (see :mod:`companion.checkpoint`) to the file ``path``.

    - Without ``monitor``: every ``every_n_epochs`` epochs and after the last epoch that ran, whether
      it was the last asked for or a callback stopped training there: resume with
      ``fit(..., resume_from=path)``.
    - With ``monitor`` (e.g. ``"val_loss"``): after each epoch that is the best so far by that metric
      (``mode`` as in :class:`EarlyStopping`), so ``path`` holds the best epoch.

    The names are Lightning's ``ModelCheckpoint``'s. Use two instances to keep both the last and the
    best epoch. Checkpoints run after the other callbacks, whatever their place in the list.

    Under DDP every rank sends its random generators' state to rank 0, which writes the file; then all
    wait (a barrier) until it is written, so no rank goes on, or ends, before the checkpoint exists.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        monitor: str | None = None,
        mode: Literal["min", "max"] | None = None,
        every_n_epochs: int = 1,
    ):
        self.path = _file_argument(path, "Checkpoint(path)")
        if not is_int(every_n_epochs) or every_n_epochs < 1:
            raise ValueError(
                f"every_n_epochs must be a positive int (save every that many epochs), got {every_n_epochs!r}"
            )
        if monitor is not None and every_n_epochs != 1:
            raise ValueError(
                f"Checkpoint(monitor={monitor!r}) saves the best epoch, whenever it comes, so every_n_epochs "
                "does not apply: pass one of the two (a second Checkpoint can save every n epochs)"
            )
        if monitor is None and mode is not None:
            raise ValueError(
                "mode says which way monitor improves: pass monitor=... with it, or leave mode out"
            )
        self.monitor, self.every_n_epochs = monitor, every_n_epochs
        self.mode = check_mode(mode, monitor) if monitor is not None else None

    def due(self, state: FitState) -> bool:
        """Whether to save at the end of ``state.epoch``."""
        if self.monitor is None:
            return state.epoch % self.every_n_epochs == 0 or state.should_stop or state.epoch == state.epochs
        value = _monitored(state.history.rows[-1], self.monitor, "Checkpoint")
        return math.isfinite(value) and state.history.best(self.monitor, self.mode)["epoch"] == state.epoch

    def on_fit_start(self, state: FitState) -> None:
        check_not_sharded(state.model)  # on every rank, before the first step: a file would hold one shard

    def on_train_epoch_end(self, state: FitState) -> None:
        if not self.due(state):
            return
        rank_rng = gather_objects(rng_state(state.train_loader)) if is_distributed() else None
        if is_main_process():
            save_checkpoint(
                self.path,
                model=state.model,
                optimizer=state.optimizer,
                scheduler=state.scheduler,
                scaler=state.scaler,
                epoch=state.epoch,
                global_step=state.global_step,
                history=state.history,
                train_loader=state.train_loader,
                callbacks=state.callbacks,
                stopped=state.should_stop,
                rank_rng=rank_rng,
                fit_settings=state.fit_settings(),
            )
        barrier()

    def __repr__(self) -> str:
        if self.monitor is not None:
            return f"Checkpoint({str(self.path)!r}, monitor={self.monitor!r}, mode={self.mode!r})"
        return f"Checkpoint({str(self.path)!r}, every_n_epochs={self.every_n_epochs})"


class CSVLogger(Callback):
    """Write the history to the CSV file ``path`` after every epoch: a header, then one row per epoch.

    The whole file is rewritten each time, so a resumed run's file holds the epochs before the
    checkpoint too. A metric missing from an epoch is an empty cell. Under DDP, rank 0 writes it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _file_argument(path, "CSVLogger(path)")

    def on_train_epoch_end(self, state: FitState) -> None:
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *state.history.metrics], restval="")
            writer.writeheader()
            writer.writerows(state.history.rows)

    def __repr__(self) -> str:
        return f"CSVLogger({str(self.path)!r})"


# --- weight averaging (chapter 8) -------------------------------------------------------------------


class WeightAveraging(Callback):
    """Keep an average of the model's weights beside the model, in a ``torch.optim.swa_utils.AveragedModel``.

    The model trains as before; the average is a second copy of it that :meth:`update` moves towards
    the model's weights. Subclasses say when: :class:`EMAWeightAveraging` after every optimizer step,
    :class:`StochasticWeightAveraging` after every epoch from a start epoch. The first update copies
    the weights; later ones average with ``multi_avg_fn`` (the running mean when it is ``None``).

    Batch norm: a network's running statistics belong to its own weights, not the average's. With
    ``use_buffers=False`` (the default) the buffers are not averaged but copied from the model at each
    update (the model's statistics, for other weights), and at the end of training
    ``torch.optim.swa_utils.update_bn`` recomputes them for the averaged weights in one pass, in
    train mode and without gradients, over ``bn_loader`` (the training loader when ``None``; pass the
    loader without MixUp/CutMix to measure the images as the model will see them). With
    ``use_buffers=True`` the buffers are averaged like the weights and nothing is recomputed.

    After ``fit``, :attr:`averaged_model` is the averaged network, a plain ``nn.Module`` in eval mode:
    measure it with ``companion.evaluate(callback.averaged_model, val_loader, loss_fn)``, or copy it
    into the model with ``model.load_state_dict(callback.averaged_model.state_dict())``. The average
    is part of a checkpoint (:meth:`state_dict`), so a resumed run ends with the same average, bit for
    bit on a CPU, as an uninterrupted one. Each fit starts a new average.
    """

    def __init__(
        self,
        *,
        multi_avg_fn: Callable[..., Any] | None = None,
        use_buffers: bool = False,
        update_bn: bool = True,
        bn_loader: Iterable | None = None,
    ):
        for name, value in (("use_buffers", use_buffers), ("update_bn", update_bn)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
        if bn_loader is not None and not isinstance(bn_loader, Iterable):
            raise TypeError(
                f"bn_loader must be a DataLoader of (inputs, targets) batches or None (the training "
                f"loader), got {type(bn_loader).__name__}"
            )
        self.multi_avg_fn, self.use_buffers = multi_avg_fn, use_buffers
        self.update_bn, self.bn_loader = update_bn, bn_loader
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None

    def on_fit_start(self, state: FitState) -> None:
        self.averaged = torch.optim.swa_utils.AveragedModel(
            _plain_model(state.model), multi_avg_fn=self.multi_avg_fn, use_buffers=self.use_buffers
        )

    def update(self, state: FitState) -> None:
        """Average the model's current weights in: ``AveragedModel.update_parameters``."""
        self._require_average().update_parameters(_plain_model(state.model))

    @property
    def n_averaged(self) -> int:
        """How many times the weights have been averaged in (0 before the first update)."""
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    @property
    def averaged_model(self) -> nn.Module:
        """The network with the averaged weights (and, after ``fit``, recomputed batch-norm statistics)."""
        if self.n_averaged == 0:
            raise ValueError(
                f"{type(self).__name__} has averaged no weights yet: pass it to fit(..., callbacks=[...]) "
                f"and train until its first update ({self._first_update()})"
            )
        return self._require_average().module

    def _first_update(self) -> str:
        return "the first optimizer step"

    def _require_average(self) -> torch.optim.swa_utils.AveragedModel:
        if self.averaged is None:
            raise ValueError(
                f"{type(self).__name__} holds no average before fit starts: pass it to fit(..., callbacks=[...])"
            )
        return self.averaged

    def on_fit_end(self, state: FitState) -> None:
        averaged = self._require_average()
        if self.update_bn and not self.use_buffers and self.n_averaged > 0:
            loader = self.bn_loader if self.bn_loader is not None else state.train_loader
            with torch.no_grad():
                torch.optim.swa_utils.update_bn(loader, averaged.module, device=state.device)
        averaged.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": None if self.averaged is None else self.averaged.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["averaged"] is not None:
            self._require_average().load_state_dict(state["averaged"])


def _plain_model(model: nn.Module) -> nn.Module:
    """The model inside any ``DistributedDataParallel`` or ``torch.compile`` wrapper: what to average."""
    return unwrap(model)


def _check_decay(decay: Any) -> float:
    if not is_number(decay):
        raise TypeError(
            f"decay must be a number between 0 and 1, got {type(decay).__name__} {decay!r}; pass e.g. decay=0.99"
        )
    if not 0 < decay < 1:
        raise ValueError(
            f"decay must be a number strictly between 0 and 1, got {decay!r}: the average keeps that share "
            "of itself at every step and spans about 1 / (1 - decay) steps; pass e.g. decay=0.99"
        )
    return float(decay)


class EMAWeightAveraging(WeightAveraging):
    r"""An exponential moving average of the weights, updated after every optimizer step.

    With the model's weights :math:`w_t` after step :math:`t` and the decay :math:`d`,

    .. math:: a_1 = w_1, \qquad a_t = d\, a_{t-1} + (1 - d)\, w_t,

    (``torch.optim.swa_utils.get_ema_multi_avg_fn(decay)``), so step :math:`s` weighs
    :math:`(1 - d)\, d^{\,t - s}` in :math:`a_t` and the first step :math:`d^{\,t-1}`: the average
    spans about :math:`1 / (1 - d)` steps. Choose :math:`d` so that :math:`d^{\,T}` is small for the
    run's :math:`T` steps (``0.999`` suits tens of thousands of steps, ``0.99`` a few thousand). A step
    a ``GradScaler`` skipped is no step (``state.global_step`` did not move), and with
    ``accumulate_grad_batches=k`` the average moves once per ``k`` batches. The name and the default
    decay are Lightning's ``EMAWeightAveraging``'s; the rest is :class:`WeightAveraging`'s.
    """

    def __init__(
        self,
        decay: float = 0.999,
        *,
        use_buffers: bool = False,
        update_bn: bool = True,
        bn_loader: Iterable | None = None,
    ):
        self.decay = _check_decay(decay)
        super().__init__(
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(self.decay),
            use_buffers=use_buffers,
            update_bn=update_bn,
            bn_loader=bn_loader,
        )
        self.last_step = 0

    def on_fit_start(self, state: FitState) -> None:
        super().on_fit_start(state)
        self.last_step = state.global_step

    def _update_after_new_steps(self, state: FitState) -> None:
        if state.global_step > self.last_step:
            self.update(state)
            self.last_step = state.global_step

    def on_train_batch_end(self, state: FitState, loss: torch.Tensor | float, batch_idx: int) -> None:
        self._update_after_new_steps(state)

    def on_train_epoch_end(self, state: FitState) -> None:
        self._update_after_new_steps(state)  # a loader without a length steps once more after its last batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.last_step = state["last_step"]

    def __repr__(self) -> str:
        return f"EMAWeightAveraging(decay={self.decay}, use_buffers={self.use_buffers})"


class StochasticWeightAveraging(WeightAveraging):
    r"""Stochastic weight averaging (Izmailov et al., 2018): the mean of the weights at the end of each
    epoch from ``swa_epoch_start`` on.

    With :math:`w_e` the weights after epoch :math:`e` and :math:`s` = ``swa_epoch_start``, after epoch
    :math:`E \ge s`

    .. math:: a_E = \frac{1}{E - s + 1} \sum_{e=s}^{E} w_e,

    computed as a running mean, :math:`a \leftarrow a + (w_E - a) / n` (``AveragedModel``'s default).
    It averages only: the learning rate is ``fit``'s scheduler's. SWA works best when the late epochs
    still move (a constant or cyclical rate there, e.g. ``torch.optim.swa_utils.SWALR``), so the
    average lands between the points they visit. The name is Lightning's ``StochasticWeightAveraging``;
    its ``swa_epoch_start`` is here a whole epoch, 1-based, no later than fit's ``epochs``.
    """

    def __init__(
        self,
        swa_epoch_start: int,
        *,
        use_buffers: bool = False,
        update_bn: bool = True,
        bn_loader: Iterable | None = None,
    ):
        if not is_int(swa_epoch_start):
            raise TypeError(
                f"swa_epoch_start must be an int, the first epoch (1-based) whose weights are averaged, got "
                f"{type(swa_epoch_start).__name__} {swa_epoch_start!r}; pass e.g. swa_epoch_start=15"
            )
        if swa_epoch_start < 1:
            raise ValueError(
                f"swa_epoch_start must be a positive int, the first epoch (1-based) whose weights are "
                f"averaged, got {swa_epoch_start!r}; pass e.g. swa_epoch_start=15 for the last 6 of 20 epochs"
            )
        self.swa_epoch_start = int(swa_epoch_start)
        super().__init__(use_buffers=use_buffers, update_bn=update_bn, bn_loader=bn_loader)

    def on_fit_start(self, state: FitState) -> None:
        if self.swa_epoch_start > state.epochs:
            raise ValueError(
                f"swa_epoch_start={self.swa_epoch_start} comes after the last epoch (epochs={state.epochs}), "
                f"so no weights would be averaged: pass swa_epoch_start between 1 and {state.epochs}"
            )
        super().on_fit_start(state)

    def _first_update(self) -> str:
        return f"the end of epoch {self.swa_epoch_start}"

    def on_train_epoch_end(self, state: FitState) -> None:
        if state.epoch >= self.swa_epoch_start:
            self.update(state)

    def __repr__(self) -> str:
        return f"StochasticWeightAveraging(swa_epoch_start={self.swa_epoch_start}, use_buffers={self.use_buffers})"
