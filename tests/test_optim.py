import copy
import io
import math

import pytest
import torch
from torch import nn

from companion.optim import (
    QUADRATIC_A,
    QUADRATIC_MINIMUM,
    FromScratch,
    adadelta_step,
    adam_step,
    adamw_step,
    ill_conditioned_quadratic,
    nadam_step,
    plot_paths,
    rmsprop_step,
    rosenbrock,
    run_path,
    sgd_step,
    steps_to_tolerance,
)

# (torch class, from-scratch rule, hyperparameters): several settings per optimizer, every option exercised.
SETTINGS = [
    (torch.optim.SGD, sgd_step, dict(lr=0.1)),
    (torch.optim.SGD, sgd_step, dict(lr=0.05, momentum=0.9)),
    (torch.optim.SGD, sgd_step, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (torch.optim.SGD, sgd_step, dict(lr=0.1, momentum=0.5, dampening=0.3, weight_decay=0.1)),
    (torch.optim.Adam, adam_step, dict(lr=1e-2)),
    (torch.optim.Adam, adam_step, dict(lr=0.05, betas=(0.5, 0.9))),
    (torch.optim.Adam, adam_step, dict(lr=0.01, betas=(0.0, 0.99), eps=1e-4, weight_decay=0.1)),
    (torch.optim.AdamW, adamw_step, dict(lr=1e-2)),
    (torch.optim.AdamW, adamw_step, dict(lr=0.05, weight_decay=0.1)),
    (torch.optim.AdamW, adamw_step, dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0)),
    (torch.optim.NAdam, nadam_step, dict(lr=2e-3)),
    (torch.optim.NAdam, nadam_step, dict(lr=0.02, betas=(0.8, 0.99), momentum_decay=0.01)),
    (torch.optim.NAdam, nadam_step, dict(lr=0.01, weight_decay=0.05)),
    (torch.optim.NAdam, nadam_step, dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True)),
    (torch.optim.RMSprop, rmsprop_step, dict(lr=1e-2)),
    (torch.optim.RMSprop, rmsprop_step, dict(lr=5e-3, alpha=0.9, momentum=0.9)),
    (torch.optim.RMSprop, rmsprop_step, dict(lr=1e-2, centered=True)),
    (
        torch.optim.RMSprop,
        rmsprop_step,
        dict(lr=1e-2, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-4),
    ),
    (torch.optim.Adadelta, adadelta_step, dict()),
    (torch.optim.Adadelta, adadelta_step, dict(lr=0.5, rho=0.95)),
    (torch.optim.Adadelta, adadelta_step, dict(lr=2.0, eps=1e-4, weight_decay=0.1)),
]
IDS = [
    f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}" for cls, _, kw in SETTINGS
]


def random_problem(seed: int):
    """A small non-convex regression, tanh(X W) v ~ y, in float64: two parameters of different shapes."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 5, generator=g, dtype=torch.float64)
    y = torch.randn(32, generator=g, dtype=torch.float64)
    params = [
        torch.randn(5, 4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    ]

    def loss(W, v):
        return ((torch.tanh(X @ W) @ v - y) ** 2).mean()

    return params, loss


@pytest.fixture
def float64_default():
    """torch.optim keeps its scalar state (the step count, NAdam's running product of momenta) in the
    default dtype: float32 unless told otherwise, which alone puts NAdam ~1e-7 off an exact float64 run."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.usefixtures("float64_default")
@pytest.mark.parametrize(
    "seed, torch_cls, step_fn, hyper", [(i, *s) for i, s in enumerate(SETTINGS)], ids=IDS
)
def test_rule_matches_torch_optim_for_100_steps(seed, torch_cls, step_fn, hyper):
    init, loss = random_problem(seed)
    ours = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    opt_ours, opt_theirs = FromScratch(ours, step_fn, **hyper), torch_cls(theirs, **hyper)
    for _ in range(100):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss(*params).backward()
            opt.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
    moved = max((a - p).abs().max().item() for a, p in zip(ours, init))
    assert moved > 1e-3, "the comparison is only meaningful if the parameters moved"


def test_run_path_drives_torch_and_from_scratch_optimizers_alike():
    start = [-1.5, 2.0]
    ours = run_path(lambda p: FromScratch(p, adam_step, lr=0.05), rosenbrock, start, steps=100)
    theirs = run_path(lambda p: torch.optim.Adam(p, lr=0.05), rosenbrock, start, steps=100)
    assert ours.shape == (101, 2) and ours.dtype == torch.float64
    assert ours[0].tolist() == start
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)


