"""The training loop (chapter 6): :func:`fit` and :func:`evaluate`.

:func:`fit` is the loop the chapter grows step by step, written once::

    on_fit_start
    for epoch in 1..epochs:
        model.train(); on_train_epoch_start
        for inputs, targets in train_loader:              # moved to `device`
            loss = loss_fn(model(inputs), targets)          # under autocast for precision="bf16"/"16"
            # must be finite, else NonFiniteLossError
            (loss / k).backward()                           # k = accumulate_grad_batches
            every k batches:
                on_before_optimizer_step                    # the gradients are final here
                clip_grad_norm_(params, gradient_clip_val)  # if asked
                optimizer.step(); optimizer.zero_grad()
                scheduler.step()                            # if it steps per batch
            on_train_batch_end(loss)
        metrics = evaluate(model, val_loader, loss_fn)      # eval mode, under torch.inference_mode
        on_validation_epoch_end; on_train_epoch_end         # a callback may set state.should_stop
    on_fit_end

The epoch's loss is the mean over *samples* (see :mod:`companion.metrics`). The callbacks and their
hooks are in :mod:`companion.callbacks`, checkpoint files in :mod:`companion.checkpoint`, the
:class:`~companion.history.History` in :mod:`companion.history`; imports run one way,
``train -> callbacks -> checkpoint -> history``, and each may use :mod:`companion.distributed`.

Under ``torchrun`` (chapter 10), with the process group initialized, the same call trains with
``DistributedDataParallel``: see :func:`fit`'s "Under DDP".
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from companion.callbacks import Checkpoint, FitState, check_callbacks, hook_callers, run_order
from companion.checkpoint import SavedCheckpoint, read_checkpoint
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
    unwrap,
    wrap,
)
from companion.history import History
from companion.losses import check_same_shape, is_class_loss, loss_option
from companion.metrics import EpochMeter, Metric

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


def _whole_numbers(target: torch.Tensor) -> bool:
    return bool((target == target.round()).all()) if target.numel() else False


def check_output_fits(output: Any, target: Any, loss_fn: Any = None) -> None:
    """Raise ``ValueError`` when a model's output and the targets cannot be what the loss expects.

    - float targets (regression, probabilities): the output must have the target's shape exactly.
      ``(n, 1)`` against ``(n,)`` broadcasts to ``(n, n)`` in an element-wise loss: every prediction
      compared with every target, a silent bug. Float targets with one dimension less than class
      scores are class labels stored as floats (for a class loss ``loss_fn``, or when they are whole
      numbers): pass ``targets.long()``.
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
        if (
            target.is_floating_point()
            and output.ndim == target.ndim + 1
            and output.ndim >= 2
            and out[2:] == tgt[1:]
            and (is_class_loss(loss_fn) or (out[1] >= 2 and _whole_numbers(target)))
        ):
            raise ValueError(
                f"the targets are floats ({target.dtype}) of shape {tgt} for class scores of shape {out}: "
                "class labels must be integers, so pass targets.long() (e.g. TensorDataset(inputs, "
                f"labels.long())). Float targets of the scores' shape {out} would be class probabilities."
            )
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


# --- argument checks ---------------------------------------------------------------------------------


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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(
            f"gradient_clip_val must be a positive number, the largest gradient norm allowed, got {value!r}; "
            "pass e.g. gradient_clip_val=1.0, or None not to clip"
        )
    return float(value)


def _check_accumulate(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"accumulate_grad_batches must be a positive int (batches per optimizer step), got {k!r}; "
            "pass e.g. 4 to step once every 4 batches, or 1 not to accumulate"
        )
    return k


