r"""Predicting with more than one look (chapter 8): test-time augmentation and ensembles of models.

Both average class probabilities. With :math:`K` predictions of an image :math:`x`, from :math:`K`
shifted copies of it (test-time augmentation, TTA) or from :math:`K` models (an ensemble),

.. math:: \bar p(x) = \frac{1}{K} \sum_{k=1}^{K} \operatorname{softmax}(z_k(x)),

and the predicted class is :math:`\arg\max_c \bar p_c(x)`.

*Why probabilities, not logits.* The mean of the softmaxes is a mixture of the :math:`K` predictive
distributions: each member votes with a distribution that sums to 1, whatever the scale of its scores.
The mean of the logits (then one softmax) lets the member with the largest scores dominate: a network
trained without label smoothing has scores several times larger than one trained with it, and would
outvote it. Averaging logits is the geometric mean of the probabilities, renormalized; the two often
agree on the argmax, but only the probabilities give a loss (:math:`-\log \bar p_y`) that is the
cross-entropy of the averaged prediction, which is what the ablation measures.

Both put every model in eval mode (batch norm's running statistics, no dropout) and compute under
``torch.inference_mode()``; each model's mode is restored afterwards. The images are a batch of model
inputs, ``(B, C, H, W)`` floats, normalized as the model was trained.

*Shifts.* :func:`shift_images` moves an image by whole pixels without wrapping: the image is padded by
repeating its edge pixels (``F.pad(mode="replicate")``) and cropped back to its size, so a row or column
leaving one side is dropped and the edge row or column is repeated on the other. On the 8x8 digits the
edges are background, so a shifted digit looks like a digit drawn one pixel off; ``torch.roll`` would
instead carry the pixels leaving one side in on the other. No flips: a flipped digit is another digit
(or none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from companion.checks import is_int

__all__ = ["SHIFTS", "ensemble_probabilities", "shift_images", "tta_probabilities"]

SHIFTS: tuple[tuple[int, int], ...] = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
"""The default copies for TTA: the image itself and the image moved one pixel up, down, left and right,
as ``(dy, dx)`` pairs (positive: down and right)."""


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a tensor of model inputs (B, C, H, W), got {type(images).__name__}: "
            "pass a batch, e.g. torch.stack(list_of_images)"
        )
    if images.ndim != 4:
        raise ValueError(
            f"images must have shape (B, C, H, W), got shape {tuple(images.shape)}: give a grey image "
            "its channel with images.unsqueeze(1), and a single image its batch with images[None]"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floats, normalized as the model was trained, got {images.dtype}: convert "
            "them first, e.g. (images.float() / 255 - mean) / std"
        )
    return images


def _check_shifts(shifts: Any, height: int, width: int) -> list[tuple[int, int]]:
    if isinstance(shifts, (str, bytes)) or not isinstance(shifts, Sequence) or len(shifts) == 0:
        raise ValueError(
            f"shifts must be a non-empty sequence of (dy, dx) pixel pairs, got {shifts!r}; "
            "pass e.g. ((0, 0), (0, 1), (0, -1))"
        )
    checked = []
    for shift in shifts:
        if not (isinstance(shift, Sequence) and len(shift) == 2 and all(is_int(d) for d in shift)):
            raise ValueError(f"each shift must be a pair of ints (dy, dx), got {shift!r}; pass e.g. (0, 1)")
        dy, dx = int(shift[0]), int(shift[1])
        if abs(dy) >= height or abs(dx) >= width:
            raise ValueError(
                f"shift {(dy, dx)} moves a {height}x{width} image off itself: pass shifts of less "
                f"than {height} rows and {width} columns"
            )
        checked.append((dy, dx))
    return checked


def shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` ``(B, C, H, W)`` moved ``dy`` pixels down and ``dx`` right (negative: up, left), the
    edge pixels repeated into the space left behind (replicate padding, then a crop; see the module)."""
    images = _check_images(images)
    (dy, dx), *_ = _check_shifts([(dy, dx)], images.shape[-2], images.shape[-1])
    if dy == dx == 0:
        return images
    h, w = images.shape[-2:]
    top, left = max(dy, 0), max(dx, 0)
    padded = F.pad(images, (left, max(-dx, 0), top, max(-dy, 0)), mode="replicate")
    row, col = max(-dy, 0), max(-dx, 0)  # where the shifted image starts inside the padded one
    return padded[..., row : row + h, col : col + w]


def _probabilities(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean softmax of ``model`` over ``batches`` (equal shapes), in eval mode, its mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return torch.stack([model(x).softmax(dim=1) for x in batches]).mean(dim=0)
    finally:
        model.train(was_training)


def tta_probabilities(
    model: nn.Module, images: torch.Tensor, shifts: Sequence[tuple[int, int]] = SHIFTS
) -> torch.Tensor:
    r"""Test-time augmentation: the mean class probabilities ``(B, classes)`` of ``model`` over the copies
    of ``images`` moved by each ``(dy, dx)`` of ``shifts`` (:func:`shift_images`),
    :math:`\bar p(x) = \frac1K \sum_k \operatorname{softmax}(z(\text{shift}_k(x)))`.

    ``shifts=((0, 0),)`` gives the model's own softmax. Eval mode, ``inference_mode``; see the module
    for why probabilities and not logits are averaged."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    images = _check_images(images)
    checked = _check_shifts(shifts, images.shape[-2], images.shape[-1])
    return _probabilities(model, [shift_images(images, dy, dx) for dy, dx in checked])


def ensemble_probabilities(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    shifts: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    r"""An ensemble's mean class probabilities ``(B, classes)``: :math:`\frac1M \sum_m
    \operatorname{softmax}(z_m(x))` over the ``models`` (e.g. one network trained from each of 3 seeds).

    With ``shifts`` each model's probabilities are its TTA mean (:func:`tta_probabilities`) first. One
    model gives its own softmax. Eval mode, ``inference_mode``; each model's mode is restored."""
    if isinstance(models, nn.Module) or not isinstance(models, Sequence):
        raise TypeError(
            f"models must be a list of torch.nn.Module, got {type(models).__name__}: pass [model] for one"
        )
    if len(models) == 0:
        raise ValueError("models is empty: an ensemble needs at least one model, e.g. [model_a, model_b]")
    for i, model in enumerate(models):
        if not isinstance(model, nn.Module):
            raise TypeError(f"models[{i}] must be a torch.nn.Module, got {type(model).__name__}")
    images = _check_images(images)
    if shifts is None:
        return torch.stack([_probabilities(m, [images]) for m in models]).mean(dim=0)
    return torch.stack([tta_probabilities(m, images, shifts) for m in models]).mean(dim=0)
