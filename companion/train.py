"""The training loop (chapter 6): :func:`fit` and :func:`evaluate`.

:func:`fit` is the loop the chapter grows step by step, written once. Each line below is a function of
this module a reader can open beside the chapter::

    on_fit_start
    for epoch in 1..epochs:                                 # _fit_epochs
        _train_epoch: model.train(); on_train_epoch_start
            for inputs, targets in train_loader:            # moved to `device`
                _forward_backward:
                    loss = loss_fn(model(inputs), targets)  # under autocast for precision="bf16"/"16"
                    # must be finite, else NonFiniteLossError
                    (loss / k).backward()                   # k = accumulate_grad_batches
                every k batches, _optimizer_step:
                    on_before_optimizer_step                # the gradients are final here
                    clip_grad_norm_(params, gradient_clip_val)  # if asked
                    optimizer.step()
                    scheduler.step()                        # if it steps per optimizer step
                on_train_batch_end(loss)
        _end_epoch:
            metrics = evaluate(model, val_loader, loss_fn)  # eval mode, under torch.inference_mode
            scheduler.step()                                # if it steps per epoch
            on_validation_epoch_end; on_train_epoch_end     # a callback may set state.should_stop
    on_fit_end                                              # on an error: on_exception instead

The epoch's loss is the mean over *samples* (see :mod:`companion.metrics`). The callbacks and their
hooks are in :mod:`companion.callbacks`, checkpoint files in :mod:`companion.checkpoint`, the
:class:`~companion.history.History` in :mod:`companion.history`; imports run one way,
``train -> callbacks -> checkpoint -> history``.

Where one process and several differ, the loop calls a :class:`~companion.strategy.Strategy`
(:mod:`companion.strategy`): under ``torchrun`` (chapter 10), with the process group initialized, the
same call trains with ``DistributedDataParallel``: see :func:`fit`'s "Under DDP".
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from companion.callbacks import Checkpoint, FitState, check_callbacks, hook_callers, run_order
from companion.checkpoint import SavedCheckpoint, read_checkpoint
from companion.checks import check_bool, check_callable, is_int, is_number
from companion.history import History
from companion.losses import (
    check_same_shape,
    cross_entropy,
    hinge_embedding_loss,
    huber_loss,
    l1_loss,
    loss_option,
    mse_loss,
    multi_margin_loss,
    smooth_l1_loss,
)
from companion.metrics import IGNORE_INDEX, EpochMeter, Metric
from companion.strategy import Strategy, current_strategy
from companion.wrappers import unwrap_distributed

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns once and falls back to the text bar on stderr, which is
    # what we want in a notebook anyway: silence that one import-time warning.
    warnings.simplefilter("ignore")
    from tqdm.auto import tqdm

__all__ = [
    "History",
    "NonFiniteLossError",
    "PRECISIONS",
    "check_output_fits",
    "evaluate",
    "fit",
]

LossFn = Any  # a callable loss_fn(output, targets) -> scalar tensor
PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR, torch.optim.lr_scheduler.CyclicLR)
# Lightning's names for the precisions, and the dtype autocast computes in (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "16": torch.float16,
    "16-mixed": torch.float16,
    "fp16": torch.float16,
}
PRECISION_NAMES = {None: "32", torch.bfloat16: "bf16", torch.float16: "16"}  # one name per dtype
_NO_CONTEXT = contextlib.nullcontext()

# The losses whose needs the check knows (those the book teaches): class scores against class labels,
# or an element-wise comparison of two tensors of one shape. Any other loss is called as it is.
CLASS_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)
CLASS_LOSS_FUNCTIONS = (F.cross_entropy, F.nll_loss, F.multi_margin_loss, cross_entropy, multi_margin_loss)
ELEMENTWISE_LOSSES = (
    nn.MSELoss,
    nn.L1Loss,
    nn.SmoothL1Loss,
    nn.HuberLoss,
    nn.BCEWithLogitsLoss,
    nn.BCELoss,
    nn.HingeEmbeddingLoss,
    nn.SoftMarginLoss,
)
ELEMENTWISE_LOSS_FUNCTIONS = (
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.binary_cross_entropy_with_logits,
    F.binary_cross_entropy,
    F.hinge_embedding_loss,
    F.soft_margin_loss,
    mse_loss,
    l1_loss,
    smooth_l1_loss,
    huber_loss,
    hinge_embedding_loss,
)


class NonFiniteLossError(FloatingPointError):
    """The loss became ``nan`` or ``inf`` at ``epoch``, ``step`` (1-based within the epoch).

    ``checked_each_step`` says whether the check ran before that step could change the weights (on a
    CPU) or at the end of the epoch (elsewhere), in which case the weights may already be ``nan``.
    """

    def __init__(
        self, value: float, epoch: int, step: int, steps: int | None, checked_each_step: bool = True
    ):
        self.value, self.epoch, self.step, self.steps = value, epoch, step, steps
        self.checked_each_step = checked_each_step
        of = f" of {steps}" if steps else ""
        if checked_each_step:
            when = "training stopped before that step could change the weights"
        else:
            when = (
                "this device is checked once per epoch (a check per step would make it wait for the host), "
                "so the steps after that one ran on non-finite numbers and the weights may already be nan: "
                "resume from a checkpoint of an earlier epoch"
            )
        super().__init__(
            f"the loss is {value} at epoch {epoch}, step {step}{of}: {when}. Lower the learning rate, "
            "clip the gradients (fit(..., gradient_clip_val=1.0)), or check the inputs and targets for nan/inf."
        )

    def __reduce__(self) -> tuple[Any, ...]:  # pickle with the constructor's arguments, not the message
        return (type(self), (self.value, self.epoch, self.step, self.steps, self.checked_each_step))


# --- does the output fit the targets? --------------------------------------------------------------


def _loss_kind(loss_fn: Any) -> Literal["class", "elementwise", "unknown", "any"]:
    """What ``loss_fn`` compares: class scores with labels, two tensors of one shape, something else
    (a loss of the user's, or a subclass with its own ``forward``), or ``"any"`` when it is not given."""
    if loss_fn is None:
        return "any"
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    for kind, modules, functions in (
        ("class", CLASS_LOSSES, CLASS_LOSS_FUNCTIONS),
        ("elementwise", ELEMENTWISE_LOSSES, ELEMENTWISE_LOSS_FUNCTIONS),
    ):
        if any(isinstance(loss_fn, m) and type(loss_fn).forward is m.forward for m in modules):
            return kind  # type: ignore[return-value]
        if any(loss_fn is f for f in functions):
            return kind  # type: ignore[return-value]
    return "unknown"


def _whole_numbers(target: torch.Tensor) -> bool:
    return bool((target == target.round()).all()) if target.numel() else False


def check_output_fits(output: Any, target: Any, loss_fn: Any = None) -> None:
    """Raise ``ValueError`` when a model's output and the targets cannot be what the loss expects.

    What is checked depends on the loss; a loss not listed here (a function of your own, a lambda, a
    subclass with its own ``forward``) is left alone, whatever the shapes, since only it knows what it
    needs (a language model's ``(B, T, V)`` scores that it flattens, quantiles ``(n, 3)`` for targets
    ``(n, 1)``):

    - an element-wise loss (``MSELoss``, ``L1Loss``, ``SmoothL1Loss``, ``HuberLoss``, ``BCEWithLogitsLoss``,
      ``BCELoss``, ``HingeEmbeddingLoss``, ``SoftMarginLoss``, as modules or functions): the output
      must have the target's shape exactly. ``(n, 1)`` against ``(n,)`` broadcasts to ``(n, n)``:
      every prediction compared with every target, a silent bug;
    - a class loss (``CrossEntropyLoss``, ``NLLLoss``, ``MultiMarginLoss``): integer targets are class
      labels, so the output must be scores ``(n, C, ...)`` for targets ``(n, ...)``, with every label in
      ``0..C-1`` or equal to the loss's ``ignore_index`` (whatever its value: ``-100`` by default,
      ``255`` for the void pixels of VOC and Cityscapes). Float targets are class probabilities, of the
      output's shape; with one dimension less they are labels stored as floats: pass ``targets.long()``;
    - ``loss_fn=None``: as for the loss the targets' type suggests (float targets as for an element-wise
      loss, integer targets as for a class loss with ``ignore_index=-100``).

    Anything that is not a pair of tensors is left alone. Costs one device sync (the labels' range).
    """
    if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)):
        return
    kind = _loss_kind(loss_fn)
    if kind == "unknown":
        return
    out, tgt = tuple(output.shape), tuple(target.shape)
    if output.ndim and target.ndim and out[0] != tgt[0]:
        raise ValueError(
            f"the model output has shape {out} but the targets have shape {tgt}: {out[0]} outputs for "
            f"{tgt[0]} targets. Return one output per sample (the batch is the first dimension)."
        )
    if kind == "elementwise":
        check_same_shape(output, target)
    elif target.is_floating_point() or target.is_complex():
        _check_float_targets(output, target, class_loss=kind == "class")
    elif target.dtype != torch.bool:
        ignore_index = IGNORE_INDEX if kind == "any" else loss_option(loss_fn, "ignore_index", None)
        _check_class_labels(output, target, ignore_index)


