"""Does `companion.fit` cost anything over the shortest correct hand-written loop? And Lightning's Trainer?

Two cases on scikit-learn's handwritten digits (1,257 training images of 8x8 pixels):

- CNN: three convolutions with batch norm, batch 64, 3 epochs. Each step does real work, so the loop's own
  cost is a small part of the time.
- MLP: 64-128-10 on the flattened pixels, batch 32, 5 epochs. Each step is tiny, so the loop's own cost
  (per-step Python, hooks, bookkeeping) is most of the time: the overhead-dominated case.

In both, the same model, data order (the loader's own seeded generator), AdamW with OneCycleLR stepped after
every batch, and epochs are trained by `companion.fit(progress=False)`, by a hand-written loop that records
the same metrics (sample-weighted training loss, validation loss and accuracy under `torch.inference_mode`),
and, when it is installed (`pip install -e '.[bench]'`, done by `make bench`), by PyTorch Lightning's
`Trainer`. Runs are interleaved (fit, hand, Lightning, then Lightning, hand, fit, ...) so that a change in
machine load hits all alike and none always goes first; each figure is the median of the per-repeat ratios
to the hand loop, with a 95 % interval for it (`companion.perf.median_interval`, from 6 repeats up). The goal
is met when the whole interval lies at or below it, missed when none of it does, and otherwise undecided.
Every run must end with the hand loop's weights, bit for bit: they do the same work.

Usage: python benchmarks/fit_overhead.py [--repeats 21] [--threads N] [--epochs N] [--quick]
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion.datasets import digits_splits
from companion.perf import goal_verdict, median_interval, rounds_for

GOAL = 1.05  # the most fit may cost over the hand loop, as a median ratio


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64 * 2 * 2, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@dataclass(frozen=True)
class Case:
    """One benchmark: a model, how its inputs are shaped, the batch size and the number of epochs."""

    name: str
    make_model: Callable[[], nn.Module]
    flat: bool  # inputs (n, 64) instead of images (n, 1, 8, 8)
    batch_size: int
    epochs: int


CASES = (
    Case("CNN", cnn, flat=False, batch_size=64, epochs=3),
    Case("MLP", mlp, flat=True, batch_size=32, epochs=5),
)


def data(flat: bool, limit: int | None = None) -> dict[str, TensorDataset]:
    """The digits splits, standardized by the training pixels' mean and std; the first ``limit`` of each."""
    splits = digits_splits(seed=0)
    train_images = splits["train"][0].float().div(255)
    mean, std = train_images.mean(), train_images.std()
    datasets = {}
    for name, (images, labels) in splits.items():
        x = (images[:limit].float().div(255) - mean) / std
        datasets[name] = TensorDataset(x.flatten(1) if flat else x.unsqueeze(1), labels[:limit])
    return datasets


def setup(case: Case, datasets: dict[str, TensorDataset], epochs: int):
    """Everything a run needs, built the same way (same seed, same shuffle) for each of the three."""
    companion.seed_everything(0)
    model = case.make_model()
    train = DataLoader(
        datasets["train"],
        batch_size=case.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    val = DataLoader(datasets["val"], batch_size=270)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * len(train))
    return model, train, val, nn.CrossEntropyLoss(), optimizer, scheduler


@dataclass
class Run:
    seconds: float
    model: nn.Module
    last: dict[str, float]  # the last epoch's train_loss, val_loss and val_accuracy


def run_fit(case: Case, datasets: dict[str, TensorDataset], epochs: int) -> Run:
    model, train, val, loss_fn, optimizer, scheduler = setup(case, datasets, epochs)
    start = time.perf_counter()
    history = companion.fit(
        model, train, loss_fn, optimizer, epochs, val_loader=val, scheduler=scheduler, progress=False
    )
    seconds = time.perf_counter() - start
    row = history.rows[-1]
    return Run(seconds, model, {k: row[k] for k in ("train_loss", "val_loss", "val_accuracy")})


