"""companion.debugging: each check finds the bug it is for, passes the healthy case, and refuses bad
arguments with a message that says what to pass instead."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import companion
from companion.debugging import (
    GradientNormMonitor,
    GradientWarning,
    check_gradient,
    check_initial_loss,
    find_nan_source,
    layer_gradient_norms,
    modules_in_training_mode,
    overfit_one_batch,
    read_learning_curves,
    shared_samples,
    yields_same_batches,
)
from companion.history import History
from companion.train import NonFiniteLossError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: a second thread only waits on the first (and on a busy machine, much longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(n=64, d=8, classes=4, seed=0):
    """Separable classes: a Gaussian blob per class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centers = 3 * torch.randn(classes, d, generator=g)
    return centers[labels] + torch.randn(n, d, generator=g), labels


def mlp(d=8, classes=4, hidden=32):
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))


def caught_warnings(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, caught


# --- check_initial_loss ----------------------------------------------------------------------------


def test_a_fresh_classifier_starts_within_10_percent_of_ln_c():
    companion.seed_everything(0)
    x, y = blobs(classes=5)
    result = check_initial_loss(mlp(classes=5), x / x.std(), y)
    assert result.ok and result.classes == 5
    assert result.expected == pytest.approx(math.log(5))
    assert abs(result.ratio - 1) <= 0.1 and "within 10%" in result.verdict


def test_inputs_on_a_large_scale_fail_the_initial_loss_and_say_normalize():
    companion.seed_everything(0)
    x, y = blobs()
    result = check_initial_loss(mlp(), 100 * x, y)
    assert not result.ok and result.ratio > 2
    assert "confidently wrong" in result.verdict and "normalize the inputs" in result.verdict


def test_a_model_that_knows_the_labels_before_training_is_suspected_of_a_leak():
    y = torch.arange(40) % 4
    leaked = 4.0 * nn.functional.one_hot(y, 4).float()  # the label is in the inputs
    result = check_initial_loss(nn.Identity(), leaked, y)
    assert not result.ok and result.loss < 0.5 * math.log(4)
    assert "below ln 4" in result.verdict and "leak" in result.verdict


def test_softmax_outputs_fail_the_initial_loss_check_though_the_loss_is_near_ln_c():
    companion.seed_everything(0)
    x, y = blobs()
    result = check_initial_loss(nn.Sequential(mlp(), nn.Softmax(dim=1)), x / x.std(), y)
    assert abs(result.ratio - 1) < 0.1  # the loss alone would pass
    assert not result.ok and "probabilities" in result.verdict and "remove the softmax" in result.verdict


def test_check_initial_loss_restores_the_mode_and_leaves_batch_norm_statistics_alone():
    companion.seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
    x, y = blobs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_initial_loss(model, x, y)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    check_initial_loss(model, x, y)
    assert not model.training


def test_check_initial_loss_refuses_float_targets_a_bad_rtol_and_outputs_that_do_not_fit():
    x, y = blobs()
    with pytest.raises(TypeError, match=r"integer class labels, got torch.float32.*pass labels.long\(\)"):
        check_initial_loss(mlp(), x, y.float())
    with pytest.raises(ValueError, match=r"labels of shape \(n,\), one per sample, got shape \(64, 1\)"):
        check_initial_loss(mlp(), x, y.unsqueeze(1))
    with pytest.raises(ValueError, match=r"rtol must be in \(0, 1\), got 1.5; pass e.g. rtol=0.1"):
        check_initial_loss(mlp(), x, y, rtol=1.5)
    with pytest.raises(ValueError, match=r"outputs 3 class scores.*label 3"):  # fit's own check
        check_initial_loss(mlp(classes=3), x, y)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        check_initial_loss(lambda t: t, x, y)


# --- overfit_one_batch -----------------------------------------------------------------------------


def test_a_healthy_model_overfits_one_batch_to_near_zero_loss_and_stops_there():
    companion.seed_everything(0)
    x, y = blobs(n=16)
    model = mlp()
    result = overfit_one_batch(
        model, x, y, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-2), max_steps=300
    )
    assert result.reached and result.steps < 300
    assert result.losses[-1] <= 0.01 < min(result.losses[:-1])  # stopped at the first step below
    assert "can learn this batch" in result.verdict


