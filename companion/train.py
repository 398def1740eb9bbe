"""The training loop (chapter 6): :func:`fit`, :func:`evaluate` and the :class:`History` they record.

:func:`fit` is the loop the chapter grows step by step, written once::

    for epoch in 1..epochs:
        model.train()
        for inputs, targets in train_loader:           # moved to `device`
            loss = loss_fn(model(inputs), targets)       # must be finite, else NonFiniteLossError
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            scheduler.step()                             # if it steps per batch
        metrics = evaluate(model, val_loader, loss_fn)   # eval mode, under torch.inference_mode
        callbacks: on_epoch_end(epoch, history, state) -> stop?

The epoch's loss is the mean over *samples*, not over batches: with batch means
:math:`\\ell_b` over batches of :math:`n_b` samples,

.. math:: L = \\frac{\\sum_b n_b \\, \\ell_b}{\\sum_b n_b},

which is the loss of the whole dataset at once even when the last batch is smaller.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from companion.losses import check_same_shape

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns once and falls back to the text bar on stderr, which is
    # what we want in a notebook anyway: silence that one import-time warning.
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Callback",
    "FitState",
    "History",
    "NonFiniteLossError",
    "check_output_fits",
    "evaluate",
    "fit",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)


class NonFiniteLossError(FloatingPointError):
    """The loss became ``nan`` or ``inf``; raised before that step could change the weights (on CPU)."""

    def __init__(self, value: float, epoch: int, step: int, steps: int | None):
        self.value, self.epoch, self.step = value, epoch, step
        of = f" of {steps}" if steps else ""
        super().__init__(
            f"the loss is {value} at epoch {epoch}, step {step}{of}: training stopped instead of "
            "continuing on non-finite numbers. Lower the learning rate, clip the gradients "
            "(torch.nn.utils.clip_grad_norm_), or check the inputs and targets for nan/inf."
        )


class History:
    """The metrics of a :func:`fit`, one row per epoch.

    ``history["val_loss"]`` is the list of one metric over the epochs, ``history.rows[-1]`` the last
    epoch's row, e.g. ``{"epoch": 3, "train_loss": 0.21, "val_loss": 0.25, "val_accuracy": 0.93,
    "lr": 0.001, "seconds": 0.4}``. Accuracy appears when the model outputs class scores ``(n, C)``
    for integer labels ``(n,)``.
    """

    def __init__(self, rows: Iterable[Mapping[str, float]] = ()):
        self.rows: list[dict[str, float]] = [dict(r) for r in rows]

    def append(self, row: Mapping[str, float]) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.rows)

    @property
    def metrics(self) -> list[str]:
        """The metric names, in the order they first appeared (``epoch`` excluded)."""
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(k for k in row if k != "epoch"))
        return list(names)

    def __getitem__(self, metric: str) -> list[float]:
        if metric != "epoch" and metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in this history; it has {self.metrics}")
        return [row.get(metric, math.nan) for row in self.rows]

    def best(self, metric: str = "val_loss", mode: Literal["min", "max"] | None = None) -> dict[str, float]:
        """The row of the best epoch by ``metric``: lowest for losses, highest for accuracies
        (``mode`` says which when the name does not)."""
        values = self[metric]
        if not values:
            raise ValueError("the history is empty: fit for at least one epoch first")
        mode = mode or ("max" if "acc" in metric else "min")
        key = (lambda i: -values[i]) if mode == "max" else (lambda i: values[i])
        finite = [i for i, v in enumerate(values) if math.isfinite(v)] or list(range(len(values)))
        return self.rows[min(finite, key=key)]

    def plot(self, metrics: Sequence[str] | None = None, title: str = "Learning curves") -> Figure:
        """Learning curves: losses on the left, accuracies (if any) on the right, against the epoch.

        Returns the matplotlib ``Figure``; its ``axes`` are the panels. Pass ``metrics`` to choose
        the curves (default: every metric whose name holds ``loss`` or ``accuracy``).
        """
        import matplotlib.pyplot as plt

        if not self.rows:
            raise ValueError("the history is empty: there is nothing to plot yet")
        metrics = (
            list(metrics)
            if metrics is not None
            else [m for m in self.metrics if "loss" in m or "accuracy" in m]
        )
        groups = [
            g
            for g in ([m for m in metrics if "accuracy" not in m], [m for m in metrics if "accuracy" in m])
            if g
        ]
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
        epochs = self["epoch"]
        for ax, group in zip(axes[0], groups):
            for m in group:
                ax.plot(epochs, self[m], marker="o", markersize=3, label=m.replace("_", " "))
            kind = "accuracy" if "accuracy" in group[0] else "loss"
            ax.set(xlabel="epoch", ylabel=kind, title=f"{title}: {kind}")
            if kind == "loss" and all(v > 0 for m in group for v in self[m] if math.isfinite(v)):
                ax.set(yscale="log", ylabel="loss (log scale)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        last = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in (self.rows[-1] if self.rows else {}).items()
        }
        return f"History(epochs={len(self)}, last={last})"


@dataclass
class FitState:
    """What a callback may look at (and change) at the end of an epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Iterable
    epochs: int
    device: torch.device
    callbacks: Sequence[Any] = field(default_factory=tuple)


