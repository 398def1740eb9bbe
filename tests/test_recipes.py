"""companion.recipes: the pieces of chapter 8's recipes, and the ablation file the chapter loads."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from companion.recipes import (
    BASELINE,
    DigitImages,
    Recipe,
    ablation_recipes,
    ablation_report,
    changes,
    choose_recipe,
    decode_labels,
    digit_augmentation,
    digits_cnn,
    digits_data,
    encode_labels,
    format_report,
    kfold_pool,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    run_ablation,
    stratified_folds,
    summarize,
    train_fold,
    train_recipe,
    warmup_cosine,
)

RESULTS = Path(__file__).resolve().parent.parent / "companion" / "ablation_results.json"


@pytest.fixture(scope="module")
def data():
    return digits_data()


def chapter6_cnn(width: int = 48) -> nn.Sequential:
    # chapter 6's make_cnn, copied from the notebook
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 2 * 2, 10),
    )  # fmt: skip


# --- the network ---------------------------------------------------------------------------------------


def test_digits_cnn_is_chapter_6s_network_with_the_same_initial_weights():
    torch.manual_seed(0)
    ours = digits_cnn()
    torch.manual_seed(0)
    theirs = chapter6_cnn()
    assert sum(p.numel() for p in ours.parameters()) == 67_066
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_digits_cnn_without_batch_norm_or_dropout_has_neither_and_still_outputs_10_scores():
    model = digits_cnn(16, batch_norm=False, dropout=0.0)
    kinds = {type(m) for m in model}
    assert nn.BatchNorm2d not in kinds and nn.Dropout not in kinds
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 0}, "width must be a positive int"),
        ({"dropout": 1.0}, r"dropout must be a probability in \[0, 1\)"),
    ],
)
def test_digits_cnn_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        digits_cnn(**kwargs)


# --- weight decay ----------------------------------------------------------------------------------------


def test_parameter_groups_decay_weights_but_not_biases_or_norm_layers():
    model = digits_cnn(8)
    decayed, plain = parameter_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = sorted(names[id(p)] for p in decayed["params"])
    plain_names = {names[id(p)] for p in plain["params"]}
    assert decayed_names == ["0.weight", "13.weight", "3.weight", "7.weight"]  # 3 convolutions, 1 linear
    assert all(n.endswith(".bias") or n.split(".")[0] in {"1", "4", "8"} for n in plain_names)  # 1, 4, 8: BN
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_adamw_with_parameter_groups_shrinks_only_the_decayed_weights():
    model = digits_cnn(8)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: the step is the decay alone
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.AdamW(parameter_groups(model, 0.1), lr=0.5).step()
    for name, p in model.named_parameters():
        if p.ndim >= 2:  # decoupled decay: w <- w - lr * wd * w
            torch.testing.assert_close(p.detach(), before[name] * (1 - 0.5 * 0.1))
        else:
            assert torch.equal(p.detach(), before[name])


def test_parameter_groups_refuses_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        parameter_groups([torch.zeros(2)], 0.1)
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        parameter_groups(digits_cnn(8), -0.1)


# --- schedules -------------------------------------------------------------------------------------------


def test_warmup_cosine_follows_its_formula_at_every_step():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    total, warmup, s = 50, 5, 0.01
    scheduler = warmup_cosine(optimizer, total, warmup, start_factor=s)
    for t in range(total):
        if t < warmup:
            expected = 0.1 * (s + (1 - s) * t / warmup)
        else:
            expected = 0.05 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12), t
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((100, 0), ValueError, "warmup_steps must be between 1 and total_steps - 1"),
        ((100, 100), ValueError, "warmup_steps must be between 1 and total_steps - 1"),
        ((100.0, 10), TypeError, "total_steps must be an int"),
    ],
)
def test_warmup_cosine_refuses_bad_steps(args, error, message):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(error, match=message):
        warmup_cosine(optimizer, *args)


def test_make_scheduler_says_when_to_step_each_schedule():
    kinds = {}
    for schedule in ("constant", "step", "warmup_cosine", "onecycle"):
        recipe = BASELINE.but(schedule, schedule=schedule)
        optimizer = make_optimizer(recipe, digits_cnn(8))
        scheduler, interval = make_scheduler(recipe, optimizer, steps_per_epoch=20)
        kinds[schedule] = (type(scheduler).__name__, interval)
    assert kinds == {
        "constant": ("NoneType", None),
        "step": ("MultiStepLR", "epoch"),
        "warmup_cosine": ("SequentialLR", "step"),
        "onecycle": ("OneCycleLR", "step"),
    }


def test_step_schedule_divides_the_rate_by_10_at_half_and_three_quarters():
    recipe = BASELINE.but("step", schedule="step", epochs=16)
    optimizer = make_optimizer(recipe, digits_cnn(8))
    scheduler, _ = make_scheduler(recipe, optimizer, steps_per_epoch=20)
    rates = []
    for _ in range(16):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1e-2] * 8 + [1e-3] * 4 + [1e-4] * 4)


def test_adam_recipe_puts_l2_into_the_gradient_and_adamw_decouples_it():
    adam = make_optimizer(BASELINE.but("adam", optimizer="adam"), digits_cnn(8))
    adamw = make_optimizer(BASELINE, digits_cnn(8))
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    assert adam.param_groups[0]["weight_decay"] == adamw.param_groups[0]["weight_decay"] == 1e-2
    assert len(make_optimizer(BASELINE.but("groups", decay_all=False), digits_cnn(8)).param_groups) == 2


# --- augmentation ----------------------------------------------------------------------------------------


def test_augmentation_without_rotation_shifts_by_at_most_one_whole_pixel(data):
    images = data["splits"]["train"][0][:50].unsqueeze(1)
    augment = digit_augmentation(degrees=0.0, shift=1)
    torch.manual_seed(0)
    moved = 0
    for image in images:
        out = augment(image)
        assert out.shape == (1, 8, 8) and out.dtype == torch.uint8
        padded = nn.functional.pad(image, (1, 1, 1, 1))
        shifted = [padded[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(out, s) for s in shifted)
        moved += not torch.equal(out, image)
    assert moved > 25  # each axis moves half of the time: 3 images in 4 move


def test_augmentation_refuses_bad_ranges():
    with pytest.raises(ValueError, match=r"degrees must be in \[0, 180\]"):
        digit_augmentation(degrees=200)
    with pytest.raises(ValueError, match="shift must be a whole number of pixels"):
        digit_augmentation(shift=0.5)


def test_digit_images_without_a_transform_are_chapter_6s_tensors(data):
    images, labels = data["splits"]["train"]
    served = DigitImages(images, labels, data["mean"], data["std"])
    x, y = next(iter(DataLoader(served, batch_size=len(served))))
    assert torch.equal(x, data["train"].tensors[0]) and torch.equal(y, data["train"].tensors[1])
    with pytest.raises(ValueError, match="images must be uint8"):
        DigitImages(images.float(), labels, 0.3, 0.4)


# --- recipes and the ablation ----------------------------------------------------------------------------


def test_recipe_refuses_bad_fields_with_what_to_pass():
    with pytest.raises(ValueError, match="optimizer must be 'adamw'"):
        Recipe(optimizer="sgd")
    with pytest.raises(ValueError, match="schedule must be one of"):
        Recipe(schedule="cosine")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        Recipe(label_smoothing=1.0)
    with pytest.raises(ValueError, match="patience must be a positive int or None"):
        Recipe(patience=0)
    with pytest.raises(TypeError, match="a Recipe has no field 'lr_max'"):
        BASELINE.but("x", lr_max=0.1)


@pytest.mark.parametrize(
    "fields_, error, message",
    [
        ({"average": "mean"}, ValueError, "average must be one of 'none', 'ema', 'swa'"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be in \(0, 1\)"),
        ({"average": "swa", "swa_epochs": 16}, ValueError, "swa_epochs must be an int from 1 to epochs=15"),
        ({"swa_epochs": 0}, ValueError, "swa_epochs must be an int from 1"),
        ({"mixup_alpha": 0.0}, ValueError, "mixup_alpha must be a positive number or None"),
        ({"cutmix_alpha": -1.0}, ValueError, "cutmix_alpha must be a positive number or None"),
        ({"tta": 1}, TypeError, "tta must be True or False"),
        ({"ensemble": 0}, ValueError, "ensemble must be a positive int"),
    ],
)
def test_recipe_refuses_bad_averaging_mixing_tta_and_ensemble_fields(fields_, error, message):
    with pytest.raises(error, match=message):
        Recipe(**fields_)


OLD_FIELDS = (
    "name width batch_norm dropout epochs batch_size lr optimizer weight_decay decay_all schedule rotate "
    "shift label_smoothing patience"
).split()


def test_a_recipe_saved_before_the_new_fields_existed_reads_back_as_the_same_recipe():
    old = {k: v for k, v in asdict(BASELINE).items() if k in OLD_FIELDS}  # how the file saved it before
    assert Recipe(**old) == BASELINE
    assert BASELINE.average == "none" and BASELINE.ensemble == 1 and not BASELINE.tta
    assert BASELINE.mixup_alpha is None and BASELINE.cutmix_alpha is None
    # a tiny recipe of one epoch is valid: swa_epochs is checked against the epochs only when SWA is on
    assert Recipe("tiny", epochs=1).swa_epochs == 5


def test_every_ablation_row_changes_one_thing_of_the_baseline():
    recipes = ablation_recipes()
    assert recipes[0] == BASELINE
    assert len({r.name for r in recipes}) == len(recipes)
    for recipe in recipes[1:]:
        assert 1 <= len(changes(recipe)) <= 2, recipe  # "constant + early stop" changes two fields
    new = {r.name: changes(r) for r in recipes[11:]}
    assert new == {
        "EMA of weights": {"average": "ema"},
        "SWA, last 5 epochs": {"average": "swa"},
        "MixUp": {"mixup_alpha": 0.2},
        "CutMix": {"cutmix_alpha": 1.0},
        "TTA (1-pixel shifts)": {"tta": True},
        "3-seed ensemble": {"ensemble": 3},
    }


def test_choose_recipe_combines_the_changes_that_beat_the_baseline_on_validation():
    recipes = [BASELINE, BASELINE.but("a", dropout=0.0), BASELINE.but("b", label_smoothing=0.1)]
    recipes.append(BASELINE.but("c", dropout=0.1))
    rows = [
        {"recipe": n, "val_accuracy": v}
        for n, v in zip("baseline a b c".split(), (0.99, 0.995, 0.998, 0.992))
    ]
    chosen = choose_recipe(rows, recipes)
    assert chosen.name == "b + a" and changes(chosen) == {"label_smoothing": 0.1, "dropout": 0.0}
    rows[1]["val_accuracy"] = rows[3]["val_accuracy"] = 0.98
    assert choose_recipe(rows, recipes) is recipes[2]  # one change: its own recipe
    rows[2]["val_accuracy"] = 0.99
    assert choose_recipe(rows, recipes) is BASELINE  # ties do not count
    with pytest.raises(ValueError, match="no runs of"):
        choose_recipe(rows[:2], recipes)


def test_summarize_gives_mean_and_spread_per_recipe():
    runs = [
        {
            "recipe": "x",
            "val_accuracy": a,
            "test_accuracy": b,
            "val_loss": 0.1,
            "seconds": s,
            "cpu_seconds": s,
        }
        for a, b, s in ((0.9, 0.8, 1.0), (1.0, 1.0, 3.0))
    ]
    (row,) = summarize(runs)
    assert row["seeds"] == 2 and row["val_accuracy"] == pytest.approx(0.95)
    assert row["test_accuracy_std"] == pytest.approx(math.sqrt(0.02))
    assert row["seconds"] == 2.0 and row["max_seconds"] == 3.0
    with pytest.raises(ValueError, match="no runs to summarize"):
        summarize([])


def test_train_recipe_is_repeatable_and_reports_what_it_measured(data):
    tiny = Recipe("tiny", width=4, epochs=1, batch_size=256, rotate=5.0, shift=1)
    first, again = train_recipe(tiny, 3, data), train_recipe(tiny, 3, data)
    timing = {"seconds", "cpu_seconds"}
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in again.items() if k not in timing
    }
    assert first["cpu_seconds"] > 0 and first["seconds"] > 0
    assert first["recipe"] == "tiny" and first["seed"] == 3 and first["epochs"] == 1
    assert first["test_errors"] == round((1 - first["test_accuracy"]) * 270)
    assert set(first["history"][0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
    }
    with pytest.raises(TypeError, match="recipe must be a companion.recipes.Recipe"):
        train_recipe({"width": 4}, 0, data)


def test_weight_averaging_changes_what_is_measured_but_not_how_the_network_trains(data):
    tiny = Recipe("tiny", width=4, epochs=2, batch_size=256)
    plain = train_recipe(tiny, 0, data)
    for average in ("ema", "swa"):
        averaged = train_recipe(tiny.but(average, average=average, ema_decay=0.5, swa_epochs=2), 0, data)
        assert averaged["history"] == plain["history"]  # the same training, epoch by epoch
        assert averaged["val_loss"] != plain["val_loss"]  # but another network measured: the average


def test_a_mixing_recipe_trains_on_soft_labels_and_records_no_train_accuracy(data):
    for fields_ in ({"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}):
        run = train_recipe(Recipe("tiny", width=4, epochs=1, batch_size=256, **fields_), 0, data)
        assert "train_accuracy" not in run["history"][0] and 0 <= run["val_accuracy"] <= 1


def test_an_ensemble_recipe_trains_a_network_per_seed_and_predicts_with_their_mean_probabilities(
    data, monkeypatch
):
    from companion import recipes
    from companion.ensembles import SHIFTS, ensemble_probabilities

    seeds = []

    def fake(recipe, seed, train, mean, std, val_loader):
        seeds.append(seed)
        torch.manual_seed(seed)
        model = digits_cnn(4)
        return model, [{"epoch": 1, "val_loss": 1.0}], 1.0, 0.5

    monkeypatch.setattr(recipes, "_train_network", fake)
    recipe = Recipe("ensemble", ensemble=3, tta=True)
    run = train_recipe(recipe, 7, data)
    assert seeds == [7, 1007, 2007] and run["cpu_seconds"] == 1.5 and run["seconds"] == 3.0
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(digits_cnn(4))
    x, y = data["test"].tensors
    probs = ensemble_probabilities(models, x, SHIFTS)
    assert run["test_predictions"] == encode_labels(probs.argmax(1))
    expected_loss = -probs[torch.arange(len(y)), y].log().mean().item()
    assert run["test_accuracy"] == pytest.approx((probs.argmax(1) == y).double().mean().item())
    x, y = data["val"].tensors
    val_probs = ensemble_probabilities(models, x, SHIFTS)
    assert run["val_loss"] == pytest.approx(-val_probs[torch.arange(len(y)), y].log().mean().item(), rel=1e-5)
    assert expected_loss > 0


def test_summarize_pools_the_validation_accuracy_of_folds_of_different_sizes():
    runs = [
        {"recipe": "x", "val_accuracy": a, "val_predictions": "0" * n, "val_loss": 0.1, "seconds": 1.0,
         "cpu_seconds": 1.0}
        for a, n in ((1.0, 300), (0.5, 100))
    ]  # fmt: skip
    (row,) = summarize(runs)
    assert row["val_accuracy"] == pytest.approx((300 + 50) / 400)  # not (1.0 + 0.5) / 2
    assert "test_accuracy" not in row  # k-fold runs never see the test split


def test_labels_round_trip_through_their_one_digit_encoding():
    assert encode_labels(torch.tensor([3, 0, 7])) == "307" and decode_labels("307") == [3, 0, 7]
    with pytest.raises(ValueError, match=r"labels must be classes 0..9"):
        encode_labels([3, 10])
    with pytest.raises(ValueError, match="labels must be a string of digits"):
        decode_labels("3 0")


def test_stratified_folds_put_every_image_in_one_fold_with_each_digit_spread_evenly(data):
    _, labels = kfold_pool(data)
    assert len(labels) == 1527  # train + val, never test
    fold_of = stratified_folds(labels, 5, seed=0)
    sizes = [fold_of.count(f) for f in range(5)]
    assert sorted(set(fold_of)) == [0, 1, 2, 3, 4] and max(sizes) - min(sizes) <= 1
    for digit in range(10):
        per_fold = [sum(1 for f, y in zip(fold_of, labels) if f == k and y == digit) for k in range(5)]
        assert max(per_fold) - min(per_fold) <= 1, (digit, per_fold)
    assert stratified_folds(labels, 5, seed=0) == fold_of  # a seed gives the same partition
    assert stratified_folds(labels, 5, seed=1) != fold_of  # another seed, another repeat
    with pytest.raises(ValueError, match="folds must be an int >= 2"):
        stratified_folds(labels, 1)


def test_train_fold_predicts_exactly_the_images_of_its_fold(data):
    pool = kfold_pool(data)
    fold_of = stratified_folds(pool[1], 5, seed=0)
    tiny = Recipe("tiny", width=4, epochs=1, batch_size=256)
    run = train_fold(tiny, 0, pool, fold_of, 2)
    held_out = [i for i, f in enumerate(fold_of) if f == 2]
    assert run["fold"] == 2 and len(run["val_predictions"]) == len(held_out)
    right = sum(p == pool[1][i].item() for p, i in zip(decode_labels(run["val_predictions"]), held_out))
    assert run["val_accuracy"] == pytest.approx(right / len(held_out))
    with pytest.raises(ValueError, match="fold 7"):
        train_fold(tiny, 0, pool, fold_of, 7)


def test_run_ablation_keeps_finished_runs_and_orders_seed_recipe_fold(data, monkeypatch):
    trained = []

    def fake(recipe, seed, pool, fold_of, fold):
        trained.append((recipe.name, seed, fold))
        return {"recipe": recipe.name, "seed": seed, "fold": fold}

    monkeypatch.setattr("companion.recipes.train_fold", fake)
    recipes = [BASELINE, BASELINE.but("x", dropout=0.0)]
    done = {"recipe": "x", "seed": 1, "fold": 0, "kept": True}
    runs = run_ablation(recipes, folds=2, seeds=(0, 1), data=data, keep=[done])
    assert [(r["recipe"], r["seed"], r["fold"]) for r in runs] == [
        (name, seed, fold) for seed in (0, 1) for name in ("baseline", "x") for fold in (0, 1)
    ]
    assert ("x", 1, 0) not in trained and runs[6]["kept"]


def synthetic_results() -> dict:
    """An ablation file with known answers: 40 pool images in 2 folds, 2 seeds; 30 test images."""
    pool, test = "0123456789" * 4, "9876543210" * 3
    folds = {"0": "01" * 20, "1": "0011" * 10}

    def wrong(labels: str, which: set[int]) -> str:
        return "".join(str((int(y) + 1) % 10) if i in which else y for i, y in enumerate(labels))

    def kfold(recipe: str, predicted: str) -> list[dict]:
        runs = []
        for seed in (0, 1):
            for fold in (0, 1):
                held = [i for i, f in enumerate(folds[str(seed)]) if int(f) == fold]
                preds = "".join(predicted[i] for i in held)
                right = sum(preds[j] == pool[i] for j, i in enumerate(held)) / len(held)
                runs.append({"recipe": recipe, "seed": seed, "fold": fold, "val_accuracy": right,
                             "val_loss": 0.1, "val_predictions": preds, "seconds": 2.0, "cpu_seconds": 1.0})  # fmt: skip
        return runs

    base = wrong(pool, set(range(0, 40, 2)))  # half the pool wrong
    runs = kfold("baseline", base) + kfold("perfect", pool) + kfold("same", base)
    runs += kfold("slightly", wrong(pool, set(range(0, 38, 2))))  # one image better per seed
    recipes = [BASELINE, BASELINE.but("perfect", label_smoothing=0.1), BASELINE.but("same", dropout=0.1)]
    recipes.append(BASELINE.but("slightly", width=32))
    test_runs = []
    for name, predicted in (("baseline", wrong(test, set(range(12)))), ("perfect + slightly", test)):
        for seed in (0, 1, 2):
            right = sum(p == y for p, y in zip(predicted, test)) / 30
            test_runs.append({"recipe": name, "seed": seed, "test_predictions": predicted, "test_accuracy": right,
                              "test_errors": round((1 - right) * 30), "val_accuracy": 1.0, "val_loss": 0.1,
                              "seconds": 2.0, "cpu_seconds": 1.0})  # fmt: skip
    return {
        "design": {
            "folds": 2,
            "repeats": 2,
            "seeds": [0, 1],
            "pool_images": 40,
            "test_seeds": [0, 1, 2],
            "test_images": 30,
        },  # fmt: skip
        "labels": {"pool": pool, "test": test},
        "folds": folds,
        "recipes": [asdict(r) for r in recipes],
        "chosen": asdict(BASELINE.but("perfect + slightly", label_smoothing=0.1, width=32)),
        "kfold_runs": runs,
        "test_runs": test_runs,
    }


def test_ablation_report_gives_each_recipe_its_verdict_against_the_baseline():
    report = ablation_report(synthetic_results())
    rows = {row["recipe"]: row for row in report["validation"]}
    assert rows["baseline"]["accuracy"] == 0.5 and "verdict" not in rows["baseline"]
    assert rows["perfect"]["difference"] == pytest.approx(0.5) and rows["perfect"]["verdict"] == "better"
    assert rows["perfect"]["mcnemar"].a_only == 40 and rows["perfect"]["mcnemar"].pairs == 80
    assert [c.pairs for c in rows["perfect"]["mcnemar_per_seed"]] == [40, 40]
    assert rows["same"]["verdict"] == "no significant difference" and rows["same"]["difference"] == 0
    # one image of 40 better with each seed: a higher mean, not a finding
    assert rows["slightly"]["difference"] == pytest.approx(1 / 40)
    assert rows["slightly"]["verdict"] == "no significant difference"
    assert report["better"] == ["perfect"] and report["worse"] == []
    # the choice still combines every change with a higher mean; the report says which are significant
    assert report["chosen"] == "perfect + slightly"
    test = report["test_comparison"]
    assert [r["errors"] for r in report["test"]] == [[12, 12, 12], [0, 0, 0]]
    assert test["mcnemar"].pairs == 90 and len(test["mcnemar_per_seed"]) == 3
    assert test["verdict"] == "better" and report["goal"]["met"]
    text = format_report(report)
    assert "significantly better than the baseline on k-fold: perfect" in text
    assert "chosen on k-fold validation: perfect + slightly" in text and "goal" in text
    before_test = format_report(report, "validation")
    assert text == before_test + "\n\n" + format_report(report, "test")
    assert "test split" not in before_test and "perfect + slightly" in format_report(report, "test")
    with pytest.raises(ValueError, match="part must be 'all', 'validation' or 'test'"):
        format_report(report, "val")


def test_ablation_report_refuses_runs_that_miss_an_image():
    results = synthetic_results()
    results["kfold_runs"] = [r for r in results["kfold_runs"] if (r["recipe"], r["fold"]) != ("same", 1)]
    with pytest.raises(ValueError, match="k-fold runs of 'same' with seed 0 do not cover every image"):
        ablation_report(results)


# --- the ablation file -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


def test_the_ablation_file_holds_its_design_and_chose_on_k_fold_validation_alone(results, data):
    design = results["design"]
    pool = kfold_pool(data)
    assert results["labels"]["pool"] == encode_labels(pool[1])  # the same images, in the same order
    assert results["labels"]["test"] == encode_labels(data["splits"]["test"][1])
    for seed in design["seeds"]:
        assert results["folds"][str(seed)] == "".join(
            map(str, stratified_folds(pool[1], design["folds"], seed))
        )
    names = [r["name"] for r in results["recipes"]]
    assert names == [r.name for r in ablation_recipes()]
    for name in names:
        runs = [(r["seed"], r["fold"]) for r in results["kfold_runs"] if r["recipe"] == name]
        assert sorted(runs) == [(s, f) for s in design["seeds"] for f in range(design["folds"])], name
    recipes = [Recipe(**r) for r in results["recipes"]]
    singles = [r for r in results["kfold_runs"] if r["recipe"] in names]
    assert choose_recipe(summarize(singles), recipes) == Recipe(**results["chosen"])
    # the test split was read for the baseline and the recipes chosen, each read recorded with its date
    reads, choices = design["test_reads"], design["choices"]
    assert reads[-1]["chosen"] == choices[-1]["chosen"] == results["chosen"]["name"]
    assert choices[-1]["candidates"] == len(names)  # the last choice was made from every recipe
    assert choices[-1]["test_split_read"] == (reads[-1]["candidates"] == len(names))
    assert all(read["date"] and read["chosen"] for read in reads)
    assert {r["recipe"] for r in results["test_runs"]} <= {"baseline"} | {read["chosen"] for read in reads}
    for name in {r["recipe"] for r in results["test_runs"]}:
        assert sorted(r["seed"] for r in results["test_runs"] if r["recipe"] == name) == design["test_seeds"]
    assert (
        sorted(r["seed"] for r in results["test_runs"] if r["recipe"] == "baseline") == design["test_seeds"]
    )


def test_format_report_of_the_ablation_file_fits_a_page_of_88_columns(results):
    """Chapter 8 prints the report, and a book page holds 88 columns (tests/test_course.py)."""
    text = format_report(ablation_report(results, resamples=200))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 88 and all(line == line.rstrip() for line in lines)
    chosen = results["chosen"]["name"]
    assert len(chosen) > 21 and chosen in lines  # a long name gets a line of its own, its figures below
    figures = lines[lines.index(chosen) + 1]
    assert figures.startswith(" " * 21) and figures.endswith("n.s.")
    assert "n.s.: no significant difference at level 0.05" in lines
    cutmix = next(line for line in lines if line.startswith("CutMix "))
    assert cutmix.endswith("worse") and "<.001" in cutmix  # p = 3.6e-05 kept to the column's width


def test_one_seed_of_the_chosen_recipe_reproduces_the_ablation_file(data, results):
    """The chapter's test figures come from a file: re-run seed 0 of the recipe it chose and compare.

    Another CPU's kernels round some sums differently and training amplifies that, so the accuracies
    may differ by an image or two of 270, and the loss by a fraction of itself."""
    chosen = Recipe(**results["chosen"])
    saved = next(r for r in results["test_runs"] if r["recipe"] == chosen.name and r["seed"] == 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/ablation.py trained it
    try:
        run = train_recipe(chosen, 0, data)
    finally:
        torch.set_num_threads(threads)
    assert run["epochs"] == saved["epochs"] or chosen.patience
    for key in ("val_accuracy", "test_accuracy"):
        assert abs(run[key] - saved[key]) <= 2 / 270 + 1e-9, (key, run[key], saved[key])
    assert run["val_loss"] == pytest.approx(saved["val_loss"], rel=0.5)
    assert len(run["test_predictions"]) == len(saved["test_predictions"]) == 270