def _check_float_targets(output: torch.Tensor, target: torch.Tensor, class_loss: bool) -> None:
    """Float targets: of the output's shape, unless they are class labels stored as floats."""
    out, tgt = tuple(output.shape), tuple(target.shape)
    if (
        target.is_floating_point()
        and output.ndim == target.ndim + 1
        and output.ndim >= 2
        and out[2:] == tgt[1:]
        and (class_loss or (out[1] >= 2 and _whole_numbers(target)))
    ):
        raise ValueError(
            f"the targets are floats ({target.dtype}) of shape {tgt} for class scores of shape {out}: "
            "class labels must be integers, so pass targets.long() (e.g. TensorDataset(inputs, "
            f"labels.long())). Float targets of the scores' shape {out} would be class probabilities."
        )
    check_same_shape(output, target)


def _shape(dims: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def _check_class_labels(output: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> None:
    """Integer targets: labels ``(n, *rest)`` in ``0..C-1`` (or ``ignore_index``) for scores ``(n, C, *rest)``."""
    out, tgt = tuple(output.shape), tuple(target.shape)
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
        if output.ndim >= 3 and out[1:-1] == tgt[1:]:  # (n, *rest, C): the classes come last
            fix = (
                f"the class scores must be dimension 1, (n, C, *rest), but these have them last: return "
                f"output.movedim(-1, 1) from the model (shape {_shape(out[:1] + out[-1:] + out[1:-1])}), or "
                "flatten both in a loss of your own, e.g. lambda output, targets: "
                "F.cross_entropy(output.flatten(0, -2), targets.flatten()), which fit calls as it is"
            )
        else:
            fix = (
                f"scores (n, C, *rest) need labels (n, *rest): these scores need targets of shape "
                f"{_shape(out[:1] + out[2:])}, and these targets scores of shape {_shape(tgt[:1] + ('C',) + tgt[1:])}"
            )
        raise ValueError(f"the model output has shape {out} but the targets have shape {tgt}: {fix}.")
    labels = target if ignore_index is None else target[target != ignore_index]
    if labels.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(labels))
    classes = out[1]
    if high >= classes:
        raise ValueError(
            f"the model outputs {classes} class scores per sample (shape {out}) but the targets hold label {high}: "
            f"the last layer must output at least {high + 1} scores, e.g. nn.Linear(..., {high + 1})."
        )
    if low < 0:
        skipped = "no label" if ignore_index is None else f"the label {ignore_index}"
        raise ValueError(
            f"the targets hold label {low}, but class labels run from 0 to {classes - 1} and this loss "
            f"skips {skipped} (its ignore_index): pass labels in 0..{classes - 1}, or give the loss the "
            f"label that marks what to skip, e.g. nn.CrossEntropyLoss(ignore_index={low})."
        )


# --- argument checks ---------------------------------------------------------------------------------


def _check_resume_world_size(value: Any) -> bool:
    """``resume_world_size`` as a flag: whether a checkpoint of another world size may resume."""
    if value not in ("same", "any"):
        raise ValueError(
            f"resume_world_size must be 'same' (refuse a checkpoint of another number of processes) or "
            f"'any' (resume it, re-seeding each rank's random generators), got {value!r}"
        )
    return value == "any"


def _check_epochs(epochs: Any) -> int:
    if not is_int(epochs):
        raise TypeError(
            f"epochs must be an int, the number of passes over train_loader, got {epochs!r} "
            f"({type(epochs).__name__}); pass e.g. epochs=10"
        )
    if epochs < 1:
        raise ValueError(
            f"epochs must be at least 1, got {epochs}; pass the number of passes over train_loader, e.g. epochs=10"
        )
    return int(epochs)


def _check_loader(loader: Any, name: str) -> int | None:
    """The number of batches, or None for a loader without a length; raise if it has none."""
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"{name} must be an iterable of (inputs, targets) batches, e.g. a DataLoader; got {type(loader).__name__}"
        )
    try:
        batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    if batches == 0:
        raise ValueError(
            f"{name} is empty, it yields no batches: pass a DataLoader over a dataset with at least one "
            "sample (with drop_last=True, at least batch_size samples)"
        )
    return batches