@runtime_checkable
class Callback(Protocol):
    """The callback protocol: one method, called after every epoch's validation.

    ``on_epoch_end(epoch, history, state)`` gets the epoch just finished (1-based), the
    :class:`History` so far (its last row is this epoch) and the :class:`FitState`; it returns a
    true value to stop training after this epoch. Optionally a callback also has

    - ``on_fit_end(history, state)``: called once when training ends (e.g. to restore the best weights);
    - ``state_dict()`` / ``load_state_dict(d)``: its state, saved in checkpoints so that a resumed
      run continues exactly where the interrupted one stopped.

    Callbacks run in the order given. A :class:`companion.callbacks.Checkpoint` saves the state of the
    callbacks before it, so it must come after every callback that has state.
    """

    def on_epoch_end(self, epoch: int, history: History, state: FitState) -> bool | None: ...


def check_output_fits(output: Any, target: Any) -> None:
    """Raise ``ValueError`` when a model's output and the targets cannot be what the loss expects.

    - float targets (regression, probabilities): the output must have the target's shape exactly.
      ``(n, 1)`` against ``(n,)`` broadcasts to ``(n, n)`` in an element-wise loss: every prediction
      compared with every target, a silent bug.
    - integer targets are class indices: the output must be scores ``(n, C, ...)`` for targets
      ``(n, ...)``, with every label ``< C``.

    Anything that is not a pair of tensors is left alone. Costs one device sync (the largest label).
    """
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    out, tgt = tuple(output.shape), tuple(target.shape)
    if output.ndim and target.ndim and out[0] != tgt[0]:
        raise ValueError(
            f"the model output has shape {out} but the targets have shape {tgt}: {out[0]} outputs for "
            f"{tgt[0]} targets. Return one output per sample (the batch is the first dimension)."
        )
    if target.is_floating_point() or target.is_complex():
        check_same_shape(output, target)
        return
    if target.dtype == torch.bool:
        return
    if output.ndim != target.ndim + 1:
        if target.ndim == output.ndim and target.ndim >= 2 and tgt[1] == 1:
            hint = f"class labels have one dimension less than the scores: pass targets.squeeze(1) (shape {tgt[:1] + tgt[2:]})"
        else:
            hint = (
                f"the model must output one score per class, shape ({tgt[0] if tgt else 'n'}, C); "
                "for regression, pass float targets (targets.float()) of the output's shape"
            )
        raise ValueError(
            f"integer targets are class labels, but the model output has shape {out} for targets of shape {tgt}: {hint}."
        )
    if out[2:] != tgt[1:]:
        raise ValueError(
            f"the model output has shape {out} but the targets have shape {tgt}: "
            f"scores (n, C, *rest) need labels (n, *rest), so pass targets of shape {out[:1] + out[2:]}."
        )
    labels = target[target >= 0]  # negative labels are CrossEntropyLoss's ignore_index
    largest = int(labels.max()) if labels.numel() else -1
    classes = out[1]
    if largest >= classes:
        raise ValueError(
            f"the model outputs {classes} class scores per sample (shape {out}) but the targets hold label {largest}: "
            f"the last layer must output at least {largest + 1} scores, e.g. nn.Linear(..., {largest + 1})."
        )


def _check_epochs(epochs: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise TypeError(
            f"epochs must be an int, the number of passes over train_loader, got {epochs!r} "
            f"({type(epochs).__name__}); pass e.g. epochs=10"
        )
    if epochs < 1:
        raise ValueError(
            f"epochs must be at least 1, got {epochs}; pass the number of passes over train_loader, e.g. epochs=10"
        )


def _check_loader(loader: Any, name: str) -> int | None:
    """The number of batches, or None for a loader without a length; raise if it has none."""
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of (inputs, targets) batches, e.g. a DataLoader; got {type(loader).__name__}"
        )
    try:
        steps = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if steps == 0:
        raise ValueError(
            f"{name} is empty, it yields no batches: pass a DataLoader over a dataset with at least one "
            "sample (with drop_last=True, at least batch_size samples)"
        )
    return steps


def _split(batch: Any, name: str) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        kind = (
            f"a {type(batch).__name__} of {len(batch)}"
            if isinstance(batch, (tuple, list))
            else f"a {type(batch).__name__}"
        )
        raise TypeError(
            f"each batch of {name} must be a pair (inputs, targets), got {kind}; "
            "wrap tensors in TensorDataset(inputs, targets)"
        )
    return batch[0], batch[1]


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


