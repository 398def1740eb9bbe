"""Checkpoint files (chapter 6): write everything a resumed run needs, read it back without corrupting anything.

A checkpoint holds everything that decides what the next epoch computes, so that a resumed run ends
with the same weights, bit for bit on a CPU, as an uninterrupted one:

- the model's, the optimizer's, the scheduler's (and a ``GradScaler``'s) ``state_dict()``, the epoch,
  the number of optimizer steps and the history;
- the state of every callback that has one (``state_dict()``, e.g. early stopping's patience counter);
- every random number generator: PyTorch's CPU generator (dropout, augmentation, and the shuffle
  of a ``DataLoader`` built without a ``generator``), every CUDA device's, Python's ``random``,
  NumPy's global one, and the ``generator`` of the training ``DataLoader`` (and of its sampler)
  when it has one: that generator is what a seeded ``DataLoader(shuffle=True, generator=g)``
  shuffles with, and restoring it is what makes epoch ``k + 1`` draw the same order again.

**Writing** is atomic: to a temporary file in the same folder, flushed to disk, renamed over the old
one with ``os.replace``, then the folder itself is flushed so the rename survives a power cut. A run
killed while saving leaves the previous checkpoint whole; its stale temporary file is removed by the
next save.

**Writing** also checks that the file will read back: a checkpoint is read with
``torch.load(weights_only=True)``, which refuses any Python object but tensors, numbers, strings and
plain containers (a ``collections.deque``, a NumPy scalar), so :func:`save_checkpoint` refuses, at the
first save rather than at the resume, a state holding one, naming the callback, the key and the type.

**Reading** checks before it changes anything: :func:`read_checkpoint` refuses a file that is
truncated or is not a checkpoint, and :meth:`SavedCheckpoint.check` compares the model's keys and
shapes, the optimizer's class and parameter groups, the scheduler's class, the callbacks and fit's
settings that shape each step (``accumulate_grad_batches``, ``gradient_clip_val``, ``precision``) with
what was saved. A refused load leaves the model, optimizer, scheduler, callbacks and generators as
they were, and its error names the file and what does not match. One state cannot be saved: the
random streams inside the workers of a ``DataLoader`` with ``persistent_workers=True``, which draw
their seed once, in the loader's first epoch. A resume with such a loader (in the saved run or now)
would shuffle and augment differently from the uninterrupted run, so it is refused.

A model compiled with ``torch.compile`` names its weights ``_orig_mod.<name>``, and one wrapped in
``DistributedDataParallel`` ``module.<name>``; checkpoints store the plain names, so a compiled or
distributed run's checkpoint loads into the plain model and back.

Under DDP (chapter 10) the :class:`~companion.callbacks.Checkpoint` callback gathers every rank's
random generators and rank 0 writes the file; ``world_size`` and ``rank_rng`` record them, and a
resume restores each rank's own generators, so it must run on as many ranks as the run that saved it.
A resume on another world size is refused unless asked for (``any_world_size=True``; ``fit``'s
``resume_world_size="any"``): everything but the generators is restored, and each rank's generators are
re-seeded from :func:`resume_seed`, so the run goes on, but with another data order and other random
draws than an uninterrupted run.

This module knows nothing of the training loop: :mod:`companion.callbacks` and :mod:`companion.train`
call it.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import io
import os
import random
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from companion.checks import is_int
from companion.distributed import rank, world_size
from companion.history import History
from companion.wrappers import plain_key, unwrap

__all__ = [
    "CheckpointError",
    "SavedCheckpoint",
    "check_file_path",
    "load_checkpoint",
    "load_plain_state_dict",
    "loader_generators",
    "plain_state_dict",
    "read_checkpoint",
    "reseed",
    "resume_seed",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "companion.checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit what it would be loaded into."""