def test_run_path_keeps_the_dtype_of_a_tensor_start_and_zero_steps_is_the_start():
    start = torch.tensor([0.5, -0.5])
    path = run_path(lambda p: torch.optim.SGD(p, lr=0.1), ill_conditioned_quadratic, start, steps=0)
    assert path.dtype == torch.float32 and torch.equal(path, start.unsqueeze(0))


def test_rosenbrock_minimum_is_zero_with_zero_gradient_and_grid_evaluation_works():
    w = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    value = rosenbrock(w)
    value.backward()
    assert value.item() == 0.0 and torch.equal(w.grad, torch.zeros(2, dtype=torch.float64))
    assert rosenbrock(torch.tensor([-1.0, 1.0])).item() == 4.0  # (1 - -1)^2 + 100 * (1 - 1)^2
    assert rosenbrock(torch.zeros(7, 9, 2)).shape == (7, 9)


def test_quadratic_has_condition_number_10_and_its_hessian_is_A():
    eigenvalues = torch.linalg.eigvalsh(QUADRATIC_A)
    torch.testing.assert_close(eigenvalues, torch.tensor([1.0, 10.0], dtype=torch.float64))
    w = torch.tensor([0.3, -1.2], dtype=torch.float64)
    hessian = torch.autograd.functional.hessian(ill_conditioned_quadratic, w)
    torch.testing.assert_close(hessian, QUADRATIC_A)
    assert ill_conditioned_quadratic(torch.tensor(QUADRATIC_MINIMUM)).item() == 0.0
    assert (
        ill_conditioned_quadratic(torch.tensor([0.0, 0.0])).item() == 10.0
    )  # (1/2) (-1, -1) A (-1, -1)^T = 20/2
    assert ill_conditioned_quadratic(torch.zeros(4, 3, 2)).shape == (4, 3)


def test_quadratic_is_the_mse_of_a_linear_model_with_A_equal_2_XtX_over_n():
    # X with X^T X / n = A / 2 (n = 2 rows: a Cholesky factor), noiseless targets y = X w*
    n = 2
    X = math.sqrt(n) * torch.linalg.cholesky(QUADRATIC_A.double() / 2).T
    y = X @ torch.tensor(QUADRATIC_MINIMUM, dtype=torch.float64)
    w = torch.tensor([0.7, -0.4], dtype=torch.float64)
    mse = torch.nn.functional.mse_loss(X @ w, y)
    torch.testing.assert_close(mse, ill_conditioned_quadratic(w))


@pytest.mark.parametrize("lr, converges", [(0.19, True), (0.21, False)])
def test_gradient_descent_on_the_quadratic_converges_exactly_below_2_over_lambda_max(lr, converges):
    minimum = torch.tensor(QUADRATIC_MINIMUM, dtype=torch.float64)
    path = run_path(lambda p: torch.optim.SGD(p, lr=lr), ill_conditioned_quadratic, [0.0, 0.5], steps=300)
    distance = (path - minimum).norm(dim=1)
    assert (distance[-1].item() < 1e-6) is converges
    if not converges:
        assert distance[150].item() > 1e3 * distance[0].item()


def test_run_path_stops_at_the_first_non_finite_point_and_fills_the_rest_with_nan():
    path = run_path(lambda p: torch.optim.SGD(p, lr=10.0), ill_conditioned_quadratic, [0.0, 0.5], steps=2000)
    assert path.shape == (2001, 2)
    finite = torch.isfinite(path).all(dim=1)
    first_bad = int((~finite).nonzero()[0])
    assert 0 < first_bad < 2000 and finite[:first_bad].all()
    assert path[first_bad + 1 :].isnan().all()