def _is_classification(output: Any, target: Any) -> bool:
    return (
        isinstance(output, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and output.ndim == 2
        and output.shape[1] >= 2
        and target.ndim == 1
        and not target.is_floating_point()
        and target.dtype != torch.bool
    )


def _loss_weight(loss_fn: Any, n: int) -> int:
    """A batch's weight in the epoch mean: its size for a mean loss, 1 for a summed one."""
    return 1 if getattr(loss_fn, "reduction", "mean") == "sum" else n


def _check_scalar(loss: Any) -> None:
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar tensor, got {shape}: use a reducing loss "
            "(reduction='mean', the default) or call .mean() on it"
        )


def _checks_each_step(device: torch.device) -> bool:
    """On a CPU, ``loss.item()`` is free: check every step, before the step can change the weights.
    Elsewhere it would make the host wait for the device at every step: check once per epoch."""
    return device.type == "cpu"


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    return device


def evaluate(
    model: nn.Module, loader: Iterable, loss_fn: LossFn, *, device: torch.device | str | None = None
) -> dict[str, float]:
    """The model's mean loss (and accuracy, for class scores) over every sample of ``loader``.

    Runs in eval mode (dropout off, batch norm on its running statistics) under
    ``torch.inference_mode()`` (no graph is recorded), then puts the model back in the mode it
    was in. The loss is weighted by batch size, :math:`L = \\sum_b n_b \\ell_b / \\sum_b n_b`, and
    accuracy is :math:`\\frac1N \\sum_i [\\arg\\max_c \\hat y_{ic} = y_i]`.

    Returns:
        ``{"loss": L}``, plus ``"accuracy"`` when the output is ``(n, C)`` scores for integer labels ``(n,)``.
    """
    _check_loader(loader, "loader")
    device = _resolve_device(model, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count, classifying = 0, None
    try:
        with torch.inference_mode():
            for batch in loader:
                inputs, targets = _split(batch, "loader")
                inputs, targets = _to(inputs, device), _to(targets, device)
                output = model(inputs)
                if classifying is None:
                    check_output_fits(output, targets)
                    classifying = _is_classification(output, targets)
                loss = loss_fn(output, targets)
                _check_scalar(loss)
                n = len(targets)
                loss_sum += loss.double() * _loss_weight(loss_fn, n)
                if classifying:
                    correct += (output.argmax(1) == targets).sum()
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("loader yielded no samples: pass a loader over at least one sample")
    metrics = {"loss": loss_sum.item() / count}
    if classifying:
        metrics["accuracy"] = correct.item() / count
    return metrics


def _scheduler_interval(scheduler: Any, interval: str | None) -> str | None:
    if scheduler is None:
        return None
    if interval is not None:
        if interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' (after every batch) or 'epoch', got {interval!r}"
            )
        return interval
    if isinstance(scheduler, PER_STEP_SCHEDULERS):
        return "step"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "epoch"
    raise ValueError(
        f"say when to step a {type(scheduler).__name__}: pass scheduler_interval='step' (after every "
        "batch, if it was built with a number of steps) or scheduler_interval='epoch'"
    )


