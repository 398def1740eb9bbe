"""Non-finite values (chapter 9): which module or operation first produces ``nan`` or ``inf``?

:func:`find_nan_source` runs one forward and backward pass and returns a :class:`NanSource`: the inputs, the
first module whose output is not finite though its inputs are, the loss, or the first backward function
that returns a ``nan`` or ``inf`` gradient, with the forward line that created it.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from companion.checks import check_callable, check_module

__all__ = ["NanSource", "find_nan_source"]


@dataclass(frozen=True)
class NanSource:
    """Where :func:`find_nan_source` found the first ``nan``/``inf``.

    ``phase`` is ``"inputs"``, ``"forward"`` (``module`` produced it from finite inputs), ``"loss"`` (the
    loss function did) or ``"backward"`` (the gradient that ``op`` returned holds ``value``, ``"nan"`` or
    ``"inf"``; ``code`` is the forward line that created that operation, inside ``module`` when it is a
    module's ``forward``).
    """

    phase: str
    module: str | None = None
    module_type: str | None = None
    op: str | None = None
    code: str | None = None
    value: str = "nan"

    def __str__(self) -> str:
        where = f"module {self.module} ({self.module_type})" if self.module is not None else None
        if self.phase == "inputs":
            return "the inputs hold nan or inf"
        if self.phase == "forward":
            return f"forward: {where} is the first to output nan or inf"
        if self.phase == "loss":
            return "loss: the outputs are finite but the loss is not"
        parts = [f"backward: {self.op} returned {self.value}"]
        if where:
            parts.append(f"in {where}")
        if self.code:
            parts.append(f"at `{self.code}`")
        return ", ".join(parts)


def _nonfinite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all())
    if isinstance(value, (tuple, list)):
        return any(_nonfinite(v) for v in value)
    if isinstance(value, dict):
        return any(_nonfinite(v) for v in value.values())
    return False


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \S+\n\s+(.+)')
_LIBRARY_FILES = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))


def _forward_frames(node: Any) -> list[tuple[str, int, str]]:
    """The frames (file, line, code) where anomaly mode saw ``node``'s forward operation made, outermost first."""
    stack = "".join(node.metadata.get("traceback_", []))
    return [(f, int(n), code.strip()) for f, n, code in _FRAME.findall(stack)]


def _modules_defined_at(model: nn.Module, filename: str, line: int) -> tuple[str | None, str | None]:
    """The modules whose ``forward`` holds ``filename:line``: their names, and their type."""
    names, kind = [], None
    for name, module in model.named_modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is not None and code.co_filename == filename:
            if line in {n for _, _, n in code.co_lines() if n is not None}:
                names.append(name or "(the model)")
                kind = type(module).__name__
    return (", ".join(names), kind) if names else (None, None)


def _locate(
    model: nn.Module, frames: list[tuple[str, int, str]]
) -> tuple[str | None, str | None, str | None]:
    """(module, type, code) of the innermost frame in a module's ``forward``; else the innermost user line."""
    for filename, line, code in reversed(frames):
        module, kind = _modules_defined_at(model, filename, line)
        if module is not None:
            return module, kind, code
    own = [code for filename, _, code in frames if not filename.startswith(_LIBRARY_FILES)]
    return None, None, (own[-1] if own else None)


class _FirstNonFinite(Exception):
    """Raised by a backward hook to stop the backward pass at the first non-finite gradient."""


def _graph(root: Any) -> list[Any]:
    """Every node of the autograd graph that ends in ``root`` (a ``grad_fn``)."""
    nodes: dict[int, Any] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(child for child, _ in node.next_functions)
    return list(nodes.values())


def _first_nonfinite_gradient(loss: torch.Tensor) -> tuple[Any, str] | None:
    """Run ``loss.backward()`` and return the first backward function (in the order autograd runs them) that
    returns a ``nan`` or ``inf`` gradient, and which of the two; None when every gradient is finite.

    Its incoming gradients were finite, or an earlier function would have been the first: the non-finite
    value starts there. The backward pass stops at it.
    """
    found: list[tuple[Any, str]] = []

    def check(node: Any) -> Callable[..., None]:
        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            if not found and _nonfinite([g for g in grad_inputs if g is not None]):
                nan = any(isinstance(g, torch.Tensor) and bool(g.isnan().any()) for g in grad_inputs)
                found.append((node, "nan" if nan else "inf"))
                raise _FirstNonFinite

        return hook

    handles = [node.register_hook(check(node)) for node in _graph(loss.grad_fn)] if loss.grad_fn else []
    try:
        loss.backward()
    except _FirstNonFinite:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def find_nan_source(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: Callable[[Any, Any], torch.Tensor],
) -> NanSource | None:
    """Run one forward and backward pass and say where the first ``nan``/``inf`` appears, or None.

    In order: the inputs; the forward pass, with a forward hook on every module (hooks fire when a module
    returns, innermost first): the first module whose output holds ``nan``/``inf`` while its inputs do
    not made it, either in one of its operations or in a child. A module that only passes on a ``nan``
    it was given is not blamed, so a ``torch.log`` in a parent's ``forward`` names the parent, not the
    child that receives its result. Then the loss; then the backward pass, with a hook on every function
    of the autograd graph: the first that returns a ``nan`` or ``inf`` gradient is where it starts, and
    ``torch.autograd.detect_anomaly`` (on during the forward pass) recorded the forward line that
    created it. A ``nan`` that appears only in the backward pass (the loss is finite, the next step's is
    not) is the case ``NonFiniteLossError`` cannot explain: ``torch.where(x > 0, torch.log(x), 0)`` at
    ``x = 0`` is finite forward, but its gradient is ``0 * inf = nan``; ``torch.sqrt(x)`` at ``x = 0``
    has the infinite gradient :math:`1 / (2 \\sqrt{0})`.

    The first non-finite gradient is reported also when a later function masks it (a ReLU's backward
    zeroes the gradient where its input was negative, ``nan`` included): when the parameters' gradients
    come out finite, such a report is harmless.

    The model runs in the mode it is in. The parameters' ``.grad`` are left as they were.
    """
    check_module(model)
    check_callable(loss_fn, "loss_fn", what="callable as loss_fn(output, targets)")
    if _nonfinite(inputs):
        return NanSource("inputs")
    first: list[tuple[str, nn.Module]] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not first and _nonfinite(output) and not _nonfinite(args) and not _nonfinite(kwargs):
                first.append((name or "(the model)", module))

        return record

    handles = [
        module.register_forward_hook(hook(name), with_kwargs=True) for name, module in model.named_modules()
    ]
    saved = {p: p.grad for p in model.parameters()}
    for p in saved:
        p.grad = None  # backward would add into the saved tensors in place
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autograd.detect_anomaly(check_nan=False):  # records each operation's forward line
                output = model(inputs)
                if first:
                    name, module = first[0]
                    return NanSource("forward", name, type(module).__name__)
                loss = loss_fn(output, targets)
                if _nonfinite(loss):
                    return NanSource("loss")
            found = _first_nonfinite_gradient(loss)
            if found is not None:
                node, value = found
                module, kind, code = _locate(model, _forward_frames(node))
                return NanSource("backward", module, kind, node.name(), code, value)
        for w in caught:  # warnings of the user's code pass through; anomaly mode's own do not
            if not str(w.message).startswith(("Anomaly Detection has been enabled", "Error detected in")):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return None
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in saved.items():
            p.grad = grad
