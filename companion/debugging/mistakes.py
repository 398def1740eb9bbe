r"""Mistakes people really write in a training loop (chapter 9), and a check for each. Most raise no
error and leave the loss plausible; the in-place one raises an error worth reading.

- :func:`graph_size`, :func:`tensors_holding_graphs`: does a running total or a metric keep the autograd
  graph of every batch alive (``total += loss`` instead of ``total += loss.item()``)?
- :func:`optimizer_coverage`: does the optimizer update exactly the model's trainable parameters, the
  same tensors and not copies left behind when a layer was replaced?
- :func:`parameter_snapshot`, :func:`unchanged_parameters`: which parameters did a few steps not move?
- :func:`dims_summing_to_one`: along which dimension are these probabilities normalized?
- :func:`batch_sizes`: the size of every batch a loader yields, the short last one included (batch norm
  cannot normalize a batch of one sample).
- :func:`read_inplace_error`: which tensor did an in-place operation change under autograd's feet?
- :func:`samples_mixed_by_reshape`: did a ``view`` meant as a ``permute`` mix the samples?
- :func:`first_difference`: where do two runs that should be identical first part?
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from companion.checks import check_module, check_tensor

__all__ = [
    "Difference",
    "InplaceError",
    "OptimizerCoverage",
    "batch_sizes",
    "dims_summing_to_one",
    "first_difference",
    "graph_size",
    "optimizer_coverage",
    "parameter_snapshot",
    "read_inplace_error",
    "samples_mixed_by_reshape",
    "tensors_holding_graphs",
    "unchanged_parameters",
]


def graph_size(value: torch.Tensor) -> int:
    """The number of autograd nodes reachable from ``value.grad_fn``: 0 for a tensor without history.

    Every operation on a tensor that requires grad adds a node that remembers its inputs, so the graph
    of ``total = l_1 + l_2 + ... + l_n`` holds the graphs of all ``n`` losses: its size grows by the size
    of one step's graph at every step, and none of it is freed while ``total`` lives. A running total,
    a metric or anything kept across steps should have size 0 (``loss.item()`` or ``loss.detach()``).
    """
    check_tensor(value, "value")
    if value.grad_fn is None:
        return 0
    seen: set[int] = set()
    alive = []  # keeps each node's Python wrapper alive, so that no id() is reused during the walk
    stack = [value.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        alive.append(node)
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return len(seen)


def tensors_holding_graphs(values: Mapping[str, Any]) -> dict[str, int]:
    """Of named values (a metrics dict, a loop's running totals, ``vars()`` of an object), the tensors
    that keep an autograd graph alive, each with its :func:`graph_size`.

    Tensors inside lists and tuples are looked at too, named ``"name[i]"``. An empty dict is the
    healthy answer for anything that outlives a training step.
    """
    if not isinstance(values, Mapping):
        raise TypeError(
            f"values must be a mapping from names to values, e.g. {{'total': total}}, got {type(values).__name__}"
        )
    found = {}
    for name, value in values.items():
        items = [(f"{name}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, (list, tuple)) else []
        for label, item in [(str(name), value), *items]:
            if isinstance(item, torch.Tensor) and item.grad_fn is not None:
                found[label] = graph_size(item)
    return found


@dataclass(frozen=True)
class OptimizerCoverage:
    """What :func:`optimizer_coverage` found.

    Attributes:
        missing: names of the model's trainable parameters that no param group holds (never updated).
        frozen: names of the model's parameters with ``requires_grad=False`` (never updated either;
            on purpose when fine-tuning a head, by accident otherwise).
        stale: how many tensors the optimizer updates that are not parameters of the model (left over
            from a layer that was replaced, or from a copy of the model).
    """

    missing: list[str]
    frozen: list[str]
    stale: int

    @property
    def ok(self) -> bool:
        """Every trainable parameter is in the optimizer, and the optimizer holds nothing else."""
        return not self.missing and not self.stale

    @property
    def verdict(self) -> str:
        if self.ok:
            frozen = f" ({len(self.frozen)} frozen on purpose?)" if self.frozen else ""
            return f"the optimizer updates every trainable parameter and nothing else{frozen}"
        problems = []
        if self.missing:
            problems.append(
                f"{len(self.missing)} trainable parameter(s) not in the optimizer: {', '.join(self.missing)}"
            )
        if self.stale:
            problems.append(f"the optimizer updates {self.stale} tensor(s) the model does not use")
        return "; ".join(problems) + "; build the optimizer after the model's last change"


def optimizer_coverage(model: nn.Module, optimizer: torch.optim.Optimizer) -> OptimizerCoverage:
    """Compare, by identity, the model's parameters with the tensors in ``optimizer.param_groups``.

    With :math:`P` the set of the model's parameters that require grad and :math:`O` the set of tensors
    in the optimizer's groups, ``missing`` names :math:`P \\setminus O` and ``stale`` counts
    :math:`O \\setminus P_{\\text{all}}` (:math:`P_{\\text{all}}` including frozen ones). Identity, not
    equality: a replaced layer's new weights may equal the old ones and still be other tensors.
    """
    check_module(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, e.g. torch.optim.SGD(model.parameters()), "
            f"got {type(optimizer).__name__}"
        )
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(model.named_parameters())
    in_model = {id(p) for _, p in named}
    return OptimizerCoverage(
        missing=[name for name, p in named if p.requires_grad and id(p) not in in_optimizer],
        frozen=[name for name, p in named if not p.requires_grad],
        stale=len(in_optimizer - in_model),
    )


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter, by name, to compare with after a few steps (:func:`unchanged_parameters`)."""
    return {name: p.detach().clone() for name, p in check_module(model).named_parameters()}


