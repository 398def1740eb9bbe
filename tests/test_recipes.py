"""companion.recipes: the pieces of chapter 8's recipes, and the ablation file the chapter loads."""

from __future__ import annotations

import json
import math
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
    changes,
    choose_recipe,
    digit_augmentation,
    digits_cnn,
    digits_data,
    make_optimizer,
    make_scheduler,
    parameter_groups,
    summarize,
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


def test_every_ablation_row_changes_one_thing_of_the_baseline():
    recipes = ablation_recipes()
    assert recipes[0] == BASELINE
    assert len({r.name for r in recipes}) == len(recipes)
    for recipe in recipes[1:]:
        assert 1 <= len(changes(recipe)) <= 2, recipe  # "constant + early stop" changes two fields


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


def test_one_seed_of_the_chosen_recipe_reproduces_the_ablation_file(data):
    """The chapter's ablation comes from a file: re-run seed 0 of the recipe it chose and compare.

    Another CPU's kernels round some sums differently and training amplifies that, so the accuracies
    may differ by an image or two of 270, and the loss by a fraction of itself."""
    results = json.loads(RESULTS.read_text())
    recipes = {r["name"]: Recipe(**r) for r in results["recipes"]}
    chosen = recipes[results["chosen"]]
    saved = next(r for r in results["runs"] if r["recipe"] == chosen.name and r["seed"] == 0)
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
