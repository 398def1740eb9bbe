r"""Mixing samples (chapter 8): MixUp and CutMix over a batch, as a ``DataLoader``'s ``collate_fn``.

Both train on blends of two images with a label blended in the same proportion. torchvision's
``v2.MixUp`` and ``v2.CutMix`` pair each image :math:`i` of a batch with the one before it,
:math:`j = i - 1` (the first with the last), draw one :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`
per batch and make the labels one-hot vectors :math:`e_y` over ``num_classes`` classes:

- **MixUp** (Zhang et al., 2018) blends whole images, :math:`\tilde x_i = \lambda x_i + (1 - \lambda) x_j`;
- **CutMix** (Yun et al., 2019) pastes a box of :math:`x_j` into :math:`x_i`, its area a share
  :math:`1 - \lambda` of the image (then :math:`\lambda` is recomputed from the box as clipped at the edges);

and in both the label is :math:`\tilde y_i = \lambda e_{y_i} + (1 - \lambda) e_{y_j}`: a row of class
probabilities that sums to 1, so the targets are floats of shape ``(B, C)``.

The loss they need is the cross-entropy against those probabilities,

.. math:: L = -\frac{1}{B} \sum_i \sum_c \tilde y_{ic} \log \operatorname{softmax}(z_i)_c,

which ``nn.CrossEntropyLoss`` computes when its targets are floats of the scores' shape
(:func:`soft_cross_entropy` writes it out). :func:`companion.fit` accepts such targets (their shape
must be the scores'); it records no ``train_accuracy`` for them, since a blend has no one right
label, while ``val_accuracy``, on the unmixed validation images, is measured as always. Pass
``metrics={"argmax_accuracy": argmax_accuracy}`` to count agreement with each blend's larger share.

Mix only the training loader: ``DataLoader(train, batch_size=64, shuffle=True, collate_fn=MixCollate(10))``.
:class:`MixCollate` is a top-level class, so worker processes started with ``spawn`` can receive it;
its draws come from PyTorch's global generator in the main process (seeded by
:func:`companion.seed_everything`) or from each worker's own seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import default_collate
from torchvision.transforms import v2

from companion.checks import check_int, check_number

__all__ = ["MixCollate", "argmax_accuracy", "mixing_transform", "soft_cross_entropy"]


def mixing_transform(
    num_classes: int, *, mixup_alpha: float | None = 0.2, cutmix_alpha: float | None = None
) -> v2.Transform:
    """``v2.MixUp(alpha=mixup_alpha)``, ``v2.CutMix(alpha=cutmix_alpha)``, or, with both alphas, one of
    the two chosen at random (even odds) for each batch. ``None`` leaves that one out."""
    check_int(num_classes, "num_classes", least=2, example="num_classes=10")
    chosen: list[v2.Transform] = []
    for name, alpha, make in (
        ("mixup_alpha", mixup_alpha, v2.MixUp),
        ("cutmix_alpha", cutmix_alpha, v2.CutMix),
    ):
        if alpha is not None:
            a = check_number(
                alpha, name, low=0.0, low_open=True, example=f"{name}=0.2, or None to leave it out"
            )
            chosen.append(make(alpha=a, num_classes=num_classes))
    if not chosen:
        raise ValueError(
            "mixup_alpha and cutmix_alpha are both None: pass at least one, e.g. mixup_alpha=0.2"
        )
    return chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)


class MixCollate:
    """A ``collate_fn`` that stacks a batch as usual (``default_collate``), then mixes it.

    ``MixCollate(num_classes, mixup_alpha=..., cutmix_alpha=...)`` mixes with :func:`mixing_transform`;
    called on a list of ``(image, label)`` samples it returns ``(images, soft_labels)``, images
    ``(B, C, H, W)`` floats and soft labels ``(B, num_classes)``. :meth:`mix` mixes a batch already
    stacked (a batch transform, e.g. inside a training step).
    """

    def __init__(
        self, num_classes: int, *, mixup_alpha: float | None = 0.2, cutmix_alpha: float | None = None
    ):
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.transform = mixing_transform(num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)

    def __call__(self, samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = default_collate(samples)
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(
                "MixCollate needs samples that are (image, label) pairs, e.g. a TensorDataset(images, labels)"
            )
        return self.mix(batch[0], batch[1])

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch mixed: ``(images, soft_labels)``, after checking that it can be."""
        _check_batch(images, labels, self.num_classes)
        mixed, soft = self.transform(images, labels)
        return mixed, soft

    def __repr__(self) -> str:
        return (
            f"MixCollate(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha})"
        )


def _check_batch(images: Any, labels: Any, num_classes: int) -> None:
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"mixing needs a batch of image and label tensors, got {type(images).__name__} and "
            f"{type(labels).__name__}: pass a dataset of (image tensor, label) pairs"
        )
    if images.ndim != 4:
        raise ValueError(
            f"mixing needs images of shape (B, C, H, W), got shape {tuple(images.shape)}: give a grey image "
            "its channel, e.g. images.unsqueeze(1), and mix before flattening (flatten inside the model)"
        )
    if not images.is_floating_point():
        raise TypeError(
            f"mixing blends pixel values, so the images must be floats, got {images.dtype}: convert them "
            "first, e.g. v2.ToDtype(torch.float32, scale=True) or images.float() / 255"
        )
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"mixing needs one integer class label per image, shape ({len(images)},), got {labels.dtype} of "
            f"shape {tuple(labels.shape)}: pass labels.long(), and mix labels that are not mixed already"
        )
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(
            f"the labels run from {int(labels.min())} to {int(labels.max())}, but num_classes={num_classes} "
            f"allows 0..{num_classes - 1}: pass num_classes equal to the model's number of class scores"
        )


def soft_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy against class probabilities, :math:`-\frac{1}{B}\sum_i\sum_c p_{ic}\log\operatorname{softmax}(z_i)_c`.

    ``output`` holds scores ``(B, C)``, ``target`` probabilities ``(B, C)``. ``nn.CrossEntropyLoss()``
    computes the same for such targets (and is what to train with: ``fit`` checks its inputs); this
    is the formula, written out.
    """
    return -(target * F.log_softmax(output, dim=1)).sum(1).mean()


def argmax_accuracy(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(correct, count)``: predictions that match the label with the largest share,
    :math:`[\arg\max_c z_{ic} = \arg\max_c \tilde y_{ic}]`, for soft targets ``(B, C)``; for integer
    labels ``(B,)`` plain accuracy. A user metric for :func:`companion.fit`: under MixUp it counts
    agreement with the image that dominates each blend (ties, :math:`\lambda = 1/2`, go to the lower class).
    """
    labels = target.argmax(1) if target.ndim == 2 and target.is_floating_point() else target
    return (output.argmax(1) == labels).sum(), torch.tensor(len(labels))
