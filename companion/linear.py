"""Linear regression with the mean squared error, derived by hand (chapter 4).

The model is :math:`\\hat y = Xw + b` and the loss the article's formula with its notation fixed
(``i`` numbers samples, not models):

.. math:: L(w, b) = \\frac1n \\sum_{i=1}^n (x_i^\\top w + b - y_i)^2

Shapes, the same in every function:

- ``X``: ``(n, d)``, one row per sample, floating point;
- ``y``: ``(n,)``, or ``(n, 1)`` as :func:`companion.datasets.make_linear_regression` and ``nn.Linear``
  produce it. An ``(n, 1)`` target is flattened explicitly, because ``(n, 1) - (n,)`` would
  silently broadcast to ``(n, n)``; any other shape is refused;
- ``w``: ``(d,)`` (``nn.Linear(d, 1).weight`` is ``(1, d)``: pass ``weight.squeeze(0)``);
  ``b``: a number or a one-element tensor.

``X``, ``y``, ``w`` and a tensor ``b`` must share one dtype: nothing is converted behind your back (pass float64
where the digits matter). ``bias=True`` (the default) treats ``b`` as a parameter: the formulas
then hold for :math:`\\tilde X = [X \\; 1]` and :math:`\\theta = (w, b)` (see :func:`add_bias_column`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from companion.checks import is_int, is_number

__all__ = [
    "Descent",
    "add_bias_column",
    "condition_number",
    "gradient_descent",
    "hessian",
    "max_stable_lr",
    "mse",
    "mse_derived",
    "mse_gradient",
    "normal_equations",
    "steps_to_loss_gap",
]

Scalar = float | torch.Tensor


# --- checks ----------------------------------------------------------------------------------


def _check_X(X: torch.Tensor) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise TypeError(
            f"X must be a torch.Tensor, got {type(X).__name__}; pass torch.as_tensor(X, dtype=torch.float64)"
        )
    if not X.is_floating_point():
        raise TypeError(f"X must be floating point, got {X.dtype}; pass X.double() (or X.float())")
    if X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(
            f"X must have shape (n, d) with one row per sample, got {tuple(X.shape)}; "
            "for a single feature pass X.unsqueeze(1), for a single sample X.unsqueeze(0)"
        )
    return X


def _check_Xy(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` ``(n, d)`` and ``y`` ``(n,)`` or ``(n, 1)``; returns ``y`` flattened to ``(n,)``."""
    X = _check_X(X)
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"y must be a torch.Tensor, got {type(y).__name__}; pass torch.as_tensor(y, dtype=X.dtype)"
        )
    n = X.shape[0]
    if tuple(y.shape) not in ((n,), (n, 1)):
        raise ValueError(
            f"X has shape {tuple(X.shape)} but y has shape {tuple(y.shape)}: "
            f"pass one target per row of X, y of shape ({n},) or ({n}, 1)"
        )
    if y.dtype != X.dtype:
        raise TypeError(f"X is {X.dtype} but y is {y.dtype}; pass both in one dtype, e.g. y.to(X.dtype)")
    return X, y.reshape(n)


