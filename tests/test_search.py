"""The quasi-random search of chapter 8: its settings, its ranking, its report, and the file it wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from companion.recipes import (
    BASELINE,
    SEARCH_SPACE,
    format_search_report,
    rank_trials,
    search_report,
    search_settings,
)

COMPANION = Path(__file__).resolve().parent.parent / "companion"
RESULTS = COMPANION / "search_results.json"


def test_search_settings_map_the_cube_onto_each_settings_range_and_scale():
    assert search_settings([0, 0, 0, 0]) == {k: v["low"] for k, v in SEARCH_SPACE.items()}
    assert search_settings([1, 1, 1, 1]) == {k: v["high"] for k, v in SEARCH_SPACE.items()}
    middle = search_settings([0.5] * 4)
    assert middle["lr"] == pytest.approx(math.sqrt(1e-3 * 3e-2), rel=1e-3)  # log scale: the geometric mean
    assert middle["weight_decay"] == pytest.approx(math.sqrt(1e-4 * 1e-1), rel=1e-3)
    assert middle["label_smoothing"] == pytest.approx(0.1) and middle["dropout"] == pytest.approx(0.25)
    assert search_settings([0.123456, 0.5, 0.5, 0.5])["lr"] == float(f"{1e-3 * 30**0.123456:.3g}")


def test_search_settings_refuse_points_off_the_cube_or_of_the_wrong_size():
    with pytest.raises(ValueError, match="one coordinate per setting"):
        search_settings([0.5, 0.5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        search_settings([0.5, 1.5, 0.5, 0.5])


def trial(number: int, right: int, loss: float, images: int = 10) -> dict:
    run = {"recipe": f"trial {number}", "val_accuracy": right / images, "val_predictions": "0" * images,
           "val_loss": loss, "seconds": 1.0, "cpu_seconds": 1.0}  # fmt: skip
    return {"trial": number, "settings": {}, "runs": [run]}


def test_trials_rank_by_accuracy_then_by_the_lower_loss_then_by_number():
    trials = [trial(0, 8, 0.1), trial(1, 9, 0.5), trial(2, 9, 0.2), trial(3, 8, 0.1)]
    assert [t["trial"] for t in rank_trials(trials)] == [2, 1, 0, 3]


def synthetic_search() -> dict:
    """A search file with known answers: 40 pool images in 2 folds, trials on fold 0 of seed 0, re-runs on seed 1."""
    pool = "0123456789" * 4
    folds = {"0": "01" * 20, "1": "0011" * 10}

    def runs(recipe: str, seed: int, wrong: set[int], fold_list=(0, 1)) -> list[dict]:
        out = []
        for fold in fold_list:
            held = [i for i, f in enumerate(folds[str(seed)]) if int(f) == fold]
            preds = "".join(str((int(pool[i]) + 1) % 10) if i in wrong else pool[i] for i in held)
            right = sum(p == pool[i] for p, i in zip(preds, held)) / len(held)
            out.append({"recipe": recipe, "seed": seed, "fold": fold, "val_accuracy": right, "val_loss": 0.1,
                        "val_predictions": preds, "seconds": 2.0, "cpu_seconds": 1.5})  # fmt: skip
        return out

    trials = [
        {"trial": 0, "settings": {"lr": 0.01}, "runs": runs("trial 0", 0, set(range(10)), (0,))},
        {"trial": 1, "settings": {"lr": 0.02}, "runs": runs("trial 1", 0, set(), (0,))},
        {"trial": 2, "settings": {"lr": 0.03}, "runs": runs("trial 2", 0, {0}, (0,))},
    ]
    reruns = (
        runs("baseline", 1, set(range(0, 40, 2))) + runs("trial 1", 1, set()) + runs("trial 2", 1, {0, 2})
    )
    space = {"lr": SEARCH_SPACE["lr"]}
    return {
        "design": {
            "space": space,
            "sequence": "torch.quasirandom.SobolEngine(1, scramble=True, seed=0).draw(3)",
            "trials": 3,
            "folds": 2,
            "score_seed": 0,
            "score_folds": [0],
            "best": 2,
            "rerun_seeds": [1],
        },  # fmt: skip
        "labels": {"pool": pool},
        "folds": folds,
        "trials": trials,
        "best": [1, 2],
        "reruns": reruns,
    }


def test_search_report_compares_the_rerun_trials_with_the_baseline_on_unseen_repeats():
    report = search_report(synthetic_search())
    assert [t["trial"] for t in report["trials"]] == [1, 2, 0] and report["best"] == [1, 2]
    rows = {r["recipe"]: r for r in report["reruns"]}
    assert rows["baseline"]["accuracy"] == 0.5 and "verdict" not in rows["baseline"]
    assert rows["trial 1"]["difference"] == pytest.approx(0.5) and rows["trial 1"]["verdict"] == "better"
    assert rows["trial 1"]["mcnemar"].pairs == 40  # one re-run seed x 40 images
    assert rows["trial 2"]["mcnemar"].a_only == 18  # the baseline's 20 errors, less trial 2's own 2
    assert report["adopt"] == ["trial 1", "trial 2"]
    text = format_search_report(report)
    assert "adopt: trial 1, trial 2" in text and max(len(line) for line in text.splitlines()) <= 88


def test_search_report_refuses_a_file_whose_rerun_trials_are_not_its_best():
    results = synthetic_search()
    results["best"] = [2, 1]
    with pytest.raises(ValueError, match=r"re-ran trials \[2, 1\], but its trials rank \[1, 2\] best"):
        search_report(results)


# --- the file scripts/search.py wrote ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_the_search_file_holds_the_sobol_trials_it_says_it_drew(results):
    design = results["design"]
    assert design["space"] == SEARCH_SPACE and design["test_split"] == "never read"
    engine = torch.quasirandom.SobolEngine(len(SEARCH_SPACE), scramble=True, seed=0)
    points = engine.draw(design["trials"]).tolist()
    assert [t["settings"] for t in results["trials"]] == [search_settings(p) for p in points]
    for t in results["trials"]:
        assert sorted(r["fold"] for r in t["runs"]) == design["score_folds"]
        assert {r["seed"] for r in t["runs"]} == {design["score_seed"]}
        assert all("test_predictions" not in r for r in t["runs"])


def test_the_search_reran_its_best_trials_and_the_baseline_on_every_fold_of_unseen_repeats(results):
    design = results["design"]
    assert [t["trial"] for t in rank_trials(results["trials"])[: design["best"]]] == results["best"]
    assert design["score_seed"] not in design["rerun_seeds"]
    for name in [BASELINE.name] + [f"trial {t}" for t in results["best"]]:
        runs = sorted((r["seed"], r["fold"]) for r in results["reruns"] if r["recipe"] == name)
        assert runs == [(s, f) for s in design["rerun_seeds"] for f in range(design["folds"])], name


def test_the_searchs_baseline_runs_are_the_ablations_runs_of_the_same_seed_and_fold(results):
    """Training is deterministic on one machine: the search's baseline repeats the ablation's exactly."""
    ablation = json.loads((COMPANION / "ablation_results.json").read_text())
    saved = {(r["seed"], r["fold"]): r for r in ablation["kfold_runs"] if r["recipe"] == BASELINE.name}
    ours = [r for r in results["reruns"] if r["recipe"] == BASELINE.name]
    assert ours and all(
        r["val_predictions"] == saved[(r["seed"], r["fold"])]["val_predictions"] for r in ours
    )


def test_the_search_report_of_the_file_fits_a_page_and_says_what_to_adopt(results):
    report = search_report(results, resamples=200)
    text = format_search_report(report)
    assert max(len(line) for line in text.splitlines()) <= 88
    assert len(report["trials"]) == results["design"]["trials"]
    assert text.splitlines()[-1].startswith("adopt: ")
    assert all(row["max_cpu_seconds"] < 20 for row in report["reruns"])
