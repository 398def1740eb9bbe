"""Precompute chapter 8's ablation: every recipe of ``companion.recipes.ablation_recipes()``, and the recipe
chosen from them on the validation split, trained with seeds 0, 1 and 2, into
``companion/ablation_results.json`` (package data, so it installs with the companion, in Colab too).

    python scripts/ablation.py                   # everything (about 10 minutes on a quiet 2-core CPU)
    python scripts/ablation.py --only baseline   # re-run some recipes, keep the other runs of the file

Each run trains on one CPU thread, as the chapters do. The file records the machine (CPU, kernels, torch
version) and the 1-minute load average after each run, since the seconds mean little without them.
``tests/test_recipes.py`` re-runs one seed of the chosen recipe and compares it with this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from companion.recipes import ablation_recipes, choose_recipe, digits_data, summarize, train_recipe

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "companion" / "ablation_results.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rounded(value: object) -> object:
    """Floats to 6 significant digits, so that the file stays small and readable."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def save(out: Path, recipes: list, chosen: object, runs: list[dict]) -> None:
    names = [r.name for r in recipes]
    extra = [chosen] if chosen is not None and chosen.name not in names else []
    results = {
        "about": "chapter 8's ablation, written by scripts/ablation.py; seconds are fit's training time",
        "machine": {
            "cpu": cpu_name(),
            "kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "python": sys.version.split()[0],
        },
        "recipes": [asdict(r) for r in recipes + extra],
        "chosen": chosen.name if chosen is not None else None,
        "runs": rounded(runs),
    }
    out.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="re-run these recipes only (names as in the file)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    data = digits_data()
    recipes = ablation_recipes()
    old = json.loads(args.out.read_text()) if args.out.exists() else None
    kept = [r for r in old["runs"] if args.only and r["recipe"] not in args.only] if old else []
    wanted = [r for r in recipes if not args.only or r.name in args.only]

    def log(run: dict) -> None:
        run["load"] = os.getloadavg()[0]
        print(
            f"{run['recipe']:24s} seed {run['seed']}  val {run['val_accuracy']:.4f}  "
            f"{run['seconds']:5.1f} s, cpu {run['cpu_seconds']:5.1f} s  (load {run['load']:.1f})",
            flush=True,
        )
        save(args.out.with_suffix(".partial.json"), recipes, None, runs)

    runs = list(kept)
    for recipe in wanted:
        for seed in args.seeds:
            runs.append(train_recipe(recipe, seed, data))
            log(runs[-1])
    names = [r.name for r in recipes]
    singles = [r for r in runs if r["recipe"] in names]
    chosen = None
    if {r["recipe"] for r in singles} == set(names):
        chosen = choose_recipe(summarize(singles), recipes)
        if chosen.name not in names:
            stale = (
                args.only and chosen.name not in args.only and any(r["recipe"] == chosen.name for r in runs)
            )
            if not stale:  # (re-)run the chosen combination unless --only kept its runs
                runs = [r for r in runs if r["recipe"] != chosen.name]
                for seed in args.seeds:
                    runs.append(train_recipe(chosen, seed, data))
                    log(runs[-1])
    runs = [r for r in runs if r["recipe"] in names or (chosen and r["recipe"] == chosen.name)]
    order = names + ([chosen.name] if chosen else [])
    runs.sort(key=lambda r: (order.index(r["recipe"]), r["seed"]))
    save(args.out, recipes, chosen, runs)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(f"wrote {len(runs)} runs to {args.out}; chosen on validation: {chosen.name if chosen else '-'}")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"{time.perf_counter() - started:.0f} s")
    raise SystemExit(status)