def test_adam_with_weight_decay_and_adamw_give_different_updates():
    # one step from theta = (1, 1) with gradient (0, 10): Adam normalises the L2 term away, AdamW does not
    results = {}
    for name, rule in (("adam", adam_step), ("adamw", adamw_step)):
        theta = torch.tensor([1.0, 1.0], dtype=torch.float64)
        rule(theta, torch.tensor([0.0, 10.0], dtype=torch.float64), {}, lr=0.1, weight_decay=0.1)
        results[name] = theta
    torch.testing.assert_close(
        results["adam"], torch.tensor([0.9, 0.9], dtype=torch.float64), rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        results["adamw"], torch.tensor([0.99, 0.89], dtype=torch.float64), rtol=1e-6, atol=0
    )


def test_first_rmsprop_step_is_lr_over_sqrt_one_minus_alpha_and_adadelta_starts_small():
    theta = torch.zeros(3, dtype=torch.float64)
    rmsprop_step(theta, torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64), {}, lr=0.01, alpha=0.99)
    torch.testing.assert_close(theta, torch.full((3,), -0.1, dtype=torch.float64), rtol=1e-4, atol=0)
    theta = torch.zeros(3, dtype=torch.float64)
    adadelta_step(theta, torch.tensor([1.0, 10.0, 1e3], dtype=torch.float64), {}, lr=1.0, rho=0.9, eps=1e-6)
    torch.testing.assert_close(
        theta, torch.full((3,), -math.sqrt(1e-6 / 0.1), dtype=torch.float64), rtol=1e-4, atol=0
    )


def test_state_holds_the_step_count_and_moments():
    theta, state = torch.zeros(2), {}
    for _ in range(3):
        adam_step(theta, torch.ones(2), state, lr=0.1)
    assert state["step"] == 3 and set(state) == {"step", "exp_avg", "exp_avg_sq"}
    torch.testing.assert_close(state["exp_avg"], torch.full((2,), 1 - 0.9**3))


def test_steps_to_tolerance_finds_where_the_path_stays_within_tolerance():
    target = torch.tensor([2.0, 0.0])
    path = torch.tensor([[0.0, 0.0], [2.0, 0.0], [3.0, 0.0], [2.1, 0.0], [2.001, 0.0], [2.0, 0.0]])
    # tolerance 0.01 * max(|target|, 1) = 0.02: step 1 is inside but the path leaves again at step 2
    assert steps_to_tolerance(path, target, tol=0.01) == 4
    assert steps_to_tolerance(path, target, tol=0.1) == 3
    assert steps_to_tolerance(path[:4], target, tol=0.01) is None
    assert steps_to_tolerance(torch.tensor([[float("nan"), 0.0]]), target, tol=0.1) is None