def _check_loss_fn(loss_fn: Any) -> None:
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be callable as loss_fn(output, targets), e.g. nn.CrossEntropyLoss(); got {type(loss_fn).__name__}"
        )


def _check_optimizer(optimizer: Any, model: nn.Module) -> list[torch.Tensor]:
    """The optimizer's parameters, after checking that it is an optimizer over this model's parameters."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer over the model's parameters, got {type(optimizer).__name__}"
        )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    own = {id(p) for p in model.parameters()}
    if own and not any(id(p) in own for p in params):
        raise ValueError(
            f"the optimizer holds {len(params)} parameter(s), none of them the model's: it was built over "
            "another model's parameters (e.g. before the model was built again), so training would never "
            "change this model. Build it over this one: optimizer = torch.optim.AdamW(model.parameters(), ...)"
        )
    return params


def _check_clip(value: Any) -> float | None:
    if value is None:
        return None
    if not is_number(value) or not 0 < value < math.inf:
        raise ValueError(
            f"gradient_clip_val must be a positive number, the largest gradient norm allowed, got {value!r}; "
            "pass e.g. gradient_clip_val=1.0, or None not to clip"
        )
    return float(value)


def _check_accumulate(k: Any) -> int:
    if not is_int(k) or k < 1:
        raise ValueError(
            f"accumulate_grad_batches must be a positive int (batches per optimizer step), got {k!r}; "
            "pass e.g. 4 to step once every 4 batches, or 1 not to accumulate"
        )
    return int(k)


def _check_metrics(metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not isinstance(name, str) or name in ("loss", "accuracy"):
            raise ValueError(
                f"metric names must be strings other than 'loss' and 'accuracy' (which fit records itself), "
                f"got {name!r}"
            )
        check_callable(metric, f"metric {name!r}", what="callable as metric(output, targets)")
    return metrics


def _autocast_dtype(precision: Any, device: torch.device) -> torch.dtype | None:
    key = str(precision)
    if key not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {precision!r}: '32' "
            "(float32, the default), 'bf16' (bfloat16 autocast) or '16' (float16 autocast with a GradScaler, CUDA only)"
        )
    dtype = PRECISIONS[key]
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(
            f"precision={precision!r} (float16 with a GradScaler) needs a CUDA GPU, but fit runs on {device.type}: "
            "pass precision='bf16' (bfloat16 autocast, which needs no scaler) or train on a GPU"
        )
    return dtype


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The context of a forward pass: autocast to ``dtype``, or nothing at all for float32."""
    return _NO_CONTEXT if dtype is None else torch.autocast(device.type, dtype=dtype)


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


def _target_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, or where the model's parameters are when it is None."""
    if device is None:
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return torch.device(device)


