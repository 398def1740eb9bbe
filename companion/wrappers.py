"""The model inside its wrappers: one way to find it, for the loop, the checkpoints and the debugging tools.

Two wrappers put a model inside another module. ``DistributedDataParallel`` (and ``DataParallel``) keep it
as ``.module``, so its weights are named ``module.<name>``; ``torch.compile`` returns an ``OptimizedModule``
that keeps it as ``._orig_mod``, so its weights are named ``_orig_mod.<name>`` (and a compiled *submodule*
adds ``_orig_mod`` in the middle of a name). ``unwrap`` removes any stack of the two, in any order, and
``plain_key`` turns a wrapped weight's name into the plain model's. FSDP2's ``fully_shard`` changes the model
in place and adds no wrapper, so there is nothing to remove.

This module imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

from torch import nn

__all__ = ["COMPILED", "DISTRIBUTED", "plain_key", "unwrap", "unwrap_distributed"]

COMPILED = "_orig_mod"  # the attribute (and key segment) under which torch.compile keeps the model
DISTRIBUTED = "module"  # the attribute (and key prefix) under which DistributedDataParallel keeps it


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside any ``DistributedDataParallel``/``DataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, COMPILED, None), nn.Module):
            model = getattr(model, COMPILED)
        else:
            return model


def unwrap_distributed(model: nn.Module) -> nn.Module:
    """The model inside any outer ``DistributedDataParallel``/``DataParallel`` wrappers, a compiled one left compiled.

    What evaluation runs on each rank: DDP's own forward would run a collective per batch, and removing
    ``torch.compile`` as well would evaluate a compiled model eagerly.
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def plain_key(key: str) -> str:
    """The name of a weight in the plain model: ``_orig_mod`` segments dropped wherever they are.

    Apply it to the keys of ``unwrap(model).state_dict()``; a leading ``module.`` is not removed here, since a
    plain model may have a submodule called ``module``.
    """
    return ".".join(part for part in key.split(".") if part != COMPILED)