def test_plot_paths_draws_every_path_with_labels_and_a_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_path(lambda p: torch.optim.SGD(p, lr=0.05), ill_conditioned_quadratic, [1.0, -1.0], steps=10)
    fig, ax = plt.subplots()
    plot_paths(ax, ill_conditioned_quadratic, {"SGD": path}, (-2, 2), (-2, 2), minimum=(0, 0), title="bowl")
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["SGD", "start", "minimum"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "bowl" and ax.get_legend() is not None
    plt.close(fig)


# --- bad arguments: each error says what was wrong and what to pass -------------------------------

RULES = [sgd_step, adam_step, adamw_step, nadam_step, rmsprop_step, adadelta_step]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_negative_learning_rate_is_rejected_with_an_example(rule):
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got -0.1; pass e.g. lr=1e-3"):
        rule(torch.zeros(2), torch.zeros(2), {}, lr=-0.1)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_gradient_of_the_wrong_shape_is_rejected(rule):
    with pytest.raises(
        ValueError, match=r"grad has shape \(3,\) but param has shape \(2,\); pass the gradient"
    ):
        rule(torch.zeros(2), torch.zeros(3), {}, lr=0.1)


@pytest.mark.parametrize("rule", [adam_step, adamw_step, nadam_step], ids=lambda r: r.__name__)
@pytest.mark.parametrize("betas", [(0.9, 1.0), (-0.1, 0.999), (1.5, 0.9)])
def test_betas_outside_zero_one_are_rejected(rule, betas):
    with pytest.raises(
        ValueError, match=r"betas\[[01]\] must be in \[0, 1\), got .*; pass e.g. betas=\(0.9, 0.999\)"
    ):
        rule(torch.zeros(2), torch.zeros(2), {}, lr=0.1, betas=betas)


def test_betas_that_are_not_a_pair_are_rejected():
    with pytest.raises(ValueError, match=r"betas must be a pair \(beta1, beta2\), got 0.9"):
        adam_step(torch.zeros(2), torch.zeros(2), {}, betas=0.9)


def test_other_bad_hyperparameters_are_rejected_with_what_to_pass():
    z = torch.zeros(2)
    with pytest.raises(
        ValueError, match="Nesterov momentum needs momentum > 0 and dampening == 0.*pass e.g. momentum=0.9"
    ):
        sgd_step(z, z, {}, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\], got 1.5; pass e.g. rho=0.9"):
        adadelta_step(z, z, {}, rho=1.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2; pass e.g. alpha=0.99"):
        rmsprop_step(z, z, {}, alpha=2)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0, got -0.01"):
        adamw_step(z, z, {}, weight_decay=-0.01)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got nan"):
        adam_step(z, z, {}, eps=math.nan)


def test_wrong_types_are_type_errors_that_say_what_to_pass():
    with pytest.raises(TypeError, match=r"pass a parameter and its gradient, e.g. \(p, p.grad\)"):
        adam_step([0.0, 0.0], torch.zeros(2), {})
    with pytest.raises(TypeError, match=r"state must be a dict, got NoneType; pass \{\} on the first step"):
        adam_step(torch.zeros(2), torch.zeros(2), None)
    with pytest.raises(
        TypeError, match="adam_step takes no momentum; pass only some of: lr, betas, eps, weight_decay"
    ):
        FromScratch([torch.zeros(2)], adam_step, momentum=0.9)
    with pytest.raises(TypeError, match=r"params must be a non-empty iterable of tensors"):
        FromScratch([], adam_step)


def test_run_path_and_test_functions_reject_bad_arguments():
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match="steps must be an int >= 0, got -1; pass e.g. steps=200"):
        run_path(sgd, rosenbrock, [0.0, 0.0], steps=-1)
    with pytest.raises(TypeError, match=r"start must be a floating-point tensor, got torch.int64"):
        run_path(sgd, rosenbrock, torch.tensor([0, 0]), steps=1)
    with pytest.raises(ValueError, match="fn must return a scalar"):
        run_path(sgd, lambda w: w**2, [0.0, 1.0], steps=1)
    with pytest.raises(ValueError, match=r"last dimension of size 2 \(a point \(x, y\)\), got shape \(3,\)"):
        rosenbrock(torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"target has shape \(3,\); pass the minimiser as a point of the same shape"
    ):
        steps_to_tolerance(torch.zeros(4, 2), torch.zeros(3), tol=0.1)
    with pytest.raises(ValueError, match="tol must be > 0, got 0; pass e.g. tol=1e-3"):
        steps_to_tolerance(torch.zeros(4, 2), torch.zeros(2), tol=0)


# --- a refused step changes nothing; FromScratch refuses bad values when it is built ----------------

# (rule, hyperparameters with one bad value): every value a rule checks, including those it checks last
BAD_STEPS = [
    (adamw_step, dict(lr=0.1, betas=(0.9, 1.5))),
    (adamw_step, dict(lr=0.1, betas=0.9)),
    (adamw_step, dict(lr=0.1, eps=math.nan)),
    (adamw_step, dict(lr=0.1, eps=-1.0)),
    (adam_step, dict(lr=0.1, betas=(1.0, 0.999))),
    (nadam_step, dict(lr=0.1, momentum_decay=-1.0)),
    (sgd_step, dict(lr=0.1, momentum=0.9, dampening=2.0)),
    (rmsprop_step, dict(lr=0.1, alpha=1.5)),
    (adadelta_step, dict(lr=0.1, rho=-0.5)),
    *[(rule, dict(lr=-1.0)) for rule in RULES],
]


@pytest.mark.parametrize(
    "rule, bad",
    BAD_STEPS,
    ids=[f"{r.__name__}-{'-'.join(f'{k}={v}' for k, v in b.items())}" for r, b in BAD_STEPS],
)
def test_a_refused_step_leaves_the_parameter_and_the_state_unchanged(rule, bad):
    param, grad, state = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0]), {}
    rule(param, grad, state, lr=0.1)  # one good step, so that the state holds something to protect
    param_before, state_before = param.clone(), copy.deepcopy(state)
    with pytest.raises(ValueError, match="pass e.g."):
        rule(param, grad, state, **bad)
    assert torch.equal(param, param_before), f"{rule.__name__} changed the parameter before refusing"
    assert state.keys() == state_before.keys()
    for key, value in state.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_before[key])), key