def _resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The device to compute on, with the model moved there."""
    target = _target_device(model, device)
    if device is not None:
        model.to(target)
    return target


def _scheduler_interval(scheduler: Any, interval: str | None) -> str | None:
    if scheduler is None:
        return None
    if interval is not None:
        if interval not in ("step", "epoch"):
            raise ValueError(
                f"scheduler_interval must be 'step' (after every optimizer step) or 'epoch', got {interval!r}"
            )
        return interval
    if isinstance(scheduler, PER_STEP_SCHEDULERS):
        return "step"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "epoch"
    raise ValueError(
        f"say when to step a {type(scheduler).__name__}: pass scheduler_interval='step' (after every "
        "optimizer step, if it was built with a number of steps) or scheduler_interval='epoch'"
    )


# --- evaluation ----------------------------------------------------------------------------------------


def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: LossFn,
    *,
    device: torch.device | str | None = None,
    metrics: Mapping[str, Metric] | None = None,
    precision: str = "32",
    check_output: bool = True,
) -> dict[str, float]:
    """The model's mean loss (and accuracy, for class scores) over every sample of ``loader``.

    Runs in eval mode (dropout off, batch norm on its running statistics) under
    ``torch.inference_mode()`` (no graph is recorded), then puts the model back in the mode it
    was in. The loss is weighted by batch size, :math:`L = \\sum_b n_b \\ell_b / \\sum_b n_b`, and
    accuracy is :math:`\\sum_i [\\arg\\max_c \\hat y_{ic} = y_i] / N`, over the labels that are not the
    loss's ``ignore_index`` (see :mod:`companion.metrics`). ``check_output=False`` skips
    :func:`check_output_fits` on the first batch.

    Under DDP (an initialized process group), a ``DistributedDataParallel`` model is measured through
    its module, so a rank runs no collective per batch. A ``loader`` with a ``DistributedSampler`` gives
    each rank a shard: call ``evaluate`` on every rank, and each gets the metrics of the whole split,
    gathered from all ranks, with the samples the sampler repeated to even out the shards counted once
    (:func:`companion.distributed.repeats_in_last_batch`). A loader without one is measured whole on
    each rank.

    Returns:
        ``{"loss": L}``, plus ``"accuracy"`` when the output is ``(n, C)`` scores for integer labels
        ``(n,)``, plus one entry per user metric.
    """
    batches = _check_loader(loader, "loader")
    _check_loss_fn(loss_fn)
    metrics = _check_metrics(metrics)
    check_output = check_bool(check_output, "check_output")
    device = _resolve_device(model, device)
    autocast = _autocast_dtype(precision, device)
    strategy = current_strategy()
    net = unwrap_distributed(model)  # DDP's own forward would broadcast buffers: a collective per batch
    repeats = strategy.repeats(loader) if batches else 0
    last = batches - 1 if repeats and batches else -1
    meter = EpochMeter(loss_fn, metrics)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for batch_idx, batch in enumerate(loader):
                inputs, targets = _split(batch, "loader")
                inputs, targets = _to(inputs, device), _to(targets, device)
                if batch_idx == last:  # the sampler's repeat, at the end: measure each sample once
                    inputs, targets = inputs[:-repeats], targets[:-repeats]
                    if len(targets) == 0:
                        continue
                with _autocast(device, autocast):
                    output = net(inputs)
                    if meter.classifying is None and check_output:
                        check_output_fits(output, targets, loss_fn)
                    loss = loss_fn(output, targets)
                if meter.classifying is None:
                    _check_scalar(loss)
                meter.update(loss, output, targets)
    finally:
        net.train(was_training)
    meter = strategy.reduce(meter, loader)
    if meter.count == 0:
        raise ValueError("loader yielded no samples: pass a loader over at least one sample")
    return meter.compute()


# --- training ------------------------------------------------------------------------------------------


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
    callbacks: Sequence[Any] = (),
    metrics: Mapping[str, Metric] | None = None,
    gradient_clip_val: float | None = None,
    accumulate_grad_batches: int = 1,
    precision: str = "32",
    progress: bool = True,
    resume_from: str | os.PathLike | None = None,
    resume_world_size: Literal["same", "any"] = "same",
    check_output: bool = True,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; return the per-epoch :class:`History`.

    Each epoch trains in train mode, then (with ``val_loader``) measures the model with
    :func:`evaluate`. The history holds ``train_loss`` (the epoch's sample-weighted mean loss,
    measured while the weights changed), ``train_accuracy`` for classifiers, ``val_loss`` and
    ``val_accuracy``, ``train_<name>``/``val_<name>`` for each user metric, the learning rate ``lr``
    at the end of the epoch and the epoch's ``seconds``.

    Args:
        epochs: the total number of epochs; when resuming, training goes on from the checkpoint's
            epoch up to this one.
        scheduler: stepped after every optimizer step (``OneCycleLR``, ``CyclicLR``) or every epoch
            (``ReduceLROnPlateau``, given ``val_loss``, else ``train_loss``); for any other scheduler
            say which with ``scheduler_interval``.
        device: where to train; the model is moved there and so is each batch. ``None``: where the
            model's parameters are.
        callbacks: :class:`companion.callbacks.Callback` objects, e.g. ``EarlyStopping``,
            ``Checkpoint``, ``CSVLogger``; see :mod:`companion.callbacks` for the hooks and their order.
        metrics: ``{name: metric(output, targets)}``, recorded for training and validation; a metric
            returns the batch's mean or a pair ``(total, count)`` (see :mod:`companion.metrics`).
        gradient_clip_val: clip the gradients' total norm to this before each step
            (``torch.nn.utils.clip_grad_norm_``). ``None``: no clipping.
        accumulate_grad_batches: step the optimizer once every ``k`` batches, with each batch's loss
            divided by ``k`` (for a mean loss): with ``k`` batches of ``b`` samples the step is the one
            a batch of ``k * b`` samples would take (batch norm aside, which sees ``b`` at a time). A
            per-step scheduler counts optimizer steps: build it with ``ceil(len(train_loader) / k)``
            steps per epoch. An epoch's last group may be shorter, ``g < k`` batches: its losses are
            divided by ``g`` (for a loader without a length, which cannot know ``g`` in advance, the
            gradients are scaled by ``k / g`` before that step, the same step up to rounding).
        precision: ``"32"`` (float32, the default); ``"bf16"`` (forward pass and loss under
            ``torch.autocast`` in bfloat16, on a CPU or a GPU); ``"16"`` (float16 autocast, with a
            ``torch.amp.GradScaler`` against underflow; CUDA only). Lightning's names
            (``"bf16-mixed"``, ``"16-mixed"``) work too. A step the scaler skips (its gradients
            overflowed; it lowers the scale and tries again) changes no weight, so it counts neither
            in ``state.global_step`` nor for a per-step scheduler.
        progress: a tqdm bar on stderr (a text bar in a notebook without ipywidgets).
        resume_from: a checkpoint written by :class:`companion.callbacks.Checkpoint`. It is checked
            against the model, optimizer, scheduler, callbacks and loader, and against the settings
            that shape each step (``accumulate_grad_batches``, ``gradient_clip_val``, ``precision``,
            which the checkpoint records), first: a mismatch raises
            :class:`companion.checkpoint.CheckpointError` and changes nothing. Then it restores all of
            them, the history and every random number generator, including the ``generator`` of
            ``train_loader`` that draws its shuffle, so the resumed run ends with the same weights as
            an uninterrupted one (bit for bit on a CPU; a loader with ``persistent_workers=True``
            cannot promise that and is refused). A run that had finished, or that a callback stopped,
            trains no further. Build everything as for the first run, then resume.
        resume_world_size: ``"same"`` (the default): a checkpoint written by a run on another number
            of processes is refused, since each rank's random generators and shard of the data cannot
            be handed on. ``"any"``: resume anyway (a 2-rank run's checkpoint in one process, or the
            reverse): the weights, optimizer, scheduler, epoch, history and callbacks' state are
            restored, but every rank's generators are re-seeded from the checkpoint
            (:func:`companion.checkpoint.resume_seed`: SHA-256 of rank 0's saved torch generator
            state and the new rank), so the run goes on deterministically but with another data order
            and other random draws, and does not end with the uninterrupted run's weights. Keep the
            global batch (``world_size`` times the per-rank batch) as it was, or a per-step
            scheduler's steps per epoch change. On the same world size ``"any"`` changes nothing.
        check_output: ``False`` skips :func:`check_output_fits` on the first batch (of training and
            of each validation), for a set-up it refuses although the loss accepts it. Losses it does
            not know are never checked.

    Under DDP (:class:`~companion.strategy.DDPStrategy`): launched by ``torchrun`` with the process group initialized (chapter 10), every rank
    calls ``fit`` alike and it:

    - checks on all ranks at once that ``train_loader`` has a ``DistributedSampler`` for this rank,
      that every rank has as many batches, and that the backend suits the device (NCCL: CUDA only),
      raising the same ``ValueError`` on every rank otherwise;
    - wraps the model in ``DistributedDataParallel`` (or takes it already wrapped), which averages the
      gradients over the ranks in ``backward()``; with ``accumulate_grad_batches=k`` the ``k - 1``
      batches before each step run under ``no_sync()``, so one all-reduce serves the ``k`` batches;
    - calls the sampler's ``set_epoch(epoch - 1)`` at every epoch (in one process too), so each epoch
      is shuffled anew;
    - gathers the epoch's training batches of all ranks into its ``train_`` metrics, and :func:`evaluate`
      does the same for a ``val_loader`` with a ``DistributedSampler``: they are the whole dataset's.
      A ``DistributedSampler`` repeats up to ``world_size - 1`` samples so that every rank has as many;
      they are trained on but counted once in the metrics;
    - gives every rank rank 0's history row, and stops every rank when a callback on any rank asks
      (before the checkpoints run), so early stopping ends all ranks at the same epoch;
    - shows progress on rank 0; :class:`~companion.callbacks.CSVLogger` and
      :class:`~companion.callbacks.Checkpoint` write on rank 0 (a checkpoint holds every rank's random
      generators). ``resume_from`` is read and restored on every rank.

    Returns:
        The :class:`History`, all epochs (those before the checkpoint included). The model is left
        in eval mode, ready to predict. On any error once training has begun (a
        ``KeyboardInterrupt`` too) the callbacks' ``on_exception(state, error)`` run instead of
        ``on_fit_end``, then the model is left in eval mode with no gradients, and the error is raised.

    Raises:
        NonFiniteLossError: the loss became nan/inf. On a CPU every step is checked, before the
            step changes the weights; on an accelerator the check runs at the end of each epoch
            (a per-step check would stall the device) and names the first bad step.
        ValueError, TypeError: bad arguments, an empty loader, an output that does not fit the
            targets (see :func:`check_output_fits`), each with what to pass instead.
    """
    epochs = _check_epochs(epochs)
    any_world_size = _check_resume_world_size(resume_world_size)
    batches = _check_loader(train_loader, "train_loader")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader")
    _check_loss_fn(loss_fn)
    params = _check_optimizer(optimizer, model)
    callbacks = run_order(check_callbacks(callbacks))
    metrics = _check_metrics(metrics)
    clip = _check_clip(gradient_clip_val)
    k = _check_accumulate(accumulate_grad_batches)
    interval = _scheduler_interval(scheduler, scheduler_interval)
    check_output = check_bool(check_output, "check_output")
    target = _target_device(model, device)
    autocast = _autocast_dtype(precision, target)
    scaler = torch.amp.GradScaler(target.type) if autocast == torch.float16 else None
    strategy = current_strategy(model)
    strategy.setup(train_loader, batches, target)  # under DDP every rank learns here why another cannot train

    state = FitState(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        device=target,
        history=History(),
        callbacks=callbacks,
        train_loader=train_loader,
        scaler=scaler,
        accumulate_grad_batches=k,
        gradient_clip_val=clip,
        precision=PRECISION_NAMES[autocast],
    )
    saved = _read_resume(resume_from, state, any_world_size)  # checked before anything changes
    _resolve_device(model, device)
    loop = _Loop(
        state=state,
        strategy=strategy,
        net=model,
        val_loader=val_loader,
        loss_fn=loss_fn,
        metrics=metrics,
        batches=batches,
        divide=k > 1 and loss_option(loss_fn, "reduction", "mean") != "sum",
        params=params,
        autocast=autocast,
        precision=precision,
        scheduler_interval=interval,
        check_output=check_output,
        any_world_size=any_world_size,
        check_each_step=_checks_each_step(target),
        move=target != torch.device("cpu"),  # a batch on the CPU needs no .to() when training there
        hooks=_Hooks.of(callbacks),
    )
    try:
        _fit_epochs(loop, saved, progress)
        for hook in loop.hooks.fit_end:
            hook(state)
    except BaseException as error:  # a KeyboardInterrupt too: leave the model usable in a notebook
        _after_exception(loop, error)
        raise
    model.eval()
    return state.history


