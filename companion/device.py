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

# Each case named by what torch.profiler shows for a bfloat16 training step of chapter 7's CNN under autocast
# (the cases below a machine's own can be played on it with ONEDNN_MAX_CPU_ISA, as chapter 7 does).
BF16_CASES: dict[str, str] = {
    "amx": (
        "AMX: matrix units that multiply bfloat16 tiles in hardware; oneDNN runs the bfloat16 "
        "convolutions (aten::mkldnn_convolution in the profile), and autocast can be much faster "
        "than float32 for large matrix products and convolutions"
    ),
    "avx512_bf16": (
        "AVX512-BF16: vector instructions for bfloat16 dot products; oneDNN runs the bfloat16 "
        "convolutions with them (aten::mkldnn_convolution in the profile), and autocast can be "
        "faster than float32"
    ),
    "avx512": (
        "AVX512 without bfloat16 instructions: oneDNN still runs the bfloat16 convolutions "
        "(aten::mkldnn_convolution in the profile), converting to float32 to multiply; expect "
        "autocast to be slower than float32"
    ),
    "arm_bf16": (
        "ARM's BF16 extension: bfloat16 dot-product instructions; bfloat16 autocast can be faster "
        "for large matrix products"
    ),
    "none": (
        "no bfloat16 instructions (and on x86, no AVX512): on x86 PyTorch does not give bfloat16 "
        "convolutions to oneDNN, and its reference convolution runs them (aten::_slow_conv2d_forward "
        "and _backward in the profile), many times slower than float32; keep float32, and elsewhere "
        "profile first"
    ),
    "unknown": "the processor's flags could not be read here (they are read on Linux only)",
}

# oneDNN's "avx512_core", the least it computes bfloat16 convolutions with (converting to float32)
AVX512_CORE = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})


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
    """Which key of :data:`BF16_CASES` describes a processor with these ``flags`` (from :func:`cpu_flags`):
    ``amx`` (``amx_bf16``), ``avx512_bf16``, ``arm_bf16`` (ARM's ``bf16``), ``avx512`` (all of
    :data:`AVX512_CORE`: ``avx512f``, ``avx512bw``, ``avx512vl``, ``avx512dq``), else ``none``."""
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
    if AVX512_CORE <= flags:
        return "avx512"
    return "none"