@pytest.mark.parametrize("lr", [-1.0, math.inf, math.nan], ids=["negative", "inf", "nan"])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_from_scratch_refuses_a_bad_learning_rate_when_it_is_built(rule, lr):
    with pytest.raises(ValueError, match=rf"lr must be a finite number >= 0, got {lr}; pass e.g. lr=1e-3"):
        FromScratch([torch.zeros(2, requires_grad=True)], rule, lr=lr)


def test_from_scratch_refuses_other_bad_values_and_bad_groups_when_built():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\), got 1.0"):
        FromScratch([w], adamw_step, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -0.5"):
        FromScratch([{"params": [w], "lr": -0.5}], adam_step, lr=0.1)  # a group's own lr is checked too
    with pytest.raises(
        TypeError, match="a parameter group may set only some of: lr, betas, eps, weight_decay"
    ):
        FromScratch([{"params": [w], "momentum": 0.9}], adam_step)
    with pytest.raises(
        TypeError, match=r"sgd_step has no default for lr; pass it, e.g. FromScratch\(params, sgd_step"
    ):
        FromScratch([w], sgd_step)
    optimizer = FromScratch([w], adam_step, lr=0.1)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1"):
        optimizer.add_param_group({"params": [torch.zeros(3, requires_grad=True)], "eps": -1})
    assert len(optimizer.param_groups) == 1


# --- FromScratch is a torch.optim.Optimizer: fit, schedulers and checkpoints take it --------------------


def test_from_scratch_is_a_torch_optimizer_with_state_per_parameter():
    w = torch.zeros(2, requires_grad=True)
    optimizer = FromScratch([w], adam_step, lr=0.1)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.1 and optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    (w - 1).pow(2).sum().backward()
    optimizer.step()
    assert optimizer.state[w]["step"] == 1 and set(optimizer.state[w]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.usefixtures("float64_default")
def test_parameter_groups_with_their_own_hyperparameters_match_torch_optim():
    init, loss = random_problem(7)
    ours = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    groups = lambda ps: [{"params": [ps[0]], "lr": 0.05, "weight_decay": 0.1}, {"params": [ps[1]]}]  # noqa: E731
    opt_ours = FromScratch(groups(ours), adam_step, lr=0.01)
    opt_theirs = torch.optim.Adam(groups(theirs), lr=0.01)
    for _ in range(20):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss(*params).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def train_with_scheduler(optimizer_cls, make_scheduler, params, loss, steps):
    optimizer = optimizer_cls(params)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss(*params).backward()
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs, optimizer


@pytest.mark.usefixtures("float64_default")
def test_step_lr_schedules_a_from_scratch_sgd_as_it_schedules_torch_sgd():
    init, loss = random_problem(3)
    ours = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    schedule = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # noqa: E731
    lrs, _ = train_with_scheduler(
        lambda p: FromScratch(p, sgd_step, lr=0.1, momentum=0.9), schedule, ours, loss, 6
    )
    _, _ = train_with_scheduler(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), schedule, theirs, loss, 6)
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025, 0.0125])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.usefixtures("float64_default")
def test_one_cycle_lr_cycles_the_lr_and_adams_beta1_of_a_from_scratch_adam_as_of_torch_adam():
    init, loss = random_problem(4)
    ours = [p.clone().requires_grad_() for p in init]
    theirs = [p.clone().requires_grad_() for p in init]
    schedule = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=30)  # noqa: E731
    lrs, opt_ours = train_with_scheduler(lambda p: FromScratch(p, adam_step), schedule, ours, loss, 29)
    their_lrs, opt_theirs = train_with_scheduler(lambda p: torch.optim.Adam(p), schedule, theirs, loss, 29)
    assert lrs == pytest.approx(their_lrs) and max(lrs) == pytest.approx(0.05, rel=0.01)
    assert opt_ours.param_groups[0]["betas"] == pytest.approx(opt_theirs.param_groups[0]["betas"])
    assert opt_ours.param_groups[0]["betas"][0] > 0.9  # beta1 cycled 0.95 -> 0.85 -> back up to 0.95
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "rule, hyper",
    [(nadam_step, dict(lr=0.01)), (sgd_step, dict(lr=0.05, momentum=0.9)), (adadelta_step, dict())],
    ids=["nadam", "sgd-momentum", "adadelta"],
)
def test_state_dict_round_trip_through_torch_save_resumes_identically(rule, hyper):
    init, loss = random_problem(5)

    def run(params, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            loss(*params).backward()
            optimizer.step()

    straight = [p.clone().requires_grad_() for p in init]
    optimizer = FromScratch(straight, rule, **hyper)
    run(straight, optimizer, 5)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed = [p.detach().clone().requires_grad_() for p in straight]
    run(straight, optimizer, 5)

    buffer.seek(0)
    fresh = FromScratch(resumed, rule, **hyper)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    run(resumed, fresh, 5)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b), "a resumed run must continue exactly as the uninterrupted one"


