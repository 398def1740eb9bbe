"""Explicit seeding: one call makes a run repeatable (chapter 1)."""

from __future__ import annotations

import random

import numpy as np
import torch

from companion.checks import is_int


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every GPU) with ``seed``.

    Nothing is seeded behind your back: a chapter calls this once at the top, so a
    fresh kernel gives the same numbers every time. Returns a ``torch.Generator``
    seeded with the same value, for code that wants its own stream
    (``DataLoader(generator=...)``, ``torch.randn(..., generator=...)``).

    Bit-identical results also need deterministic kernels on a GPU
    (``torch.use_deterministic_algorithms(True)``, ``CUBLAS_WORKSPACE_CONFIG``,
    ``cudnn.benchmark = False``); that is a speed trade-off, measured in chapter 7,
    section "Determinism against speed", so it is not switched on here.
    """
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}; pass e.g. seed_everything(0)")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}; pass a non-negative 32-bit integer")
    seed = int(seed)  # a NumPy integer too: Python's random.seed takes only int
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CPU and all CUDA devices
    return torch.Generator().manual_seed(seed)
