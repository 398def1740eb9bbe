r"""Checks that find out why training fails (chapter 9, "Debugging training").

Each check answers one question a careful practitioner asks before trusting a run:

- :func:`check_initial_loss`: does an untrained classifier start at the loss of a uniform guess, :math:`\ln C`?
- :func:`overfit_one_batch`: can the model and the loss drive the loss on one batch to near zero?
- :class:`GradientNormMonitor`: does each layer's gradient keep a sane size while ``fit`` trains?
- :func:`find_nan_source`: which module or operation first produces ``nan`` or ``inf``?
- :func:`check_gradient`: does a hand-written ``backward`` agree with finite differences?
- :func:`read_learning_curves`: what do the training and validation curves of a :class:`History` say?
- :func:`modules_in_training_mode`, :func:`yields_same_batches`, :func:`shared_samples`: is the
  evaluation honest (eval mode, the same validation data every time, no sample in two splits)?

Imports run one way: this module uses :mod:`companion.train`, :mod:`companion.callbacks` and
:mod:`companion.history`, and none of them uses it.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from companion.callbacks import Callback, FitState
from companion.history import History
from companion.train import check_output_fits, fit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CurveReading",
    "GradientCheck",
    "GradientNormMonitor",
    "GradientWarning",
    "InitialLoss",
    "NanSource",
    "OverfitResult",
    "check_gradient",
    "check_initial_loss",
    "find_nan_source",
    "layer_gradient_norms",
    "modules_in_training_mode",
    "overfit_one_batch",
    "read_learning_curves",
    "shared_samples",
    "yields_same_batches",
]


def _check_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_fraction(value: Any, name: str, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"{name} must be a number between 0 and 1 (exclusive), got {value!r}; pass e.g. {example}"
        )
    return float(value)


def _check_module(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


# --- the loss at initialization ------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialLoss:
    """What :func:`check_initial_loss` measured: the loss, the :math:`\\ln C` it expected, and a verdict."""

    loss: float
    expected: float
    classes: int
    ok: bool
    verdict: str

    @property
    def ratio(self) -> float:
        """``loss / expected``: 1 for a model that starts with uniform scores."""
        return self.loss / self.expected


def _are_probabilities(output: torch.Tensor) -> bool:
    """Every score in [0, 1] and every row summing to 1: a softmax already ran."""
    sums = output.sum(1)
    return bool(((output >= 0) & (output <= 1)).all()) and bool(
        torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
    )


def check_initial_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    rtol: float = 0.1,
) -> InitialLoss:
    r"""Compare an untrained classifier's loss with the loss of a uniform guess over ``C`` classes.

    A freshly initialized network outputs small, nearly equal scores, so its softmax is nearly
    uniform, :math:`p_c \approx 1/C`, and the cross-entropy of any label is

    .. math:: L_0 = -\ln \tfrac{1}{C} = \ln C \qquad (\ln 10 \approx 2.303).

    The check passes when :math:`|L - \ln C| \le \text{rtol} \cdot \ln C`. A loss far above it means the
    model starts confidently wrong (inputs not normalized, a last layer initialized too large); far
    below it, the model knows the labels before training (a leak, or a last-layer bias set to the class
    frequencies). Outputs that are already probabilities (a softmax at the end of the model, which
    ``CrossEntropyLoss`` applies itself) fail the check even when the loss looks right.

    The model runs once in eval mode under ``torch.no_grad()`` (batch norm and dropout change nothing)
    and is put back in the mode it was in.

    Args:
        inputs, targets: one batch; ``targets`` are integer class labels ``(n,)``.
        loss_fn: the loss training will use; default ``nn.CrossEntropyLoss()``.
        rtol: the relative tolerance around :math:`\ln C`.
    """
    _check_module(model)
    _check_tensor(inputs, "inputs")
    _check_tensor(targets, "targets")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be integer class labels, got {targets.dtype}: the loss at initialization is "
            "ln C for a classifier; pass labels.long()"
        )
    if targets.ndim != 1:
        raise ValueError(
            f"targets must be class labels of shape (n,), one per sample, got shape {tuple(targets.shape)}"
        )
    rtol = _check_fraction(rtol, "rtol", "rtol=0.1 (10%)")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(inputs)
            check_output_fits(output, targets, loss_fn)
            if output.ndim != 2 or output.shape[1] < 2:
                raise ValueError(
                    f"the model output has shape {tuple(output.shape)}: check_initial_loss needs class scores "
                    "(n, C) with C >= 2"
                )
            loss = float(loss_fn(output, targets))
    finally:
        model.train(was_training)
    classes = output.shape[1]
    expected = math.log(classes)
    name = f"ln {classes} = {expected:.2f}"
    if _are_probabilities(output):
        ok = False
        verdict = (
            "the outputs are probabilities (each row sums to 1): CrossEntropyLoss applies log_softmax "
            "itself, so remove the softmax at the end of the model and return raw scores (logits)"
        )
    elif abs(loss - expected) <= rtol * expected:
        ok = True
        verdict = f"loss {loss:.2f} within {rtol:.0%} of {name}: the model starts from a uniform guess"
    elif loss > expected:
        ok = False
        verdict = (
            f"loss {loss:.2f} is {loss / expected:.1f}x {name}: the model starts confidently wrong; "
            "normalize the inputs (mean 0, std 1) or scale down the last layer's initial weights"
        )
    else:
        ok = False
        verdict = (
            f"loss {loss:.2f} is below {name}: the model knows the labels before training; look for "
            "a label leaking into the inputs (or expect the label entropy if the last bias holds class priors)"
        )
    return InitialLoss(loss, expected, classes, ok, verdict)


# --- overfitting one batch -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OverfitResult:
    """What :func:`overfit_one_batch` measured: the loss before each step, and whether it got low enough."""

    losses: list[float]
    target_loss: float
    reached: bool

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def best(self) -> float:
        return min(self.losses)

    @property
    def verdict(self) -> str:
        if self.reached:
            return f"loss below {self.target_loss:g} after {self.steps} steps: the model can learn this batch"
        return (
            f"the loss fell from {self.losses[0]:.2f} to {self.best:.2f} in {self.steps} steps, not below "
            f"{self.target_loss:g}: a model that cannot memorize one batch has a bug (a softmax before the "
            "loss, frozen or disconnected layers, a learning rate far off) or far too little capacity"
        )


class _StopBelow(Callback):
    def __init__(self, target: float):
        self.target = target

    def on_train_epoch_end(self, state: FitState) -> None:
        if state.history.rows[-1]["train_loss"] <= self.target:
            state.should_stop = True


def overfit_one_batch(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    max_steps: int = 200,
    target_loss: float = 0.01,
) -> OverfitResult:
    """Train on one batch, again and again, until its loss is below ``target_loss`` or ``max_steps`` pass.

    A model with enough parameters can memorize a few dozen samples, so its loss on them should go to
    nearly zero. If it does not, no amount of data will help: the model, the loss or the optimizer is
    wrong. The batch is trained with :func:`companion.train.fit` (one epoch per step, in train mode), so
    fit's own checks run too: an output that does not fit the targets raises ``ValueError``, a ``nan``
    loss raises ``NonFiniteLossError``.

    The model is trained in place and left in eval mode, as ``fit`` leaves it: build a fresh one (and its
    optimizer) for the real run. ``reached`` says whether the loss before some step was at most
    ``target_loss``.
    """
    _check_module(model)
    _check_tensor(inputs, "inputs")
    _check_tensor(targets, "targets")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}; pass e.g. max_steps=200")
    if isinstance(target_loss, bool) or not isinstance(target_loss, (int, float)) or not target_loss > 0:
        raise ValueError(
            f"target_loss must be a positive number, got {target_loss!r}; pass e.g. target_loss=0.01"
        )
    history = fit(
        model,
        [(inputs, targets)],
        loss_fn,
        optimizer,
        max_steps,
        callbacks=[_StopBelow(target_loss)],
        progress=False,
    )
    losses = history["train_loss"]
    return OverfitResult(losses, float(target_loss), min(losses) <= target_loss)


# --- gradient norms ------------------------------------------------------------------------------------


class GradientWarning(UserWarning):
    """Gradients that explode, vanish or hold ``nan``/``inf`` (issued by :class:`GradientNormMonitor`)."""


def layer_gradient_norms(model: nn.Module) -> dict[str, float]:
    r"""The L2 norm of each layer's gradient, :math:`\|g_\ell\|_2 = \sqrt{\sum_{p \in \ell} \sum_i g_{p,i}^2}`.

    A layer is the module that owns the parameters (its weight and bias count together), named as in
    ``model.named_modules()``; parameters without a gradient are skipped. One host-device sync.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in _check_module(model).named_parameters():
        if p.grad is not None:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            groups.setdefault(layer, []).append(torch.linalg.vector_norm(p.grad.detach().float()))
    if not groups:
        return {}
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(g)) for g in groups.values()]).tolist()
    return dict(zip(groups, norms))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper or a ``torch.compile`` result."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class GradientNormMonitor(Callback):
    r"""Record each layer's gradient norm before every optimizer step of ``fit``; warn when they go wrong.

    At every step it records :func:`layer_gradient_norms` and the total norm
    :math:`\|g\|_2 = \sqrt{\sum_\ell \|g_\ell\|_2^2}` (the norm ``gradient_clip_val`` clips), and issues a
    :class:`GradientWarning` (once per kind and fit) when:

    - **explosion**: the total norm exceeds ``explode_factor`` times its value at the first step, or
      any norm is ``nan``/``inf``. Healthy training keeps it within a few times its first value;
    - **vanishing**: a layer's norm falls below ``vanish_ratio`` times the largest layer's norm at
      that step: that layer's weights barely change (saturated sigmoids, dead ReLUs, poor init).

    Outside ``fit``, call :meth:`record` after ``backward()`` in a loop of your own. :meth:`plot` draws
    the norms; ``norms[layer]`` and ``total`` are lists aligned with ``steps``; ``alerts`` keeps the
    messages of the warnings issued.
    """

    def __init__(self, explode_factor: float = 10.0, vanish_ratio: float = 1e-4):
        if (
            isinstance(explode_factor, bool)
            or not isinstance(explode_factor, (int, float))
            or not explode_factor > 1
        ):
            raise ValueError(
                f"explode_factor must be a number above 1 (how many times its first value the total "
                f"gradient norm may grow), got {explode_factor!r}; pass e.g. explode_factor=10"
            )
        self.explode_factor = float(explode_factor)
        self.vanish_ratio = _check_fraction(vanish_ratio, "vanish_ratio", "vanish_ratio=1e-4")
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (``fit`` calls it at the start of every run)."""
        self.steps: list[int] = []
        self.total: list[float] = []
        self.norms: dict[str, list[float]] = {}
        self.kinds: dict[str, str] = {}
        self.alerts: list[str] = []

    def on_fit_start(self, state: FitState) -> None:
        self.reset()

    def on_before_optimizer_step(self, state: FitState) -> None:
        self.record(state.model, step=state.global_step + 1)

    def record(self, model: nn.Module, step: int | None = None) -> dict[str, float]:
        """Record the gradient norms of ``model`` now (``step``: default, one more than the last).

        A model wrapped in ``DistributedDataParallel`` or compiled with ``torch.compile`` is read
        through the module it wraps, so its layers keep their own names."""
        model = _unwrapped(model)
        norms = layer_gradient_norms(model)
        if not self.kinds:
            self.kinds = {name: type(m).__name__ for name, m in model.named_modules()}
        step = (self.steps[-1] + 1 if self.steps else 1) if step is None else step
        for layer in norms:
            if layer not in self.norms:
                self.norms[layer] = [math.nan] * len(self.steps)
        for layer, values in self.norms.items():
            values.append(norms.get(layer, math.nan))
        self.steps.append(step)
        self.total.append(math.sqrt(sum(v * v for v in norms.values())))
        self._check(norms, step)
        return norms

    def _warn(self, kind: str, message: str) -> None:
        if any(a.startswith(kind) for a in self.alerts):
            return
        self.alerts.append(message)
        warnings.warn(message, GradientWarning, stacklevel=3)

    def _check(self, norms: dict[str, float], step: int) -> None:
        if not norms:
            return
        bad = [layer for layer, v in norms.items() if not math.isfinite(v)]
        if bad:
            self._warn(
                "exploding",
                f"exploding gradients at step {step}: non-finite norm in layer(s) {', '.join(bad)}; "
                "find the operation with companion.debugging.find_nan_source",
            )
            return
        first = next((t for t in self.total if math.isfinite(t) and t > 0), None)
        total = self.total[-1]
        if first is not None and total > self.explode_factor * first:
            largest = max(norms, key=norms.__getitem__)
            self._warn(
                "exploding",
                f"exploding gradients at step {step}: total norm {total:.3g} is {total / first:.0f}x its "
                f"first value; largest in layer {largest}. Lower the learning rate, clip "
                "(fit(..., gradient_clip_val=1.0)), or check that the gradients are zeroed every step",
            )
        top = max(norms.values())
        small = [layer for layer, v in norms.items() if v < self.vanish_ratio * top or top == 0]
        if small:
            self._warn(
                "vanishing",
                f"vanishing gradients at step {step}: layer(s) {', '.join(small)} below "
                f"{self.vanish_ratio:g}x the largest layer's norm ({top:.2g}); they barely learn. Use "
                "ReLU-like activations, normalization layers or a scaled initialization",
            )

    def plot(
        self, title: str = "Gradient norm per layer", ax: Any = None, layers: Iterable[str] | None = None
    ) -> Figure:
        """The norms against the step, one line per layer (all, or ``layers``) and the total in black, on a
        log scale. Draws into ``ax`` if given, else into a new figure; returns the figure."""
        import matplotlib.pyplot as plt

        if not self.steps:
            raise ValueError("nothing recorded yet: pass the monitor to fit(..., callbacks=[monitor]) first")
        layers = list(self.norms) if layers is None else list(layers)
        unknown = [layer for layer in layers if layer not in self.norms]
        if unknown:
            raise ValueError(f"no layer named {unknown[0]!r} was recorded; the layers are {list(self.norms)}")
        if ax is None:
            fig, ax = plt.subplots(figsize=(7.5, 3.4), layout="constrained")
        else:
            fig = ax.figure
        for layer in layers:
            label = f"{layer} ({self.kinds[layer]})" if layer in self.kinds else layer
            ax.plot(self.steps, self.norms[layer], lw=1, label=label)
        ax.plot(self.steps, self.total, color="black", lw=2, label="total")
        ax.set(xlabel="optimizer step", ylabel="gradient norm (log scale)", yscale="log", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2 if len(layers) > 4 else 1, loc="best")
        return fig

    def __repr__(self) -> str:
        return (
            f"GradientNormMonitor(explode_factor={self.explode_factor:g}, vanish_ratio={self.vanish_ratio:g}, "
            f"steps={len(self.steps)})"
        )


# --- where does the nan come from? ---------------------------------------------------------------------


@dataclass(frozen=True)
class NanSource:
    """Where :func:`find_nan_source` found the first ``nan``/``inf``.

    ``phase`` is ``"inputs"``, ``"forward"`` (``module`` produced it), ``"loss"`` (the loss function did)
    or ``"backward"`` (the gradient of ``op`` is ``nan``; ``code`` is the forward line that created that
    operation, inside ``module`` when it is a module's ``forward``).
    """

    phase: str
    module: str | None = None
    module_type: str | None = None
    op: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        where = f"module {self.module} ({self.module_type})" if self.module is not None else None
        if self.phase == "inputs":
            return "the inputs hold nan or inf"
        if self.phase == "forward":
            return f"forward: {where} is the first to output nan or inf"
        if self.phase == "loss":
            return "loss: the outputs are finite but the loss is not"
        parts = [f"backward: {self.op} returned nan"]
        if where:
            parts.append(f"in {where}")
        if self.code:
            parts.append(f"at `{self.code}`")
        return ", ".join(parts)


def _nonfinite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return False


_ANOMALY = re.compile(r"Function '(\w+)' returned nan values in its (\d+)\w* output")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)')
_LIBRARY_FILES = (os.path.dirname(torch.__file__), os.path.abspath(__file__))


def _forward_frames(messages: list[str]) -> list[tuple[str, int, str]]:
    """The frames (file, line, code) of anomaly mode's "Traceback of forward call", outermost first."""
    for message in messages:
        if message.startswith("Error detected in"):
            return [(f, int(n), code.strip()) for f, n, code in _FRAME.findall(message)]
    return []


def _modules_defined_at(model: nn.Module, filename: str, line: int) -> tuple[str | None, str | None]:
    """The modules whose ``forward`` holds ``filename:line``: their names, and their type."""
    names, kind = [], None
    for name, module in model.named_modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is not None and code.co_filename == filename:
            if line in {n for _, _, n in code.co_lines() if n is not None}:
                names.append(name or "(the model)")
                kind = type(module).__name__
    return (", ".join(names), kind) if names else (None, None)


def _locate(
    model: nn.Module, frames: list[tuple[str, int, str]]
) -> tuple[str | None, str | None, str | None]:
    """(module, type, code) of the innermost frame in a module's ``forward``; else the innermost user line."""
    for filename, line, code in reversed(frames):
        module, kind = _modules_defined_at(model, filename, line)
        if module is not None:
            return module, kind, code
    own = [code for filename, _, code in frames if not filename.startswith(_LIBRARY_FILES)]
    return None, None, (own[-1] if own else None)


def find_nan_source(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
) -> NanSource | None:
    """Run one forward and backward pass and say where the first ``nan``/``inf`` appears, or None.

    In order: the inputs; the forward pass, with a forward hook on every module (hooks fire when a
    module returns, so the first module to output ``nan``/``inf`` is the innermost one that made it);
    the loss; the backward pass under ``torch.autograd.detect_anomaly(check_nan=True)``, which stops
    at the first backward function that returns ``nan`` and records the forward line that created it.
    A ``nan`` that appears only in the backward pass (the loss is finite, the next step's is not) is
    the case ``NonFiniteLossError`` cannot explain: ``torch.where(x > 0, torch.log(x), 0)`` at ``x = 0``
    is finite forward, but its gradient is ``0 * inf = nan``.

    Anomaly mode reports the first ``nan`` a backward function returns, also one that a later function
    masks (a ReLU's backward zeroes the gradient where its input was negative, ``nan`` included): when
    the parameters' gradients come out finite, such a report is harmless.

    The model runs in the mode it is in. The parameters' ``.grad`` are left as they were.
    """
    _check_module(model)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, targets), got {type(loss_fn).__name__}")
    if _nonfinite(inputs):
        return NanSource("inputs")
    first: list[tuple[str, nn.Module]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if not first and _nonfinite(output):
                first.append((name or "(the model)", module))

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()]
    saved = {p: p.grad for p in model.parameters()}
    for p in saved:
        p.grad = None  # backward would add into the saved tensors in place
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with torch.autograd.detect_anomaly(check_nan=True):
                    output = model(inputs)
                    if first:
                        name, module = first[0]
                        return NanSource("forward", name, type(module).__name__)
                    loss = loss_fn(output, targets)
                    if _nonfinite(loss):
                        return NanSource("loss")
                    loss.backward()
            except RuntimeError as error:
                match = _ANOMALY.search(str(error))
                if match is None:
                    raise
                frames = _forward_frames([str(w.message) for w in caught])
                module, kind, code = _locate(model, frames)
                return NanSource("backward", module, kind, match.group(1), code)
        for w in caught:  # warnings of the user's code pass through; anomaly mode's own do not
            if not str(w.message).startswith(("Anomaly Detection has been enabled", "Error detected in")):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return None
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in saved.items():
            p.grad = grad