def test_a_state_dict_of_another_rule_or_with_bad_values_is_refused_and_changes_nothing():
    w = torch.zeros(2, requires_grad=True)
    adam = FromScratch([w], adam_step, lr=0.1)
    (w - 1).pow(2).sum().backward()
    adam.step()
    sgd = FromScratch([w], sgd_step, lr=0.1, momentum=0.9)
    before = copy.deepcopy(sgd.state_dict())
    with pytest.raises(ValueError, match="has no momentum, dampening, nesterov, which sgd_step needs"):
        sgd.load_state_dict(adam.state_dict())
    saved = adam.state_dict()
    saved["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got -1.0"):
        adam.load_state_dict(saved)
    assert adam.param_groups[0]["lr"] == 0.1 and sgd.state_dict() == before


def test_a_copy_of_a_from_scratch_optimizer_keeps_its_rule():
    w = torch.zeros(2, requires_grad=True)
    optimizer = copy.deepcopy(FromScratch([w], nadam_step, lr=0.01))
    assert optimizer.step_fn is nadam_step and optimizer.hyperparameter_names[0] == "lr"


def test_fit_trains_with_a_from_scratch_optimizer_as_with_torch_optim():
    from companion.train import fit

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 3, generator=g), torch.randn(64, 1, generator=g)
    losses = {}
    for name, make in {
        "ours": lambda p: FromScratch(p, adam_step, lr=0.05),
        "torch": lambda p: torch.optim.Adam(p, lr=0.05),
    }.items():
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16)
        history = fit(model, loader, nn.MSELoss(), make(model.parameters()), 3, progress=False)
        losses[name] = history["train_loss"]
    assert losses["ours"][-1] < losses["ours"][0]
    assert losses["ours"] == pytest.approx(losses["torch"], rel=1e-5)
