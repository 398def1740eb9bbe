"""Which device to compute on (chapter 1)."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """The fastest device this machine has: ``cuda``, then ``mps`` (Apple GPUs), then ``cpu``.

    Every chapter runs on the CPU; where a GPU is present the same code uses it.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