@dataclass(eq=False)
class _Hooks:
    """Each hook's bound methods, of the callbacks that implement it (an empty list costs nothing per batch)."""

    fit_start: list[Callable[..., Any]]
    train_epoch_start: list[Callable[..., Any]]
    before_optimizer_step: list[Callable[..., Any]]
    train_batch_end: list[Callable[..., Any]]
    validation_epoch_end: list[Callable[..., Any]]
    train_epoch_end: list[Callable[..., Any]]  # every callback but the checkpoints
    saving: list[Callable[..., Any]]  # the checkpoints' on_train_epoch_end, run last
    exception: list[Callable[..., Any]]
    fit_end: list[Callable[..., Any]]

    @classmethod
    def of(cls, callbacks: Sequence[Any]) -> _Hooks:
        others = [c for c in callbacks if not isinstance(c, Checkpoint)]
        checkpoints = [c for c in callbacks if isinstance(c, Checkpoint)]
        return cls(
            fit_start=hook_callers(callbacks, "on_fit_start"),
            train_epoch_start=hook_callers(callbacks, "on_train_epoch_start"),
            before_optimizer_step=hook_callers(callbacks, "on_before_optimizer_step"),
            train_batch_end=hook_callers(callbacks, "on_train_batch_end"),
            validation_epoch_end=hook_callers(callbacks, "on_validation_epoch_end"),
            train_epoch_end=hook_callers(others, "on_train_epoch_end"),
            saving=hook_callers(checkpoints, "on_train_epoch_end"),
            exception=hook_callers(callbacks, "on_exception"),
            fit_end=hook_callers(callbacks, "on_fit_end"),
        )


