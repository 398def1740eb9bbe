import math

import pytest
import torch
from torch import nn

from companion.datasets import make_linear_regression
from companion.linear import (
    add_bias_column,
    condition_number,
    gradient_descent,
    hessian,
    max_stable_lr,
    mse,
    mse_derived,
    mse_gradient,
    normal_equations,
    steps_to_loss_gap,
)


def problem(n=40, d=3, noise=0.1, seed=0):
    """A float64 regression problem, y of shape (n,)."""
    X, y, w = make_linear_regression(n, d, noise=noise, seed=seed)
    return X.double(), y.double().squeeze(1), w.double()


def random_params(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=g, dtype=torch.float64), torch.randn((), generator=g, dtype=torch.float64)


def orthogonal_columns(n, scales, seed=0):
    """X whose columns are orthogonal, sum to zero and have ||X[:, j]||^2 = n * scales[j]^2."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, len(scales), generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(raw - raw.mean(0))  # centred columns stay orthogonal to the ones vector
    return q * math.sqrt(n) * torch.tensor(scales, dtype=torch.float64)


# --- the loss and its gradient ---------------------------------------------------------------


def test_mse_equals_nn_mseloss_of_nn_linear():
    X, y, _ = make_linear_regression(30, 4, seed=2)  # float32, y (n, 1), as the article trains
    model = nn.Linear(4, 1)
    expected = nn.MSELoss()(model(X), y)
    torch.testing.assert_close(mse(X, y, model.weight.squeeze(0), model.bias), expected)


def test_mse_gradient_matches_autograd_in_float64():
    X, y, _ = problem()
    w, b = random_params(3)
    w.requires_grad_(), b.requires_grad_()
    auto_w, auto_b = torch.autograd.grad(mse(X, y, w, b), (w, b))
    grad_w, grad_b = mse_gradient(X, y, w.detach(), b.detach())
    torch.testing.assert_close(grad_w, auto_w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_b, auto_b, rtol=1e-12, atol=1e-14)
    assert grad_w.shape == (3,) and grad_b.shape == ()


def test_mse_gradient_matches_the_grads_nn_linear_gets_from_mseloss_backward():
    X, y, _ = make_linear_regression(25, 3, seed=4)
    model = nn.Linear(3, 1).double()
    nn.MSELoss()(model(X.double()), y.double()).backward()
    grad_w, grad_b = mse_gradient(
        X.double(), y.double(), model.weight.detach().squeeze(0), model.bias.detach()
    )
    torch.testing.assert_close(grad_w, model.weight.grad.squeeze(0))
    torch.testing.assert_close(grad_b, model.bias.grad.squeeze(0))


def test_derived_backward_passes_gradcheck_in_float64_for_X_y_w_and_b():
    X, y, _ = problem(n=12)
    w, b = random_params(3)
    inputs = tuple(t.clone().requires_grad_() for t in (X, y, w, b))
    assert torch.autograd.gradcheck(mse_derived, inputs)


def test_derived_backward_is_what_runs_and_equals_the_derived_gradient():
    X, y, _ = problem()
    w, b = random_params(3)
    w.requires_grad_(), b.requires_grad_()
    loss = mse_derived(X, y, w, b)
    assert loss.grad_fn is not None and "DerivedMSE" in type(loss.grad_fn).__name__
    torch.testing.assert_close(loss, mse(X, y, w, b))
    loss.backward()
    grad_w, grad_b = mse_gradient(X, y, w.detach(), b.detach())
    torch.testing.assert_close(w.grad, grad_w)
    torch.testing.assert_close(b.grad, grad_b)


def test_target_of_shape_n1_gives_the_same_loss_and_gradient_as_shape_n():
    X, y, _ = problem()
    w, b = random_params(3)
    assert mse(X, y.unsqueeze(1), w, b) == mse(X, y, w, b)
    for a, c in zip(mse_gradient(X, y.unsqueeze(1), w, b), mse_gradient(X, y, w, b)):
        assert torch.equal(a, c)


def test_bias_may_be_a_float_a_0d_or_a_one_element_tensor():
    X, y, _ = problem()
    w, _ = random_params(3)
    values = [
        mse(X, y, w, b)
        for b in (0.5, torch.tensor(0.5, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))
    ]
    assert values[0] == values[1] == values[2]


# --- Hessian, conditioning, stability ---------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_hessian_equals_autograds_hessian_of_the_loss(bias):
    X, y, _ = problem()
    w, b = random_params(3)
    if bias:
        auto = torch.autograd.functional.hessian(
            lambda t: mse(X, y, t[:-1], t[-1]), torch.cat([w, b.reshape(1)])
        )
    else:
        auto = torch.autograd.functional.hessian(lambda t: mse(X, y, t, b), w)
    torch.testing.assert_close(hessian(X, bias=bias), auto)
    assert hessian(X, bias=bias).shape == ((4, 4) if bias else (3, 3))


def test_mse_is_exactly_a_quadratic_with_the_hessian_around_the_minimiser():
    X, y, _ = problem()
    w_star, b_star = normal_equations(X, y)
    theta_star = torch.cat([w_star, b_star.reshape(1)])
    H, L_star = hessian(X), mse(X, y, w_star, b_star)
    for seed in range(3):
        w, b = random_params(3, seed=seed)
        e = torch.cat([w, b.reshape(1)]) - theta_star
        torch.testing.assert_close(mse(X, y, w, b), L_star + 0.5 * e @ H @ e, rtol=1e-12, atol=1e-12)


def test_max_stable_lr_and_condition_number_of_orthogonal_features():
    X = orthogonal_columns(50, [3.0, 1.0])  # centred: H = 2 diag(9, 1, 1) with the bias
    assert max_stable_lr(X) == pytest.approx(2 / 18)
    assert condition_number(X) == pytest.approx(9.0)
    assert condition_number(X / torch.tensor([3.0, 1.0], dtype=torch.float64)) == pytest.approx(1.0)


def test_condition_number_is_inf_for_a_repeated_feature():
    X, _, _ = problem()
    assert condition_number(torch.cat([X, X[:, :1]], dim=1)) == math.inf


@pytest.mark.parametrize("fraction, converges", [(0.95, True), (1.05, False)])
def test_gradient_descent_converges_just_below_the_stable_lr_and_diverges_just_above(fraction, converges):
    X, y, _ = problem(n=100, d=4)
    run = gradient_descent(X, y, lr=fraction * max_stable_lr(X), steps=300)
    L_star = mse(X, y, *normal_equations(X, y)).item()
    if converges:
        assert run.losses[-1].item() - L_star < 1e-10
    else:
        assert run.losses[-1].item() > 1e6 * run.losses[0].item()


def test_gradient_descent_reaches_the_normal_equations_solution():
    X, y, _ = problem()
    run = gradient_descent(X, y, lr=0.5 * max_stable_lr(X), steps=500)
    w_star, b_star = normal_equations(X, y)
    torch.testing.assert_close(run.w, w_star, rtol=0, atol=1e-10)
    torch.testing.assert_close(run.b, b_star, rtol=0, atol=1e-10)


def test_gradient_descent_records_every_point_starting_from_w0_b0():
    X, y, _ = problem()
    w0, b0 = random_params(3)
    run = gradient_descent(X, y, lr=0.1, steps=7, w0=w0, b0=b0)
    assert run.losses.shape == (8,) and run.path.shape == (8, 4)
    assert torch.equal(run.path[0], torch.cat([w0, b0.reshape(1)]))
    assert run.losses[0] == mse(X, y, w0, b0)
    assert torch.equal(run.path[-1], torch.cat([run.w, run.b.reshape(1)]))
    grad_w, grad_b = mse_gradient(X, y, w0, b0)
    torch.testing.assert_close(run.path[1], torch.cat([w0 - 0.1 * grad_w, (b0 - 0.1 * grad_b).reshape(1)]))
    assert torch.equal(w0, random_params(3)[0]), "w0 must not be changed in place"


def test_gradient_descent_without_bias_keeps_b_and_reaches_the_no_bias_solution():
    X, y, _ = problem()
    run = gradient_descent(X, y, lr=0.5 * max_stable_lr(X, bias=False), steps=500, bias=False)
    assert torch.all(run.path[:, -1] == 0)
    torch.testing.assert_close(run.w, normal_equations(X, y, bias=False)[0], rtol=0, atol=1e-10)


def test_steps_to_a_small_loss_gap_grow_with_condition_number_within_the_bound():
    steps = {}
    for kappa in (1.0, 10.0, 100.0):
        X = orthogonal_columns(60, [math.sqrt(kappa), 1.0])
        y = X @ torch.tensor([1.0, -2.0], dtype=torch.float64) + 0.5
        run = gradient_descent(X, y, lr=1 / (2 * kappa), steps=2000)  # lr = 1 / lambda_max
        steps[kappa] = steps_to_loss_gap(run.losses, optimum=0.0, rtol=1e-8)
        bound = max(1, math.ceil(math.log(1e-8) / (2 * math.log(1 - 1 / kappa)))) if kappa > 1 else 1
        assert steps[kappa] <= bound
    assert steps[1.0] == 1 < steps[10.0] < steps[100.0]
    assert steps[100.0] > 5 * steps[10.0]


def test_steps_to_loss_gap_counts_from_the_first_loss():
    losses = torch.tensor([11.0, 6.0, 1.5, 1.01, 1.0])
    assert steps_to_loss_gap(losses, optimum=1.0, rtol=0.05) == 2
    assert steps_to_loss_gap(losses, optimum=1.0, rtol=1e-3) == 3
    assert steps_to_loss_gap(losses, optimum=0.0, rtol=1e-3) is None


# --- the closed form ----------------------------------------------------------------------------


def test_normal_equations_recover_noiseless_weights_and_bias():
    X, _, w = problem(noise=0.0)
    w_hat, b_hat = normal_equations(X, X @ w - 0.75)
    torch.testing.assert_close(w_hat, w, rtol=0, atol=1e-12)
    assert b_hat.item() == pytest.approx(-0.75, abs=1e-12)


def test_normal_equations_make_the_gradient_zero_and_match_sklearn():
    from sklearn.linear_model import LinearRegression

    X, y, _ = problem(n=80, d=5)
    w_hat, b_hat = normal_equations(X, y.unsqueeze(1))
    grad_w, grad_b = mse_gradient(X, y, w_hat, b_hat)
    assert grad_w.abs().max() < 1e-12 and abs(grad_b) < 1e-12
    reference = LinearRegression().fit(X.numpy(), y.numpy())
    torch.testing.assert_close(w_hat, torch.from_numpy(reference.coef_), rtol=0, atol=1e-10)
    assert b_hat.item() == pytest.approx(reference.intercept_, abs=1e-10)


def test_normal_equations_keep_digits_that_inverting_xtx_loses():
    t = torch.linspace(0, 1, 200, dtype=torch.float64)
    X = torch.stack([t**k for k in range(1, 9)], dim=1)  # polynomial features: kappa(X) ~ 1e6
    w = torch.ones(8, dtype=torch.float64)
    y = X @ w + 1.0
    A = add_bias_column(X)
    via_inverse = torch.linalg.inv(A.T @ A) @ A.T @ y
    w_hat, b_hat = normal_equations(X, y)
    truth = torch.ones(9, dtype=torch.float64)
    error_lstsq = (torch.cat([w_hat, b_hat.reshape(1)]) - truth).norm() / truth.norm()
    error_inverse = (via_inverse - truth).norm() / truth.norm()
    assert error_lstsq < 1e-9 and error_inverse > 1e-6


# --- what the functions refuse ----------------------------------------------------------------


def test_target_of_the_wrong_length_names_both_shapes_and_what_to_pass():
    X, y, _ = problem(n=10)
    w, b = random_params(3)
    with pytest.raises(
        ValueError, match=r"X has shape \(10, 3\) but y has shape \(9,\): .* y of shape \(10,\) or \(10, 1\)"
    ):
        mse(X, y[:9], w, b)


@pytest.mark.parametrize("shape", [(10, 2), (1, 10), (10, 1, 1)])
def test_target_of_another_shape_is_refused(shape):
    X, _, _ = problem(n=10)
    with pytest.raises(ValueError, match=r"but y has shape .*pass one target per row of X"):
        normal_equations(X, torch.zeros(shape, dtype=torch.float64))


def test_one_dimensional_X_is_refused_with_how_to_reshape_it():
    with pytest.raises(ValueError, match=r"X must have shape \(n, d\).*got \(5,\).*X\.unsqueeze\(1\)"):
        hessian(torch.ones(5, dtype=torch.float64))


def test_weights_of_the_wrong_shape_name_both_shapes_and_what_to_pass():
    X, y, _ = problem(n=10)
    with pytest.raises(
        ValueError, match=r"X has shape \(10, 3\) but w has shape \(1, 3\).*w of shape \(3,\).*squeeze\(0\)"
    ):
        mse_gradient(X, y, torch.zeros(1, 3, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError, match=r"w has shape \(4,\).*w of shape \(3,\)"):
        mse(X, y, torch.zeros(4, dtype=torch.float64))


def test_bias_with_several_elements_is_refused():
    X, y, _ = problem(n=10)
    with pytest.raises(ValueError, match=r"b must be a scalar, got a tensor of shape \(3,\)"):
        mse(X, y, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def test_integer_X_or_mixed_dtypes_are_type_errors_that_say_what_to_pass():
    X, y, _ = problem(n=10)
    with pytest.raises(TypeError, match=r"X must be floating point, got torch.int64; pass X.double\(\)"):
        hessian(X.long())
    with pytest.raises(TypeError, match=r"X is torch.float32 but y is torch.float64; .*y.to\(X.dtype\)"):
        normal_equations(X.float(), y)
    with pytest.raises(TypeError, match=r"X is torch.float64 but b is torch.float32; .*b.to\(X.dtype\)"):
        mse(X, y, torch.zeros(3, dtype=torch.float64), torch.tensor(0.5))
    with pytest.raises(TypeError, match=r"X must be a torch.Tensor, got list"):
        max_stable_lr([[1.0, 2.0]])


@pytest.mark.parametrize("lr", [0, 0.0, -0.1, math.nan, math.inf])
def test_non_positive_or_non_finite_lr_is_refused_with_the_stable_range(lr):
    X, y, _ = problem(n=10)
    bound = max_stable_lr(X)
    with pytest.raises(
        ValueError,
        match=rf"lr must be a positive, finite step size, got {lr}; pass 0 < lr < max_stable_lr\(X\) = {bound:.4g}",
    ):
        gradient_descent(X, y, lr=lr, steps=10)


def test_lr_that_is_not_a_number_is_a_type_error():
    X, y, _ = problem(n=10)
    with pytest.raises(TypeError, match="lr must be a number, got bool"):
        gradient_descent(X, y, lr=True, steps=10)


@pytest.mark.parametrize("steps", [0, -3])
def test_fewer_than_one_step_is_refused(steps):
    X, y, _ = problem(n=10)
    with pytest.raises(ValueError, match=rf"steps must be >= 1, got {steps}; pass the number of updates"):
        gradient_descent(X, y, lr=0.1, steps=steps)


def test_fractional_steps_are_a_type_error():
    X, y, _ = problem(n=10)
    with pytest.raises(TypeError, match="steps must be an int, got float"):
        gradient_descent(X, y, lr=0.1, steps=10.0)


def test_steps_to_loss_gap_refuses_a_tolerance_outside_zero_one():
    with pytest.raises(ValueError, match=r"rtol must be in \(0, 1\), got 0"):
        steps_to_loss_gap(torch.ones(3), optimum=0.0, rtol=0)
