"""companion.lr_finder: the learning-rate range test leaves no trace and suggests a rate that trains."""

from __future__ import annotations

import copy
import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion import lr_finder
from companion.datasets import make_linear_regression
from companion.linear import hessian
from companion.lr_finder import LRFindResult, lr_find, smooth_losses, zero_lag_smooth


def small_classifier() -> nn.Sequential:
    # batch norm has buffers (running statistics) that a forward pass in train mode changes
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def classification_loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 8, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 1).long()
    return DataLoader(
        TensorDataset(X, y), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def least_squares(batch_size: int) -> tuple[nn.Linear, DataLoader, float]:
    """A linear regression whose best constant gradient-descent rate is known: 2 / (lambda_min + lambda_max)."""
    X, y, _ = make_linear_regression(n=512, d=10, noise=0.1, seed=0)
    eigenvalues = torch.linalg.eigvalsh(hessian(X))
    best = 2 / (eigenvalues[0] + eigenvalues[-1]).item()
    torch.manual_seed(0)
    loader = DataLoader(
        TensorDataset(X, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    return nn.Linear(10, 1), loader, best


def test_model_optimizer_and_mode_come_back_bit_identical():
    torch.manual_seed(0)
    model, loader = small_classifier(), classification_loader()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    companion.fit(model, loader, nn.CrossEntropyLoss(), optimizer, 1, progress=False)  # Adam has state now
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = optimizer.state_dict()
    saved_state = {i: {k: v.clone() for k, v in s.items()} for i, s in state["state"].items()}
    saved_groups = [dict(g) for g in state["param_groups"]]

    result = lr_find(model, loader, nn.CrossEntropyLoss(), optimizer, num_iter=50)

    assert len(result.lrs) > 10  # it trained, so there was something to restore
    assert not model.training
    after = model.state_dict()
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    now = optimizer.state_dict()
    assert now["param_groups"] == saved_groups
    assert now["state"].keys() == saved_state.keys()
    for i, s in saved_state.items():
        assert all(torch.equal(now["state"][i][k], v) for k, v in s.items())
    assert all(p.grad is None for p in model.parameters())


def test_a_fit_after_lr_find_is_the_fit_without_it():
    def train(with_lr_find: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model, loader = small_classifier(), classification_loader(seed=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        if with_lr_find:
            lr_find(model, loader, nn.CrossEntropyLoss(), optimizer, num_iter=30)
        companion.fit(model, loader, nn.CrossEntropyLoss(), optimizer, 2, progress=False)
        return model.state_dict()

    plain, after = train(False), train(True)
    assert all(torch.equal(plain[k], after[k]) for k in plain)


def seeded_least_squares(seed: int, init: int) -> tuple[nn.Linear, DataLoader, float, float]:
    """Chapter 8's draw: least squares with data seed ``seed``, initial weights from ``init``, full batch.
    Returns the model, the loader, the best constant rate 2 / (lambda_min + lambda_max) and the largest
    stable one, 2 / lambda_max."""
    X, y, _ = make_linear_regression(n=512, d=10, seed=seed)
    eigenvalues = torch.linalg.eigvalsh(hessian(X))
    torch.manual_seed(init)
    loader = DataLoader(TensorDataset(X, y), batch_size=512)
    return nn.Linear(10, 1), loader, 2 / (eigenvalues[0] + eigenvalues[-1]).item(), 2 / eigenvalues[-1].item()


def gradient_descent_loss(model: nn.Linear, loader: DataLoader, lr: float, steps: int = 50) -> list[float]:
    """The loss before and after ``steps`` of full-batch gradient descent at ``lr`` from a copy of ``model``."""
    model = copy.deepcopy(model)
    (X, y), sgd = loader.dataset.tensors, torch.optim.SGD(model.parameters(), lr=lr)
    first = nn.functional.mse_loss(model(X), y).item()
    for _ in range(steps):
        sgd.zero_grad()
        nn.functional.mse_loss(model(X), y).backward()
        sgd.step()
    return [first, nn.functional.mse_loss(model(X), y).item()]


@pytest.mark.parametrize("batch_size", [512, 128])
def test_suggestion_is_a_tenth_of_the_lowest_point_and_below_the_best_rate_of_least_squares(batch_size):
    model, loader, best = least_squares(batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    result = lr_find(model, loader, nn.MSELoss(), optimizer, start_lr=1e-4, end_lr=10.0)
    assert best / 10 <= result.suggestion <= best, (result.suggestion, best)
    assert result.suggestion == result.lowest_lr / 10


def test_suggestion_is_below_2_over_lambda_max_and_trains_on_every_seeded_least_squares_draw():
    for seed in range(10):
        for init in range(2):
            model, loader, best, edge = seeded_least_squares(seed, init)
            result = lr_find(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters()), start_lr=1e-4)
            assert best / 10 < result.suggestion < edge / 2, (seed, init, result.suggestion, best, edge)
            before, after = gradient_descent_loss(model, loader, result.suggestion)
            assert after < before / 10, (seed, init, before, after)  # it trains


def test_half_the_lowest_point_the_old_rule_diverged_on_data_seed_2_and_the_suggestion_trains():
    # the draw of issue 16: the smoothed loss was lowest at about 2.3 / lambda_max, so half of it, the
    # suggestion before, was past 2 / lambda_max and gradient descent at it blew up
    model, loader, best, edge = seeded_least_squares(seed=2, init=0)
    result = lr_find(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters()), start_lr=1e-4)
    assert result.lowest_lr / 2 >= edge  # the old rule's suggestion
    before, after = gradient_descent_loss(model, loader, result.lowest_lr / 2)
    assert after > 100 * before  # it diverged
    assert result.suggestion < edge
    before, after = gradient_descent_loss(model, loader, result.suggestion)
    assert after < before / 10


def test_the_test_stops_where_the_loss_diverges_and_returns_the_curve():
    model, loader, best = least_squares(512)
    result = lr_find(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), start_lr=1e-4)
    assert isinstance(result, LRFindResult)
    assert len(result.lrs) == len(result.losses) == len(result.smoothed) < 100
    assert "exceeded 4 times its lowest" in result.stopped
    assert result.lrs[-1] > 2 * best  # it went past the largest stable rate, 2 / lambda_max, before stopping
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios))  # the rate grows exponentially
    assert result.lrs[0] == pytest.approx(1e-4)


def test_plot_marks_the_lowest_point_and_the_suggestion():
    model, loader, _ = least_squares(512)
    result = lr_find(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), start_lr=1e-4)
    fig = result.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"suggestion: {result.suggestion:.1e}" in labels and f"lowest: {result.lowest_lr:.1e}" in labels