def test_a_softmax_before_the_loss_cannot_overfit_one_batch_below_its_floor():
    companion.seed_everything(0)
    x, y = blobs(n=16)
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    result = overfit_one_batch(
        model, x, y, nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-2), max_steps=60
    )
    floor = math.log(math.e + 3) - 1  # C = 4: the loss of perfect probabilities, softmaxed again
    assert not result.reached and result.steps == 60
    assert result.best >= floor - 1e-4 and "softmax" in result.verdict


def test_overfit_one_batch_refuses_bad_limits_and_passes_fits_errors_through():
    x, y = blobs(n=16)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"max_steps must be a positive int.*max_steps=200"):
        overfit_one_batch(model, x, y, nn.CrossEntropyLoss(), opt, max_steps=0)
    with pytest.raises(ValueError, match=r"target_loss must be a positive number"):
        overfit_one_batch(model, x, y, nn.CrossEntropyLoss(), opt, target_loss=-1)
    with pytest.raises(ValueError, match=r"outputs 4 class scores"):
        overfit_one_batch(model, x, y + 4, nn.CrossEntropyLoss(), opt)
    bad = x.clone()
    bad[0, 0] = math.nan
    with pytest.raises(NonFiniteLossError):
        overfit_one_batch(model, bad, y, nn.CrossEntropyLoss(), opt)


# --- gradient norms --------------------------------------------------------------------------------


def test_layer_gradient_norms_group_weight_and_bias_per_layer_and_skip_parameters_without_gradient():
    companion.seed_everything(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert layer_gradient_norms(model) == {}
    model[2].weight.requires_grad_(False)
    model(torch.randn(5, 3)).sum().backward()
    norms = layer_gradient_norms(model)
    first = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad])
    assert list(norms) == ["0", "2"]
    assert norms["0"] == pytest.approx(first.norm().item(), rel=1e-6)
    assert norms["2"] == pytest.approx(model[2].bias.grad.norm().item(), rel=1e-6)


def test_the_monitor_records_every_optimizer_step_of_fit_with_the_norm_that_clipping_sees():
    companion.seed_everything(0)
    x, y = blobs()
    model = mlp()
    monitor = GradientNormMonitor()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    companion.fit(
        model,
        loader,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        3,
        callbacks=[monitor],
        progress=False,
        accumulate_grad_batches=2,
    )
    assert monitor.steps == list(range(1, 7))  # 4 batches, 2 per step, 3 epochs
    assert set(monitor.norms) == {"0", "2"} and all(len(v) == 6 for v in monitor.norms.values())
    for step, total in enumerate(monitor.total):
        by_layer = math.sqrt(sum(monitor.norms[layer][step] ** 2 for layer in monitor.norms))
        assert total == pytest.approx(by_layer)
    assert monitor.alerts == []


def test_the_monitor_names_the_layers_of_a_compiled_model_as_those_of_the_model_it_wraps():
    class Compiled(nn.Module):  # what torch.compile returns: a module holding the model as _orig_mod
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

    model = mlp()
    compiled = Compiled(model)
    assert [name for name, _ in compiled.named_parameters()][0] == "_orig_mod.0.weight"
    model(torch.randn(4, 8)).sum().backward()
    monitor = GradientNormMonitor()
    monitor.record(compiled)
    assert list(monitor.norms) == ["0", "2"] and monitor.kinds["0"] == "Linear"


def test_the_monitor_restarts_at_each_fit():
    companion.seed_everything(0)
    x, y = blobs()
    model, monitor = mlp(), GradientNormMonitor()
    for _ in range(2):
        companion.fit(
            model,
            [(x, y)],
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            2,
            callbacks=[monitor],
            progress=False,
        )
    assert monitor.steps == [1, 2]