def run_hand(case: Case, datasets: dict[str, TensorDataset], epochs: int) -> Run:
    model, train, val, loss_fn, optimizer, scheduler = setup(case, datasets, epochs)
    start = time.perf_counter()
    history = []
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            count += len(y)
        model.eval()
        val_total, correct, val_count = 0.0, 0, 0
        with torch.inference_mode():
            for x, y in val:
                out = model(x)
                val_total += loss_fn(out, y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                val_count += len(y)
        history.append((total / count, val_total / val_count, correct / val_count))
    seconds = time.perf_counter() - start
    return Run(seconds, model, dict(zip(("train_loss", "val_loss", "val_accuracy"), history[-1])))


def import_lightning() -> ModuleType | None:
    """The Lightning package if one is installed (`lightning` or the older `pytorch_lightning`), else None."""
    for name in ("lightning", "pytorch_lightning"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as error:  # installed but broken (e.g. a version clash): say so, compare without it
            print(
                f"{name} is installed but could not be imported ({type(error).__name__}: {error}); skipping it"
            )
            continue
        for logger in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)  # no "GPU available: False" banner per run
        # "does not have many workers": true of all three runs, which load from memory in the main process;
        # the LeafSpec deprecation is torch's, about Lightning's code
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        return module
    return None


def run_lightning(case: Case, datasets: dict[str, TensorDataset], epochs: int, L: ModuleType) -> Run:  # noqa: N803
    """The same run with Lightning's Trainer, set up as a user would to time only training.

    Timed: ``trainer.fit`` alone, its own set-up, loops, hooks, logging and teardown included, as fit's
    argument checks and History are included in fit's time. Not timed, as for fit and the hand loop: building
    the model, loaders, optimizer and scheduler, wrapping them in a LightningModule, and building the Trainer
    (one per run, since a Trainer holds the state of its fit). No progress bar, logger, checkpoint, model
    summary or sanity-check validation: the other two do none of these either.
    """

    class Module(L.LightningModule):
        def __init__(self, model, loss_fn, optimizer, scheduler):
            super().__init__()
            self.model, self.loss_fn, self.opt, self.sched = model, loss_fn, optimizer, scheduler

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self.model(x)
            self.log("val_loss", self.loss_fn(out, y), batch_size=len(y))
            self.log("val_accuracy", (out.argmax(1) == y).float().mean(), batch_size=len(y))

        def configure_optimizers(self):
            return {"optimizer": self.opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}

    model, train, val, loss_fn, optimizer, scheduler = setup(case, datasets, epochs)
    module = Module(model, loss_fn, optimizer, scheduler)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train, val)
    seconds = time.perf_counter() - start
    metrics = trainer.callback_metrics
    return Run(seconds, model, {k: float(metrics[k]) for k in ("train_loss", "val_loss", "val_accuracy")})


Runner = Callable[[Case, dict[str, TensorDataset], int], Run]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def measure(
    case: Case, datasets: dict[str, TensorDataset], runners: dict[str, Runner], repeats: int, epochs: int
) -> dict[str, list[float]]:
    """Seconds per run of each runner, ``repeats`` interleaved rounds after one warm-up epoch each.

    Raises AssertionError if a run ends with other weights than the hand loop's, or changes the number of
    threads: either would make the comparison unfair.
    """
    threads = torch.get_num_threads()
    for runner in runners.values():  # warm up: first-call costs are not the loop's
        runner(case, datasets, 1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners.items())
    for i in range(repeats):
        runs = {}
        for name, runner in order if i % 2 == 0 else order[::-1]:  # who goes first alternates too
            runs[name] = runner(case, datasets, epochs)
            times[name].append(runs[name].seconds)
            assert torch.get_num_threads() == threads, f"{name} changed the number of threads"
        for name in [n for n in runs if n != "hand"]:
            assert same_weights(runs[name].model, runs["hand"].model), (
                f"{case.name}: {name} and the hand-written loop must end with the same weights: "
                "they must do the same work for their times to compare"
            )
    return times


def ratio(times: dict[str, list[float]], name: str) -> float:
    """The median over repeats of ``name``'s seconds over the hand loop's seconds in the same repeat."""
    return statistics.median(t / h for t, h in zip(times[name], times["hand"]))