def unchanged_parameters(model: nn.Module, snapshot: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the parameters that are bit for bit what they were in ``snapshot``.

    After a few optimizer steps with a nonzero learning rate every parameter that trains has moved;
    one that has not was frozen, left out of the optimizer, or receives no gradient (a layer the
    forward pass skips, a dead ReLU). A parameter the model no longer has is an error, and so is one
    whose shape changed: take the snapshot after the model's last change.
    """
    check_module(model)
    if not isinstance(snapshot, Mapping):
        raise TypeError(
            f"snapshot must be the dict parameter_snapshot(model) returned, got {type(snapshot).__name__}"
        )
    parameters = dict(model.named_parameters())
    unknown = sorted(set(snapshot) - set(parameters))
    if unknown:
        raise ValueError(
            f"snapshot names parameters the model does not have: {unknown}; pass parameter_snapshot(model)"
        )
    unchanged = []
    for name, before in snapshot.items():
        now = parameters[name]
        if now.shape != before.shape:
            raise ValueError(
                f"parameter {name} has shape {tuple(now.shape)}, was {tuple(before.shape)} in the snapshot: "
                "take the snapshot after the model's last change"
            )
        if torch.equal(now.detach().to(before.device), before):
            unchanged.append(name)
    return unchanged


def dims_summing_to_one(probabilities: torch.Tensor, atol: float = 1e-4) -> list[int]:
    r"""The dimensions ``d`` along which ``probabilities`` are a distribution: nonnegative, and
    :math:`\sum_i p_{\dots i \dots} = 1` (within ``atol``) for every slice along ``d``.

    A classifier's softmax over a batch ``(n, C)`` should give ``[1]``. ``[0]`` means the softmax ran
    over the batch (``dim=0``): each class's column sums to 1 across the samples, and each sample's
    scores depend on the other samples of its batch. ``[]`` means no dimension is normalized (logits,
    or log-probabilities: pass ``log_p.exp()``).
    """
    check_tensor(probabilities, "probabilities")
    if probabilities.ndim == 0 or not probabilities.is_floating_point():
        raise ValueError(
            f"probabilities must be a floating-point tensor with at least one dimension, got "
            f"{probabilities.dtype} of shape {tuple(probabilities.shape)}"
        )
    if not (
        isinstance(atol, (int, float)) and not isinstance(atol, bool) and math.isfinite(atol) and atol > 0
    ):
        raise ValueError(f"atol must be a positive number, e.g. 1e-4, got {atol!r}")
    p = probabilities.detach()
    if bool((p < 0).any()) or not bool(p.isfinite().all()):
        return []
    return [d for d in range(p.ndim) if bool(((p.sum(dim=d) - 1).abs() <= atol).all())]


def batch_sizes(loader: DataLoader) -> list[int]:
    """The size of every batch ``loader`` yields, in order, computed without loading any data.

    For :math:`N` samples in batches of :math:`B`: :math:`\\lfloor N/B \\rfloor` batches of :math:`B`,
    then one of :math:`N \\bmod B` unless it is 0 or ``drop_last=True``. Batch norm in training mode
    fails on a batch of one sample (one value per channel has no variance) and is noisy on two or three.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch.utils.data.DataLoader, got {type(loader).__name__}")
    if loader.batch_size is None:
        raise ValueError(
            "loader has batch_size=None (it yields samples, not batches): build it with a batch_size"
        )
    if loader.batch_sampler is not None and not isinstance(
        loader.batch_sampler, torch.utils.data.BatchSampler
    ):
        raise ValueError("loader has a custom batch_sampler: its batch sizes are its own, read them from it")
    n = len(loader.sampler)
    full, rest = divmod(n, loader.batch_size)
    return [loader.batch_size] * full + ([rest] if rest and not loader.drop_last else [])


@dataclass(frozen=True)
class InplaceError:
    """What autograd's in-place error says, in parts (see :func:`read_inplace_error`).

    Attributes:
        tensor: the modified tensor's type and shape as the message gives them, e.g. ``"torch.FloatTensor [128, 64]"``.
        producer: the operation whose output it is (``"Sigmoid"``): its backward needed the old value.
        version: how many in-place changes the tensor has had; ``expected`` the count when it was saved.
    """

    tensor: str
    producer: str
    version: int
    expected: int

    @property
    def advice(self) -> str:
        return (
            f"the output of {self.producer} ({self.tensor}) was saved for the backward pass and then changed "
            f"in place {self.version - self.expected} time(s): find the in-place operation (x += ..., "
            f"x.add_(...), x[...] = ..., nn.ReLU(inplace=True)) applied to it after {self.producer}, and write "
            "it out of place (x = x + ...)"
        )


_INPLACE = re.compile(
    r"modified by an inplace operation: \[(?P<tensor>[^\]]*\])\], which is output \d+ of (?P<producer>\w+), "
    r"is at version (?P<version>\d+); expected version (?P<expected>\d+)"
)


def read_inplace_error(error: BaseException) -> InplaceError | None:
    """The parts of autograd's "modified by an inplace operation" error, or ``None`` for any other error.

    Autograd saves some tensors in the forward pass (a sigmoid saves its output
    :math:`s`, since :math:`\\sigma' = s(1 - s)`) and counts every in-place change of each tensor. At
    backward time a saved tensor whose count moved holds a value the forward pass never used, so
    autograd refuses. The message names the tensor's shape and the operation that produced it; the
    forward line that made it is found by running again under ``torch.autograd.set_detect_anomaly(True)``.
    """
    if not isinstance(error, BaseException):
        raise TypeError(f"error must be the exception backward() raised, got {type(error).__name__}")
    match = _INPLACE.search(str(error))
    if match is None:
        return None
    return InplaceError(
        tensor=match["tensor"],
        producer=re.sub(r"Backward\d*$", "", match["producer"]),  # torch 2.6 names SigmoidBackward0
        version=int(match["version"]),
        expected=int(match["expected"]),
    )


def samples_mixed_by_reshape(before: torch.Tensor, after: torch.Tensor, sample_dim: int = 0) -> int:
    r"""How many samples of ``after`` (along its first dimension) do not hold the values of the same
    sample of ``before`` (along ``sample_dim``).

    Sample :math:`i` is mixed when :math:`\operatorname{sort}(\operatorname{vec} a_i) \ne
    \operatorname{sort}(\operatorname{vec} b_i)`, with :math:`a_i` = ``after[i]`` and :math:`b_i` =
    ``before.select(sample_dim, i)``: the values may move inside a sample (that is what a layout change
    does), not between samples. ``view`` or ``reshape`` where ``permute`` was meant, on data whose
    samples are not the first dimension (``(H, W, n)``), gives every sample pieces of others: 0 is the
    healthy answer. A ``view`` that scrambles pixels only inside each sample (channels last read as
    channels first) keeps the values and is not caught: look at an image.
    """
    check_tensor(before, "before")
    check_tensor(after, "after")
    if before.ndim == 0 or after.ndim == 0 or before.numel() != after.numel():
        raise ValueError(
            f"before and after must be the same data in two layouts (same number of elements, at least one "
            f"dimension), got shapes {tuple(before.shape)} and {tuple(after.shape)}"
        )
    if not -before.ndim <= sample_dim < before.ndim:
        raise ValueError(
            f"sample_dim must index a dimension of before (ndim {before.ndim}), got {sample_dim}"
        )
    if before.shape[sample_dim] != after.shape[0]:
        raise ValueError(
            f"before has {before.shape[sample_dim]} samples along dim {sample_dim} and after has {after.shape[0]} "
            "along dim 0: pass the sample_dim of before"
        )
    b = before.detach().movedim(sample_dim, 0).reshape(after.shape[0], -1).sort(dim=1).values
    a = after.detach().reshape(after.shape[0], -1).sort(dim=1).values
    return int((a != b).any(dim=1).sum())


@dataclass(frozen=True)
class Difference:
    """Where two runs first differ: the index of the step's record, and the name of the first value there."""

    step: int
    name: str


def first_difference(
    run: Sequence[Mapping[str, Any]], again: Sequence[Mapping[str, Any]]
) -> Difference | None:
    """The first step, and in it the first named value, at which two runs' records differ bit for bit.

    Record in each step what could vary, in the order it happens: the weights at the start, the batch
    (inputs, labels), the loss. Two runs with the same seed should return ``None``; otherwise the name
    says where to look: the batch (a ``DataLoader`` without its own ``generator`` draws its order from
    the global generator, which other code also draws from; worker seeds), the weights (an initialization
    drawn after something else used the generator), or the loss given equal batch and weights
    (a non-deterministic kernel: ``torch.use_deterministic_algorithms(True)`` names it).
    """
    for name, value in (("run", run), ("again", again)):
        if not isinstance(value, Sequence) or not all(isinstance(r, Mapping) for r in value):
            raise TypeError(f"{name} must be a list of dicts, one per step, from names to values")
    if len(run) != len(again):
        raise ValueError(f"the runs have {len(run)} and {len(again)} records: record the same steps in both")
    for step, (a, b) in enumerate(zip(run, again)):
        if list(a) != list(b):
            raise ValueError(
                f"step {step} records {list(a)} in one run and {list(b)} in the other: record the same names"
            )
        for name in a:
            x, y = a[name], b[name]
            same = (
                torch.equal(x, y) if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) else x == y
            )
            if not same:
                return Difference(step, name)
    return None
