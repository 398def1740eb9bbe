"""Callbacks for :func:`companion.train.fit` (chapter 6): early stopping and resumable checkpoints.

A callback is any object with ``on_epoch_end(epoch, history, state) -> stop?`` (the protocol is
:class:`companion.train.Callback`). A checkpoint holds everything that decides what the next epoch
computes, so that a resumed run ends with the same weights, bit for bit on a CPU, as an
uninterrupted one:

- the model's, the optimizer's and the scheduler's ``state_dict()``, the epoch and the history;
- the state of the other callbacks (``state_dict()``, e.g. early stopping's patience counter);
- every random number generator: PyTorch's CPU generator (dropout, augmentation, and the shuffle
  of a ``DataLoader`` built without a ``generator``), every CUDA device's, Python's ``random``,
  NumPy's global one, and the ``generator`` of the training ``DataLoader`` (and of its sampler)
  when it has one: that generator is what a seeded ``DataLoader(shuffle=True, generator=g)``
  shuffles with, and restoring it is what makes epoch ``k + 1`` draw the same order again.

It is written atomically: to a temporary file in the same folder, then renamed over the old one
with ``os.replace``, so an interruption while saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import copy
import math
import os
import random
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from companion.train import FitState, History

__all__ = ["Checkpoint", "EarlyStopping", "load_checkpoint", "save_checkpoint"]

FORMAT = "companion.checkpoint/1"


class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; optionally keep the best weights.

    An epoch improves on the best value :math:`b` so far when :math:`v < b - \\delta` (``mode="min"``,
    the default for losses) or :math:`v > b + \\delta` (``mode="max"``, the default for accuracies),
    with :math:`\\delta` = ``min_delta``. With ``restore_best=True`` the model ends with the weights of
    the best epoch, not the last: model selection on the validation split.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        *,
        mode: Literal["min", "max"] | None = None,
        min_delta: float = 0.0,
        restore_best: bool = True,
    ):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(
                f"patience must be a positive int (epochs without improvement before stopping), got {patience!r}"
            )
        mode = mode or ("max" if "acc" in monitor else "min")
        if mode not in ("min", "max"):
            raise ValueError(
                f"mode must be 'min' (lower is better, losses) or 'max' (accuracies), got {mode!r}"
            )
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}; pass 0 to count any improvement")
        self.monitor, self.patience, self.mode, self.min_delta, self.restore_best = (
            monitor,
            patience,
            mode,
            min_delta,
            restore_best,
        )
        self.best, self.best_epoch, self.wait, self.stopped_epoch = math.nan, 0, 0, 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if math.isnan(self.best):
            return True
        return (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )

    def on_epoch_end(self, epoch: int, history: History, state: FitState) -> bool:
        row = history.rows[-1]
        if self.monitor not in row:
            raise ValueError(
                f"EarlyStopping monitors {self.monitor!r}, which this fit does not record; it records "
                f"{[k for k in row if k != 'epoch']}: pass val_loader to fit, or monitor one of those"
            )
        value = float(row[self.monitor])
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_fit_end(self, history: History, state: FitState) -> None:
        if (
            self.restore_best
            and self.best_weights is not None
            and self.best_epoch != len(history)
            and history.rows
        ):
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
        self.stopped_epoch, self.best_weights = state["stopped_epoch"], state["best_weights"]

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, mode={self.mode!r})"


class Checkpoint:
    """Save a resumable checkpoint to ``path`` every ``every`` epochs (and after the last epoch).

    Resume with ``fit(..., resume_from=path)``, or load the weights alone with
    :func:`load_checkpoint`. Put it last in ``fit``'s callbacks: it saves the state the callbacks
    before it have reached at this epoch.
    """

    def __init__(self, path: str | os.PathLike, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (save every that many epochs), got {every!r}")
        self.path, self.every = Path(path), every

    def on_epoch_end(self, epoch: int, history: History, state: FitState) -> bool:
        if epoch % self.every == 0 or epoch == state.epochs:
            save_checkpoint(
                self.path,
                model=state.model,
                optimizer=state.optimizer,
                scheduler=state.scheduler,
                epoch=epoch,
                history=history,
                train_loader=state.train_loader,
                callbacks=[c for c in state.callbacks if c is not self],
            )
        return False

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, every={self.every})"


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader (and its sampler) draw from, in a fixed order."""
    found: list[torch.Generator] = []
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


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
        "loader": [g.get_state() for g in _loader_generators(train_loader)],
    }


