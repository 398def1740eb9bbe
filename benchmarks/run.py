"""`make bench`: every benchmark in this folder, one table, its last line JSON.

- fit_overhead.py: `companion.fit` (and Lightning's Trainer, when installed) against the shortest
  hand-written loop, as ratios of training time (lower is better);
- data_pipeline.py: six ways to load the digits, as ratios of samples per second (higher is better).

Each row is a ratio measured side by side in one run (interleaved repeats, the median of per-round
ratios) with its 95 % interval; see each benchmark's docstring for what it runs. A goal is "met" when
the whole interval meets it, "MISSED" when none of it does, "undecided" when the goal lies inside it.
Nothing is raised: timings on a shared machine vary, so read the table before concluding anything.

Usage: python benchmarks/run.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks are scripts beside this one

import data_pipeline  # noqa: E402
import fit_overhead  # noqa: E402

Row = tuple[str, str, float, "list[float] | None", str, "str | None"]


def number(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def table(rows: list[Row]) -> str:
    """The rows as one table of at most 88 columns (a row's interval on its own line, below it)."""
    lines = [f"{'benchmark':<13} {'measurement':<45} {'ratio':>9}  goal"]
    for bench, measurement, ratio, span, goal, verdict in rows:
        shown = (verdict or "").replace("missed", "MISSED")
        lines.append(f"{bench:<13} {measurement:<45} {number(ratio):>9}  {goal:<8} {shown}".rstrip())
        if span:
            lines.append(f"{'':<13} {'  95 % interval':<45} {number(span[0])}–{number(span[1])}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats each: a smoke run, not a measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fit = fit_overhead.run(repeats=3 if args.quick else 21)
    data = data_pipeline.run(repeats=3 if args.quick else 9)
    rows: list[Row] = [("fit overhead", *row) for row in fit_overhead.rows(fit)]
    rows += [("data pipeline", *row) for row in data_pipeline.rows(data)]
    print(
        f"torch {torch.__version__}"
        + (f", lightning {fit['lightning']}" if fit["lightning"] else ", Lightning not installed")
        + f"; {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.machine()}"
        + (" (--quick: a smoke run)" if args.quick else "")
    )
    print("fit overhead: time over the hand loop's (lower is better); data pipeline: samples/s")
    print("over the slicing limit's or ImageFolder's (higher is better)\n")
    print(table(rows))
    print(
        json.dumps(
            {
                "benchmarks": {"fit_overhead": fit, "data_pipeline": data},
                "goals": {
                    measurement: verdict for _, measurement, *_, verdict in rows if verdict is not None
                },
            }
        )
    )


if __name__ == "__main__":
    main()