def test_smoothing_keeps_a_constant_and_zero_lag_keeps_the_minimum_in_place():
    assert smooth_losses([2.0] * 5, 0.9) == pytest.approx([2.0] * 5)  # corrected for the start at zero
    v = [abs(i - 30) + 1.0 for i in range(61)]  # a symmetric valley, lowest at 30
    lagging = smooth_losses(v, 0.8)
    assert lagging.index(min(lagging)) > 30  # the one-way average is late
    both = zero_lag_smooth(v, 0.8)
    assert both.index(min(both)) == 30


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"start_lr": 0.0}, ValueError, "start_lr must be a positive learning rate"),
        ({"end_lr": math.inf}, ValueError, "end_lr must be a positive learning rate"),
        ({"start_lr": 1.0, "end_lr": 0.1}, ValueError, "end_lr must be larger than start_lr"),
        ({"num_iter": 2}, ValueError, "num_iter must be an int of at least 5"),
        ({"num_iter": 50.0}, ValueError, "num_iter must be an int"),
        ({"beta": 1.0}, ValueError, r"beta must be in \[0, 1\)"),
        ({"diverge": 1.0}, ValueError, "diverge must be a number > 1"),
    ],
)
def test_bad_rates_are_refused_with_what_to_pass(kwargs, error, message):
    model, loader = small_classifier(), classification_loader()
    with pytest.raises(error, match=message):
        lr_find(model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_bad_objects_are_refused_with_what_to_pass():
    model, loader = small_classifier(), classification_loader()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        lr_find(lambda x: x, loader, nn.CrossEntropyLoss(), sgd)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        lr_find(model, loader, nn.CrossEntropyLoss(), "adam")
    other = torch.optim.SGD(small_classifier().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of them the model's"):  # fit's own check and wording
        lr_find(model, loader, nn.CrossEntropyLoss(), other)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        lr_find(model, loader, "cross-entropy", sgd)
    with pytest.raises(TypeError, match="loader must be an iterable"):
        lr_find(model, 3, nn.CrossEntropyLoss(), sgd)
    with pytest.raises(TypeError, match=r"each batch of loader must be a pair \(inputs, targets\)"):
        lr_find(model, [torch.zeros(4, 8)] * 10, nn.CrossEntropyLoss(), sgd)
    empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="loader is empty, it yields no batches"):  # fit's wording
        lr_find(model, empty, nn.CrossEntropyLoss(), sgd)
    with pytest.raises(
        ValueError, match="loader yielded no batches"
    ):  # one without a length: found out later
        lr_find(model, iter(()), nn.CrossEntropyLoss(), sgd)


def test_a_range_that_misses_the_breakdown_says_which_end_to_move():
    model, loader, _ = least_squares(512)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="still falling at end_lr=0.01.*larger end_lr"):
        lr_find(model, loader, nn.MSELoss(), sgd, start_lr=1e-4, end_lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="(lowest at the first rate|too few to suggest).*start_lr"):
        lr_find(model, loader, nn.MSELoss(), sgd, start_lr=3.0, end_lr=100.0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # restored even then


def test_targets_that_do_not_fit_the_output_are_refused_before_training():
    model, loader, _ = least_squares(512)
    X, y = loader.dataset.tensors
    flat = DataLoader(TensorDataset(X, y.squeeze(1)), batch_size=64)  # (n,) targets for (n, 1) outputs
    with pytest.raises(ValueError, match="differ"):
        lr_find(model, flat, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1))


