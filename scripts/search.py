"""A quasi-random search over chapter 8's recipe, the Deep Learning Tuning Playbook's way, into
``companion/search_results.json``.

1. *Trials.* A scrambled Sobol sequence (``torch.quasirandom.SobolEngine(4, scramble=True, seed=0)``)
   draws ``--trials`` points of the unit cube, each mapped to four settings of the baseline recipe
   (``SPACE``: the learning rate and the weight decay on a log scale, label smoothing and dropout on a
   linear one). Quasi-random points cover the cube more evenly than random ones and, unlike a grid,
   give every trial a distinct value of every setting. Each trial trains on the k-fold folds
   ``--score-folds`` of repeat ``--score-seed`` (the ablation's folds, :func:`companion.recipes.stratified_folds`)
   and is scored by its pooled accuracy on the held-out images, ties broken by the lower loss.
2. *Re-run before adopting.* The best ``--best`` trials and the baseline train on every fold of the
   repeats ``--rerun-seeds``, which the trials never saw, and are compared with the baseline there with
   the ablation's paired tests (:func:`companion.recipes.search_report`): the score that picked a trial
   out of many is biased upwards by the picking, a fresh repeat is not.

The test split is never read.

    OMP_NUM_THREADS=1 python scripts/search.py   # about 50 runs of about 5 s of processor time

An interrupted search resumes from ``search_results.partial.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from companion.recipes import (
    BASELINE,
    SEARCH_SPACE,
    digits_data,
    encode_labels,
    kfold_pool,
    rank_trials,
    search_settings,
    stratified_folds,
    train_fold,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import cpu_name, rounded  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "companion" / "search_results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--score-seed", type=int, default=0)
    parser.add_argument("--score-folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--best", type=int, default=3)
    parser.add_argument("--rerun-seeds", type=int, nargs="+", default=[1])
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    data = digits_data()
    pool = kfold_pool(data)
    seeds = sorted({args.score_seed, *args.rerun_seeds})
    folds = {s: stratified_folds(pool[1], args.folds, s) for s in seeds}
    engine = torch.quasirandom.SobolEngine(len(SEARCH_SPACE), scramble=True, seed=0)
    points = engine.draw(args.trials).tolist()
    trials = [
        {"trial": i, "point": [round(u, 6) for u in point], "settings": search_settings(point)}
        for i, point in enumerate(points)
    ]
    header = {
        "about": "chapter 8's quasi-random search, written by scripts/search.py; seconds are fit's training time",
        "machine": {
            "cpu": cpu_name(),
            "kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
        },
        "design": {
            "space": SEARCH_SPACE,
            "sequence": f"torch.quasirandom.SobolEngine({len(SEARCH_SPACE)}, scramble=True, seed=0).draw({args.trials})",
            "trials": args.trials,
            "folds": args.folds,
            "score_seed": args.score_seed,
            "score_folds": args.score_folds,
            "score": "pooled accuracy on the held-out images of the score folds; ties: lower mean val_loss",
            "best": args.best,
            "rerun_seeds": args.rerun_seeds,
            "rerun": "the best trials and the baseline on every fold of the rerun seeds, never seen by the trials",
            "baseline": {k: v for k, v in vars(BASELINE).items() if k in SEARCH_SPACE or k == "name"},
            "test_split": "never read",
        },
        "labels": {"pool": encode_labels(pool[1])},
        "folds": {str(s): "".join(map(str, f)) for s, f in folds.items()},
    }
    partial = args.out.with_suffix(".partial.json")
    old = json.loads(partial.read_text()) if partial.exists() else {}
    done = {
        (r["recipe"], r["seed"], r["fold"]): r
        for r in old.get("runs", [])
        if old.get("design") == header["design"]
    }
    runs: list[dict] = list(done.values())

    def train(recipe, seed: int, fold: int) -> dict:
        key = (recipe.name, seed, fold)
        if key in done:
            return done[key]
        run = train_fold(recipe, seed, pool, folds[seed], fold)
        run.pop("history")
        run["load"] = os.getloadavg()[0]
        runs.append(run)
        done[key] = run
        partial.write_text(json.dumps({**header, "runs": rounded(runs)}) + "\n")
        print(
            f"{recipe.name:9s} seed {seed} fold {fold}  val {run['val_accuracy']:.4f}  loss {run['val_loss']:.4f}  "
            f"{run['seconds']:5.1f} s, cpu {run['cpu_seconds']:5.1f} s  (load {run['load']:.1f})",
            flush=True,
        )
        return run

    for trial in trials:
        recipe = BASELINE.but(f"trial {trial['trial']}", **trial["settings"])
        trial["runs"] = [train(recipe, args.score_seed, f) for f in args.score_folds]
    best = rank_trials(trials)[: args.best]
    reruns = []
    for recipe in [BASELINE] + [BASELINE.but(f"trial {t['trial']}", **t["settings"]) for t in best]:
        reruns += [train(recipe, s, f) for s in args.rerun_seeds for f in range(args.folds)]
    results = {
        **header,
        "trials": rounded(trials),
        "best": [t["trial"] for t in best],
        "reruns": rounded(reruns),
    }
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    print(
        f"wrote {len(trials)} trials and {len(reruns)} re-runs to {args.out}; best trials {results['best']}"
    )
    assert all(math.isfinite(r["val_loss"]) for r in runs)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    status = main()
    print(f"{time.perf_counter() - started:.0f} s")
    raise SystemExit(status)