@dataclass(eq=False)
class _Loop:
    """What :func:`fit` checked and built before the first epoch: everything an epoch and a step read.

    The counters a callback may read are in ``state`` (:class:`~companion.callbacks.FitState`): the
    epoch, ``global_step`` (optimizer steps taken), ``accumulate_grad_batches`` (``k``, batches per step).
    """

    state: FitState
    strategy: Strategy
    net: nn.Module  # what the training batches go through: the model, in DistributedDataParallel under DDP
    val_loader: Iterable | None
    loss_fn: LossFn
    metrics: dict[str, Metric]
    batches: int | None  # batches per epoch; None for a loader without a length
    divide: bool  # a mean loss accumulated over several batches: divide each by its group's size
    params: list[torch.Tensor]  # the optimizer's
    autocast: torch.dtype | None  # the forward pass's dtype under autocast; None: float32, no autocast
    precision: str  # as the caller named it, for evaluate
    scheduler_interval: str | None  # "step", "epoch" or None (no scheduler)
    check_output: bool
    any_world_size: bool  # a checkpoint of another world size resumes, its generators re-seeded
    check_each_step: bool  # read each loss as it comes (a CPU), or once per epoch (an accelerator)
    move: bool  # batches go to another device
    hooks: _Hooks
    bar: Any = None  # the progress bar, on rank 0 when asked
    checked: bool = False  # the first batch's output and loss have been checked