def test_a_loss_that_goes_below_zero_runs_as_its_shifted_copy_once_given_its_floor():
    # MSE - 1 has MSE's gradients, so the same steps; measured from floor=-1 it must stop where MSE stops
    def shifted(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target) - 1.0

    runs = []
    for loss_fn, floor in ((nn.MSELoss(), 0.0), (shifted, -1.0)):
        model, loader, _ = least_squares(512)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(lr_find(model, loader, loss_fn, sgd, start_lr=1e-4, floor=floor))
    plain, below = runs
    assert min(below.losses) < 0  # the loss did go below 0
    assert below.lrs == plain.lrs and below.suggestion == plain.suggestion
    assert below.losses == pytest.approx([v - 1 for v in plain.losses], abs=1e-5)
    assert "exceeded 4 times its lowest" in below.stopped and "floor=-1" in below.stopped
    assert len(below.lrs) < 100  # it stopped where the loss diverged, not at once


def test_a_negative_cosine_loss_without_its_floor_is_refused_saying_what_to_pass():
    model, loader, _ = least_squares(512)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def negative_cosine(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -nn.functional.cosine_similarity(output, target, dim=0).mean()

    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"below floor=0.*floor=-1 for a negative cosine similarity"):
        lr_find(model, loader, negative_cosine, sgd, start_lr=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="floor must be a finite number"):
        lr_find(model, loader, negative_cosine, sgd, floor=-math.inf)


def test_a_loader_with_persistent_workers_is_refused_before_any_worker_starts():
    model, loader = small_classifier(), classification_loader()
    persistent = DataLoader(loader.dataset, batch_size=32, num_workers=1, persistent_workers=True)
    with pytest.raises(
        ValueError, match=r"persistent_workers=True.*cannot put them back.*persistent_workers=False"
    ):
        lr_find(model, persistent, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert persistent._iterator is None  # no worker was started


def test_check_output_false_skips_fit_s_output_check_as_in_fit(monkeypatch):
    def refuse(output, targets, loss_fn=None):
        raise ValueError("check_output_fits ran")

    monkeypatch.setattr(lr_finder, "check_output_fits", refuse)
    model, loader, _ = least_squares(512)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="check_output_fits ran"):
        lr_find(model, loader, nn.MSELoss(), sgd, start_lr=1e-4)
    assert lr_find(model, loader, nn.MSELoss(), sgd, start_lr=1e-4, check_output=False).suggestion > 0
    with pytest.raises(TypeError, match="check_output must be True or False"):
        lr_find(model, loader, nn.MSELoss(), sgd, check_output=0)
