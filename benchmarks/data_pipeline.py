"""How fast can the digits reach a training loop? Six data pipelines, side by side, against the limit.

The images are scikit-learn's handwritten digits written as PNG files (the 1,257 of the training split,
8x8 pixels; `--size 32` upscales them), read with chapter 5's transform (grayscale, float in [0, 1],
normalized), in shuffled batches of 64:

- ImageFolder, decoding every file every epoch: in the main process, with worker processes started at
  every epoch, and with persistent workers (started once);
- CachedDataset (decoded once, kept as one tensor) in a DataLoader, which still fetches and collates
  one sample at a time;
- CachedDataset served by `companion.loading.TensorLoader`, one indexing operation per batch (the
  cached pipeline the goals are about);
- the limit: slicing the tensors already in memory in a bare loop, `x[perm[i:i + 64]]` (as
  `x.index_select(0, perm[i:i + 64])`, the same gather with less overhead), no loader.

Only loading is timed (the batches are dropped as they come): the most each pipeline can feed a model.
Every pipeline must deliver the same images (checked first). Runs are interleaved by
`companion.perf.compare` (who goes first alternates), and each figure is the median of per-round ratios
of samples per second, with a 95 % interval from 6 rounds up (`Comparison.interval`): a goal is met when the
whole interval lies at or above it, missed when none of it does, and otherwise undecided. A fast pipeline runs several epochs per call, so that each call lasts long
enough to time on a busy machine.

Usage: python benchmarks/data_pipeline.py [--repeats 9] [--size 8] [--count N] [--workers 2] [--quick]
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from companion.datasets import resized_digits_imagefolder
from companion.loading import CachedDataset, TensorLoader, load_imagefolder
from companion.perf import compare, consume, goal_verdict, rounds_for

GOALS = {"cached_over_naive": 20.0, "cached_over_limit": 0.8}  # at least, on the 8x8 digits
BATCH = 64
NAIVE, CACHED, LIMIT = "ImageFolder, 0 workers", "CachedDataset, TensorLoader", "slicing in memory (limit)"


def transform() -> v2.Compose:
    """Chapter 5's transform: one grey channel, floats in [0, 1], normalized by the training statistics."""
    return v2.Compose(
        [v2.Grayscale(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.3056], [0.376])]
    )


@dataclass
class Pipeline:
    """One way to load the data: ``run()`` passes over ``epochs`` epochs of ``samples`` samples each."""

    loader: object
    epochs: int
    samples: int

    def run(self) -> int:
        return sum(consume(self.loader) for _ in range(self.epochs))


class Slicing:
    """The limit: a bare loop that slices a shuffled batch out of each tensor, no loader object in between."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int = 0):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.targets), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.inputs.index_select(0, index), self.targets.index_select(0, index)


def pipelines(root: Path, workers: int, fast_epochs: int) -> dict[str, Pipeline]:
    """The six pipelines over the image folder at ``root``, each with its own seeded shuffle."""
    folder = load_imagefolder(root, transform())
    cached = CachedDataset(folder)
    n = len(folder)

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    def images(**options) -> DataLoader:
        return DataLoader(folder, BATCH, shuffle=True, generator=seeded(), **options)

    made = {
        NAIVE: Pipeline(images(), 1, n),
        f"ImageFolder, {workers} workers": Pipeline(images(num_workers=workers), 1, n),
        f"ImageFolder, {workers} persistent workers": Pipeline(
            images(num_workers=workers, persistent_workers=True), 1, n
        ),
        "CachedDataset, DataLoader": Pipeline(
            DataLoader(cached, BATCH, shuffle=True, generator=seeded()), max(1, fast_epochs // 4), n
        ),
        CACHED: Pipeline(
            TensorLoader.from_dataset(cached, batch_size=BATCH, shuffle=True, generator=seeded()),
            fast_epochs,
            n,
        ),
        LIMIT: Pipeline(Slicing(cached.inputs, torch.as_tensor(cached.targets), BATCH), fast_epochs, n),
    }
    check_same_images(made)
    return made


def check_same_images(made: dict[str, Pipeline]) -> None:
    """Every pipeline must deliver the same images and labels in an epoch (in its own order)."""

    def content(loader) -> torch.Tensor:
        """The epoch's (label, pixels...) rows in lexicographic order: the same for any shuffle."""
        rows = torch.cat([torch.cat([y[:, None].double(), x.flatten(1).double()], 1) for x, y in loader])
        return rows[torch.from_numpy(np.lexsort(rows.numpy().T[::-1]))]

    reference = content(made[LIMIT].loader)
    for name, pipeline in made.items():
        if not torch.equal(content(pipeline.loader), reference):
            raise AssertionError(f"{name} does not deliver the same images and labels as the others")