def _read_resume(
    path: str | os.PathLike | None, state: FitState, any_world_size: bool
) -> SavedCheckpoint | None:
    """The checkpoint to resume from, checked against everything it would be loaded into (nothing changes)."""
    if path is None:
        return None
    saved = read_checkpoint(path)
    if saved.epoch > state.epochs:
        raise ValueError(
            f"the checkpoint {saved.path} holds {saved.epoch} epochs, more than epochs={state.epochs}: pass "
            f"epochs={saved.epoch} or more (the total, not the epochs still to run)"
        )
    saved.check(
        **_restored_by_resume(state), fit_settings=state.fit_settings(), any_world_size=any_world_size
    )
    state.history, state.epoch = saved.history, saved.epoch
    return saved


def _restored_by_resume(state: FitState) -> dict[str, Any]:
    return dict(
        model=state.model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        train_loader=state.train_loader,
        callbacks=state.callbacks,
    )


def _fit_epochs(loop: _Loop, saved: SavedCheckpoint | None, progress: bool) -> None:
    """``on_fit_start``, the checkpoint restored, the model wrapped, then every epoch left to train."""
    state = loop.state
    for hook in loop.hooks.fit_start:
        hook(state)
    if saved is not None:
        saved.restore(**_restored_by_resume(state), any_world_size=loop.any_world_size)
        state.global_step, state.should_stop = saved.global_step, saved.stopped
    loop.net = loop.strategy.wrap_model(state.model, state.device)
    if progress and loop.strategy.is_global_zero:
        loop.bar = tqdm(
            total=state.epochs * loop.batches if loop.batches else None,
            initial=state.epoch * loop.batches if loop.batches else 0,
            unit="batch",
            mininterval=0.5,
            file=sys.stderr,
            dynamic_ncols=True,
        )
    try:
        for epoch in range(state.epoch + 1, state.epochs + 1):
            if state.should_stop:
                break
            state.epoch = epoch
            if loop.bar is not None:
                loop.bar.set_description(f"epoch {epoch}/{state.epochs}", refresh=False)
            started = time.perf_counter()
            meter = _train_epoch(loop)
            _end_epoch(loop, meter, started)
    finally:
        if loop.bar is not None:
            loop.bar.close()


def _train_epoch(loop: _Loop) -> EpochMeter:
    """One pass over the training loader in train mode: a forward and a backward pass per batch, and
    an optimizer step after each group of ``k`` batches (and after an epoch's last, shorter group)."""
    state = loop.state
    loop.net.train()
    loop.strategy.start_epoch(state.train_loader, state.epoch)
    for hook in loop.hooks.train_epoch_start:
        hook(state)
    meter = EpochMeter(loop.loss_fn, loop.metrics)
    k = state.accumulate_grad_batches
    repeats = loop.strategy.repeats(state.train_loader)  # a DistributedSampler's, at the end
    last = loop.batches - 1 if repeats and loop.batches else -1  # the batch that ends with them
    in_group = 0  # batches whose gradients wait for the next optimizer step
    for batch_idx, batch in enumerate(state.train_loader):
        inputs, targets = _split(batch, "train_loader")
        if loop.move:
            inputs, targets = _to(inputs, state.device), _to(targets, state.device)
        in_group += 1
        ends_group = in_group == k or batch_idx + 1 == loop.batches
        # under DDP the batches before a group's last accumulate without an all-reduce
        with loop.strategy.block_backward_sync(loop.net, not ends_group):
            output, loss = _forward_backward(loop, inputs, targets, batch_idx, in_group)
        if ends_group:
            _optimizer_step(loop, in_group)
            in_group = 0
        if batch_idx == last:  # trained on, but the metrics count each sample once
            _update_without_repeats(meter, output, targets, loop.loss_fn, repeats, loop.check_each_step)
        else:
            meter.update(loss, output, targets)
        for hook in loop.hooks.train_batch_end:
            hook(state, loss, batch_idx)
        if loop.bar is not None:
            loop.bar.update()
    if in_group:  # a loader without a length ended in the middle of a group
        _optimizer_step(loop, in_group)
    return meter


def _forward_backward(
    loop: _Loop, inputs: Any, targets: Any, batch_idx: int, in_group: int
) -> tuple[Any, torch.Tensor | float]:
    """The batch's output and loss (checked on the first batch, and for nan/inf), then its backward pass.

    Returns the output and the loss as the metrics record it: a float when each step is checked, else
    a detached tensor. The gradients are those of ``loss / g``, ``g`` the size of the batch's group,
    for a mean loss accumulated over several batches (:func:`_group_size`).
    """
    state = loop.state
    with _autocast(state.device, loop.autocast):
        output = loop.net(inputs)
        if not loop.checked and loop.check_output:
            check_output_fits(output, targets, loop.loss_fn)
        loss = loop.loss_fn(output, targets)
    if not loop.checked:
        _check_scalar(loss)
        loop.checked = True
    if loop.check_each_step:
        value: torch.Tensor | float = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(value, state.epoch, batch_idx + 1, loop.batches)
    else:
        value = loss.detach()
    if in_group == 1:  # the first batch of a group: the last step's gradients go
        state.optimizer.zero_grad(set_to_none=True)
    if loop.divide:
        loss = loss / _group_size(batch_idx, state.accumulate_grad_batches, loop.batches)
    if state.scaler is not None:
        state.scaler.scale(loss).backward()
    else:
        loss.backward()
    return output, value