# --- the model's weights under their plain names ---------------------------------------------------


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` under the names of the plain model: without the ``module.`` of a
    ``DistributedDataParallel`` wrapper or the ``_orig_mod.`` segments of ``torch.compile``."""
    return {plain_key(k): v for k, v in unwrap(model).state_dict().items()}


def check_not_sharded(model: nn.Module) -> None:
    """Refuse a model whose weights are sharded across ranks (FSDP2's ``fully_shard``: ``DTensor`` shards).

    A checkpoint of this module is one file written by rank 0, which would hold rank 0's shard only and
    read back without complaint: a sharded model is saved by every rank with
    ``torch.distributed.checkpoint`` instead (chapter 10).
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build of torch without torch.distributed
        return
    sharded = [(k, v) for k, v in plain_state_dict(model).items() if isinstance(v, DTensor)]
    if sharded:
        name, first = sharded[0]
        raise CheckpointError(
            f"the model's weights are sharded across ranks ({len(sharded)} DTensor shards, e.g. {name!r}: "
            f"{tuple(first.to_local().shape)} here of {tuple(first.shape)}): a checkpoint written by rank 0 "
            "would hold rank 0's shard only. Save a sharded model on every rank with "
            "torch.distributed.checkpoint: dcp.save(get_state_dict(model, optimizer), checkpoint_id=...) "
            "(torch.distributed.checkpoint.state_dict), or train without Checkpoint / resume_from"
        )


def _model_mismatch(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> str | None:
    """What differs between ``model``'s weights and ``saved`` (plain names), or None if they fit."""
    own = plain_state_dict(model)
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k}: saved {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved
        and isinstance(v, torch.Tensor)
        and isinstance(saved[k], torch.Tensor)
        and tuple(saved[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"the model has weights the checkpoint lacks: {_few(missing)}")
    if unexpected:
        problems.append(f"the checkpoint has weights the model lacks: {_few(unexpected)}")
    if shapes:
        problems.append(f"shapes differ: {_few(shapes)}")
    return "; ".join(problems) or None


def load_plain_state_dict(model: nn.Module, saved: Mapping[str, torch.Tensor]) -> None:
    """Load weights saved under plain names into ``model``, compiled or not; raise before changing
    anything if a name or a shape differs."""
    problem = _model_mismatch(model, saved)
    if problem:
        raise CheckpointError(f"the weights do not fit this model: {problem}")
    model = unwrap(model)
    model.load_state_dict({k: saved[plain_key(k)] for k in model.state_dict()})


def _few(items: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


# --- random number generators ----------------------------------------------------------------------


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader (and its sampler) draw from, in a fixed order."""
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def _persistent_workers(loader: Any) -> bool:
    return bool(getattr(loader, "persistent_workers", False)) and getattr(loader, "num_workers", 0) > 0


def rng_state(train_loader: Any = None) -> dict[str, Any]:
    """Every random number generator's state, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": int(np_state["state"]["pos"]),
            },
        },
        "loader": [g.get_state() for g in loader_generators(train_loader)],
    }


def _rng_mismatch(state: Mapping[str, Any], train_loader: Any) -> str | None:
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) != torch.cuda.device_count():
        return (
            f"it holds the RNG state of {len(state['cuda'])} CUDA devices but this machine has "
            f"{torch.cuda.device_count()}: resume on as many devices, or load the weights alone "
            "(load_checkpoint(..., restore_rng=False))"
        )
    if train_loader is not None:
        have = len(loader_generators(train_loader))
        if have != len(state["loader"]):
            return (
                f"it holds {len(state['loader'])} DataLoader generator state(s) but train_loader has {have} "
                "generator(s): resume with a loader built the same way "
                "(DataLoader(..., generator=torch.Generator()) if it had one)"
            )
    return None


def set_rng_state(state: Mapping[str, Any], train_loader: Any = None) -> None:
    """Restore what :func:`rng_state` saved, the loader's generators too when ``train_loader`` is given.
    (CUDA states are skipped on a machine without CUDA.)"""
    problem = _rng_mismatch(state, train_loader)
    if problem:
        raise CheckpointError(f"cannot restore these random generators: {problem}")
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            **np_state,
            "state": {
                "key": np_state["state"]["key"].numpy().astype(np.uint32),
                "pos": np_state["state"]["pos"],
            },
        }
    )
    if train_loader is not None:
        for g, saved in zip(loader_generators(train_loader), state["loader"]):
            g.set_state(saved)


def resume_seed(saved_rng: Mapping[str, Any], rank: int) -> int:
    r"""The seed of rank ``rank`` in a run resumed on another world size than the one that saved it.

    Each rank's saved generators cannot be handed on (two ranks' states to one process, or one state to
    two processes), so every generator is re-seeded from what was saved, deterministically:

    .. math:: s_r = \mathrm{int}_{32}\big(\mathrm{SHA256}(\text{rank 0's saved torch generator state}
              \,\|\, r)\big),

    the first four bytes of the digest, little-endian. The same checkpoint gives every rank the same
    seed on every resume, and different ranks different seeds (so their dropout masks differ).
    ``saved_rng``: rank 0's :func:`rng_state` (a one-process run's ``rng``).
    """
    if not is_int(rank) or rank < 0:
        raise ValueError(f"rank must be a non-negative int (this process's rank), got {rank!r}")
    state = saved_rng["torch"].contiguous().view(torch.uint8).numpy().tobytes()
    digest = hashlib.sha256(state + int(rank).to_bytes(8, "little")).digest()
    return int.from_bytes(digest[:4], "little")


def reseed(seed: int, train_loader: Any = None) -> None:
    """Seed Python's ``random``, NumPy's and PyTorch's generators (CPU and every GPU) with ``seed``, and
    every generator of ``train_loader`` (its shuffle) too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for g in loader_generators(train_loader):
        g.manual_seed(seed)


# --- writing ---------------------------------------------------------------------------------------


def _stateful(callbacks: Iterable[Any]) -> list[Any]:
    """The callbacks with a state to save: both ``state_dict()`` and ``load_state_dict()``."""
    return [
        c
        for c in callbacks
        if callable(getattr(c, "state_dict", None)) and callable(getattr(c, "load_state_dict", None))
    ]


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed save of ``path`` left behind (``.<name>.<pid>.<random>.tmp``)."""
    for stale in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        try:
            os.remove(stale)
        except FileNotFoundError:
            pass


def _fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; POSIX only, Windows has no such call."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    # a new name in the same folder (a rename across file systems would not be atomic); mode "xb"
    # refuses to overwrite anything and creates the file with the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(path.parent)


# what torch.load(weights_only=True) reads back without asking: checked by type alone
_LOADABLE = (type(None), bool, int, float, complex, str, bytes, torch.Size, torch.dtype, torch.device)


def _load_error(obj: Any) -> str | None:
    """Why ``torch.load(weights_only=True)`` would not read ``obj`` back, or None if it would (types
    allowed with ``torch.serialization.add_safe_globals`` included): saved to memory and read, once."""
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as error:  # refused by the loader, or not even picklable: it would not resume
        text = str(error)
        _, found, reason = text.partition("WeightsUnpickler error: ")
        first = (reason if found else text).split(". ")[0].splitlines()  # none when the message is empty
        return (first[0].strip() if first else "") or type(error).__name__
    return None


def _unloadable(obj: Any, where: str) -> tuple[str, Any, str] | None:
    """The first value in ``obj`` that ``torch.load(weights_only=True)`` refuses: where, what and why.

    Tensors, numbers, strings and dicts, lists, tuples and sets of them pass by their type; anything
    else (a ``deque``, a NumPy scalar, a tensor subclass) is tried on its own.
    """
    kind = type(obj)
    if kind in _LOADABLE or kind in (torch.Tensor, nn.Parameter):
        return None
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            found = _unloadable(key, f"{where} (a key)") or _unloadable(value, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if kind in (list, tuple, set):
        for i, value in enumerate(obj):
            found = _unloadable(value, f"{where}[{i}]")
            if found:
                return found
        return None
    reason = _load_error(obj)
    return None if reason is None else (where, obj, reason)


def _check_reads_back(state: Mapping[str, Any], callbacks: Sequence[Any]) -> None:
    """Raise :class:`CheckpointError` if the checkpoint ``state`` would save but never load."""
    parts = {name: (value, f"its {name!r}") for name, value in state.items() if name != "callbacks"}
    for i, (c, saved) in enumerate(zip(callbacks, state["callbacks"])):
        parts[f"callback {i}"] = (saved["state"], f"the state_dict() of callback {type(c).__qualname__}")
    for value, where in parts.values():
        found = _unloadable(value, where)
        if found:
            place, bad, reason = found
            name = f"{type(bad).__module__}.{type(bad).__qualname__}"
            allow = (
                f", or, for a class of yours that torch.load can rebuild, allow it with "
                f"torch.serialization.add_safe_globals([{type(bad).__qualname__}])"
                if reason.startswith("Unsupported global") and f"GLOBAL {name} " in reason
                else ""
            )
            raise CheckpointError(
                f"this checkpoint would be written but could never be resumed: {place} is a {name} "
                f"({_short(bad)}), which torch.load(weights_only=True) refuses ({reason}). Store plain "
                f"types there (a list, a dict, an int or float, a tensor: e.g. list(...), float(...)){allow}"
            )


def _short(obj: Any, n: int = 60) -> str:
    text = repr(obj)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_file_path(path: Path) -> None:
    """Raise ``ValueError`` if ``path`` is an existing directory: a checkpoint is one file."""
    if path.is_dir():
        raise ValueError(
            f"{path} is a directory, but a checkpoint is one file: pass a file name such as {path / 'last.pt'}"
        )


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int = 0,
    global_step: int = 0,
    history: History | None = None,
    train_loader: Iterable | None = None,
    callbacks: Sequence[Any] = (),
    stopped: bool = False,
    rank_rng: Sequence[Mapping[str, Any]] | None = None,
    fit_settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything a resumed :func:`companion.train.fit` needs to ``path``, atomically. Returns the path.

    ``stopped``: the run ended here because a callback asked (early stopping): resuming it trains no further.
    ``rank_rng``: under DDP, every rank's :func:`rng_state`, in rank order (gathered by the caller);
    the file then belongs to a run of ``len(rank_rng)`` ranks. ``fit_settings``: fit's settings that a
    resumed run must share (:meth:`companion.callbacks.FitState.fit_settings`).

    Raises:
        CheckpointError: something in the state (a callback's, most likely) would not load with
            ``weights_only=True``; nothing is written.
    """
    path = Path(path)
    check_file_path(path)
    check_not_sharded(model)
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "stopped": bool(stopped),
        "model": plain_state_dict(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_class": type(optimizer).__qualname__ if optimizer is not None else None,
        "optimizer_shapes": [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
        if optimizer is not None
        else None,
        "optimizer_settings": sorted(optimizer.defaults) if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scheduler_class": type(scheduler).__qualname__ if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history.rows if history is not None else [],
        "callbacks": [{"name": type(c).__qualname__, "state": c.state_dict()} for c in _stateful(callbacks)],
        "persistent_workers": _persistent_workers(train_loader),
        "rng": rng_state(train_loader),
        "world_size": len(rank_rng) if rank_rng else 1,
        "rank_rng": list(rank_rng) if rank_rng else None,
        "fit_settings": dict(fit_settings) if fit_settings is not None else None,
    }
    _check_reads_back(state, _stateful(callbacks))
    _atomic_save(state, path)
    return path


# --- reading ---------------------------------------------------------------------------------------


class SavedCheckpoint:
    """A checkpoint read from disk: :meth:`check` what it would be loaded into, then :meth:`restore` it.

    ``epoch``, ``global_step``, ``history`` and ``stopped`` are what the saved run had reached.
    """

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path, self._state = path, state
        self.epoch: int = state["epoch"]
        self.global_step: int = state["global_step"]
        self.stopped: bool = state["stopped"]

    @property
    def history(self) -> History:
        return History(self._state["history"])

    def _refuse(self, problem: str) -> CheckpointError:
        return CheckpointError(f"cannot load the checkpoint {self.path}: {problem}")

    def check(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        train_loader: Iterable | None = None,
        callbacks: Sequence[Any] | None = None,
        restore_rng: bool = True,
        fit_settings: Mapping[str, Any] | None = None,
        any_world_size: bool = False,
    ) -> None:
        """Raise :class:`CheckpointError` (naming the file and the mismatch) unless everything given fits.

        Changes nothing. ``callbacks=None`` leaves callbacks out (loading weights only); a list must
        have callbacks with state of the same classes, in the same order, as the run that saved it.
        ``fit_settings`` (a resumed fit's) must equal those the checkpoint recorded, if it recorded any.
        ``restore_rng=True`` needs as many processes as the saved run, unless ``any_world_size=True``
        (see :meth:`restore`).
        """
        s = self._state
        check_not_sharded(model)
        problem = _model_mismatch(model, s["model"])
        if problem:
            raise self._refuse(f"the model differs from the one saved: {problem}")
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None and s[name] is None:
                raise self._refuse(
                    f"it holds no {name} state: pass {name}=None, or resume the run that has one"
                )
            if obj is not None and name != "scaler" and s[f"{name}_class"] != type(obj).__qualname__:
                raise self._refuse(
                    f"it holds the state of a {s[f'{name}_class']} {name}, not of a {type(obj).__qualname__}: "
                    f"resume with the {name} the run was saved with"
                )
        if optimizer is not None:
            have = [[list(p.shape) for p in g["params"]] for g in optimizer.param_groups]
            if have != s["optimizer_shapes"]:
                raise self._refuse(
                    f"the optimizer's parameter groups differ: saved {_groups(s['optimizer_shapes'])}, "
                    f"given {_groups(have)}; build the optimizer as for the saved run "
                    "(the same groups, over the same parameters, in the same order)"
                )
            # settings of the saved update rule that this optimizer does not have: another rule under the
            # same class name (only this way round: a newer torch may add settings to a class)
            unknown = sorted(set(s["optimizer_settings"]) - set(optimizer.defaults))
            if unknown:
                raise self._refuse(
                    f"its optimizer has settings this {type(optimizer).__qualname__} does not: "
                    f"{', '.join(unknown)}; resume with the optimizer (and update rule) the run was saved with"
                )
        if fit_settings is not None and s.get("fit_settings") is not None:
            problem = _settings_mismatch(s["fit_settings"], fit_settings)
            if problem:
                raise self._refuse(problem)
        if callbacks is not None:
            saved = [c["name"] for c in s["callbacks"]]
            given = [type(c).__qualname__ for c in _stateful(callbacks)]
            if saved != given:
                raise self._refuse(
                    f"it holds the state of the callbacks {saved} but the callbacks with state given are "
                    f"{given}: resume with the same callbacks as the run that saved it"
                )
        if restore_rng and not self.same_world_size():
            if not any_world_size:
                saved_ranks, ranks = s.get("world_size", 1), world_size()
                raise self._refuse(
                    f"it was saved by a run on {saved_ranks} process(es) and this one has {ranks}: each rank "
                    "resumes its own random generators and its own shard of the data, so resume on as many "
                    f"(torchrun --nproc_per_node={saved_ranks} in all), or load the weights alone "
                    "(load_checkpoint(..., restore_rng=False)) and fit the remaining epochs, or go on here with "
                    'fit(..., resume_from=path, resume_world_size="any") (load_checkpoint(..., '
                    "any_world_size=True)), which restores everything but re-seeds each rank's random "
                    "generators, so the data order and random draws differ from an uninterrupted run"
                )
        elif restore_rng:
            problem = _rng_mismatch(_own_rng(s), train_loader)
            if problem:
                raise self._refuse(problem)
            if train_loader is not None and (s["persistent_workers"] or _persistent_workers(train_loader)):
                which = "the saved run's" if s["persistent_workers"] else "this"
                raise self._refuse(
                    f"{which} training DataLoader has persistent_workers=True. Its workers draw their random "
                    "seed once, in the loader's first epoch, so a resumed run would shuffle and augment "
                    "differently from the uninterrupted one: a resume is exact only with "
                    "persistent_workers=False. To go on anyway, inexactly, load the state with "
                    "load_checkpoint(path, model=..., optimizer=..., scheduler=..., restore_rng=False) "
                    "and fit the remaining epochs"
                )

    def restore(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        train_loader: Iterable | None = None,
        callbacks: Sequence[Any] | None = None,
        restore_rng: bool = True,
        any_world_size: bool = False,
    ) -> None:
        """:meth:`check` everything, then load it: the model, then each of the others that is given.

        With ``restore_rng=True`` every random number generator is set back to where it was when the
        checkpoint was written (the loader's when ``train_loader`` is given), which a bit-for-bit
        resume needs; pass ``False`` to load weights without touching the global generators.

        ``any_world_size=True`` lets a run of another world size resume (two ranks' checkpoint in one
        process, or one process's on two ranks): the weights, the optimizer, scheduler and scaler,
        and the callbacks are restored as usual, but the saved generators belong to other ranks, so
        each rank's (Python's, NumPy's, PyTorch's and ``train_loader``'s) is re-seeded with
        :func:`resume_seed` instead. The data is then dealt out to other ranks in other batches and
        dropout draws other masks: the run goes on, but does not end with the uninterrupted run's
        weights. On the same world size the flag changes nothing: the resume is exact.
        """
        kwargs = dict(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            train_loader=train_loader,
            callbacks=callbacks,
            restore_rng=restore_rng,
            any_world_size=any_world_size,
        )
        self.check(**kwargs)
        s = self._state
        load_plain_state_dict(model, s["model"])
        for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            if obj is not None:
                obj.load_state_dict(s[name])
        if callbacks is not None:
            for c, saved in zip(_stateful(callbacks), s["callbacks"]):
                c.load_state_dict(copy.deepcopy(saved["state"]))
        if restore_rng and self.same_world_size():
            set_rng_state(_own_rng(s), train_loader)
        elif restore_rng:
            first = s["rank_rng"][0] if s.get("rank_rng") else s["rng"]
            reseed(resume_seed(first, rank()), train_loader)

    def same_world_size(self) -> bool:
        """Whether this process's group has as many ranks as the run that saved the checkpoint."""
        return self._state.get("world_size", 1) == world_size()


def _settings_mismatch(saved: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """Which of fit's settings differ from the saved run's, said with what to pass; None if none."""
    differ = [name for name in saved if name in given and given[name] != saved[name]]
    if not differ:
        return None
    was = ", ".join(f"{name}={saved[name]!r}" for name in differ)
    now = ", ".join(f"{name}={given[name]!r}" for name in differ)
    return (
        f"it was saved by a fit with {was}, and this one has {now}: each shapes every optimizer step "
        "(how many steps an epoch takes, which a per-step scheduler was sized for, and what each step "
        f"computes), so the run would not go on as it began. Resume with {was}, or load the weights "
        "alone (load_checkpoint(path, model=..., restore_rng=False)) and start a new fit"
    )


def _own_rng(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """This rank's generator states: from ``rank_rng`` for a checkpoint of a DDP run, else ``rng``."""
    return state["rank_rng"][rank()] if state.get("rank_rng") else state["rng"]


def _groups(shapes: list[list[list[int]]]) -> str:
    return f"{len(shapes)} group(s) of {[len(g) for g in shapes]} parameters"


def read_checkpoint(path: str | os.PathLike) -> SavedCheckpoint:
    """Read a file written by :func:`save_checkpoint`; raise, naming the file, if it is not one.

    Raises:
        FileNotFoundError: no file at ``path``. ValueError: ``path`` is a directory.
        CheckpointError: the file is truncated, or is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the path a Checkpoint(path) callback wrote")
    check_file_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a text file, a pickle of something else: all unreadable
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({type(error).__name__}: {error}): the file is "
            "truncated or is not a checkpoint; pass a file that save_checkpoint or Checkpoint wrote"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a checkpoint of format {FORMAT!r} (found {found!r}): pass a file that "
            "companion.checkpoint.save_checkpoint or companion.callbacks.Checkpoint wrote"
        )
    return SavedCheckpoint(path, state)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    train_loader: Iterable | None = None,
    callbacks: Sequence[Any] | None = None,
    restore_rng: bool = True,
    any_world_size: bool = False,
) -> tuple[int, History]:
    """Load a checkpoint into ``model`` (and whichever of the others are given); return ``(epoch, history)``.

    Everything is checked first (:meth:`SavedCheckpoint.check`): a refused load changes nothing.
    ``callbacks``: the callbacks of the run being resumed; ``None`` (the default) leaves them out,
    e.g. to load weights only. ``restore_rng=False`` leaves every random generator alone (for
    inference); ``True`` restores the global ones, and ``train_loader``'s when it is given.
    ``any_world_size=True``: a checkpoint of another world size loads too, its generators re-seeded
    (:meth:`SavedCheckpoint.restore`).
    """
    saved = read_checkpoint(path)
    saved.restore(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        train_loader=train_loader,
        callbacks=callbacks,
        restore_rng=restore_rng,
        any_world_size=any_world_size,
    )
    return saved.epoch, saved.history
