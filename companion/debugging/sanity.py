r"""Two checks before a real run (chapter 9): does the model start where it should, and can it learn at all?

- :func:`check_initial_loss`: does an untrained classifier start at the loss of a uniform guess, :math:`\ln C`?
- :func:`overfit_one_batch`: can the model and the loss drive the loss on one batch to near zero?
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from companion.callbacks import Callback, FitState
from companion.checks import check_fraction, check_module, check_tensor, is_int, is_number
from companion.train import check_output_fits, fit

__all__ = ["InitialLoss", "OverfitResult", "check_initial_loss", "overfit_one_batch"]


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
    check_module(model)
    check_tensor(inputs, "inputs")
    check_tensor(targets, "targets")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be integer class labels, got {targets.dtype}: the loss at initialization is "
            "ln C for a classifier; pass labels.long()"
        )
    if targets.ndim != 1:
        raise ValueError(
            f"targets must be class labels of shape (n,), one per sample, got shape {tuple(targets.shape)}"
        )
    rtol = check_fraction(rtol, "rtol", example="rtol=0.1 (10%)")
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
    check_module(model)
    check_tensor(inputs, "inputs")
    check_tensor(targets, "targets")
    if not is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}; pass e.g. max_steps=200")
    if not is_number(target_loss) or not target_loss > 0:
        raise ValueError(
            f"target_loss must be a positive number, got {target_loss!r}; pass e.g. target_loss=0.01"
        )
    history = fit(
        model,
        [(inputs, targets)],
        loss_fn,
        optimizer,
        int(max_steps),
        callbacks=[_StopBelow(target_loss)],
        progress=False,
    )
    losses = history["train_loss"]
    return OverfitResult(losses, float(target_loss), min(losses) <= target_loss)
