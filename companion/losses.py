"""Loss functions written from their formulas (chapter 3).

Each function computes the same value and gradient as its ``torch.nn`` counterpart, with two
differences a reader can rely on:

- the body reads like the formula in the docstring, so the module can be read beside the chapter;
- shapes are checked instead of broadcast: ``nn.MSELoss`` given a prediction of shape ``(n, 1)``
  and a target of shape ``(n,)`` only warns and compares every prediction with every target
  (an ``(n, n)`` matrix); these functions raise a ``ValueError`` that names both shapes.

Every function takes ``reduction``: ``"mean"`` (the default, as in PyTorch), ``"sum"``, or
``"none"`` (one loss per element, or per sample for the classification losses).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "REDUCTIONS",
    "cross_entropy",
    "hinge_embedding_loss",
    "huber_loss",
    "is_class_loss",
    "l1_loss",
    "loss_option",
    "mse_loss",
    "multi_margin_loss",
    "smooth_l1_loss",
]

REDUCTIONS = ("mean", "sum", "none")


# --- checks and reduction (shared by every loss) ---------------------------------------------


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:  # also catches NaN
        raise ValueError(f"{name} must be > 0, got {value}; pass a positive threshold such as {name}=1.0")


def check_same_shape(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Refuse what ``torch.nn`` would broadcast: an element-wise loss compares element with element.

    ``pred`` of shape ``(n, 1)`` against ``target`` of shape ``(n,)`` broadcasts to ``(n, n)``: every
    prediction compared with every target, a silent bug that ``nn.MSELoss`` only warns about. The
    ``ValueError`` names both shapes and the fix that fits them. ``companion.fit`` checks a model's
    output against float targets with this same function.
    """
    if pred.shape == target.shape:
        return
    p, t = tuple(pred.shape), tuple(target.shape)
    if p == t + (1,):
        hint = "squeeze the prediction (pred.squeeze(-1)) or unsqueeze the target (target.unsqueeze(-1))"
    elif t == p + (1,):
        hint = "squeeze the target (target.squeeze(-1)) or unsqueeze the prediction (pred.unsqueeze(-1))"
    elif pred.numel() == target.numel():
        hint = "reshape one like the other (pred.view_as(target) or target.view_as(pred))"
    else:
        hint = f"pass a target with the same shape as the prediction, or make the model return one value per target, shape {t}"
    try:
        broadcast = (
            f"; torch.nn would broadcast them to {tuple(torch.broadcast_shapes(p, t))} and compare every pair"
        )
    except RuntimeError:
        broadcast = ""
    raise ValueError(f"prediction of shape {p} and target of shape {t} differ{broadcast}: {hint}")


def _check_class_indices(logits: torch.Tensor, target: torch.Tensor) -> None:
    """Logits ``(n, C)`` and integer class indices ``(n,)`` in ``0..C-1``."""
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (n, C), got {tuple(logits.shape)}; "
            "for a single sample pass logits.unsqueeze(0), for (n, C, ...) move the classes last and flatten"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}; pass logits.float()")
    n, c = logits.shape
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(
            f"target must hold integer class indices, got dtype {target.dtype}; "
            "pass target.long() (class probabilities are not accepted here)"
        )
    if tuple(target.shape) != (n,):
        hint = (
            "squeeze the target (target.squeeze(-1))"
            if tuple(target.shape) == (n, 1)
            else "pass one class index per row of logits"
        )
        raise ValueError(
            f"target must have shape ({n},) for logits of shape {(n, c)}, got {tuple(target.shape)}: {hint}"
        )
    if n and (target.min() < 0 or target.max() >= c):
        bad = target[(target < 0) | (target >= c)][0].item()
        raise ValueError(
            f"target holds class index {bad}, but logits of shape {(n, c)} have {c} classes: "
            f"pass indices in 0..{c - 1} (or logits with more columns)"
        )


# --- regression losses --------------------------------------------------------------------------


def mse_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Mean squared error, as ``nn.MSELoss``.

    .. math:: \ell_i = (\hat y_i - y_i)^2
    """
    _check_reduction(reduction)
    check_same_shape(pred, target)
    return _reduce((pred - target) ** 2, reduction)


def l1_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Mean absolute error, as ``nn.L1Loss``.

    .. math:: \ell_i = |\hat y_i - y_i|
    """
    _check_reduction(reduction)
    check_same_shape(pred, target)
    return _reduce((pred - target).abs(), reduction)


def smooth_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Smooth L1, as ``nn.SmoothL1Loss(beta=beta)``: quadratic near zero, then L1 with slope 1.

    .. math::
        \ell_i = \begin{cases} \tfrac{1}{2} d_i^2 / \beta & |d_i| < \beta \\
                               |d_i| - \tfrac{1}{2}\beta & \text{otherwise} \end{cases}
        \qquad d_i = \hat y_i - y_i

    ``beta > 0``. (PyTorch also accepts ``beta=0``, which is ``l1_loss``; call that instead.)
    """
    _check_reduction(reduction)
    _check_positive("beta", beta)
    check_same_shape(pred, target)
    d = (pred - target).abs()
    return _reduce(torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta), reduction)


def huber_loss(
    pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Huber loss, as ``nn.HuberLoss(delta=delta)``: quadratic near zero, then linear with slope delta.

    .. math::
        \ell_i = \begin{cases} \tfrac{1}{2} d_i^2 & |d_i| \le \delta \\
                               \delta\,(|d_i| - \tfrac{1}{2}\delta) & \text{otherwise} \end{cases}
        \qquad d_i = \hat y_i - y_i

    so that ``huber_loss(p, y, delta) == delta * smooth_l1_loss(p, y, beta=delta)``. ``delta > 0``.
    """
    _check_reduction(reduction)
    _check_positive("delta", delta)
    check_same_shape(pred, target)
    d = (pred - target).abs()
    return _reduce(torch.where(d <= delta, 0.5 * d**2, delta * (d - 0.5 * delta)), reduction)


