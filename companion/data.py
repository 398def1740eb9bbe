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