def _check_wb(X: torch.Tensor, w: torch.Tensor, b: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` ``(d,)`` in ``X``'s dtype and ``b`` a scalar; returns ``b`` as a 0-dim tensor."""
    d = X.shape[1]
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"w must be a torch.Tensor, got {type(w).__name__}; pass torch.zeros({d}, dtype=X.dtype)"
        )
    if tuple(w.shape) != (d,):
        raise ValueError(
            f"X has shape {tuple(X.shape)} but w has shape {tuple(w.shape)}: pass one weight per column of X, "
            f"w of shape ({d},)" + (" (e.g. model.weight.squeeze(0))" if w.numel() == d else "")
        )
    if w.dtype != X.dtype:
        raise TypeError(f"X is {X.dtype} but w is {w.dtype}; pass both in one dtype, e.g. w.to(X.dtype)")
    if isinstance(b, torch.Tensor):
        if b.numel() != 1:
            raise ValueError(
                f"b must be a scalar, got a tensor of shape {tuple(b.shape)}; pass a float or a one-element tensor"
            )
        if b.dtype != X.dtype:
            raise TypeError(f"X is {X.dtype} but b is {b.dtype}; pass both in one dtype, e.g. b.to(X.dtype)")
        return w, b.reshape(())
    if not is_number(b):
        raise TypeError(
            f"b must be a number or a one-element tensor, got {type(b).__name__}; pass e.g. b=0.0"
        )
    return w, torch.tensor(float(b), dtype=X.dtype, device=X.device)


def _check_lr(lr: float, X: torch.Tensor, bias: bool) -> None:
    if not is_number(lr):
        raise TypeError(f"lr must be a number, got {type(lr).__name__}; pass e.g. lr=0.5 * max_stable_lr(X)")
    if not (lr > 0 and math.isfinite(lr)):  # also catches NaN
        raise ValueError(
            f"lr must be a positive, finite step size, got {lr}; pass 0 < lr < max_stable_lr(X) = "
            f"{max_stable_lr(X, bias=bias):.4g} for gradient descent to converge"
        )


def _check_steps(steps: int) -> None:
    if not is_int(steps):
        raise TypeError(
            f"steps must be an int, got {type(steps).__name__}; pass the number of updates, e.g. steps=100"
        )
    if steps < 1:
        raise ValueError(
            f"steps must be >= 1, got {steps}; pass the number of updates to make, e.g. steps=100"
        )


# --- the loss and its derivatives ------------------------------------------------------------


def add_bias_column(X: torch.Tensor) -> torch.Tensor:
    """:math:`\\tilde X = [X \\; 1]`, shape ``(n, d + 1)``: then :math:`Xw + b = \\tilde X (w, b)`."""
    X = _check_X(X)
    return torch.cat([X, X.new_ones(X.shape[0], 1)], dim=1)


def mse(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: Scalar = 0.0) -> torch.Tensor:
    """The mean squared error of the linear model, a 0-dim tensor.

    .. math:: L(w, b) = \\frac1n \\sum_{i=1}^n (x_i^\\top w + b - y_i)^2 = \\frac1n \\lVert Xw + b - y \\rVert^2

    Differentiable by autograd in ``X``, ``y``, ``w`` and ``b``.
    """
    X, y = _check_Xy(X, y)
    w, b = _check_wb(X, w, b)
    return ((X @ w + b - y) ** 2).mean()


def mse_gradient(
    X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: Scalar = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of :func:`mse`, from the formulas derived in chapter 4 (no autograd).

    With the residual :math:`r = Xw + b - y`:

    .. math:: \\nabla_w L = \\frac2n X^\\top r, \\qquad \\frac{\\partial L}{\\partial b} = \\frac2n \\sum_{i=1}^n r_i

    Returns ``(grad_w, grad_b)``: shape ``(d,)`` and a 0-dim tensor.
    """
    X, y = _check_Xy(X, y)
    w, b = _check_wb(X, w, b)
    n = X.shape[0]
    r = X @ w + b - y
    return (2 / n) * X.T @ r, (2 / n) * r.sum()


class _DerivedMSE(torch.autograd.Function):
    """``mse`` as an autograd function whose backward is the derived gradient, not a trace."""

    @staticmethod
    def forward(ctx, X, y, w, b):  # type: ignore[override]
        r = X @ w + b - y
        ctx.save_for_backward(X, w, r)
        return (r**2).mean()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        X, w, r = ctx.saved_tensors
        g = grad_out * (2 / X.shape[0]) * r  # dL/dr_i = (2/n) r_i, and r = Xw + b - y
        return torch.outer(g, w), -g, X.T @ g, g.sum()  # dL/dX, dL/dy, dL/dw, dL/db


def mse_derived(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: Scalar = 0.0) -> torch.Tensor:
    """:func:`mse`, but ``backward()`` runs the hand-derived formulas of :func:`mse_gradient`.

    Autograd calls the derived backward (:math:`\\partial L/\\partial r_i = \\frac2n r_i`, then the chain rule
    through :math:`r = Xw + b - y`) instead of differentiating the forward pass itself, so
    ``torch.autograd.gradcheck(mse_derived, (X, y, w, b))`` tests the derivation against finite
    differences: in float64, with ``requires_grad=True`` on the inputs to check.
    """
    X, y = _check_Xy(X, y)
    w, b = _check_wb(X, w, b)
    return _DerivedMSE.apply(X, y, w, b)


def hessian(X: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """The Hessian of :func:`mse`: constant, since the loss is quadratic in the parameters.

    .. math:: H = \\frac2n \\tilde X^\\top \\tilde X \\quad (\\text{parameters } (w, b)), \\qquad
              H = \\frac2n X^\\top X \\quad (\\texttt{bias=False}, \\text{ parameters } w)

    Shape ``(d + 1, d + 1)``, or ``(d, d)`` with ``bias=False``. It does not depend on ``y``, ``w`` or ``b``.
    """
    A = add_bias_column(X) if bias else _check_X(X)
    return (2 / A.shape[0]) * A.T @ A


def condition_number(X: torch.Tensor, bias: bool = True) -> float:
    """:math:`\\kappa = \\lambda_{\\max} / \\lambda_{\\min}` of :func:`hessian`: how elongated the loss's bowl is.

    ``inf`` when :math:`H` is singular to working precision (a feature is a combination of the others):
    :math:`\\lambda_{\\min} \\le (d + 1) \\, \\varepsilon \\, \\lambda_{\\max}`, the rank cut-off of ``torch.linalg.matrix_rank``.
    """
    H = hessian(X, bias=bias)
    eigenvalues = torch.linalg.eigvalsh(H)
    smallest, largest = eigenvalues[0].item(), eigenvalues[-1].item()
    singular = smallest <= H.shape[0] * torch.finfo(H.dtype).eps * largest
    return math.inf if singular else largest / smallest


def max_stable_lr(X: torch.Tensor, bias: bool = True) -> float:
    """The largest learning rate for which gradient descent on :func:`mse` converges: :math:`2 / \\lambda_{\\max}(H)`.

    A step maps the error :math:`e = \\theta - \\theta^*` to :math:`(I - \\eta H) e`; it shrinks along every
    eigenvector iff :math:`|1 - \\eta \\lambda| < 1` for every eigenvalue, i.e. :math:`0 < \\eta < 2 / \\lambda_{\\max}`.
    """
    return 2 / torch.linalg.eigvalsh(hessian(X, bias=bias))[-1].item()


# --- solving it ------------------------------------------------------------------------------


def normal_equations(
    X: torch.Tensor, y: torch.Tensor, bias: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser of :func:`mse`: the solution of the normal equations :math:`\\tilde X^\\top \\tilde X \\theta = \\tilde X^\\top y`.

    Solved as the least-squares problem :math:`\\min_\\theta \\lVert \\tilde X \\theta - y \\rVert` with
    ``torch.linalg.lstsq``, which factors :math:`\\tilde X` itself: its error grows with
    :math:`\\kappa(\\tilde X)`, whereas forming :math:`\\tilde X^\\top \\tilde X` and inverting it squares the
    condition number, :math:`\\kappa(\\tilde X^\\top \\tilde X) = \\kappa(\\tilde X)^2`.

    Returns ``(w, b)``: shape ``(d,)`` and a 0-dim tensor (zero with ``bias=False``).
    """
    X, y = _check_Xy(X, y)
    A = add_bias_column(X) if bias else X
    theta = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1)
    if bias:
        return theta[:-1], theta[-1]
    return theta, theta.new_zeros(())


class Descent(NamedTuple):
    """What :func:`gradient_descent` returns."""

    w: torch.Tensor  #: final weights, ``(d,)``
    b: torch.Tensor  #: final bias, 0-dim
    losses: torch.Tensor  #: ``(steps + 1,)``: the loss before the first step and after each step
    path: torch.Tensor  #: ``(steps + 1, d + 1)``: the parameters ``(w, b)`` at each of those points


def gradient_descent(
    X: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    steps: int,
    w0: torch.Tensor | None = None,
    b0: Scalar = 0.0,
    bias: bool = True,
) -> Descent:
    """Full-batch gradient descent on :func:`mse` with the derived gradient, from ``(w0, b0)`` (zeros by default).

    .. math:: w_{k+1} = w_k - \\eta \\nabla_w L(w_k, b_k), \\qquad b_{k+1} = b_k - \\eta \\frac{\\partial L}{\\partial b}(w_k, b_k)

    With ``bias=False``, ``b`` stays at ``b0``. A learning rate above :func:`max_stable_lr` is allowed
    (the chapter shows what it does): the losses then grow, and may reach ``inf``.
    """
    X, y = _check_Xy(X, y)
    _check_lr(lr, X, bias)
    _check_steps(steps)
    w, b = _check_wb(X, X.new_zeros(X.shape[1]) if w0 is None else w0, b0)
    w, b = w.detach().clone(), b.detach().clone()
    losses, path = [], []
    for k in range(steps + 1):
        losses.append(mse(X, y, w, b))
        path.append(torch.cat([w, b.reshape(1)]))
        if k == steps:
            break
        grad_w, grad_b = mse_gradient(X, y, w, b)
        w = w - lr * grad_w
        if bias:
            b = b - lr * grad_b
    return Descent(w, b, torch.stack(losses), torch.stack(path))


def steps_to_loss_gap(losses: torch.Tensor, optimum: float, rtol: float = 1e-8) -> int | None:
    """The first step ``k`` at which :math:`L_k - L^* \\le \\text{rtol} \\cdot (L_0 - L^*)`; ``None`` if never.

    ``losses`` is :attr:`Descent.losses` (``losses[0]`` before any step) and ``optimum`` the loss :math:`L^*`
    at the minimiser, e.g. ``mse(X, y, *normal_equations(X, y))``.
    """
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        raise ValueError(
            "losses must be a 1-D tensor of losses, one per step; pass gradient_descent(...).losses"
        )
    if not 0 < rtol < 1:
        raise ValueError(
            f"rtol must be in (0, 1), got {rtol}; pass the fraction of the initial gap to reach, e.g. 1e-8"
        )
    gap = losses - optimum
    reached = torch.nonzero(gap <= rtol * gap[0]).flatten()
    return int(reached[0]) if len(reached) else None