def _group_size(batch_idx: int, k: int, batches: int | None) -> int:
    """The number of batches in the group of batch ``batch_idx``: ``k``, or fewer in an epoch's last group.

    A loader without a length cannot say in advance: ``k``, and :func:`_optimizer_step` rescales a
    shorter last group's gradients."""
    if batches is None:
        return k
    return min(k, batches - batch_idx // k * k)


def _optimizer_step(loop: _Loop, in_group: int) -> None:
    """One optimizer step on the gradients of ``in_group`` batches: hooks, clipping, the step, the scheduler.

    Under ``precision="16"`` the gradients are unscaled first, so the hooks and the clipping see the
    true ones; a step the ``GradScaler`` skips (inf/nan gradients: it lowers its scale and changes no
    weight) counts neither in ``global_step`` nor for a per-step scheduler.
    """
    state = loop.state
    k, scaler = state.accumulate_grad_batches, state.scaler
    if scaler is not None:
        scaler.unscale_(state.optimizer)
    if loop.divide and loop.batches is None and in_group < k:  # each loss was divided by k, not in_group
        for p in loop.params:
            if p.grad is not None:
                p.grad.mul_(k / in_group)
    for hook in loop.hooks.before_optimizer_step:
        hook(state)
    if state.gradient_clip_val is not None:
        torch.nn.utils.clip_grad_norm_(loop.params, state.gradient_clip_val)
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(state.optimizer)
        scaler.update()
        if scaler.get_scale() < scale:  # the scaler found inf/nan gradients and skipped the step
            return
    else:
        state.optimizer.step()
    state.global_step += 1
    if loop.scheduler_interval == "step":
        state.scheduler.step()


def _update_without_repeats(
    meter: EpochMeter, output: Any, targets: Any, loss_fn: LossFn, repeats: int, as_float: bool
) -> None:
    """Record a batch whose last ``repeats`` samples a ``DistributedSampler`` repeated, without them."""
    output, targets = output[:-repeats].detach(), targets[:-repeats]
    if len(targets) == 0:
        return
    with torch.no_grad():
        loss = loss_fn(output, targets)
    meter.update(loss.item() if as_float else loss, output, targets)


def _end_epoch(loop: _Loop, meter: EpochMeter, started: float) -> None:
    """The end of an epoch: its row of metrics (validation's too) in the history, the scheduler's
    per-epoch step, then the hooks; under DDP every rank gets rank 0's row and one decision to stop."""
    state = loop.state
    row = _epoch_row(loop, meter, started)
    state.history.append(row)
    if loop.scheduler_interval == "epoch":
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(row.get("val_loss", row["train_loss"]))
        else:
            state.scheduler.step()
    if loop.bar is not None:
        shown = {name: f"{v:.4g}" for name, v in row.items() if "loss" in name or "accuracy" in name}
        loop.bar.set_postfix(shown, refresh=False)
    if loop.val_loader is not None:
        for hook in loop.hooks.validation_epoch_end:
            hook(state)
    for hook in loop.hooks.train_epoch_end:  # every callback runs, also after one of them asked to stop
        hook(state)
    state.should_stop = loop.strategy.any_rank(state.should_stop)  # a stop on any rank stops them all
    for hook in loop.hooks.saving:
        hook(state)


def _epoch_row(loop: _Loop, meter: EpochMeter, started: float) -> dict[str, float]:
    """The epoch's metrics: ``train_`` (over every rank), ``val_`` (:func:`evaluate`), ``lr``, ``seconds``."""
    state = loop.state
    if meter.count == 0:
        raise ValueError(
            "train_loader yielded no batches in this epoch: pass a loader that yields at least one batch per pass"
        )
    losses = meter.loss_values()  # one sync per epoch
    if not loop.check_each_step:
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
        if bad is not None:
            raise NonFiniteLossError(losses[bad], state.epoch, bad + 1, loop.batches, checked_each_step=False)
    reduced = loop.strategy.reduce(meter, state.train_loader)
    measured = reduced.compute(losses) if reduced is meter else reduced.compute()
    row: dict[str, float] = {"epoch": state.epoch}
    row.update({f"train_{name}": v for name, v in measured.items()})
    if loop.val_loader is not None:
        validation = evaluate(
            unwrap_distributed(state.model),  # no collective per batch
            loop.val_loader,
            loop.loss_fn,
            device=state.device,
            metrics=loop.metrics,
            precision=loop.precision,
            check_output=loop.check_output,
        )
        row.update({f"val_{name}": v for name, v in validation.items()})
    row["lr"] = state.optimizer.param_groups[0]["lr"]
    row["seconds"] = time.perf_counter() - started
    return loop.strategy.broadcast(row)  # one history on every rank, so every callback decides alike


def _after_exception(loop: _Loop, error: BaseException) -> None:
    """An error (or an interrupt) stopped training: the ``on_exception`` hooks see the state as it was,
    then the model is left as :func:`fit` documents it, in eval mode, with no half-accumulated gradients."""
    state = loop.state
    try:
        for hook in loop.hooks.exception:
            hook(state, error)
    finally:
        state.optimizer.zero_grad(set_to_none=True)
        state.model.zero_grad(set_to_none=True)
        state.model.eval()
