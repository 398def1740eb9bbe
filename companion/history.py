"""The record of a training run (chapter 6): :class:`History`, one row of metrics per epoch.

Named after Keras's ``History``. It imports nothing else of the companion, so the loop
(:mod:`companion.train`), the callbacks (:mod:`companion.callbacks`) and checkpoint I/O
(:mod:`companion.checkpoint`) can all use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["History", "default_mode"]

MODES = ("min", "max")


def default_mode(metric: str) -> Literal["min", "max"]:
    """``"max"`` for metrics where higher is better (any name holding ``acc``), ``"min"`` for losses."""
    return "max" if "acc" in metric else "min"


def check_mode(mode: object, metric: str) -> Literal["min", "max"]:
    """``mode`` itself if it is ``"min"`` or ``"max"``, the default for ``metric`` if it is None; else raise."""
    if mode is None:
        return default_mode(metric)
    if mode not in MODES:
        raise ValueError(
            f"mode must be 'min' (lower is better, e.g. a loss) or 'max' (higher is better, e.g. an "
            f"accuracy), got {mode!r}; for {metric!r} pass mode={default_mode(metric)!r} or leave it out"
        )
    return mode  # type: ignore[return-value]


class History:
    """The metrics of a :func:`companion.train.fit`, one row per epoch.

    ``history["val_loss"]`` is the list of one metric over the epochs, ``history.rows[-1]`` the last
    epoch's row, e.g. ``{"epoch": 3, "train_loss": 0.21, "val_loss": 0.25, "val_accuracy": 0.93,
    "lr": 0.001, "seconds": 0.4}``.
    """

    def __init__(self, rows: Iterable[Mapping[str, float]] = ()):
        self.rows: list[dict[str, float]] = [dict(r) for r in rows]

    def append(self, row: Mapping[str, float]) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.rows)

    @property
    def metrics(self) -> list[str]:
        """The metric names, in the order they first appeared (``epoch`` excluded)."""
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(k for k in row if k != "epoch"))
        return list(names)

    def __getitem__(self, metric: str) -> list[float]:
        if metric != "epoch" and metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in this history; it has {self.metrics}")
        return [row.get(metric, math.nan) for row in self.rows]

    def best(self, metric: str = "val_loss", mode: Literal["min", "max"] | None = None) -> dict[str, float]:
        """The row of the best epoch by ``metric``: the lowest value for ``mode="min"``, the highest for
        ``"max"`` (default: ``"max"`` for names holding ``acc``, else ``"min"``).

        Non-finite values (an epoch whose loss was ``nan``) never count as best; among equal values the
        earliest epoch wins.
        """
        mode = check_mode(mode, metric)
        values = self[metric]
        if not values:
            raise ValueError("the history is empty: fit for at least one epoch first")
        finite = [i for i, v in enumerate(values) if math.isfinite(v)]
        if not finite:
            raise ValueError(f"no epoch has a finite {metric}: every value is nan or inf ({values})")
        sign = -1.0 if mode == "max" else 1.0
        return self.rows[min(finite, key=lambda i: sign * values[i])]

    def plot(self, metrics: Sequence[str] | None = None, title: str = "Learning curves") -> Figure:
        """Learning curves: losses on the left, accuracies (if any) on the right, against the epoch.

        Returns the matplotlib ``Figure``; its ``axes`` are the panels. Pass ``metrics`` to choose
        the curves (default: every metric whose name holds ``loss`` or ``accuracy``).
        """
        import matplotlib.pyplot as plt

        if not self.rows:
            raise ValueError("the history is empty: there is nothing to plot yet")
        metrics = (
            list(metrics)
            if metrics is not None
            else [m for m in self.metrics if "loss" in m or "accuracy" in m]
        )
        groups = [
            g
            for g in ([m for m in metrics if "accuracy" not in m], [m for m in metrics if "accuracy" in m])
            if g
        ]
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.6), squeeze=False)
        epochs = self["epoch"]
        for ax, group in zip(axes[0], groups):
            for m in group:
                ax.plot(epochs, self[m], marker="o", markersize=3, label=m.replace("_", " "))
            kind = "accuracy" if "accuracy" in group[0] else "loss"
            ax.set(xlabel="epoch", ylabel=kind, title=f"{title}: {kind}")
            if kind == "loss" and all(v > 0 for m in group for v in self[m] if math.isfinite(v)):
                ax.set(yscale="log", ylabel="loss (log scale)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        last = {
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in (self.rows[-1] if self.rows else {}).items()
        }
        return f"History(epochs={len(self)}, last={last})"
