"""Argument checks shared by the whole package: one wording for each mistake a caller can make.

Each check returns the value it accepted (converted to the plain Python type), or raises ``TypeError`` for a
value of the wrong kind and ``ValueError`` for one out of range, with a message that names the argument, says
what it got and shows what to pass instead (``example``). ``bool`` is never accepted as a number: ``True`` is
an ``int`` to Python, but ``epochs=True`` is a mistake, not a request for one epoch.

This module imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

__all__ = [
    "check_bool",
    "check_callable",
    "check_device",
    "check_fraction",
    "check_int",
    "check_module",
    "check_number",
    "check_tensor",
    "is_int",
    "is_number",
]


def is_int(value: Any) -> bool:
    """True for an integer (Python's or numpy's), False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a real number (int or float, Python's or numpy's), False for ``bool`` and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _suggest(example: str | None) -> str:
    return "" if example is None else f"; pass e.g. {example}"


def check_int(
    value: Any, name: str, *, least: int | None = None, most: int | None = None, example: str | None = None
) -> int:
    """``value`` as an ``int``, which must lie in ``[least, most]`` (either bound may be omitted)."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}{_suggest(example)}")
    if (least is not None and value < least) or (most is not None and value > most):
        if most is None:
            what = f"at least {least}"
        elif least is None:
            what = f"at most {most}"
        else:
            what = f"between {least} and {most}"
        raise ValueError(f"{name} must be {what}, got {value}{_suggest(example)}")
    return int(value)


def check_number(
    value: Any,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    example: str | None = None,
) -> float:
    """``value`` as a ``float`` in the interval from ``low`` to ``high``; ``*_open`` excludes that end.

    NaN is never inside an interval; an infinite bound is always open (``inf`` itself is refused).
    """
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}{_suggest(example)}")
    x = float(value)
    above = x > low if (low_open or math.isinf(low)) else x >= low
    below = x < high if (high_open or math.isinf(high)) else x <= high
    if not (above and below):
        left = "(" if (low_open or math.isinf(low)) else "["
        right = ")" if (high_open or math.isinf(high)) else "]"
        raise ValueError(
            f"{name} must be in {left}{low:g}, {high:g}{right}, got {value!r}{_suggest(example)}"
        )
    return x


def check_fraction(
    value: Any, name: str, *, zero: bool = False, one: bool = False, example: str | None = None
) -> float:
    """``value`` as a ``float`` between 0 and 1; ``zero``/``one`` say whether that end is allowed."""
    return check_number(value, name, low=0.0, high=1.0, low_open=not zero, high_open=not one, example=example)


def check_bool(value: Any, name: str) -> bool:
    """``value``, which must be ``True`` or ``False`` (not 0, 1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_tensor(value: Any, name: str) -> torch.Tensor:
    """``value``, which must be a ``torch.Tensor``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_module(value: Any, name: str = "model") -> nn.Module:
    """``value``, which must be a ``torch.nn.Module``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def check_callable(value: Any, name: str, *, what: str = "a function", example: str | None = None) -> Any:
    """``value``, which must be callable."""
    if not callable(value):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}{_suggest(example)}")
    return value


def check_device(value: Any, name: str = "device") -> torch.device:
    """``value`` as a ``torch.device``: one already, or a name such as ``'cuda'`` or ``'cuda:1'``."""
    if isinstance(value, torch.device):
        return value
    if isinstance(value, str):
        try:
            return torch.device(value)
        except RuntimeError as e:
            raise ValueError(f"{name} {value!r} is not a device name; pass e.g. 'cpu' or 'cuda'") from e
    raise TypeError(
        f"{name} must be a torch.device, a name such as 'cuda', or None, got {type(value).__name__}"
    )
