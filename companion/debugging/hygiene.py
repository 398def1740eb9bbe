"""Data hygiene (chapter 9): is the evaluation honest?

- :func:`modules_in_training_mode`: is the model in eval mode (no dropout, batch norm's running statistics)?
- :func:`yields_same_batches`: does the validation loader yield the same data every time?
- :func:`shared_samples`: does a sample appear in two splits?
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from companion.checks import check_module, check_tensor

__all__ = ["modules_in_training_mode", "shared_samples", "yields_same_batches"]

_TRAIN_EVAL_MODULES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)


def modules_in_training_mode(model: nn.Module) -> list[str]:
    """The submodules that behave differently in training mode and are in it now, as ``"name (Type)"``.

    Dropout zeroes a random part of its inputs in training mode; batch norm normalizes with the
    current batch's statistics and updates its running averages. Measured in that mode, a model's
    accuracy depends on chance and on the other samples in the batch. An empty list after
    ``model.eval()``. (Instance norm with running statistics counts too.)
    """
    found = []
    for name, module in check_module(model).named_modules():
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
    check_tensor(a, "a")
    check_tensor(b, "b")
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