def test_gradients_never_zeroed_make_the_monitor_warn_once_of_explosion():
    companion.seed_everything(0)
    x, y = blobs()
    model, monitor = mlp(), GradientNormMonitor(explode_factor=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def loop():
        for _ in range(40):
            nn.functional.cross_entropy(model(x), y).backward()  # no zero_grad: a running sum
            monitor.record(model)
            optimizer.step()

    _, caught = caught_warnings(loop)
    assert len(caught) == 1 and caught[0].category is GradientWarning
    message = str(caught[0].message)
    assert message.startswith("exploding gradients at step") and "zeroed every step" in message
    assert max(monitor.total) > 10 * monitor.total[0] and monitor.alerts == [message]


def test_a_deep_sigmoid_network_makes_the_monitor_warn_of_vanishing_gradients_in_its_first_layers():
    companion.seed_everything(0)
    layers = [nn.Linear(8, 16), nn.Sigmoid()]
    for _ in range(9):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 4))
    x, y = blobs()
    monitor = GradientNormMonitor(vanish_ratio=1e-4)
    nn.functional.cross_entropy(model(x), y).backward()
    _, caught = caught_warnings(lambda: monitor.record(model))
    assert [w.category for w in caught] == [GradientWarning]
    message = str(caught[0].message)
    assert message.startswith("vanishing gradients at step 1: layer(s) 0, ")
    assert "20" not in message.split(" below ")[0]  # the last layer learns


def test_a_non_finite_gradient_warns_and_points_to_find_nan_source():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[math.nan, 0.0]])
    model.bias.grad = torch.zeros(1)
    _, caught = caught_warnings(lambda: GradientNormMonitor().record(model))
    assert len(caught) == 1 and "non-finite" in str(caught[0].message)
    assert "find_nan_source" in str(caught[0].message)


def float16_steps(monitor, steps, init_scale):
    """A float16 loop on the CPU as fit runs it with precision="16": autocast, GradScaler, unscale, record, step."""
    companion.seed_everything(0)
    model, (x, y) = mlp(), blobs()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    finite = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        monitor.record(model, scaler=scaler)
        finite.append(all(bool(p.grad.isfinite().all()) for p in model.parameters()))
        scaler.step(optimizer)  # skips the step when the gradients are not finite, and halves the scale
        scaler.update()
    return finite


def test_the_overflows_a_grad_scaler_skips_are_recorded_without_an_exploding_warning():
    monitor = GradientNormMonitor()
    finite, caught = caught_warnings(lambda: float16_steps(monitor, steps=14, init_scale=2.0**24))
    assert not finite[0] and finite[-1]  # it overflowed float16 at first, then the scale fitted
    assert monitor.skipped == [i + 1 for i, ok in enumerate(finite) if not ok]
    assert caught == [] and monitor.alerts == []


def test_gradients_not_finite_even_at_a_scale_below_one_still_warn():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[math.inf, 0.0]])
    model.bias.grad = torch.zeros(1)
    monitor = GradientNormMonitor()
    _, caught = caught_warnings(
        lambda: monitor.record(model, scaler=torch.amp.GradScaler("cpu", init_scale=0.5))
    )
    assert len(caught) == 1 and str(caught[0].message).startswith("exploding gradients at step 1: non-finite")
    assert monitor.skipped == []


def test_the_monitor_in_fit_reads_the_scaler_from_fit_s_state():
    model = nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[math.inf, 0.0]])
    model.bias.grad = torch.zeros(1)
    monitor = GradientNormMonitor()
    state = SimpleNamespace(model=model, global_step=4, scaler=torch.amp.GradScaler("cpu"))  # as FitState
    _, caught = caught_warnings(lambda: monitor.on_before_optimizer_step(state))
    assert caught == [] and monitor.skipped == [5]
    state.scaler = None  # float32: the same gradients are the model's own
    _, caught = caught_warnings(lambda: monitor.on_before_optimizer_step(state))
    assert len(caught) == 1 and "non-finite" in str(caught[0].message)


def test_the_monitor_refuses_bad_thresholds_and_plots_only_what_it_recorded():
    with pytest.raises(ValueError, match=r"explode_factor must be a number above 1.*explode_factor=10"):
        GradientNormMonitor(explode_factor=1)
    with pytest.raises(ValueError, match=r"vanish_ratio must be in \(0, 1\)"):
        GradientNormMonitor(vanish_ratio=0)
    monitor = GradientNormMonitor()
    with pytest.raises(ValueError, match=r"nothing recorded yet"):
        monitor.plot()
    model = mlp()
    model(torch.randn(4, 8)).sum().backward()
    monitor.record(model)
    with pytest.raises(ValueError, match=r"no layer named '5'.*\['0', '2'\]"):
        monitor.plot(layers=["5"])
    fig = monitor.plot(layers=["0"])
    assert [line.get_label() for line in fig.axes[0].lines] == ["0 (Linear)", "total"]
    import matplotlib.pyplot as plt

    plt.close(fig)


