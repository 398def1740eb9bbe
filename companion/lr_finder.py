r"""The learning-rate range test (chapter 8): :func:`lr_find`.

Smith ("Cyclical Learning Rates for Training Neural Networks", 2017) and fastai's ``lr_find``: train for a
short while with a learning rate that grows exponentially from ``start_lr`` to ``end_lr``,

.. math:: \eta_i = \eta_{\text{start}} \left(\frac{\eta_{\text{end}}}{\eta_{\text{start}}}\right)^{i / (N - 1)},
          \qquad i = 0, \dots, N - 1,

and record the loss of every step. While the rate is too small the loss hardly moves; over a range of
good rates it falls fast; past the largest stable rate it shoots up, and the test stops.

The suggestion is a tenth of the rate at the lowest point of the smoothed curve (fastai's ``minimum``
rule), because that lowest point lies *past* the largest rate that trains. On a quadratic loss with
Hessian eigenvalues :math:`\lambda`, gradient descent at a constant rate :math:`\eta` is stable for
:math:`\eta < 2/\lambda_{\max}`, and the best constant rate, :math:`2/(\lambda_{\min} + \lambda_{\max})`,
lies between half of :math:`2/\lambda_{\max}` and all of it. But just past :math:`2/\lambda_{\max}` a step
multiplies the error along the top eigenvector by :math:`|1 - \eta\lambda_{\max}|`, barely more than 1, and
the earlier steps had shrunk that error: the loss rises visibly only some steps, and a larger rate, later.
On least-squares problems (``make_linear_regression(512, 10, seed=s)``, full batch, ``start_lr=1e-4``)
drawn with 20 data seeds and 2 initialisations, the lowest point lay up to 2.8 times past
:math:`2/\lambda_{\max}`, so half of it, the rule this function used before, was at or past
:math:`2/\lambda_{\max}` (where gradient descent diverges) in 9 of the 40 draws; a tenth of it was below
:math:`0.3 \cdot 2/\lambda_{\max}` on every draw, between 0.14 and 0.43 times the best rate.
``tests/test_lr_finder.py`` and chapter 8 repeat the check.

With Adam or AdamW the quadratic argument does not carry over: Adam divides each gradient by its running
root mean square, so a step moves each weight by about :math:`\eta` whatever the curvature, and there is
no :math:`2/\lambda_{\max}` to find. A tenth of the lowest point is then a rule of thumb, which chapter 8
compares with a rate tuned on validation data.

The model, the optimizer and the random generators are put back as they were, so the test can run
before the real training without changing it.

Imports run one way: this module uses :mod:`companion.train` (its argument checks) and
:mod:`companion.checkpoint` (the random generators' state); neither uses it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from companion.checkpoint import rng_state, set_rng_state
from companion.checks import check_bool, check_module, is_int, is_number
from companion.train import _check_loader, _check_loss_fn, _check_optimizer, check_output_fits

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["LRFindResult", "lr_find", "smooth_losses", "zero_lag_smooth"]


def smooth_losses(losses: list[float], beta: float) -> list[float]:
    r"""The exponential moving average of ``losses``, corrected for its start at zero (as in Adam):

    .. math:: m_i = \beta m_{i-1} + (1 - \beta) \ell_i, \quad m_{-1} = 0, \qquad
              \hat m_i = \frac{m_i}{1 - \beta^{i + 1}}.

    It lags: :math:`\hat m_i` is mostly the loss of about :math:`\beta / (1 - \beta)` steps earlier.
    """
    smoothed, m = [], 0.0
    for i, loss in enumerate(losses):
        m = beta * m + (1 - beta) * loss
        smoothed.append(m / (1 - beta ** (i + 1)))
    return smoothed


def zero_lag_smooth(losses: list[float], beta: float) -> list[float]:
    """:func:`smooth_losses` run forwards and then backwards over the result: the backward pass undoes
    the forward pass's lag, so the smoothed curve's lowest point stays where the loss's is."""
    return smooth_losses(smooth_losses(losses, beta)[::-1], beta)[::-1]


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured: the rate and the loss of every step, the loss smoothed without lag
    (:func:`zero_lag_smooth`), the rate where that was lowest (``lowest_lr``), the suggested rate (a tenth
    of it), and why the test stopped."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    lowest_lr: float
    suggestion: float
    stopped: str

    def plot(self, ax: Axes | None = None) -> Figure:
        """The loss against the learning rate (log scale): each step's loss faint, the smoothed loss
        bold, its lowest point and the suggestion marked. Returns the figure (a new one unless ``ax``
        is given)."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
        else:
            fig = ax.figure
        lowest = min(self.smoothed)
        top = max(self.smoothed[: self.smoothed.index(lowest) + 1])
        ax.plot(self.lrs, self.losses, color="C0", alpha=0.3, linewidth=1, label="loss of each step")
        ax.plot(self.lrs, self.smoothed, color="C0", linewidth=2, label="smoothed")
        ax.plot([self.lowest_lr], [lowest], "o", color="C1", label=f"lowest: {self.lowest_lr:.1e}")
        ax.axvline(self.suggestion, color="C3", linestyle="--", label=f"suggestion: {self.suggestion:.1e}")
        ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="training loss")
        ax.set_ylim(lowest - 0.1 * (top - lowest), top + 0.5 * (top - lowest))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        return fig


def _check_rates(start_lr: Any, end_lr: Any, num_iter: Any, beta: Any, diverge: Any, floor: Any) -> None:
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not is_number(value) or not 0 < value < math.inf:
            raise ValueError(
                f"{name} must be a positive learning rate, got {value!r}; pass e.g. start_lr=1e-7, end_lr=10"
            )
    if not end_lr > start_lr:
        raise ValueError(
            f"end_lr must be larger than start_lr (the rate grows from one to the other), got start_lr={start_lr} "
            f"and end_lr={end_lr}; pass e.g. start_lr=1e-7, end_lr=10"
        )
    if not is_int(num_iter) or num_iter < 5:
        raise ValueError(
            f"num_iter must be an int of at least 5 (steps of the test), got {num_iter!r}; pass e.g. 100"
        )
    if not is_number(beta) or not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1) (0: no smoothing), got {beta!r}; pass e.g. beta=0.9")
    if not is_number(diverge) or not diverge > 1:
        raise ValueError(
            f"diverge must be a number > 1 (stop when the smoothed loss exceeds diverge times its lowest), got {diverge!r}"
        )
    if not is_number(floor) or not math.isfinite(floor):
        raise ValueError(
            f"floor must be a finite number, the lowest value the loss can take, got {floor!r}; pass e.g. "
            "floor=0 for cross-entropy or MSE, floor=-1 for a negative cosine similarity"
        )


def _refuse_persistent_workers(loader: Any) -> None:
    """A DataLoader whose workers outlive an epoch keeps random streams that lr_find cannot put back."""
    if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
        raise ValueError(
            "loader has persistent_workers=True: its workers draw their random seed once, in the loader's "
            "first epoch, and keep their random streams from epoch to epoch, so lr_find cannot put them "
            "back, and the fit after it would shuffle and augment differently from a fit without it. Pass "
            "lr_find a loader built the same way but with persistent_workers=False"
        )


def _batches(loader: Iterable, num_iter: int) -> Iterator[Any]:
    """``num_iter`` batches of ``loader``, starting it over as often as needed."""
    given = 0
    while given < num_iter:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            given += 1
            if given == num_iter:
                return
        if empty:
            raise ValueError("loader yielded no batches: pass a DataLoader over at least one sample")


def lr_find(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Any,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    beta: float = 0.8,
    diverge: float = 4.0,
    floor: float = 0.0,
    check_output: bool = True,
) -> LRFindResult:
    """Run the learning-rate range test on ``model`` with ``optimizer``; put both back afterwards.

    Trains (in train mode) for ``num_iter`` steps on batches of ``loader`` (started over when it runs out),
    setting the rate of every parameter group to :math:`\\eta_i` of the module docstring before step
    :math:`i`. It stops early once the smoothed loss :math:`s` (:func:`smooth_losses` with ``beta``)
    exceeds ``diverge`` times its lowest value :math:`s_{\\min}`, or the loss is not finite. The suggestion
    is a tenth of the rate at the lowest point of the loss smoothed without lag (:func:`zero_lag_smooth`):
    that point lies past the largest rate that trains, by up to a few times on a quadratic (the module
    docstring says why and how far), and a tenth of it stayed below :math:`2/\\lambda_{\\max}` on every
    least-squares problem tried. It is a starting point for a schedule's peak, not the best rate.

    "Times its lowest" measures the loss from ``floor``, the lowest value the loss can take:
    :math:`s - \\text{floor} > \\text{diverge} \\cdot (s_{\\min} - \\text{floor})`. That is 0 for
    cross-entropy, MSE and the other losses that cannot be negative. A loss that can go below 0 needs its
    own: a negative cosine similarity, :math:`-\\cos`, has the gradients of :math:`1 - \\cos` and
    ``floor=-1`` makes the test run as for :math:`1 - \\cos`. A loss below ``floor`` is refused, since
    the ratio would mean nothing.

    A ``DataLoader`` with ``persistent_workers=True`` (and workers) is refused: its workers' random
    streams live on after the test and could not be put back. The first batch's output and targets go
    through ``fit``'s check (:func:`companion.train.check_output_fits`); ``check_output=False`` skips it,
    as in ``fit``.

    Afterwards the model's weights and buffers, its train/eval mode, the optimizer's state and learning
    rates, and the random generators (torch's, Python's, NumPy's, and the loader's ``generator``) are
    restored exactly: a ``fit`` after ``lr_find`` is the ``fit`` that would have run without it.
    Batches go to the device of the model's parameters.

    Returns:
        an :class:`LRFindResult`; ``result.suggestion`` is the suggested rate, ``result.plot()`` draws it.
    """
    check_module(model)
    if next(model.parameters(), None) is None:
        raise ValueError("the model has no parameters, so there is no learning rate to find")
    _check_optimizer(optimizer, model)
    _check_loss_fn(loss_fn)
    _check_loader(loader, "loader")
    _refuse_persistent_workers(loader)
    _check_rates(start_lr, end_lr, num_iter, beta, diverge, floor)
    check_bool(check_output, "check_output")

    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = rng_state(loader)
    was_training = model.training
    device = next(model.parameters()).device
    ratio = end_lr / start_lr
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf  # the running smoothed loss (smooth_losses) and its lowest value
    stopped = f"ran all {num_iter} steps"
    try:
        model.train()
        for i, batch in enumerate(_batches(loader, num_iter)):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(
                    f"each batch of loader must be a pair (inputs, targets), got a {type(batch).__name__}; "
                    "wrap tensors in TensorDataset(inputs, targets)"
                )
            inputs, targets = batch[0].to(device), batch[1].to(device)
            lr = start_lr * ratio ** (i / (num_iter - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            output = model(inputs)
            if i == 0 and check_output:
                check_output_fits(output, targets, loss_fn)
            loss = loss_fn(output, targets)
            value = loss.item()
            if not math.isfinite(value):
                stopped = f"the loss was {value} at step {i + 1}, rate {lr:.1e}"
                break
            if value < floor:
                raise ValueError(
                    f"the loss was {value:.4g} at step {i + 1}, below floor={floor:g}: the test measures the "
                    "loss from the lowest value it can take, 0 unless you say otherwise. Pass it, e.g. floor=-1 "
                    "for a negative cosine similarity"
                )
            lrs.append(lr)
            losses.append(value)
            average = beta * average + (1 - beta) * value
            smoothed = average / (1 - beta ** len(losses))
            best = min(best, smoothed)
            if smoothed - floor > diverge * (best - floor):
                stopped = (
                    f"the smoothed loss exceeded {diverge:g} times its lowest at step {i + 1}, rate {lr:.1e}"
                )
                if floor != 0:
                    stopped += f" (measured from floor={floor:g})"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        optimizer.zero_grad(set_to_none=True)
        set_rng_state(saved_rng, loader)
        model.train(was_training)
    if len(lrs) < 5:
        raise ValueError(
            f"the test stopped after {len(lrs)} step(s) ({stopped}): too few to suggest a rate. "
            f"Start lower (start_lr below {start_lr:g}) or check the data for nan/inf"
        )
    curve = zero_lag_smooth(losses, beta)
    index = curve.index(min(curve))
    if index == 0:
        raise ValueError(
            f"the loss was lowest at the first rate, start_lr={start_lr:g}: every larger rate made it worse, "
            f"so the test cannot tell where training breaks down. Start lower, e.g. start_lr={start_lr / 1000:g}"
        )
    if index == len(curve) - 1 and len(lrs) == num_iter:
        raise ValueError(
            f"the loss was still falling at end_lr={end_lr:g}: the test never reached the rate where training "
            f"breaks down. Pass a larger end_lr, e.g. end_lr={end_lr * 100:g}"
        )
    return LRFindResult(lrs, losses, curve, lrs[index], lrs[index] / 10, stopped)
