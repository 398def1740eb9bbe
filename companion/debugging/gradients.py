r"""Gradients (chapter 9): their size while ``fit`` trains, and a hand-written ``backward`` checked.

- :class:`GradientNormMonitor` (with :func:`layer_gradient_norms`): does each layer's gradient keep a sane
  size while ``fit`` trains?
- :func:`check_gradient`: does a hand-written ``backward`` agree with finite differences?
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from companion.callbacks import Callback, FitState
from companion.checks import check_callable, check_fraction, check_module, check_tensor, is_number
from companion.wrappers import unwrap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "GradientCheck",
    "GradientNormMonitor",
    "GradientWarning",
    "check_gradient",
    "layer_gradient_norms",
]


class GradientWarning(UserWarning):
    """Gradients that explode, vanish or hold ``nan``/``inf`` (issued by :class:`GradientNormMonitor`)."""


def layer_gradient_norms(model: nn.Module) -> dict[str, float]:
    r"""The L2 norm of each layer's gradient, :math:`\|g_\ell\|_2 = \sqrt{\sum_{p \in \ell} \sum_i g_{p,i}^2}`.

    A layer is the module that owns the parameters (its weight and bias count together), named as in
    ``model.named_modules()``; parameters without a gradient are skipped. One host-device sync.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in check_module(model).named_parameters():
        if p.grad is not None:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            groups.setdefault(layer, []).append(torch.linalg.vector_norm(p.grad.detach().float()))
    if not groups:
        return {}
    norms = torch.stack([torch.linalg.vector_norm(torch.stack(g)) for g in groups.values()]).tolist()
    return dict(zip(groups, norms))


def _skipped_by(scaler: Any, norms: dict[str, float]) -> bool:
    """Whether ``scaler`` will skip this step for its own overflow: the gradients are not finite while the
    scale is at least 1, so that they were scaled up (``GradScaler.step`` skips any non-finite step)."""
    if scaler is None or not scaler.is_enabled():
        return False
    return not all(math.isfinite(v) for v in norms.values()) and scaler.get_scale() >= 1


class GradientNormMonitor(Callback):
    r"""Record each layer's gradient norm before every optimizer step of ``fit``; warn when they go wrong.

    At every step it records :func:`layer_gradient_norms` and the total norm
    :math:`\|g\|_2 = \sqrt{\sum_\ell \|g_\ell\|_2^2}` (the norm ``gradient_clip_val`` clips), and issues a
    :class:`GradientWarning` (once per kind and fit) when:

    - **explosion**: the total norm exceeds ``explode_factor`` times its value at the first step, or
      any norm is ``nan``/``inf``. Healthy training keeps it within a few times its first value;
    - **vanishing**: a layer's norm falls below ``vanish_ratio`` times the largest layer's norm at
      that step: that layer's weights barely change (saturated sigmoids, dead ReLUs, poor init).

    **Float16 and its GradScaler** (``fit(..., precision="16")``). The scaler multiplies the loss by a
    scale :math:`S` (:math:`2^{16}` at first) so that small gradients survive float16, and when the
    scaled gradients overflow it skips that optimizer step and halves :math:`S`. Early in training that
    happens on purpose, until :math:`S` fits the gradients: those infinite gradients are the scaler's,
    not the model's. So a step whose gradients are not finite while the scaler's scale is at least 1 is
    recorded in ``skipped`` (its norms as measured), with no warning. At a scale below 1 the gradients
    overflow even when scaled *down*: they are not finite in themselves (a ``nan``, or gradients past
    float16's 65504), and the monitor warns of exploding gradients as without a scaler. A ``nan`` that
    every step makes is thus reported once the scaler has halved its scale below 1 (17 skipped steps
    from :math:`2^{16}`).

    Outside ``fit``, call :meth:`record` after ``backward()`` in a loop of your own (with a GradScaler:
    after ``scaler.unscale_(optimizer)``, passing ``scaler=scaler``). :meth:`plot` draws the norms;
    ``norms[layer]`` and ``total`` are lists aligned with ``steps``; ``alerts`` keeps the messages of the
    warnings issued.
    """

    def __init__(self, explode_factor: float = 10.0, vanish_ratio: float = 1e-4):
        if not is_number(explode_factor) or not explode_factor > 1:
            raise ValueError(
                f"explode_factor must be a number above 1 (how many times its first value the total "
                f"gradient norm may grow), got {explode_factor!r}; pass e.g. explode_factor=10"
            )
        self.explode_factor = float(explode_factor)
        self.vanish_ratio = check_fraction(vanish_ratio, "vanish_ratio", example="vanish_ratio=1e-4")
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (``fit`` calls it at the start of every run)."""
        self.steps: list[int] = []
        self.total: list[float] = []
        self.norms: dict[str, list[float]] = {}
        self.kinds: dict[str, str] = {}
        self.alerts: list[str] = []
        self.skipped: list[int] = []  # steps whose non-finite gradients a GradScaler skips (see above)

    def on_fit_start(self, state: FitState) -> None:
        self.reset()

    def on_before_optimizer_step(self, state: FitState) -> None:
        self.record(state.model, step=state.global_step + 1, scaler=state.scaler)

    def record(self, model: nn.Module, step: int | None = None, *, scaler: Any = None) -> dict[str, float]:
        """Record the gradient norms of ``model`` now (``step``: default, one more than the last).

        A model wrapped in ``DistributedDataParallel`` or compiled with ``torch.compile`` is read
        through the module it wraps, so its layers keep their own names. ``scaler``: the
        ``torch.amp.GradScaler`` of a float16 run, whose gradients have been unscaled
        (``scaler.unscale_(optimizer)``); a step it will skip does not warn (see the class docstring)."""
        model = unwrap(model)
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
        if _skipped_by(scaler, norms):
            self.skipped.append(step)
        else:
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


# --- gradcheck -----------------------------------------------------------------------------------------


# what autograd says when a backward returns a gradient of the wrong shape or the wrong number of them
_BAD_GRADIENTS = re.compile(
    r"returned an (invalid gradient|incorrect number of gradients)|invalid number of gradients"
)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0].rstrip(",")


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

    A ``backward`` that returns a gradient of the wrong shape, or the wrong number of gradients, fails the
    check too, with autograd's reason as the message (any other error, e.g. in ``fn`` itself, is raised).
    """
    check_callable(fn, "fn", what="callable, e.g. MyFunction.apply")
    if not inputs:
        raise ValueError("pass at least one input tensor: check_gradient(fn, x)")
    for i, x in enumerate(inputs):
        check_tensor(x, f"input {i}")
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
        return GradientCheck(False, _first_line(error))
    except RuntimeError as error:  # autograd refused what backward returned: a wrong shape or count
        if not _BAD_GRADIENTS.search(str(error)):
            raise
        return GradientCheck(False, _first_line(error))
    return GradientCheck(True, f"the analytical and numerical Jacobians agree (atol={atol:g}, rtol={rtol:g})")