# --- find_nan_source -------------------------------------------------------------------------------


class WhereSqrt(nn.Module):
    def forward(self, x):
        return torch.where(x > 0, torch.sqrt(x), torch.zeros_like(x))


class Explodes(nn.Module):
    def forward(self, x):
        return x / torch.zeros_like(x)


def test_a_nan_made_only_in_the_backward_pass_is_traced_to_its_op_module_and_line():
    companion.seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), WhereSqrt(), nn.Linear(16, 4))
    x, y = blobs()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert math.isfinite(loss.item()) and model[0].weight.grad.isnan().any()  # finite forward, nan grads
    model.zero_grad()
    source, caught = caught_warnings(lambda: find_nan_source(model, x, y, nn.CrossEntropyLoss()))
    assert source.phase == "backward" and source.op == "SqrtBackward0"
    assert (source.module, source.module_type) == ("1", "WhereSqrt")
    assert source.code == "return torch.where(x > 0, torch.sqrt(x), torch.zeros_like(x))"
    assert str(source).startswith("backward: SqrtBackward0 returned nan, in module 1 (WhereSqrt)")
    assert caught == []  # anomaly mode's own warnings do not leak out


def test_find_nan_source_names_the_inputs_the_first_module_or_the_loss():
    x, y = blobs()
    bad = x.clone()
    bad[3, 1] = math.inf
    assert find_nan_source(mlp(), bad, y, nn.CrossEntropyLoss()).phase == "inputs"
    forward = find_nan_source(
        nn.Sequential(nn.Linear(8, 4), Explodes(), nn.ReLU()), x, y, nn.CrossEntropyLoss()
    )
    assert (forward.phase, forward.module, forward.module_type) == ("forward", "1", "Explodes")
    loss = find_nan_source(mlp(), x, y, lambda out, t: torch.log(out - 1e6).mean())
    assert loss.phase == "loss"


def test_a_healthy_model_has_no_nan_source_and_keeps_its_gradients():
    companion.seed_everything(0)
    model = mlp()
    x, y = blobs()
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    values = {name: g.clone() for name, g in grads.items()}
    assert find_nan_source(model, x, y, nn.CrossEntropyLoss()) is None
    for name, p in model.named_parameters():
        assert p.grad is grads[name] and torch.equal(p.grad, values[name])


def test_find_nan_source_refuses_a_loss_that_is_not_callable():
    x, y = blobs()
    with pytest.raises(TypeError, match=r"loss_fn must be callable as loss_fn\(output, targets\)"):
        find_nan_source(mlp(), x, y, "cross_entropy")


