r"""What a pass over a loader measured (chapter 6): the epoch's loss, accuracy and user metrics.

:func:`companion.train.fit` and :func:`companion.train.evaluate` feed one :class:`EpochMeter` per pass.
It keeps each batch's values as tensors on the device (no host-device sync inside the loop) and reduces
them once, at the end, on the host. No float64 tensor is created: Apple's MPS has none.

The epoch's loss is the mean over *samples*, not over batches: with batch means :math:`\ell_b` over
batches of :math:`n_b` samples,

.. math:: L = \frac{\sum_b n_b \, \ell_b}{\sum_b n_b},

the loss of the whole dataset at once even when the last batch is smaller. For a loss summed over its
batch (``reduction="sum"``), :math:`L = \sum_b \ell_b / \sum_b n_b`. For a class loss that skips some
labels (``ignore_index``) or weighs them (``weight``), :math:`n_b` is the batch's weight of counted
labels, as in the loss's own mean.

A user metric is a callable ``metric(output, targets)`` that returns either a scalar tensor, the batch's
mean (weighted by the batch size, as the loss), or a pair ``(total, count)`` of tensors, for which the
epoch's value is :math:`\sum_b \text{total}_b / \sum_b \text{count}_b`. :func:`accuracy` is one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from companion.losses import is_class_loss, loss_option

__all__ = ["EpochMeter", "Metric", "accuracy", "is_classification"]

Metric = Callable[[torch.Tensor, torch.Tensor], Any]
IGNORE_INDEX = -100  # PyTorch's default ignore_index for every class loss


def _counts(
    predicted: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    counted = target != ignore_index
    return ((predicted == target) & counted).sum(), counted.sum()


def accuracy(
    output: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Correct predictions and counted labels, ``(correct, counted)``: the epoch's accuracy is their ratio,

    .. math:: \text{accuracy} = \frac{\sum_i [\arg\max_c \hat y_{ic} = y_i]}{\#\{i : y_i \ne \text{ignore\_index}\}},

    where labels equal to ``ignore_index`` (padding, unlabelled positions) count neither as right nor as wrong.
    ``output`` holds class scores ``(n, C)``, ``target`` class labels ``(n,)``.
    """
    return _counts(output.argmax(1), target, ignore_index)


def is_classification(output: Any, target: Any) -> bool:
    """Class scores ``(n, C)`` with ``C >= 2`` for integer class labels ``(n,)``: accuracy applies."""
    return (
        isinstance(output, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and output.ndim == 2
        and output.shape[1] >= 2
        and target.ndim == 1
        and not target.is_floating_point()
        and not target.is_complex()
        and target.dtype != torch.bool
    )


def _scalar(value: Any, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value).detach().reshape(())
    except (RuntimeError, TypeError, ValueError):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise TypeError(
            f"metric {name!r} must return a scalar tensor (the batch's mean) or a pair (total, count) of "
            f"scalars, got {shape}"
        ) from None


class EpochMeter:
    """The values of one pass over a loader: :meth:`update` per batch, :meth:`compute` once at the end."""

    def __init__(self, loss_fn: Any, metrics: Mapping[str, Metric] | None = None):
        self.reduction = loss_option(loss_fn, "reduction", "mean")
        self.ignore_index = loss_option(loss_fn, "ignore_index", IGNORE_INDEX)
        weight = loss_option(loss_fn, "weight") if is_class_loss(loss_fn) else None
        self.class_weight = weight if isinstance(weight, torch.Tensor) else None
        self.class_loss = is_class_loss(loss_fn)
        self.metrics = dict(metrics or {})
        self.classifying: bool | None = None
        self.losses: list[Any] = []  # per batch: a Python float (on a CPU, read anyway) or a 0-d tensor
        self.sizes: list[int] = []
        self.predictions: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.values: dict[str, list[tuple[torch.Tensor, Any]]] = {name: [] for name in self.metrics}

    @property
    def count(self) -> int:
        return sum(self.sizes)

    def update(self, loss: torch.Tensor | float, output: Any, targets: Any) -> None:
        """Record one batch: its loss (detached, or already a float), its output and its targets."""
        self.losses.append(loss)
        self.sizes.append(len(targets))
        if self.classifying:
            self.predictions.append(output.argmax(1))  # integers: no graph is kept
            self.labels.append(targets)
        elif self.classifying is None:  # the first batch decides
            self.classifying = is_classification(output, targets)
            if self.classifying:
                self.predictions.append(output.argmax(1))
                self.labels.append(targets)
        if self.metrics:
            self._update_metrics(output, targets)

    def _update_metrics(self, output: Any, targets: Any) -> None:
        with torch.no_grad():
            for name, metric in self.metrics.items():
                value = metric(output, targets)
                if isinstance(value, (tuple, list)) and len(value) == 2:
                    self.values[name].append((_scalar(value[0], name), _scalar(value[1], name)))
                else:
                    self.values[name].append((_scalar(value, name), len(targets)))

    def loss_values(self) -> list[float]:
        """Each batch's loss as a Python float (one device sync for the lot)."""
        if self.losses and isinstance(self.losses[0], torch.Tensor):
            return torch.stack(self.losses).float().tolist()
        return [float(v) for v in self.losses]

    def _label_weights(self, labels: torch.Tensor) -> list[float]:
        """Each batch's weight of counted labels, for a class loss that ignores or weighs labels."""
        counted = labels != self.ignore_index
        weights = counted.float()
        if self.class_weight is not None:  # an ignored label (-100, 255, ...) indexes class 0, weighted 0
            classes = torch.where(counted, labels, torch.zeros_like(labels))
            weights = weights * self.class_weight.to(labels.device).float()[classes]
        sizes = torch.tensor(self.sizes, device=labels.device)
        batch_of = torch.repeat_interleave(torch.arange(len(self.sizes), device=labels.device), sizes)
        return torch.zeros(len(self.sizes), device=labels.device).index_add_(0, batch_of, weights).tolist()

    def compute(self, losses: list[float] | None = None) -> dict[str, float]:
        """``{"loss": L}``, ``"accuracy"`` for class scores, and one entry per user metric."""
        losses = self.loss_values() if losses is None else losses
        weights: list[float] | list[int] = self.sizes
        accuracy = None
        if self.classifying:
            labels = torch.cat(self.labels)
            correct, counted = torch.stack(
                _counts(torch.cat(self.predictions), labels, self.ignore_index)
            ).tolist()
            accuracy = correct / counted if counted else math.nan
            if self.class_loss and (self.class_weight is not None or counted != len(labels)):
                weights = self._label_weights(labels)  # the loss's own mean skipped or weighed labels
        denominator = math.fsum(weights)
        if self.reduction == "sum":
            numerator = math.fsum(losses)
        else:
            numerator = math.fsum(v * w for v, w in zip(losses, weights) if w)
        result = {"loss": numerator / denominator if denominator else math.nan}
        if accuracy is not None:
            result["accuracy"] = accuracy
        for name, pairs in self.values.items():
            totals = torch.stack([t for t, _ in pairs]).tolist()  # one sync per metric
            if isinstance(pairs[0][1], int):  # batch means, weighted by batch size
                counts = [c for _, c in pairs]
                totals = [t * c for t, c in zip(totals, counts)]
            else:
                counts = torch.stack([c for _, c in pairs]).tolist()
            total, count = math.fsum(totals), math.fsum(counts)
            result[name] = total / count if count else math.nan
        return result
