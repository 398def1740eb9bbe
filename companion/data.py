"""Data for the book's chapters: generated problems and real, bundled images."""

from __future__ import annotations

import torch


def make_linear_regression(
    n: int, d: int, noise: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear regression problem with known answer.

    Draws ``X ~ N(0, 1)`` of shape ``(n, d)``, true weights ``w ~ N(0, 1)`` of shape ``(d,)``
    and targets

    .. math:: y = X w + \\varepsilon, \\qquad \\varepsilon \\sim \\mathcal N(0, \\text{noise}^2)

    of shape ``(n, 1)``, so that ``nn.Linear(d, 1)`` and ``nn.MSELoss`` fit them without a
    reshape. The generator is local: the call does not touch the global RNG.

    Returns:
        ``(X, y, w)``: features ``(n, d)``, targets ``(n, 1)`` and the true weights ``(d,)``,
        all ``float32``.
    """
    for name, value in (("n", n), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be a positive number of {'samples' if name == 'n' else 'features'}, got {value}")
    if not noise >= 0:  # also catches NaN
        raise ValueError(f"noise is a standard deviation and must be >= 0, got {noise}; pass 0 for exact targets")
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = X @ w + noise * torch.randn(n, generator=g)
    return X, y.unsqueeze(1), w


SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def digits_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled handwritten digits, split into train, val and test.

    The 1,797 images are 8x8 pixels of 16 grey levels (0..16), scaled here to 8-bit grey
    ``round(v * 255 / 16)`` as an image file would hold them. The split is stratified by class
    (every digit in the same proportion in each part) with fractions 70/15/15, and
    deterministic for a given ``seed``.

    Returns:
        ``{"train": (images, labels), "val": ..., "test": ...}``: images ``uint8`` of shape
        ``(n, 8, 8)``, labels ``int64`` of shape ``(n,)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    index = torch.arange(len(labels)).numpy()
    rest_frac = SPLIT_FRACTIONS[1] + SPLIT_FRACTIONS[2]
    train_idx, rest_idx = train_test_split(index, test_size=rest_frac, stratify=labels.numpy(), random_state=seed)
    val_idx, test_idx = train_test_split(
        rest_idx, test_size=SPLIT_FRACTIONS[2] / rest_frac, stratify=labels[rest_idx].numpy(), random_state=seed
    )
    return {
        name: (images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
        for name, idx in zip(SPLITS, (train_idx, val_idx, test_idx))
    }