class LogInForward(nn.Module):
    """The nan comes from the parent's own torch.log, between two children that only compute."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.second(torch.log(self.first(x)))  # log of the negative outputs: nan


def test_a_nan_made_in_a_parent_s_forward_is_blamed_on_the_parent_not_the_child_it_reaches():
    companion.seed_everything(0)
    x, y = blobs()
    source = find_nan_source(LogInForward(), x, y, nn.CrossEntropyLoss())
    assert (source.phase, source.module, source.module_type) == ("forward", "(the model)", "LogInForward")


class SqrtOfRelu(nn.Module):
    def forward(self, x):
        return torch.sqrt(torch.relu(x))  # sqrt at 0 (every negative input): gradient 1 / (2 sqrt(0)) = inf


def test_an_infinite_gradient_is_traced_to_its_op_as_a_nan_is():
    companion.seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), SqrtOfRelu(), nn.Linear(16, 4))
    x, y = blobs()
    source = find_nan_source(model, x, y, nn.CrossEntropyLoss())
    assert source is not None
    assert (source.phase, source.op, source.value) == ("backward", "SqrtBackward0", "inf")
    assert (source.module, source.module_type) == ("1", "SqrtOfRelu")
    assert (
        source.code
        == "return torch.sqrt(torch.relu(x))  # sqrt at 0 (every negative input): gradient 1 / (2 sqrt(0)) = inf"
    )
    assert str(source).startswith("backward: SqrtBackward0 returned inf, in module 1 (SqrtOfRelu)")


# --- check_gradient --------------------------------------------------------------------------------


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


class CubeWrong(Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x**2  # the exponent's factor is wrong


def test_check_gradient_passes_a_right_backward_and_fails_a_wrong_one():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    right, wrong = check_gradient(Cube.apply, x), check_gradient(CubeWrong.apply, x)
    assert right.passed and "agree" in right.message
    assert not wrong.passed and wrong.message == "Jacobian mismatch for output 0 with respect to input 0"


def test_check_gradient_refuses_single_precision_no_gradient_and_no_function():
    x32 = torch.randn(3, requires_grad=True)
    with pytest.raises(TypeError, match=r"input 0 is torch.float32.*needs float64.*x.double\(\)"):
        check_gradient(Cube.apply, x32)
    with pytest.raises(ValueError, match=r"no input requires a gradient"):
        check_gradient(Cube.apply, torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pass at least one input tensor"):
        check_gradient(Cube.apply)
    with pytest.raises(TypeError, match=r"fn must be callable"):
        check_gradient(None, x32.double())


class CubeWrongShape(Cube):
    @staticmethod
    def backward(ctx, grad):
        return grad.sum().expand(2)  # two numbers for an input of five


class CubeTwoGradients(Cube):
    @staticmethod
    def backward(ctx, grad):
        return grad, grad  # one input, two gradients


class CubeBadForward(Cube):
    @staticmethod
    def forward(ctx, x):
        return x @ torch.ones(3, dtype=x.dtype)  # the forward itself fails for an input of five


def test_a_gradient_of_the_wrong_shape_or_count_fails_the_check_with_autograd_s_reason():
    x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    shape = check_gradient(CubeWrongShape.apply, x)
    assert not shape.passed and "invalid gradient at index 0 - got [2]" in shape.message
    count = check_gradient(CubeTwoGradients.apply, x)
    assert not count.passed and "incorrect number of gradients (expected 1, got 2)" in count.message
    with pytest.raises(RuntimeError):  # an error that is not about the gradients is not a check's result
        check_gradient(CubeBadForward.apply, x)


# --- read_learning_curves --------------------------------------------------------------------------


def history(train, val, val_accuracy=None):
    rows = []
    for i, (t, v) in enumerate(zip(train, val)):
        row = {"epoch": i + 1, "train_loss": t, "val_loss": v}
        if val_accuracy is not None:
            row["val_accuracy"] = val_accuracy[i]
        rows.append(row)
    return History(rows)


HEALTHY = ([2.0, 1.0, 0.6, 0.4, 0.3], [1.5, 0.9, 0.6, 0.5, 0.45])


@pytest.mark.parametrize(
    ("train", "val", "accuracy", "verdict"),
    [
        (*HEALTHY, [0.5, 0.7, 0.8, 0.85, 0.9], "healthy"),
        ([2.0, 1.9, 1.8, 1.75, 1.7], [2.0, 1.9, 1.85, 1.8, 1.75], None, "underfitting"),
        ([2.0, 0.5, 0.1, 0.02, 0.01], [1.5, 0.6, 0.5, 0.7, 0.9], None, "overfitting"),
        ([2.0, 0.5, 0.8, 0.4, 0.7], [1.5, 0.6, 0.9, 0.5, 0.8], None, "learning rate too high"),
        (
            [2.0, 0.5, 0.1, 0.02, 0.01],
            [1.5, 0.4, 0.1, 0.02, 0.01],
            [0.6, 0.9, 1.0, 1.0, 1.0],
            "suspect a data leak",
        ),
        ([2.3, 2.2, 2.1, 2.0, 1.9], [2.3, 2.4, 2.5, 2.6, 2.7], [0.1, 0.12, 0.09, 0.11, 0.1], "chance level"),
        ([2.0, math.nan, math.nan, math.nan, math.nan], [1.5] * 5, None, "diverged"),
    ],
    ids=["healthy", "underfitting", "overfitting", "lr-too-high", "leak", "chance", "diverged"],
)
def test_each_shape_of_learning_curve_gets_its_verdict(train, val, accuracy, verdict):
    reading = read_learning_curves(history(train, val, accuracy), classes=10)
    assert reading.verdict == verdict and reading.findings


def test_the_first_rule_that_holds_gives_the_verdict_and_every_rule_that_holds_is_a_finding():
    shuffled = history([2.3, 2.2, 2.1, 2.0, 1.9], [2.3, 2.4, 2.5, 2.6, 2.9], [0.1, 0.12, 0.09, 0.11, 0.1])
    reading = read_learning_curves(shuffled, classes=10)
    assert reading.verdict == "chance level"
    assert len(reading.findings) == 3  # and overfitting (val +26 %), and underfitting
    assert "a guess among 10 classes" in reading.findings[0] and str(reading).startswith("chance level\n- ")
    assert read_learning_curves(shuffled).verdict == "overfitting"  # chance needs classes


def test_chance_level_is_read_from_the_late_epochs_average_not_from_one_lucky_epoch():
    losses = [2.3, 2.2, 2.1, 2.0, 1.9, 1.8]
    lucky = history(losses, losses, [0.1, 0.1, 0.25, 0.12, 0.09, 0.11])
    assert read_learning_curves(lucky, classes=10).verdict == "chance level"
    late_learner = history(losses, losses, [0.1, 0.1, 0.1, 0.3, 0.5, 0.6])
    assert "chance level" not in read_learning_curves(late_learner, classes=10).verdict


def test_a_validation_loss_10_percent_above_its_minimum_is_not_yet_overfitting():
    assert read_learning_curves(history([2.0, 1.0, 0.5, 0.3, 0.2], [1.5, 0.8, 0.5, 0.52, 0.55])).verdict == (
        "healthy"
    )


def test_read_learning_curves_refuses_short_curves_no_validation_and_other_objects():
    with pytest.raises(ValueError, match=r"a curve of 2 epoch\(s\) is too short.*at least 3"):
        read_learning_curves(history([2.0, 1.0], [2.0, 1.0]))
    with pytest.raises(ValueError, match=r"no val_loss.*pass val_loader to fit"):
        read_learning_curves(History([{"epoch": e, "train_loss": 1.0} for e in range(1, 5)]))
    with pytest.raises(TypeError, match=r"must be a companion.history.History"):
        read_learning_curves({"train_loss": [1.0]})
    with pytest.raises(ValueError, match=r"classes must be the number of classes, an int >= 2"):
        read_learning_curves(history(*HEALTHY), classes=1)


# --- honest evaluation -----------------------------------------------------------------------------


def test_modules_in_training_mode_lists_dropout_and_batch_norm_until_eval():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.InstanceNorm2d(2), nn.Flatten(), nn.Dropout(0.5)
    )
    assert modules_in_training_mode(model) == ["1 (BatchNorm2d)", "4 (Dropout)"]
    model.append(nn.InstanceNorm2d(2, track_running_stats=True))
    assert modules_in_training_mode(model)[-1] == "5 (InstanceNorm2d)"
    model.eval()
    assert modules_in_training_mode(model) == []
    assert modules_in_training_mode(nn.Dropout()) == ["(the model) (Dropout)"]


class Jitter(Dataset):
    """Adds fresh noise to every sample at every access: a random augmentation."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


