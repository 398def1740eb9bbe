"""Precompute chapter 8's ablation into ``companion/ablation_results.json`` (package data, so it installs with
the companion, in Colab too).

The design, recorded in the file's ``design``:

1. *Choose on repeated k-fold.* Chapter 6's training and validation splits together (1,527 digits) are cut
   into 5 stratified folds, once per seed (0 and 1: two repeats). Every recipe of
   ``companion.recipes.ablation_recipes()`` trains on 4 folds and predicts the fifth, for every fold and
   seed, with the training seed equal to the repeat's seed: each image is predicted once per seed by every
   recipe, so the predictions are paired. ``choose_recipe`` picks the final recipe from these k-fold
   predictions alone; the chosen combination is then evaluated the same way.
2. *Test once.* The baseline and the chosen recipe train on the training split (seeds 0, 1, 2), as the
   chapters do, and predict the 270 test images, which nothing before looked at.

Every run keeps its predicted classes (one digit per image), so the chapter can test any comparison
(``companion.recipes.ablation_report``).

    OMP_NUM_THREADS=1 python scripts/ablation.py     # everything (about 20 minutes on a quiet 2-core CPU)
    python scripts/ablation.py --seeds 0             # one repeat only: half the k-fold runs
    python scripts/ablation.py --only MixUp CutMix   # train these recipes, take every other run from the file

``--only`` is for recipes added to ``ablation_recipes()`` after the file was written: the runs already in
the file are kept (they are deterministic on one machine: the same recipe, seed and fold give the same
predictions), the named recipes' missing runs are trained, and the choice is made again over all of them.
*Test reads.* Every time the choice is a recipe whose test split was not read yet, the test split is read
for it and ``design["test_reads"]`` gets a line: the date, the recipes the choice was made from, the
chosen one. ``design["choices"]`` records every choice made since, with the candidates added and whether
the test split was read for it (only a new choice is read). The earlier reads stay in the file: a candidate set that grew after the test split was read
once is a fact about the evidence, which the chapter must state.

Each run trains on one CPU thread, as the chapters do. The file records the machine (CPU, kernels, torch
version) and the 1-minute load average after each run, since the seconds mean little without them. An
interrupted run resumes from ``ablation_results.partial.json``, keeping the runs it finished.
``tests/test_recipes.py`` re-runs seed 0 of the chosen recipe on the test split and compares it with this file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from companion.recipes import (
    ablation_recipes,
    choose_recipe,
    digits_data,
    encode_labels,
    kfold_pool,
    run_ablation,
    stratified_folds,
    summarize,
    train_recipe,
)

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


def design(folds: int, seeds: list[int], test_seeds: list[int], pool_size: int, test_size: int) -> dict:
    return {
        "choice": "repeated stratified k-fold over the training and validation splits (train first, then val)",
        "folds": folds,
        "repeats": len(seeds),
        "seeds": seeds,
        "pool_images": pool_size,
        "test_seeds": test_seeds,
        "test_images": test_size,
        "split": "companion.datasets.digits_splits(0)",
        "pairing": "every recipe: the same folds and training seed; run (seed s, fold f) predicts fold f of repeat s",
    }


FIRST_READS = [
    {
        "date": "2026-11-28",
        "commit": "c5b86f4",
        "design": "earlier design: 3 seeds on the validation split; every recipe's test accuracy computed",
        "candidates": 11,
        "chosen": "warmup + cosine + label smoothing",
    },
    {
        "date": "2026-12-06",
        "commit": "12945d3",
        "design": "this file's design (repeated k-fold); the test split read for the baseline and the choice",
        "candidates": 11,
        "chosen": "label smoothing + no decay bias/norm",
    },
]
"""The test reads before ``design["test_reads"]`` existed, from the file's git history."""


def earlier_runs(args: argparse.Namespace, header: dict, names: list[str]) -> tuple[list, list, dict]:
    """``--only``: the k-fold runs, test runs and design of the file at ``args.out``, after checking that it
    holds the same images, folds and seeds, and every run of the recipes not named."""
    if not args.out.exists():
        raise SystemExit(f"--only needs the earlier results in {args.out}: run without --only first")
    old = json.loads(args.out.read_text())
    if old["labels"] != header["labels"] or any(old["folds"].get(s) != f for s, f in header["folds"].items()):
        raise SystemExit(f"{args.out} holds other images or folds: run without --only")
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        raise SystemExit(f"--only: no recipe called {unknown} in ablation_recipes(); the names are {names}")
    done = {(r["recipe"], r["seed"], r["fold"]) for r in old["kfold_runs"]}
    missing = sorted(
        {
            n
            for n in names
            if n not in args.only
            for s in args.seeds
            for f in range(args.folds)
            if (n, s, f) not in done
        }
    )
    if missing:
        raise SystemExit(f"--only: the file lacks k-fold runs of {missing}; name them too")
    return old["kfold_runs"], old["test_runs"], old["design"]


