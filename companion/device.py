"""The machine computed on: which device to use (chapter 1), and what its processor computes natively
(chapter 7: :func:`cpu_flags`, :func:`bf16_case`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["BF16_CASES", "bf16_case", "cpu_flags", "default_device"]


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


# --- what the processor computes natively -----------------------------------------------------------------

BF16_CASES: dict[str, str] = {
    "amx": (
        "AMX: matrix units that multiply bfloat16 tiles in hardware; bfloat16 autocast can be "
        "much faster than float32 for large matrix products and convolutions"
    ),
    "avx512_bf16": (
        "AVX512-BF16: vector instructions for bfloat16 dot products; bfloat16 autocast can be "
        "faster than float32 for large matrix products"
    ),
    "arm_bf16": (
        "ARM's BF16 extension: bfloat16 dot-product instructions; bfloat16 autocast can be faster "
        "for large matrix products"
    ),
    "none": (
        "no bfloat16 arithmetic instructions: bfloat16 is converted to float32 to compute, so "
        "autocast saves memory, not time, and the conversions usually make it slower"
    ),
    "unknown": "the processor's flags could not be read here (they are read on Linux only)",
}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The processor's feature flags (``avx2``, ``avx512_bf16``, ``amx_bf16``, ...), or None where
    they cannot be read (not Linux).

    Read from the ``flags`` line (x86) or ``Features`` line (ARM) of Linux's ``/proc/cpuinfo``.
    """
    path = Path(cpuinfo)
    if not sys.platform.startswith("linux") and str(cpuinfo) == "/proc/cpuinfo":
        return None
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return None


def bf16_case(flags: Iterable[str] | None) -> str:
    """Which key of :data:`BF16_CASES` describes a processor with these ``flags`` (from :func:`cpu_flags`)."""
    if flags is None:
        return "unknown"
    if isinstance(flags, str):
        raise TypeError("flags must be a collection of flag names, e.g. cpu_flags(), not one string")
    flags = set(flags)
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "bf16" in flags:  # ARM's Features line
        return "arm_bf16"
    return "none"