def test_yields_same_batches_passes_a_plain_loader_and_fails_augmented_or_shuffled_ones():
    x, y = blobs()
    assert yields_same_batches(DataLoader(TensorDataset(x, y), batch_size=10))
    assert not yields_same_batches(DataLoader(Jitter(x, y), batch_size=10))
    assert not yields_same_batches(DataLoader(TensorDataset(x, y), batch_size=10, shuffle=True))
    assert yields_same_batches([x[:5], x[5:]])


def test_yields_same_batches_refuses_empty_loaders_and_other_objects():
    with pytest.raises(ValueError, match=r"yielded no batches"):
        yields_same_batches([])
    with pytest.raises(TypeError, match=r"iterable of batches, e.g. a DataLoader"):
        yields_same_batches(3)
    with pytest.raises(TypeError, match=r"must yield tensors or \(inputs, targets\) pairs"):
        yields_same_batches(["a", "b"])


def test_shared_samples_counts_exact_copies_only():
    x, _ = blobs()
    assert shared_samples(x[:40], x[30:]) == 10
    assert shared_samples(x[:40], x[40:]) == 0
    assert shared_samples(x, x[:5] + 1e-6) == 0  # a near-copy is not found
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    assert shared_samples(images, images[2:4].clone()) == 2
    assert shared_samples(x.bfloat16(), x[:3].bfloat16()) == 3
    with pytest.raises(ValueError, match=r"same shape and dtype"):
        shared_samples(x, x[:, :3])
    with pytest.raises(TypeError, match=r"b must be a torch.Tensor"):
        shared_samples(x, [1, 2])