# --- gradcheck -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradientCheck:
    """What :func:`check_gradient` found: ``passed``, and a one-line ``message``."""

    passed: bool
    message: str


def check_gradient(
    fn: Callable[..., Any], *inputs: torch.Tensor, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3
) -> GradientCheck:
    r"""Compare ``fn``'s gradients (its ``backward``) with central finite differences, with ``torch.autograd.gradcheck``.

    Each entry :math:`J_{ij} = \partial f_i / \partial x_j` of the Jacobian is estimated as

    .. math:: J_{ij} \approx \frac{f_i(x + \varepsilon e_j) - f_i(x - \varepsilon e_j)}{2 \varepsilon},

    whose error is :math:`O(\varepsilon^2)` plus the rounding error :math:`O(u / \varepsilon)`: with
    float64 (:math:`u \approx 10^{-16}`) and :math:`\varepsilon = 10^{-6}` both are about
    :math:`10^{-10}`; with float32 (:math:`u \approx 10^{-7}`) the rounding alone is :math:`10^{-1}`,
    so the inputs must be float64. The check passes when
    :math:`|J^{\text{analytical}} - J^{\text{numerical}}| \le \text{atol} + \text{rtol}\,|J^{\text{numerical}}|`
    everywhere.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, e.g. MyFunction.apply, got {type(fn).__name__}")
    if not inputs:
        raise ValueError("pass at least one input tensor: check_gradient(fn, x)")
    for i, x in enumerate(inputs):
        _check_tensor(x, f"input {i}")
        if x.requires_grad and x.dtype not in (torch.float64, torch.complex128):
            raise TypeError(
                f"input {i} is {x.dtype}: finite differences in single precision are off by about 1e-1, "
                "so gradcheck needs float64; pass x.double().requires_grad_()"
            )
    if not any(x.requires_grad for x in inputs):
        raise ValueError(
            "no input requires a gradient, so there is nothing to check: pass e.g. "
            "torch.randn(5, dtype=torch.float64, requires_grad=True)"
        )
    try:
        torch.autograd.gradcheck(fn, inputs, eps=eps, atol=atol, rtol=rtol, raise_exception=True)
    except GradcheckError as error:
        first_line = str(error).strip().splitlines()[0].rstrip(",")
        return GradientCheck(False, first_line)
    return GradientCheck(True, f"the analytical and numerical Jacobians agree (atol={atol:g}, rtol={rtol:g})")


# --- reading learning curves ---------------------------------------------------------------------------

JUMP = 0.2  # a training loss that rises by more than 20 % (and 0.01) in one epoch has jumped
RISE = 0.25  # a validation loss 25 % above its minimum at the end has turned up
STALLED = 0.5  # a training loss still above half its first epoch's value has hardly fallen
CHANCE = 2.0  # a late validation accuracy of at most 2 / C on average is no better than guessing


@dataclass(frozen=True)
class CurveReading:
    """The reading of a pair of learning curves: the ``verdict`` and the ``findings`` behind it."""

    verdict: str
    findings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([self.verdict, *(f"- {f}" for f in self.findings)])


def read_learning_curves(history: History, *, classes: int | None = None) -> CurveReading:
    r"""Read ``train_loss`` and ``val_loss`` (and accuracies, if any) the way a practitioner would.

    The rules, checked in this order (the first that holds gives the verdict; every one that holds is
    a finding):

    - ``"diverged"``: a loss is ``nan`` or ``inf``.
    - ``"learning rate too high"``: the training loss jumped up (by more than 20 % and 0.01) in at least
      two epochs, or ended above where it started.
    - ``"suspect a data leak"``: the validation accuracy reached 100 %: on held-out data that is rarely
      real; check that no validation sample is also a training sample (:func:`shared_samples`).
    - ``"chance level"`` (with ``classes``): the validation accuracy, averaged over the last half of the
      epochs, is at most :math:`2 / C`, twice a guess's: nothing learned carries over (labels shuffled or
      misaligned with the inputs?). An average, because a model that learned nothing scores a noisy
      accuracy: one epoch may reach twice chance by luck.
    - ``"overfitting"``: the validation loss ended at least 25 % above its minimum while the training
      loss kept falling after that epoch.
    - ``"underfitting"``: the training loss ended above half its first epoch's value: the model does not
      fit even the data it trains on.
    - otherwise ``"healthy"``.

    These are rules of thumb with fixed thresholds (``JUMP``, ``RISE``, ``CHANCE``, ``STALLED``), not proofs: read the
    curves too (``history.plot()``).
    """
    if not isinstance(history, History):
        raise TypeError(
            f"history must be a companion.history.History (what fit returns), got {type(history).__name__}"
        )
    missing = [m for m in ("train_loss", "val_loss") if m not in history.metrics]
    if missing:
        raise ValueError(
            f"the history has no {' or '.join(missing)}: it records {history.metrics}; pass val_loader to fit "
            "so that there is a validation curve to read"
        )
    if len(history) < 3:
        raise ValueError(
            f"a curve of {len(history)} epoch(s) is too short to read: train for at least 3 epochs"
        )
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 2):
        raise ValueError(f"classes must be the number of classes, an int >= 2, got {classes!r}")
    train, val = history["train_loss"], history["val_loss"]
    found: list[tuple[str, str]] = []
    if not all(math.isfinite(v) for v in train + val):
        found.append(("diverged", "a loss became nan or inf: lower the learning rate or find_nan_source"))
    else:
        jumps = [
            e
            for e in range(1, len(train))
            if train[e] > (1 + JUMP) * train[e - 1] and train[e] - train[e - 1] > 0.01
        ]
        if len(jumps) >= 2 or train[-1] > train[0]:
            found.append(
                (
                    "learning rate too high",
                    f"the training loss jumped up in {len(jumps)} epoch(s) and ended at {train[-1] / train[0]:.0%} "
                    "of its first value: the steps overshoot",
                )
            )
        accuracy = history["val_accuracy"] if "val_accuracy" in history.metrics else []
        if accuracy and max(accuracy) >= 1.0:
            found.append(
                (
                    "suspect a data leak",
                    "the validation accuracy reached 100%: check that no validation sample is a training "
                    "sample (shared_samples)",
                )
            )
        late = accuracy[len(accuracy) // 2 :]
        if late and classes is not None and sum(late) / len(late) <= CHANCE / classes:
            found.append(
                (
                    "chance level",
                    f"the validation accuracy of the last {len(late)} epochs averages {sum(late) / len(late):.0%}, "
                    f"no better than a guess among {classes} classes: are the labels shuffled or misaligned "
                    "with the inputs?",
                )
            )
        best = min(range(len(val)), key=val.__getitem__)
        if val[-1] >= (1 + RISE) * val[best] and train[-1] < train[best]:
            found.append(
                (
                    "overfitting",
                    f"the validation loss ended {val[-1] / val[best] - 1:.0%} above its minimum (epoch "
                    f"{best + 1}) while the training loss kept falling",
                )
            )
        if train[-1] > STALLED * train[0]:
            found.append(
                (
                    "underfitting",
                    f"the training loss ended at {train[-1] / train[0]:.0%} of its first value: more capacity, "
                    "more epochs or a higher learning rate",
                )
            )
    if not found:
        return CurveReading("healthy", ["both losses fell, and the validation loss ended near its minimum"])
    return CurveReading(found[0][0], [finding for _, finding in found])


# --- honest evaluation -----------------------------------------------------------------------------------

_TRAIN_EVAL_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)


def modules_in_training_mode(model: nn.Module) -> list[str]:
    """The submodules that behave differently in training mode and are in it now, as ``"name (Type)"``.

    Dropout zeroes a random part of its inputs in training mode; batch norm normalizes with the
    current batch's statistics and updates its running averages. Measured in that mode, a model's
    accuracy depends on chance and on the other samples in the batch. An empty list after
    ``model.eval()``. (Instance norm with running statistics counts too.)
    """
    found = []
    for name, module in _check_module(model).named_modules():
        differs = isinstance(module, _TRAIN_EVAL_MODULES) or (
            isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats
        )
        if differs and module.training:
            found.append(f"{name or '(the model)'} ({type(module).__name__})")
    return found


def _batches(loader: Iterable, name: str) -> list[Any]:
    batches = []
    for batch in loader:
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            batches.append([b.clone() if isinstance(b, torch.Tensor) else b for b in batch])
        elif isinstance(batch, torch.Tensor):
            batches.append([batch.clone()])
        else:
            raise TypeError(
                f"{name} must yield tensors or (inputs, targets) pairs of tensors, got a {type(batch).__name__}"
            )
    if not batches:
        raise ValueError(f"{name} yielded no batches: pass a loader over at least one sample")
    return batches


def yields_same_batches(loader: Iterable) -> bool:
    """Whether two passes over ``loader`` yield identical batches (inputs and targets, bit for bit).

    A validation loader should: it measures the same model the same way every epoch. Random
    augmentation copied from the training pipeline (or ``shuffle=True``, harmless but needless) makes
    it fail. Costs two passes over the loader.
    """
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be an iterable of batches, e.g. a DataLoader; got {type(loader).__name__}"
        )
    first, second = _batches(loader, "loader"), _batches(loader, "loader")
    return len(first) == len(second) and all(
        len(a) == len(b)
        and all(
            torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
            for x, y in zip(a, b)
        )
        for a, b in zip(first, second)
    )


def shared_samples(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many samples of ``b`` (rows along the first dimension) also appear, bit for bit, in ``a``.

    A validation or test sample that is also a training sample measures memory, not generalization:
    the count should be 0. Exact copies only (a resized or re-encoded copy is not found).
    """
    _check_tensor(a, "a")
    _check_tensor(b, "b")
    if a.ndim == 0 or b.ndim == 0 or a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
        raise ValueError(
            f"a and b must hold samples of the same shape and dtype along their first dimension, got "
            f"{a.dtype} {tuple(a.shape)} and {b.dtype} {tuple(b.shape)}"
        )
    seen = set(_row_bytes(a))
    return sum(row in seen for row in _row_bytes(b))


def _row_bytes(x: torch.Tensor) -> list[bytes]:
    """Each sample's bits (any dtype, bfloat16 included: viewed as bytes before NumPy sees them)."""
    rows = x.detach().cpu().contiguous().reshape(len(x), -1)
    return [row.view(torch.uint8).numpy().tobytes() for row in rows]