def measure(made: dict[str, Pipeline], repeats: int) -> dict[str, dict[str, float]]:
    """Samples per second of each pipeline (median) and its speed over the limit and over the naive one."""
    comparison = compare({name: p.run for name, p in made.items()}, warmup=1, repeat=repeats)
    samples = {name: p.epochs * p.samples for name, p in made.items()}

    def interval(name: str, over: str) -> list[float] | None:
        if repeats < rounds_for():  # a smoke run: too few rounds for a 95 % interval
            return None
        span = comparison.interval(name, over, samples)
        return [round(span.low, 4), round(span.high, 4)]

    return {
        name: {
            "epochs_per_call": made[name].epochs,
            "samples_per_second": round(samples[name] / comparison.timing(name).median, 1),
            "over_limit": round(comparison.speedup(name, LIMIT, samples), 4),
            "over_limit_interval": interval(name, LIMIT),
            "over_naive": round(comparison.speedup(name, NAIVE, samples), 2),
            "over_naive_interval": interval(name, NAIVE),
        }
        for name in made
    }


def run(
    repeats: int = 9, size: int = 8, count: int | None = None, workers: int = 2, root: Path | None = None
) -> dict:
    """Write the images (into a temporary folder unless ``root`` is given), measure, and return the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = resized_digits_imagefolder(Path(root or tmp) / f"digits_{size}px_{count}", size, count)
        n = count or 1257
        fast_epochs = max(1, min(40, 50_000 // n))  # about 50,000 samples per call for the fast ones
        results = measure(pipelines(folder, workers, fast_epochs), repeats)
    cached = results[CACHED]
    return {
        "benchmark": "data_pipeline",
        "images": n,
        "size": size,
        "batch_size": BATCH,
        "workers": workers,
        "repeats": repeats,
        "pipelines": results,
        "cached_over_naive": cached["over_naive"],
        "cached_over_limit": cached["over_limit"],
        "goals": GOALS,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


Row = tuple[str, float, "list[float] | None", str, "str | None"]


def rows(figures: dict) -> list[Row]:
    """``(measurement, ratio, interval, goal, verdict)`` rows: each pipeline's speed over the limit, then
    the goals, judged by ``companion.perf.goal_verdict`` on the interval (None: no goal, a smoke run without
    an interval, or images other than the 1,257 digits of 8x8 the goals are set for)."""
    out: list[Row] = [
        (f"{name} / limit", r["over_limit"], r.get("over_limit_interval"), "", None)
        for name, r in figures["pipelines"].items()
        if name != LIMIT
    ]
    real_digits = figures["size"] == 8 and figures["images"] == 1257  # what the goals are set for
    cached = figures["pipelines"][CACHED]
    for key, over, label in (
        ("cached_over_naive", "over_naive", "TensorLoader / ImageFolder 0 workers"),
        ("cached_over_limit", "over_limit", "TensorLoader / limit"),
    ):
        value, goal, span = figures[key], GOALS[key], cached.get(f"{over}_interval")
        verdict = goal_verdict(*span, goal, at_most=False) if span and real_digits else None
        out.append((label, value, span, f">= {goal:g}", verdict))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (default: 9)")
    parser.add_argument("--size", type=int, default=8, help="image side in pixels (default: 8, the digits')")
    parser.add_argument("--count", type=int, default=None, help="images (default: all 1,257 training digits)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    parser.add_argument("--quick", action="store_true", help="3 repeats: a smoke run, not a measurement")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    figures = run(repeats, args.size, args.count, args.workers)
    print(
        f"torch {torch.__version__}; {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; {repeats} interleaved rounds"
    )
    print(f"{figures['images']} images of {args.size}x{args.size} pixels, batches of {BATCH}\n")
    print(f"{'pipeline':<44} {'samples/s':>12} {'/ limit':>9} {'/ naive':>9}")
    for name, r in figures["pipelines"].items():
        print(f"{name:<44} {r['samples_per_second']:>12,.0f} {r['over_limit']:>9.3g} {r['over_naive']:>9.3g}")
    print("medians of per-round ratios of samples/s, a goal judged on the 95 % interval")
    for measurement, ratio, span, goal, verdict in rows(figures)[-2:]:
        between = f" ({span[0]:.3g}–{span[1]:.3g})" if span else ""
        print(f"{measurement:<37} {ratio:>7.3g}{between:<16} goal {goal} {verdict or ''}".rstrip())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