def _check_metrics(metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not isinstance(name, str) or name in ("loss", "accuracy"):
            raise ValueError(
                f"metric names must be strings other than 'loss' and 'accuracy' (which fit records itself), "
                f"got {name!r}"
            )
        if not callable(metric):
            raise TypeError(
                f"metric {name!r} must be callable as metric(output, targets), got {type(metric).__name__}"
            )
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
) -> dict[str, float]:
    """The model's mean loss (and accuracy, for class scores) over every sample of ``loader``.

    Runs in eval mode (dropout off, batch norm on its running statistics) under
    ``torch.inference_mode()`` (no graph is recorded), then puts the model back in the mode it
    was in. The loss is weighted by batch size, :math:`L = \\sum_b n_b \\ell_b / \\sum_b n_b`, and
    accuracy is :math:`\\sum_i [\\arg\\max_c \\hat y_{ic} = y_i] / N`, over the labels that are not the
    loss's ``ignore_index`` (see :mod:`companion.metrics`).

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
    steps = _check_loader(loader, "loader")
    _check_loss_fn(loss_fn)
    metrics = _check_metrics(metrics)
    device = _resolve_device(model, device)
    autocast = _autocast_dtype(precision, device)
    net = unwrap(model)  # DDP's own forward would broadcast buffers: a collective per batch
    sharded = is_distributed() and distributed_sampler(loader) is not None
    repeats = repeats_in_last_batch(loader) if sharded and steps else 0
    last = steps - 1 if repeats and steps else -1
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
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    output = net(inputs)
                    if meter.classifying is None:
                        check_output_fits(output, targets, loss_fn)
                    loss = loss_fn(output, targets)
                if meter.classifying is None:
                    _check_scalar(loss)
                meter.update(loss, output, targets)
    finally:
        net.train(was_training)
    if sharded:
        meter = gather_meter(meter)
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
            steps per epoch.
        precision: ``"32"`` (float32, the default); ``"bf16"`` (forward pass and loss under
            ``torch.autocast`` in bfloat16, on a CPU or a GPU); ``"16"`` (float16 autocast, with a
            ``torch.amp.GradScaler`` against underflow; CUDA only). Lightning's names
            (``"bf16-mixed"``, ``"16-mixed"``) work too.
        progress: a tqdm bar on stderr (a text bar in a notebook without ipywidgets).
        resume_from: a checkpoint written by :class:`companion.callbacks.Checkpoint`. It is checked
            against the model, optimizer, scheduler, callbacks and loader first: a mismatch raises
            :class:`companion.checkpoint.CheckpointError` and changes nothing. Then it restores all of
            them, the history and every random number generator, including the ``generator`` of
            ``train_loader`` that draws its shuffle, so the resumed run ends with the same weights as
            an uninterrupted one (bit for bit on a CPU; a loader with ``persistent_workers=True``
            cannot promise that and is refused). A run that had finished, or that a callback stopped,
            trains no further. Build everything as for the first run, then resume.

    Under DDP: launched by ``torchrun`` with the process group initialized (chapter 10), every rank
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
        in eval mode, ready to predict.

    Raises:
        NonFiniteLossError: the loss became nan/inf. On a CPU every step is checked, before the
            step changes the weights; on an accelerator the check runs at the end of each epoch
            (a per-step check would stall the device) and names the first bad step.
        ValueError, TypeError: bad arguments, an empty loader, an output that does not fit the
            targets (see :func:`check_output_fits`), each with what to pass instead.
    """
    _check_epochs(epochs)
    steps = _check_loader(train_loader, "train_loader")
    if val_loader is not None:
        _check_loader(val_loader, "val_loader")
    _check_loss_fn(loss_fn)
    params = _check_optimizer(optimizer, model)
    callbacks = run_order(check_callbacks(callbacks))
    metrics = _check_metrics(metrics)
    clip = _check_clip(gradient_clip_val)
    k = _check_accumulate(accumulate_grad_batches)
    interval = _scheduler_interval(scheduler, scheduler_interval)
    target = _target_device(model, device)
    autocast = _autocast_dtype(precision, target)
    scaler = torch.amp.GradScaler(target.type) if autocast == torch.float16 else None
    distributed = is_distributed()
    if distributed:  # a collective: every rank gets here, or learns at once why another did not
        check_fit_setup(train_loader, steps, "train_loader", target)

    saved: SavedCheckpoint | None = None
    if resume_from is not None:
        saved = read_checkpoint(resume_from)
        if saved.epoch > epochs:
            raise ValueError(
                f"the checkpoint {saved.path} holds {saved.epoch} epochs, more than epochs={epochs}: pass "
                f"epochs={saved.epoch} or more (the total, not the epochs still to run)"
            )
        resume = dict(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            train_loader=train_loader,
            callbacks=callbacks,
        )
        saved.check(**resume)  # before anything changes: a refused resume leaves everything as it was
    device = _resolve_device(model, device)

    state = FitState(model, optimizer, scheduler, epochs, device, History(), callbacks, train_loader, scaler)
    if saved is not None:
        state.history, state.epoch = saved.history, saved.epoch
    for hook in hook_callers(callbacks, "on_fit_start"):
        hook(state)
    if saved is not None:
        saved.restore(**resume)
        state.global_step, state.should_stop = saved.global_step, saved.stopped
    net = wrap(model, device) if distributed else model  # what the batches go through
    no_sync = net.no_sync if distributed and k > 1 else None
    bare = unwrap(model)  # what validation measures: no collective per batch
    repeats = repeats_in_last_batch(train_loader) if distributed else 0
    last = steps - 1 if repeats and steps else -1  # the batch that ends with a sampler's repeat

    epoch_start = hook_callers(callbacks, "on_train_epoch_start")
    before_step = hook_callers(callbacks, "on_before_optimizer_step")
    batch_end = hook_callers(callbacks, "on_train_batch_end")
    validation_end = hook_callers(callbacks, "on_validation_epoch_end")
    # the checkpoints (run last) save only once every rank knows whether training stops here
    epoch_end = hook_callers([c for c in callbacks if not isinstance(c, Checkpoint)], "on_train_epoch_end")
    saving = hook_callers([c for c in callbacks if isinstance(c, Checkpoint)], "on_train_epoch_end")
    check_each_step = _checks_each_step(device)
    move = device != torch.device("cpu")  # a batch on the CPU needs no .to() when training there
    divide = k > 1 and loss_option(loss_fn, "reduction", "mean") != "sum"
    checked = False
    first = state.epoch + 1
    bar = (
        tqdm(
            total=epochs * steps if steps else None,
            initial=state.epoch * steps if steps else 0,
            unit="batch",
            mininterval=0.5,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        if progress and is_main_process()
        else None
    )
    try:
        for epoch in range(first, epochs + 1):
            if state.should_stop:
                break
            state.epoch = epoch
            if bar is not None:
                bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
            started = time.perf_counter()
            net.train()
            set_epoch(train_loader, epoch - 1)  # a DistributedSampler shuffles each epoch anew
            for hook in epoch_start:
                hook(state)
            meter = EpochMeter(loss_fn, metrics)
            pending = False  # gradients accumulated since the last optimizer step
            for batch_idx, batch in enumerate(train_loader):
                inputs, targets = _split(batch, "train_loader")
                if move:
                    inputs, targets = _to(inputs, device), _to(targets, device)
                step_now = k == 1 or (batch_idx + 1) % k == 0 or batch_idx + 1 == steps
                # under DDP, a batch before the group's last accumulates without an all-reduce; the
                # forward pass belongs inside no_sync() too, since DDP prepares the all-reduce there
                with _NO_CONTEXT if step_now or no_sync is None else no_sync():
                    if autocast is None:
                        output = net(inputs)
                        if not checked:
                            check_output_fits(output, targets, loss_fn)
                        loss = loss_fn(output, targets)
                    else:
                        with torch.autocast(device.type, dtype=autocast):
                            output = net(inputs)
                            if not checked:
                                check_output_fits(output, targets, loss_fn)
                            loss = loss_fn(output, targets)
                    if not checked:
                        _check_scalar(loss)
                        checked = True
                    if check_each_step:
                        value = loss.item()
                        if not math.isfinite(value):
                            raise NonFiniteLossError(value, epoch, batch_idx + 1, steps)
                    else:
                        value = loss.detach()
                    if k == 1:
                        optimizer.zero_grad(set_to_none=True)
                        scaled = loss
                    else:
                        if not pending:
                            optimizer.zero_grad(set_to_none=True)
                        # the batches of this group: k, or fewer in an epoch's last, shorter group
                        group = k if steps is None or batch_idx // k < steps // k else steps % k
                        scaled = loss / group if divide else loss
                    if scaler is None:
                        scaled.backward()
                    else:
                        scaler.scale(scaled).backward()
                pending = not step_now
                if step_now:
                    _optimizer_step(state, params, before_step, clip, scaler)
                    if interval == "step":
                        scheduler.step()
                if batch_idx == last:  # trained on, but the metrics count each sample once
                    _update_without_repeats(meter, output, targets, loss_fn, repeats, check_each_step)
                else:
                    meter.update(value, output, targets)
                for hook in batch_end:
                    hook(state, value, batch_idx)
                if bar is not None:
                    bar.update()
            if pending:  # a loader without a length ended in the middle of a group
                _optimizer_step(state, params, before_step, clip, scaler)
                if interval == "step":
                    scheduler.step()
            if meter.count == 0:
                raise ValueError(
                    "train_loader yielded no batches in this epoch: pass a loader that yields at least one batch per pass"
                )
            losses = meter.loss_values()  # one sync per epoch
            if not check_each_step:
                bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
                if bad is not None:
                    raise NonFiniteLossError(losses[bad], epoch, bad + 1, steps, checked_each_step=False)
            row: dict[str, float] = {"epoch": epoch}
            if distributed:  # every rank's batches: the metrics of the whole dataset
                row.update({f"train_{name}": v for name, v in gather_meter(meter).compute().items()})
            else:
                row.update({f"train_{name}": v for name, v in meter.compute(losses).items()})
            if val_loader is not None:
                measured = evaluate(
                    bare, val_loader, loss_fn, device=device, metrics=metrics, precision=precision
                )
                row.update({f"val_{name}": v for name, v in measured.items()})
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - started
            if distributed:  # one history on every rank, so every callback decides alike
                row = broadcast(row)
            state.history.append(row)
            if interval == "epoch":
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(row.get("val_loss", row["train_loss"]))
                else:
                    scheduler.step()
            if bar is not None:
                shown = {name: f"{v:.4g}" for name, v in row.items() if "loss" in name or "accuracy" in name}
                bar.set_postfix(shown, refresh=False)
            if val_loader is not None:
                for hook in validation_end:
                    hook(state)
            for hook in epoch_end:  # every callback runs, also after one of them asked to stop
                hook(state)
            if distributed:  # a stop asked for on any rank stops them all, at this epoch
                state.should_stop = any_rank(state.should_stop)
            for hook in saving:
                hook(state)
    finally:
        if bar is not None:
            bar.close()
    for hook in hook_callers(callbacks, "on_fit_end"):
        hook(state)
    model.eval()
    return state.history


_NO_CONTEXT = contextlib.nullcontext()


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


def _optimizer_step(
    state: FitState,
    params: list[torch.Tensor],
    before_step: list[Any],
    clip: float | None,
    scaler: Any,
) -> None:
    """One optimizer step on the accumulated gradients: hooks, clipping, step (through the scaler)."""
    if scaler is not None:
        scaler.unscale_(state.optimizer)  # the hooks and the clipping see the true gradients
    for hook in before_step:
        hook(state)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    if scaler is not None:
        scaler.step(state.optimizer)
        scaler.update()
    else:
        state.optimizer.step()
    state.global_step += 1