def _check_rng_state(state: dict[str, Any], train_loader: Any) -> list[torch.Generator]:
    """The loader's generators, after checking that ``state`` can be restored into this process."""
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) != torch.cuda.device_count():
        raise ValueError(
            f"the checkpoint holds the RNG state of {len(state['cuda'])} CUDA devices but this machine has "
            f"{torch.cuda.device_count()}: resume on as many devices, or load the weights alone "
            "(load_checkpoint(..., restore_rng=False))"
        )
    generators = _loader_generators(train_loader)
    if len(generators) != len(state["loader"]):
        raise ValueError(
            f"the checkpoint holds {len(state['loader'])} DataLoader generator state(s) but train_loader has "
            f"{len(generators)} generator(s): resume with a loader built the same way "
            "(DataLoader(..., generator=torch.Generator()) if it had one)"
        )
    return generators


def set_rng_state(state: dict[str, Any], train_loader: Any = None) -> None:
    """Restore what :func:`rng_state` saved. (CUDA states are skipped on a machine without CUDA.)"""
    generators = _check_rng_state(state, train_loader)
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
    for g, saved in zip(generators, state["loader"]):
        g.set_state(saved)


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
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


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    epoch: int = 0,
    history: History | None = None,
    train_loader: Iterable | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Write everything a resumed :func:`companion.train.fit` needs to ``path``, atomically. Returns the path."""
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": history.rows if history is not None else [],
        "callbacks": [c.state_dict() if hasattr(c, "state_dict") else None for c in callbacks],
        "rng": rng_state(train_loader),
    }
    path = Path(path)
    _atomic_save(state, path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    train_loader: Iterable | None = None,
    callbacks: Sequence[Any] | None = None,
    restore_rng: bool = True,
) -> tuple[int, History]:
    """Load a checkpoint into ``model`` (and whichever of the others are given); return ``(epoch, history)``.

    ``callbacks``: the callbacks of the run being resumed, the same as when it was saved; their
    state is restored. ``None`` (the default) leaves callbacks out, e.g. to load weights only.
    With ``restore_rng=True`` (the default) every random number generator is set back to where it
    was when the checkpoint was written, which a bit-for-bit resume needs; pass ``False`` to load
    weights for inference without touching the global generators.
    """
    from companion.train import History

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass the path a Checkpoint(path) callback wrote")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint written by companion.callbacks.save_checkpoint")
    # check everything first, so that a mismatch leaves the model and the rest untouched
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and state[name] is None:
            raise ValueError(f"the checkpoint holds no {name} state: pass {name}=None to load_checkpoint")
    stateful = [c for c in callbacks if hasattr(c, "load_state_dict")] if callbacks is not None else []
    saved = [s for s in state["callbacks"] if s is not None] if callbacks is not None else []
    if len(stateful) != len(saved):
        raise ValueError(
            f"the checkpoint holds the state of {len(saved)} callback(s) with state but {len(stateful)} "
            "were given: resume with the same callbacks in the same order"
        )
    if restore_rng:
        _check_rng_state(state["rng"], train_loader)

    model.load_state_dict(state["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None:
            obj.load_state_dict(state[name])
    for c, s in zip(stateful, saved):
        c.load_state_dict(copy.deepcopy(s))
    if restore_rng:
        set_rng_state(state["rng"], train_loader)
    return state["epoch"], History(state["history"])