def interval(times: dict[str, list[float]], name: str) -> list[float] | None:
    """A 95 % interval for the median of the per-repeat ratios (:func:`ratio`), or None from fewer
    repeats than :func:`companion.perf.rounds_for` (6): a smoke run, not a measurement."""
    if len(times["hand"]) < rounds_for():
        return None
    low, high, _ = median_interval([t / h for t, h in zip(times[name], times["hand"])])
    return [round(low, 4), round(high, 4)]


def run(repeats: int = 21, epochs: int | None = None) -> dict:
    """Measure every case (with Lightning when it is installed); return the figures that main() prints."""
    lightning = import_lightning()
    runners: dict[str, Runner] = {"fit": run_fit, "hand": run_hand}
    if lightning is not None:
        runners["lightning"] = lambda c, d, e: run_lightning(c, d, e, lightning)
    results = {}
    for case in CASES:
        case_epochs = epochs or case.epochs
        times = measure(case, data(case.flat), runners, repeats, case_epochs)
        results[case.name] = {
            "batch_size": case.batch_size,
            "epochs": case_epochs,
            "median_seconds": {name: round(statistics.median(t), 4) for name, t in times.items()},
            "ratio_fit_over_hand": round(ratio(times, "fit"), 4),
            "ratio_lightning_over_hand": round(ratio(times, "lightning"), 4) if lightning else None,
            "interval_fit_over_hand": interval(times, "fit"),
            "interval_lightning_over_hand": interval(times, "lightning") if lightning else None,
        }
    return {
        "benchmark": "fit_overhead",
        "cases": results,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__ if lightning else None,
    }


Row = tuple[str, float, "list[float] | None", str, "str | None"]


def rows(figures: dict) -> list[Row]:
    """``(measurement, ratio, interval, goal, verdict)`` rows for `benchmarks/run.py`'s table: time over the
    hand loop's. The verdict is ``companion.perf.goal_verdict``'s, None for a row without a goal or a smoke
    run without an interval."""
    out: list[Row] = []
    for name, r in figures["cases"].items():
        fit, span = r["ratio_fit_over_hand"], r.get("interval_fit_over_hand")
        verdict = goal_verdict(*span, GOAL, at_most=True) if span else None
        out.append((f"{name}: companion.fit / hand loop (time)", fit, span, f"<= {GOAL}", verdict))
        if r["ratio_lightning_over_hand"] is not None:
            light = r.get("interval_lightning_over_hand")
            out.append(
                (f"{name}: Lightning / hand loop (time)", r["ratio_lightning_over_hand"], light, "", None)
            )
    return out


def shown(ratio: float, span: list[float] | None) -> str:
    """``'1.011 (0.998–1.024)'``, or the ratio alone without an interval."""
    return f"{ratio:.3f}" + (f" ({span[0]:.3f}–{span[1]:.3f})" if span else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21, help="interleaved rounds per case (default: 21)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs for every case (default: the case's)"
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats: a smoke run, not a measurement")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)  # one process: the same threads for all three
    threads = torch.get_num_threads()
    lightning = import_lightning()
    versions = f"torch {torch.__version__}" + (f", lightning {lightning.__version__}" if lightning else "")
    print(
        f"{versions}; {threads} thread{'s' if threads > 1 else ''}, {platform.processor() or platform.machine()}; "
        f"{repeats} interleaved repetitions per case"
    )
    figures = run(repeats, args.epochs)
    results = figures["cases"]

    print(f"\n{'case':<22} {'hand s':>7} {'fit/hand (95 %)':>22} {'Lightning/hand':>22}")
    for name, r in results.items():
        label = f"{name} (batch {r['batch_size']}, {r['epochs']} ep)"
        light = r["ratio_lightning_over_hand"]
        fit = shown(r["ratio_fit_over_hand"], r["interval_fit_over_hand"])
        lightning_shown = (
            "not installed" if light is None else shown(light, r["interval_lightning_over_hand"])
        )
        print(f"{label:<22} {r['median_seconds']['hand']:>7.3f} {fit:>22} {lightning_shown:>22}")
    print(f"medians of per-repeat ratios; goal for fit/hand: at most {GOAL}, judged on the interval")
    for measurement, _, _, _, verdict in rows(figures):
        if verdict is not None:
            print(f"  {measurement}: {verdict}")
    if lightning is None:
        print("Lightning: not installed (pip install -e '.[bench]' to compare)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
