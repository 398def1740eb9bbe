"""Optimizers from scratch, two test functions with known minima, and a path recorder (chapter 2).

The update rules follow ``torch.optim``'s functional form: each is a short function
``xxx_step(param, grad, state, *, hyperparameters...)`` whose body reads like the formula in its
docstring. It updates ``param`` **in place** (under ``torch.no_grad()``) and keeps what it must remember
between steps (the step count ``t``, moving averages) in the dict ``state``, which the caller passes as
``{}`` on the first step and then the same dict on every later step. It returns ``None``.

Notation in the docstrings: :math:`\\theta` the parameter, :math:`g` its gradient, :math:`\\gamma`
the learning rate ``lr``, :math:`\\lambda` ``weight_decay``, :math:`t = 1, 2, \\dots` the step count;
products and squares of tensors are elementwise. Each formula is the one ``torch.optim`` implements
(PyTorch 2.x, single-tensor path), and ``tests/test_optim.py`` holds each rule against its
``torch.optim`` class over 100 steps.

:class:`FromScratch` wraps a step function into a ``torch.optim.Optimizer`` that keeps the state and calls
the function, the way a ``torch.optim`` class does, so :func:`run_path`, ``companion.fit``, the
learning-rate schedulers and checkpoints take either kind.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from companion.checks import check_fraction, is_int, is_number

__all__ = [
    "sgd_step",
    "adam_step",
    "adamw_step",
    "nadam_step",
    "rmsprop_step",
    "adadelta_step",
    "FromScratch",
    "rosenbrock",
    "ROSENBROCK_MINIMUM",
    "QUADRATIC_A",
    "QUADRATIC_MINIMUM",
    "ill_conditioned_quadratic",
    "run_path",
    "steps_to_tolerance",
    "plot_paths",
]


# --------------------------------------------------------------------------------------------------
# Argument checks shared by the update rules: each says what was wrong and what to pass instead.


def _check_tensors(param: Any, grad: Any, state: Any) -> None:
    if not isinstance(param, Tensor) or not isinstance(grad, Tensor):
        raise TypeError(
            f"param and grad must be torch.Tensors, got {type(param).__name__} and {type(grad).__name__}; "
            "pass a parameter and its gradient, e.g. (p, p.grad)"
        )
    if grad.shape != param.shape:
        raise ValueError(
            f"grad has shape {tuple(grad.shape)} but param has shape {tuple(param.shape)}; "
            "pass the gradient of this very parameter (param.grad), which has the parameter's shape"
        )
    if not isinstance(state, dict):
        raise TypeError(
            f"state must be a dict, got {type(state).__name__}; pass {{}} on the first step and the same dict afterwards"
        )


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if not is_number(value) or not value >= 0 or math.isinf(value):
            example = {"lr": "lr=1e-3", "eps": "eps=1e-8", "weight_decay": "weight_decay=0.0 (no decay)"}.get(
                name, f"{name}=0.0"
            )
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}; pass e.g. {example}")


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}; pass e.g. betas=(0.9, 0.999)")
    for i, beta in enumerate(betas):
        check_fraction(beta, f"betas[{i}]", zero=True, example="betas=(0.9, 0.999)")
    return float(betas[0]), float(betas[1])


# --------------------------------------------------------------------------------------------------
# The update rules.


@torch.no_grad()
def sgd_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> None:
    r"""One step of stochastic gradient descent, as ``torch.optim.SGD``.

    .. math::
        g &\leftarrow g + \lambda \theta \\
        b &\leftarrow \begin{cases} g & t = 1 \\ \mu b + (1 - \tau) g & t > 1 \end{cases}
            \qquad \text{(if momentum } \mu > 0\text{; } \tau \text{ is dampening)} \\
        d &= \begin{cases} g + \mu b & \text{Nesterov} \\ b & \text{otherwise} \end{cases} \\
        \theta &\leftarrow \theta - \gamma d

    Without momentum, :math:`d = g`. Nesterov needs ``momentum > 0`` and ``dampening == 0``.
    ``state`` keeps the momentum buffer ``b`` under ``"momentum_buffer"``.
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, momentum=momentum, weight_decay=weight_decay)
    check_fraction(dampening, "dampening", zero=True, one=True, example="dampening=0.0")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"Nesterov momentum needs momentum > 0 and dampening == 0, got momentum={momentum}, dampening={dampening}; "
            "pass e.g. momentum=0.9, dampening=0.0"
        )
    if weight_decay != 0:
        grad = grad + weight_decay * param
    direction = grad
    if momentum != 0:
        if "momentum_buffer" not in state:
            b = grad.clone()
        else:
            b = momentum * state["momentum_buffer"] + (1 - dampening) * grad
        state["momentum_buffer"] = b
        direction = grad + momentum * b if nesterov else b
    param -= lr * direction