# --- classification losses ----------------------------------------------------------------------


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Cross-entropy on logits, as ``nn.CrossEntropyLoss(label_smoothing=...)``.

    ``logits`` of shape ``(n, C)`` are raw scores (no softmax applied); ``target`` holds class
    indices of shape ``(n,)``. With :math:`\log p_{ic} = x_{ic} - \log\sum_k e^{x_{ik}}`
    (``log_softmax``, computed without ever forming the tiny probabilities) and smoothing
    :math:`\varepsilon`:

    .. math:: \ell_i = -(1 - \varepsilon) \log p_{i, y_i} - \frac{\varepsilon}{C} \sum_{c=1}^{C} \log p_{ic}

    i.e. the cross-entropy to the target distribution :math:`(1-\varepsilon)\,\mathrm{onehot}(y_i) + \varepsilon / C`.
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"label_smoothing must be in [0, 1], got {label_smoothing}; pass e.g. 0.1, or 0.0 for none"
        )
    _check_class_indices(logits, target)
    log_p = logits - logits.logsumexp(dim=1, keepdim=True)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_p.mean(dim=1)
    return _reduce((1 - label_smoothing) * nll + label_smoothing * uniform, reduction)


def multi_margin_loss(
    logits: torch.Tensor, target: torch.Tensor, p: int = 1, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Multi-class hinge loss, as ``nn.MultiMarginLoss(p=p, margin=margin)``.

    Every wrong class :math:`c \ne y_i` whose score comes within ``margin`` of the right one costs:

    .. math:: \ell_i = \frac{1}{C} \sum_{c \ne y_i} \max(0,\; \text{margin} - x_{i, y_i} + x_{ic})^p, \qquad p \in \{1, 2\}
    """
    _check_reduction(reduction)
    if p not in (1, 2):
        raise ValueError(
            f"p must be 1 or 2 (as in nn.MultiMarginLoss), got {p!r}; pass p=1 (hinge) or p=2 (squared hinge)"
        )
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin}; pass e.g. margin=1.0")
    _check_class_indices(logits, target)
    right = logits.gather(1, target.unsqueeze(1))
    hinge = (margin - right + logits).clamp(min=0) ** p
    wrong = torch.ones_like(logits, dtype=torch.bool).scatter(1, target.unsqueeze(1), False)
    return _reduce((hinge * wrong).sum(dim=1) / logits.shape[1], reduction)


def hinge_embedding_loss(
    x: torch.Tensor, target: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    r"""Hinge embedding loss, as ``nn.HingeEmbeddingLoss(margin=margin)``.

    ``x`` is usually a distance between two embeddings and ``target`` says whether the pair is
    similar (:math:`+1`: pull the distance to 0) or dissimilar (:math:`-1`: push it beyond ``margin``):

    .. math::
        \ell_i = \begin{cases} x_i & y_i = 1 \\ \max(0, \text{margin} - x_i) & y_i = -1 \end{cases}
    """
    _check_reduction(reduction)
    if not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number, got {margin}; pass e.g. margin=1.0")
    check_same_shape(x, target)
    if not bool(((target == 1) | (target == -1)).all()):
        raise ValueError(
            "target must hold only +1 (similar) and -1 (dissimilar); map 0/1 labels with 2 * target - 1"
        )
    return _reduce(torch.where(target == 1, x, (margin - x).clamp(min=0)), reduction)


# --- what a loss function was set up to do (read by companion.train and companion.metrics) -----


def loss_option(loss_fn: Any, name: str, default: Any = None) -> Any:
    """A setting of ``loss_fn``, such as its ``reduction`` or ``ignore_index``, wherever it is kept.

    - a module's attribute: ``nn.CrossEntropyLoss(reduction="sum").reduction``;
    - a ``functools.partial``'s keyword: ``partial(F.cross_entropy, reduction="sum")``;
    - a function's default: ``F.cross_entropy`` has ``reduction="mean"``, ``ignore_index=-100``;
    - otherwise ``default`` (e.g. a lambda, whose settings cannot be seen).
    """
    while isinstance(loss_fn, functools.partial):
        if name in loss_fn.keywords:
            return loss_fn.keywords[name]
        loss_fn = loss_fn.func
    if isinstance(loss_fn, nn.Module):
        return getattr(loss_fn, name, default)
    try:
        parameter = inspect.signature(loss_fn).parameters.get(name)
    except (TypeError, ValueError):  # a builtin or callable object without a signature
        return default
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return default
    return parameter.default


CLASS_LOSS_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)
CLASS_LOSS_FUNCTIONS = (F.cross_entropy, F.nll_loss, F.multi_margin_loss, cross_entropy, multi_margin_loss)


def is_class_loss(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` takes class scores and integer class labels (cross-entropy, NLL, multi-margin),
    as a module, a function, or a ``functools.partial`` of one."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return isinstance(loss_fn, CLASS_LOSS_MODULES) or any(loss_fn is f for f in CLASS_LOSS_FUNCTIONS)