def save(out: Path, header: dict, chosen: Any, kfold_runs: list[dict], test_runs: list[dict]) -> None:
    results = {
        **header,
        "chosen": asdict(chosen) if chosen is not None else None,
        "kfold_runs": rounded(kfold_runs),
        "test_runs": rounded(test_runs),
    }
    out.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one k-fold repeat per seed")
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="train only these recipes; keep the file's other runs"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    data = digits_data()
    pool = kfold_pool(data)
    recipes = ablation_recipes()
    test_labels = data["splits"]["test"][1]
    header = {
        "about": "chapter 8's ablation, written by scripts/ablation.py; seconds are fit's training time",
        "machine": {
            "cpu": cpu_name(),
            "kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "python": sys.version.split()[0],
        },
        "design": design(args.folds, args.seeds, args.test_seeds, len(pool[1]), len(test_labels)),
        "labels": {"pool": encode_labels(pool[1]), "test": encode_labels(test_labels)},
        "folds": {str(s): "".join(map(str, stratified_folds(pool[1], args.folds, s))) for s in args.seeds},
        "recipes": [asdict(r) for r in recipes],
    }
    names = [r.name for r in recipes]
    kept_kfold, kept_test, earlier = [], [], {}
    if args.only:
        kept_kfold, kept_test, earlier = earlier_runs(args, header, names)
        reads = earlier.get("test_reads") or list(FIRST_READS)
    else:
        reads = []
    choices = earlier.get("choices", [])
    partial = args.out.with_suffix(".partial.json")
    old = json.loads(partial.read_text()) if partial.exists() else None
    if old and old["labels"] == header["labels"] and old["recipes"] == header["recipes"]:
        same = {s for s, folds in old["folds"].items() if header["folds"].get(s) == folds}  # same partition
        kept_kfold = kept_kfold + [r for r in old["kfold_runs"] if str(r["seed"]) in same]
        kept_test = kept_test + old["test_runs"]
    kfold_runs: list[dict] = list(kept_kfold)
    test_runs: list[dict] = list(kept_test) if args.only else []

    def log(run: dict) -> None:
        run["load"] = os.getloadavg()[0]
        where = f"fold {run['fold']}" if "fold" in run else "test  "
        print(
            f"{run['recipe']:34s} seed {run['seed']} {where}  val {run['val_accuracy']:.4f}  "
            f"{run['seconds']:5.1f} s, cpu {run['cpu_seconds']:5.1f} s  (load {run['load']:.1f})",
            flush=True,
        )
        if "fold" in run:
            kfold_runs.append(run)
        save(partial, header, None, kfold_runs, test_runs)

    singles = run_ablation(recipes, args.folds, args.seeds, data, log, keep=kept_kfold)
    chosen = choose_recipe(summarize(singles), recipes)  # the k-fold predictions alone
    extra = []
    if chosen.name not in names:
        extra = run_ablation([chosen], args.folds, args.seeds, data, log, keep=kept_kfold)
    earlier_choices = list(
        {
            (r["recipe"], r["seed"], r["fold"]): r
            for r in kept_kfold
            if r["recipe"] not in names and r["recipe"] != chosen.name
        }.values()
    )
    kfold_runs = singles + extra + earlier_choices  # an earlier choice's runs stay, as its test reads do
    if not reads or reads[-1]["chosen"] != chosen.name:
        reads.append(
            {
                "date": datetime.date.today().isoformat(),
                "design": "repeated k-fold"
                + (f"; recipes added and run: {', '.join(args.only)}" if args.only else ""),
                "candidates": len(recipes),
                "chosen": chosen.name,
            }
        )
    if not choices or (choices[-1]["candidates"], choices[-1]["chosen"]) != (len(recipes), chosen.name):
        choices.append(
            {
                "date": datetime.date.today().isoformat(),
                "candidates": len(recipes),
                "added": args.only or [],
                "chosen": chosen.name,
                "test_split_read": reads[-1]["date"] == datetime.date.today().isoformat()
                and reads[-1]["chosen"] == chosen.name
                and reads[-1]["candidates"] == len(recipes),
            }
        )
    header["design"]["test_reads"] = reads
    header["design"]["choices"] = choices  # every choice made; a test read only for a new choice
    kept = {(r["recipe"], r["seed"]): r for r in kept_test}
    test_runs = [
        r for r in kept_test if (r["recipe"], r["seed"]) in kept and kept[(r["recipe"], r["seed"])] is r
    ]
    for recipe in [recipes[0]] + ([chosen] if chosen.name != recipes[0].name else []):
        for seed in args.test_seeds:
            if (recipe.name, seed) not in kept:
                run = train_recipe(recipe, seed, data)
                kept[(recipe.name, seed)] = run
                test_runs.append(run)
                log(run)
    save(args.out, header, chosen, kfold_runs, test_runs)
    partial.unlink(missing_ok=True)
    print(
        f"wrote {len(kfold_runs)} k-fold runs and {len(test_runs)} test runs to {args.out}; "
        f"chosen on k-fold validation: {chosen.name}"
    )
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"{time.perf_counter() - started:.0f} s")
    raise SystemExit(status)