def fit(
    model: nn.Module,
    train_loader: Iterable,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    val_loader: Iterable | None = None,
    scheduler: Any = None,
    scheduler_interval: Literal["step", "epoch"] | None = None,
    device: torch.device | str | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    resume_from: str | os.PathLike | None = None,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; return the per-epoch :class:`History`.

    Each epoch trains in train mode, then (with ``val_loader``) measures the model with
    :func:`evaluate`. The history holds ``train_loss`` (the epoch's sample-weighted mean loss,
    measured while the weights changed), ``train_accuracy`` for classifiers, ``val_loss`` and
    ``val_accuracy``, the learning rate ``lr`` at the end of the epoch and the epoch's ``seconds``.

    Args:
        epochs: the total number of epochs; when resuming, training goes on from the checkpoint's
            epoch up to this one.
        scheduler: stepped after every batch (``OneCycleLR``, ``CyclicLR``) or every epoch
            (``ReduceLROnPlateau``, given ``val_loss``, else ``train_loss``); for any other scheduler
            say which with ``scheduler_interval``.
        device: where to train; the model is moved there and so is each batch. ``None``: where the
            model's parameters are.
        callbacks: objects following the :class:`Callback` protocol, e.g.
            :class:`companion.callbacks.EarlyStopping`, :class:`companion.callbacks.Checkpoint`.
        progress: a tqdm bar on stderr (a text bar in a notebook without ipywidgets).
        resume_from: a checkpoint written by :class:`companion.callbacks.Checkpoint`: restores the
            model, optimizer, scheduler, callbacks, history and every random number generator,
            including the ``generator`` of ``train_loader`` that draws its shuffle, so the resumed
            run ends with the same weights as an uninterrupted one (bit for bit on a CPU). Build the
            model, optimizer, scheduler, loader and callbacks as for the first run, then resume.

    Returns:
        The :class:`History`, all epochs (those before the checkpoint included). The model is left
        in eval mode, ready to predict.

    Raises:
        NonFiniteLossError: the loss became nan/inf. On a CPU every step is checked, before the
            step changes the weights; on an accelerator the check runs at the end of each epoch
            (a per-step check would stall the device) and names the first bad step.
        ValueError, TypeError: bad arguments, an empty loader, an output that does not fit the
            targets (see :func:`check_output_fits`), each with what to pass instead.
    """
    from companion.callbacks import Checkpoint, load_checkpoint

    _check_epochs(epochs)
    steps = _check_loader(train_loader, "train_loader")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader")
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(output, targets), e.g. nn.CrossEntropyLoss(); got {type(loss_fn).__name__}"
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer over the model's parameters, got {type(optimizer).__name__}"
        )
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(getattr(cb, "on_epoch_end", None)):
            raise TypeError(
                f"callback {cb!r} has no on_epoch_end(epoch, history, state) method; see companion.train.Callback"
            )
    for i, cb in enumerate(callbacks):
        late = [type(c).__name__ for c in callbacks[i + 1 :] if hasattr(c, "state_dict")]
        if isinstance(cb, Checkpoint) and late:
            raise ValueError(
                f"Checkpoint comes before {', '.join(late)}, whose state it would save one epoch late: "
                "put Checkpoint last in callbacks"
            )
    interval = _scheduler_interval(scheduler, scheduler_interval)
    device = _resolve_device(model, device)
    state = FitState(model, optimizer, scheduler, train_loader, epochs, device, callbacks)

    history, start = History(), 0
    if resume_from is not None:
        start, history = load_checkpoint(
            resume_from,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            train_loader=train_loader,
            callbacks=callbacks,
        )
    check_each_step = _checks_each_step(device)
    checked, classifying = False, False
    bar = tqdm(
        total=epochs * steps if steps else None,
        initial=start * steps if steps else 0,
        unit="step",
        mininterval=0.5,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start + 1, epochs + 1):
            bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
            started = time.perf_counter()
            model.train()
            # per-step results stay tensors until the epoch ends: no device sync inside the loop
            losses, weights, predictions, labels, count = [], [], [], [], 0
            for step, batch in enumerate(train_loader, 1):
                inputs, targets = _split(batch, "train_loader")
                inputs, targets = _to(inputs, device), _to(targets, device)
                output = model(inputs)
                if not checked:
                    check_output_fits(output, targets)
                    classifying = _is_classification(output, targets)
                loss = loss_fn(output, targets)
                if not checked:
                    _check_scalar(loss)
                    checked = True
                if check_each_step and not math.isfinite(loss.item()):
                    raise NonFiniteLossError(loss.item(), epoch, step, steps)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if interval == "step":
                    scheduler.step()
                n = len(targets)
                losses.append(loss.detach())
                weights.append(_loss_weight(loss_fn, n))
                if classifying:
                    predictions.append(output.detach().argmax(1))
                    labels.append(targets)
                count += n
                bar.update()
            if count == 0:
                raise ValueError(
                    "train_loader yielded no batches in this epoch: pass a loader that yields at least one batch per pass"
                )
            step_losses = torch.stack(losses).double()
            if not check_each_step:
                finite = torch.isfinite(step_losses)
                if not finite.all():
                    first = int((~finite).nonzero()[0])
                    raise NonFiniteLossError(step_losses[first].item(), epoch, first + 1, steps)
            loss_sum = step_losses @ torch.tensor(weights, dtype=torch.float64, device=step_losses.device)
            row: dict[str, float] = {"epoch": epoch, "train_loss": loss_sum.item() / count}
            if classifying:
                row["train_accuracy"] = (torch.cat(predictions) == torch.cat(labels)).sum().item() / count
            if val_loader is not None:
                row.update(
                    {f"val_{k}": v for k, v in evaluate(model, val_loader, loss_fn, device=device).items()}
                )
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            if interval == "epoch":
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(row.get("val_loss", row["train_loss"]))
                else:
                    scheduler.step()
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in row.items() if "loss" in k or "accuracy" in k}, refresh=False
            )
            stop = False
            for cb in callbacks:
                stop = bool(cb.on_epoch_end(epoch, history, state)) or stop
            if stop:
                break
    finally:
        bar.close()
    for cb in callbacks:
        if callable(getattr(cb, "on_fit_end", None)):
            cb.on_fit_end(history, state)
    model.eval()
    return history