@torch.no_grad()
def adam_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> None:
    r"""One step of Adam (Kingma & Ba, 2015), as ``torch.optim.Adam``.

    .. math::
        g &\leftarrow g + \lambda \theta \qquad \text{(L2 penalty, coupled: it goes through } m, v\text{)} \\
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        \hat m &= m / (1 - \beta_1^t), \qquad \hat v = v / (1 - \beta_2^t) \\
        \theta &\leftarrow \theta - \gamma\, \hat m / (\sqrt{\hat v} + \epsilon)

    :math:`m` and :math:`v` start at zero; ``state`` keeps ``"step"`` (:math:`t`), ``"exp_avg"``
    (:math:`m`) and ``"exp_avg_sq"`` (:math:`v`).
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
    beta1, beta2 = _check_betas(betas)
    if weight_decay != 0:
        grad = grad + weight_decay * param
    t = state["step"] = state.get("step", 0) + 1
    m = state["exp_avg"] = beta1 * state.get("exp_avg", torch.zeros_like(param)) + (1 - beta1) * grad
    v = state["exp_avg_sq"] = beta2 * state.get("exp_avg_sq", torch.zeros_like(param)) + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    param -= lr * m_hat / (v_hat.sqrt() + eps)


@torch.no_grad()
def adamw_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
) -> None:
    r"""One step of AdamW (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``.

    Weight decay *decoupled* from the gradient: shrink the weights, then take a plain Adam step
    on the loss gradient alone (:func:`adam_step` with ``weight_decay=0``):

    .. math::
        \theta &\leftarrow \theta - \gamma \lambda \theta \\
        \theta &\leftarrow \text{Adam}(\theta, g) \qquad (m, v \text{ never see } \lambda\theta)

    Note the default ``weight_decay=1e-2``, as in ``torch.optim.AdamW`` (Adam's default is 0).
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
    _check_betas(betas)  # all checks before the shrink: a refused step changes nothing
    param *= 1 - lr * weight_decay
    adam_step(param, grad, state, lr=lr, betas=betas, eps=eps, weight_decay=0.0)


@torch.no_grad()
def nadam_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
) -> None:
    r"""One step of NAdam, Adam with Nesterov momentum (Dozat, 2016), as ``torch.optim.NAdam``.

    With :math:`\psi` the ``momentum_decay``, the momentum coefficient warms up over the steps:

    .. math::
        \mu_t &= \beta_1 \left(1 - \tfrac12\, 0.96^{t \psi}\right) \\
        g &\leftarrow g + \lambda\theta
            \quad\text{(or } \theta \leftarrow \theta - \gamma\lambda\theta \text{ if decoupled)} \\
        m &\leftarrow \beta_1 m + (1 - \beta_1) g, \qquad v \leftarrow \beta_2 v + (1 - \beta_2) g^2,
            \qquad \hat v = v / (1 - \beta_2^t) \\
        \theta &\leftarrow \theta - \gamma \left(
            \frac{1 - \mu_t}{1 - \prod_{i \le t} \mu_i}\, g
            + \frac{\mu_{t+1}}{1 - \prod_{i \le t+1} \mu_i}\, m \right) \Big/ \left(\sqrt{\hat v} + \epsilon\right)

    The first term is the current gradient, the second the momentum *one step ahead*
    (:math:`\mu_{t+1}`): that look-ahead is the Nesterov part. ``state`` keeps ``"step"``,
    ``"mu_product"`` (:math:`\prod_{i \le t} \mu_i`, a Python float), ``"exp_avg"`` and
    ``"exp_avg_sq"``. ``torch.optim.NAdam`` keeps that product in the default dtype (float32 unless
    ``torch.set_default_dtype(torch.float64)``), so with float32 defaults the two differ by about 1e-7.
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay, momentum_decay=momentum_decay)
    beta1, beta2 = _check_betas(betas)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            grad = grad + weight_decay * param
    t = state["step"] = state.get("step", 0) + 1
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    mu_product = state["mu_product"] = state.get("mu_product", 1.0) * mu
    m = state["exp_avg"] = beta1 * state.get("exp_avg", torch.zeros_like(param)) + (1 - beta1) * grad
    v = state["exp_avg_sq"] = beta2 * state.get("exp_avg_sq", torch.zeros_like(param)) + (1 - beta2) * grad**2
    denom = (v / (1 - beta2**t)).sqrt() + eps
    param -= lr * ((1 - mu) / (1 - mu_product) * grad + mu_next / (1 - mu_product * mu_next) * m) / denom


@torch.no_grad()
def rmsprop_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
) -> None:
    r"""One step of RMSprop (Hinton's lecture notes, 2012), as ``torch.optim.RMSprop``.

    .. math::
        g &\leftarrow g + \lambda \theta \\
        v &\leftarrow \alpha v + (1 - \alpha) g^2 \\
        s &= \begin{cases} \sqrt{v - \bar g^{\,2}} + \epsilon, \quad
             \bar g \leftarrow \alpha \bar g + (1 - \alpha) g & \text{centered} \\
             \sqrt{v} + \epsilon & \text{otherwise} \end{cases} \\
        \theta &\leftarrow \theta - \gamma\, g / s
            \qquad \text{or, with momentum } \mu > 0\text{:}\quad
            b \leftarrow \mu b + g / s,\ \ \theta \leftarrow \theta - \gamma b

    Unlike Adam there is no bias correction: :math:`v` starts at zero, so the first steps are
    larger than :math:`\gamma` (the first is :math:`\gamma / \sqrt{1 - \alpha}`, ten times
    :math:`\gamma` for :math:`\alpha = 0.99`). ``state`` keeps ``"square_avg"`` (:math:`v`),
    ``"grad_avg"`` (:math:`\bar g`, centered only) and ``"momentum_buffer"`` (:math:`b`).
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay, momentum=momentum)
    check_fraction(alpha, "alpha", zero=True, one=True, example="alpha=0.99")
    if weight_decay != 0:
        grad = grad + weight_decay * param
    v = state["square_avg"] = alpha * state.get("square_avg", torch.zeros_like(param)) + (1 - alpha) * grad**2
    if centered:
        g_bar = state["grad_avg"] = (
            alpha * state.get("grad_avg", torch.zeros_like(param)) + (1 - alpha) * grad
        )
        s = (v - g_bar**2).sqrt() + eps
    else:
        s = v.sqrt() + eps
    if momentum > 0:
        b = state["momentum_buffer"] = (
            momentum * state.get("momentum_buffer", torch.zeros_like(param)) + grad / s
        )
        param -= lr * b
    else:
        param -= lr * grad / s


@torch.no_grad()
def adadelta_step(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
) -> None:
    r"""One step of Adadelta (Zeiler, 2012), as ``torch.optim.Adadelta``.

    .. math::
        g &\leftarrow g + \lambda \theta \\
        v &\leftarrow \rho v + (1 - \rho) g^2 \\
        \Delta &= \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \\
        u &\leftarrow \rho u + (1 - \rho) \Delta^2 \\
        \theta &\leftarrow \theta - \gamma \Delta

    The step is the ratio of two running RMS values: of past *updates* (:math:`u`) over past
    gradients (:math:`v`). Zeiler's paper has no learning rate (:math:`\gamma = 1`, PyTorch's
    default); PyTorch adds :math:`\gamma` as a multiplier. Since :math:`u` starts at zero, the
    first step is :math:`\gamma \sqrt{\epsilon / (1 - \rho)}` per coordinate (for
    :math:`|g| \gg \sqrt\epsilon`), about :math:`0.003\,\gamma` for the defaults: Adadelta starts slowly.
    ``state`` keeps ``"square_avg"`` (:math:`v`) and ``"acc_delta"`` (:math:`u`).
    """
    _check_tensors(param, grad, state)
    _check_non_negative(lr=lr, eps=eps, weight_decay=weight_decay)
    check_fraction(rho, "rho", zero=True, one=True, example="rho=0.9")
    if weight_decay != 0:
        grad = grad + weight_decay * param
    v = state["square_avg"] = rho * state.get("square_avg", torch.zeros_like(param)) + (1 - rho) * grad**2
    u = state.get("acc_delta", torch.zeros_like(param))
    delta = (u + eps).sqrt() / (v + eps).sqrt() * grad
    state["acc_delta"] = rho * u + (1 - rho) * delta**2
    param -= lr * delta


StepFn = Callable[..., None]


class FromScratch(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` around one of the update rules above, as ``torch.optim.Adam`` is
    around ``torch.optim.adam.adam``: the rule holds the math, the class holds the state.

    ``FromScratch(params, adam_step, lr=0.1)`` keeps the hyperparameters in ``param_groups`` (each
    group may override them, as with any ``torch.optim`` class) and one ``state`` dict per parameter
    in ``self.state``; ``step()`` calls ``step_fn(param, param.grad, state, **hyperparameters)`` on
    every parameter that has a gradient. Being an ``Optimizer``, it works wherever one is expected:
    ``companion.fit``, the learning-rate schedulers of ``torch.optim.lr_scheduler`` (they change
    ``group["lr"]``, which the next step reads), and ``state_dict()`` / ``load_state_dict()`` for
    checkpoints.

    The hyperparameters are checked when the optimizer is built, and when a group is added or a
    state dict loaded, by running the rule once on a scratch tensor (each rule checks every
    argument before it changes anything), so ``lr=-1`` or ``lr=float("inf")`` fails here rather
    than at the first step.

    >>> w = torch.zeros(2, requires_grad=True)
    >>> opt = FromScratch([w], adam_step, lr=0.1)
    >>> (w - 1).pow(2).sum().backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[Any], step_fn: StepFn, **hyperparameters: Any) -> None:
        params = list(params) if isinstance(params, Iterable) and not isinstance(params, Tensor) else []
        if not params or not all(isinstance(p, (Tensor, dict, tuple)) for p in params):
            raise TypeError(
                "params must be a non-empty iterable of tensors (or of parameter-group dicts, or of "
                "(name, tensor) pairs); pass e.g. model.parameters() or [w]"
            )
        if not callable(step_fn):
            raise TypeError(f"step_fn must be an update rule such as adam_step, got {type(step_fn).__name__}")
        keywords = {
            name: p.default
            for name, p in inspect.signature(step_fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        unknown = sorted(set(hyperparameters) - set(keywords))
        if unknown:
            raise TypeError(
                f"{step_fn.__name__} takes no {', '.join(unknown)}; pass only some of: {', '.join(keywords)}"
            )
        missing = [name for name, default in keywords.items() if default is inspect.Parameter.empty]
        missing = [name for name in missing if name not in hyperparameters]
        if missing:
            raise TypeError(
                f"{step_fn.__name__} has no default for {', '.join(missing)}; "
                f"pass it, e.g. FromScratch(params, {step_fn.__name__}, {missing[0]}=0.1)"
            )
        self.step_fn = step_fn
        self.hyperparameter_names = tuple(keywords)
        super().__init__(params, {**keywords, **hyperparameters})

    def _hyperparameters(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {name: group[name] for name in self.hyperparameter_names}

    def _check_hyperparameters(self, group: Mapping[str, Any]) -> None:
        """Run the rule on a scratch tensor: it raises on a bad value, and nothing real changes."""
        scratch = torch.zeros(1, dtype=torch.float64)
        self.step_fn(scratch, torch.zeros_like(scratch), {}, **self._hyperparameters(group))

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy and pickle keep the rule too
        return {
            **super().__getstate__(),
            "step_fn": self.step_fn,
            "hyperparameter_names": self.hyperparameter_names,
        }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        allowed = {"params", "param_names", "initial_lr", *self.hyperparameter_names}
        unknown = sorted(set(param_group) - allowed)
        if unknown:
            raise TypeError(
                f"{self.step_fn.__name__} takes no {', '.join(unknown)}; a parameter group may set only "
                f"some of: {', '.join(self.hyperparameter_names)}"
            )
        self._check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned, after checking that it holds this rule's
        hyperparameters with valid values; a refused state dict leaves the optimizer as it was."""
        for i, group in enumerate(state_dict["param_groups"]):
            missing = [name for name in self.hyperparameter_names if name not in group]
            if missing:
                raise ValueError(
                    f"parameter group {i} of this state dict has no {', '.join(missing)}, which "
                    f"{self.step_fn.__name__} needs: it was saved by an optimizer with another update rule; "
                    "load it into one built with the same rule"
                )
            self._check_hyperparameters(group)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return ``closure()``'s loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyperparameters = self._hyperparameters(group)
            for param in group["params"]:
                if param.grad is not None:
                    self.step_fn(param, param.grad, self.state[param], **hyperparameters)
        return loss


# --------------------------------------------------------------------------------------------------
# Test functions with known minima, and a runner that records an optimizer's path over them.


def rosenbrock(w: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    r"""Rosenbrock's banana-shaped valley, evaluated over the last dimension of ``w`` (size 2):

    .. math:: f(x, y) = (a - x)^2 + b\,(y - x^2)^2

    Its only minimum is :math:`f(a, a^2) = 0`, :data:`ROSENBROCK_MINIMUM` for the defaults. The
    valley floor :math:`y = x^2` is easy to find and then nearly flat along it, a classic test of
    whether an optimizer keeps making progress. ``w`` of shape ``(..., 2)`` gives ``(...)``, so one
    call evaluates a whole grid for a contour plot.
    """
    _check_point(w)
    x, y = w[..., 0], w[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


ROSENBROCK_MINIMUM = (1.0, 1.0)

QUADRATIC_A = torch.tensor([[5.5, 4.5], [4.5, 5.5]], dtype=torch.float64)
"""The Hessian of :func:`ill_conditioned_quadratic`: eigenvalues 1 and 10 (condition number 10),
eigenvectors along the diagonals (1, -1) and (1, 1)."""

QUADRATIC_MINIMUM = (1.0, 1.0)


def ill_conditioned_quadratic(w: Tensor) -> Tensor:
    r"""An ill-conditioned quadratic bowl, evaluated over the last dimension of ``w`` (size 2):

    .. math::
        f(w) = \tfrac12\, (w - w^\star)^\top A\, (w - w^\star), \qquad
        A = \begin{pmatrix} 5.5 & 4.5 \\ 4.5 & 5.5 \end{pmatrix}
          = R \begin{pmatrix} 1 & 0 \\ 0 & 10 \end{pmatrix} R^\top, \qquad
        w^\star = (1, 1)

    with :math:`R` the rotation by 45 degrees: eigenvalues :math:`\lambda_{\min} = 1` along
    :math:`(1, -1)/\sqrt2` and :math:`\lambda_{\max} = 10` along :math:`(1, 1)/\sqrt2`, so the
    condition number is :math:`\kappa = \lambda_{\max} / \lambda_{\min} = 10`
    (:data:`QUADRATIC_A`). The gradient is :math:`A (w - w^\star)`, the Hessian :math:`A`, the only
    minimum :math:`f(w^\star) = 0` (:data:`QUADRATIC_MINIMUM`, the same point as Rosenbrock's).
    Gradient descent converges on it exactly when :math:`\gamma < 2 / \lambda_{\max} = 0.2`.

    This is the mean squared error of a linear model: for data :math:`X` (:math:`n` rows) and
    noiseless targets :math:`y = X w^\star`,

    .. math:: \frac1n \lVert X w - y \rVert^2 = \tfrac12 (w - w^\star)^\top \left(\tfrac2n X^\top X\right) (w - w^\star),

    which is this function when :math:`\tfrac2n X^\top X = A`. The axes of :math:`A` are not the
    coordinate axes (the rotation), as with correlated features.
    """
    _check_point(w)
    d = w - torch.tensor(QUADRATIC_MINIMUM, dtype=w.dtype)
    return 0.5 * torch.einsum("...i,ij,...j->...", d, QUADRATIC_A.to(w.dtype), d)


def _check_point(w: Any) -> None:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise TypeError(
            f"w must be a floating-point tensor, got {type(w).__name__ if not isinstance(w, Tensor) else w.dtype}; "
            "pass e.g. torch.tensor([-1.5, 2.0])"
        )
    if w.ndim == 0 or w.shape[-1] != 2:
        raise ValueError(
            f"w must have a last dimension of size 2 (a point (x, y)), got shape {tuple(w.shape)}"
        )


class _Optimizer(Protocol):
    def step(self) -> Any: ...
    def zero_grad(self) -> Any: ...


def run_path(
    make_optimizer: Callable[[list[Tensor]], _Optimizer],
    fn: Callable[[Tensor], Tensor],
    start: Tensor | Iterable[float],
    steps: int,
) -> Tensor:
    """Minimise ``fn`` from ``start`` for ``steps`` steps and return every point visited.

    Args:
        make_optimizer: builds the optimizer from the parameter list, e.g.
            ``lambda p: torch.optim.Adam(p, lr=0.1)`` or ``lambda p: FromScratch(p, adam_step, lr=0.1)``.
        fn: the function to minimise, from a point (a 1-D tensor) to a scalar tensor.
        start: the first point; a list is converted to ``float64``, a tensor keeps its dtype.
        steps: how many optimizer steps to take.

    Returns:
        A tensor of shape ``(steps + 1, *start.shape)``: row 0 is ``start``, row ``k`` the point
        after ``k`` steps. A run that diverges stops at the first point that is not finite (``inf``
        or ``nan``): nothing can come back from there, so the rows after it are ``nan``.
    """
    if not is_int(steps) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}; pass e.g. steps=200")
    if not isinstance(start, Tensor):
        start = torch.tensor(list(start), dtype=torch.float64)
    if not start.is_floating_point():
        raise TypeError(
            f"start must be a floating-point tensor, got {start.dtype}; pass e.g. torch.tensor([-1.5, 2.0])"
        )
    w = start.detach().clone().requires_grad_(True)
    optimizer = make_optimizer([w])
    path = torch.full((steps + 1, *w.shape), math.nan, dtype=w.dtype)
    path[0] = w.detach()
    for k in range(1, steps + 1):
        optimizer.zero_grad()
        loss = fn(w)
        if loss.ndim != 0:
            raise ValueError(
                f"fn must return a scalar (a 0-d tensor), got shape {tuple(loss.shape)}; sum or average it"
            )
        loss.backward()
        optimizer.step()
        path[k] = w.detach()
        if not torch.isfinite(path[k]).all():
            break
    return path


def steps_to_tolerance(path: Tensor, target: Tensor | Iterable[float], tol: float) -> int | None:
    r"""The first step ``k`` from which the path stays within ``tol`` of ``target`` (relative):

    .. math:: \lVert w_j - w^\star \rVert \le \text{tol} \cdot \max(\lVert w^\star \rVert, 1)
              \quad \text{for all } j \ge k

    ``path`` is what :func:`run_path` returns. Returns ``None`` if the last point is not within
    tolerance (the run has not converged, or has diverged). "Stays" matters: an optimizer that
    passes through the target and overshoots has not converged.
    """
    target = (
        torch.as_tensor(target, dtype=path.dtype) if not isinstance(target, Tensor) else target.to(path.dtype)
    )
    if path.shape[1:] != target.shape:
        raise ValueError(
            f"path has points of shape {tuple(path.shape[1:])} but target has shape {tuple(target.shape)}; "
            "pass the minimiser as a point of the same shape"
        )
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}; pass e.g. tol=1e-3")
    scale = max(target.norm().item(), 1.0)
    within = (path - target).flatten(1).norm(dim=1) <= tol * scale  # nan compares False
    if not within[-1]:
        return None
    outside = (~within).nonzero()
    return 0 if len(outside) == 0 else int(outside[-1]) + 1


def plot_paths(
    ax: Any,
    fn: Callable[[Tensor], Tensor],
    paths: Mapping[str, Tensor],
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    minimum: tuple[float, float] | None = None,
    title: str = "",
) -> Any:
    """Draw log-spaced contours of ``fn`` over ``xlim`` x ``ylim`` and each path on top of them.

    ``fn`` must evaluate a grid (points in the last dimension, as :func:`rosenbrock` does);
    ``paths`` maps a label to a path from :func:`run_path`. Marks the start with a circle and
    ``minimum`` with a star. Returns ``ax``, with labelled axes, a title and a legend.
    """
    import matplotlib.colors as mcolors

    xs = torch.linspace(*xlim, 200, dtype=torch.float64)
    ys = torch.linspace(*ylim, 200, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = fn(torch.stack([gx, gy], dim=-1))
    low = max(z.min().item(), 1e-3 * z.max().item(), 1e-12)
    levels = torch.logspace(math.log10(low), math.log10(z.max().item()), 15).tolist()
    ax.contour(
        gx.numpy(), gy.numpy(), z.numpy(), levels=levels, cmap="Greys", norm=mcolors.LogNorm(), linewidths=0.7
    )
    for (label, path), style in zip(paths.items(), itertools.cycle(["-", "--", ":"])):
        p = path.detach().cpu()
        ax.plot(p[:, 0], p[:, 1], marker=".", linestyle=style, markersize=2, linewidth=1.2, label=label)
    if paths:
        start = next(iter(paths.values()))[0]
        ax.plot(*start.tolist(), "o", color="black", markersize=5, label="start")
    if minimum is not None:
        ax.plot(*minimum, "*", color="red", markersize=12, label="minimum")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$w_1$")
    ax.set_ylabel("$w_2$")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return ax
