import functools
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from companion.losses import (
    REDUCTIONS,
    cross_entropy,
    hinge_embedding_loss,
    huber_loss,
    is_class_loss,
    l1_loss,
    loss_option,
    mse_loss,
    multi_margin_loss,
    smooth_l1_loss,
)

# (companion function, the torch.nn module it reproduces, keyword arguments for both)
REGRESSION = {
    "mse": (mse_loss, nn.MSELoss, {}),
    "l1": (l1_loss, nn.L1Loss, {}),
    "smooth_l1_beta_1": (smooth_l1_loss, nn.SmoothL1Loss, {"beta": 1.0}),
    "smooth_l1_beta_0.3": (smooth_l1_loss, nn.SmoothL1Loss, {"beta": 0.3}),
    "huber_delta_1": (huber_loss, nn.HuberLoss, {"delta": 1.0}),
    "huber_delta_2.5": (huber_loss, nn.HuberLoss, {"delta": 2.5}),
}
CLASSIFICATION = {
    "cross_entropy": (cross_entropy, nn.CrossEntropyLoss, {}),
    "cross_entropy_smoothed_0.1": (cross_entropy, nn.CrossEntropyLoss, {"label_smoothing": 0.1}),
    "cross_entropy_smoothed_1": (cross_entropy, nn.CrossEntropyLoss, {"label_smoothing": 1.0}),
    "multi_margin_p1": (multi_margin_loss, nn.MultiMarginLoss, {}),
    "multi_margin_p1_margin_0.5": (multi_margin_loss, nn.MultiMarginLoss, {"p": 1, "margin": 0.5}),
    "multi_margin_p2_margin_2": (multi_margin_loss, nn.MultiMarginLoss, {"p": 2, "margin": 2.0}),
}


def values_and_grads(loss_fn, inputs, upstream):
    """The loss and the gradient of <loss, upstream> with respect to every input."""
    leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    loss = loss_fn(*leaves)
    loss.backward(upstream)
    return loss.detach(), [x.grad for x in leaves if x.requires_grad]


def assert_same_value_and_gradient(ours, theirs, inputs):
    with torch.no_grad():
        expected = theirs(*inputs)
    upstream = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    value, grads = values_and_grads(ours, inputs, upstream)
    ref_value, ref_grads = values_and_grads(theirs, inputs, upstream)
    assert value.shape == ref_value.shape
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(ref_grads) > 0
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", REGRESSION)
def test_regression_loss_value_and_gradient_equal_torch_nn(name, reduction):
    ours, module, kwargs = REGRESSION[name]
    g = torch.Generator().manual_seed(0)
    # errors of size up to ~6: both the quadratic and the linear branch are exercised
    pred = 3 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    target = 3 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    diff = (pred - target).abs()
    threshold = kwargs.get("beta", kwargs.get("delta", 1.0))
    assert (diff < threshold).any() and (diff > threshold).any()
    assert_same_value_and_gradient(
        lambda p, t: ours(p, t, reduction=reduction, **kwargs),
        module(reduction=reduction, **kwargs),
        (pred, target),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_loss_value_and_gradient_equal_torch_nn(name, reduction):
    ours, module, kwargs = CLASSIFICATION[name]
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(32, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 5, (32,), generator=g)
    assert_same_value_and_gradient(
        lambda x, y: ours(x, y, reduction=reduction, **kwargs),
        module(reduction=reduction, **kwargs),
        (logits, target),
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.5, 2.0])
def test_hinge_embedding_loss_value_and_gradient_equal_torch_nn(margin, reduction):
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(10, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (10, 4), generator=g).to(torch.float64) * 2 - 1
    assert (target == 1).any() and (target == -1).any()
    assert_same_value_and_gradient(
        lambda a, b: hinge_embedding_loss(a, b, margin=margin, reduction=reduction),
        nn.HingeEmbeddingLoss(margin=margin, reduction=reduction),
        (x, target),
    )


def test_losses_keep_float32_and_reduce_to_a_scalar_by_default():
    pred, target = torch.randn(8, 1), torch.randn(8, 1)
    for loss in (mse_loss, l1_loss, smooth_l1_loss, huber_loss):
        value = loss(pred, target)
        assert value.dtype == torch.float32 and value.shape == ()
    value = cross_entropy(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    assert value.dtype == torch.float32 and value.shape == ()


@pytest.mark.parametrize("delta", [0.1, 1.0, 3.0])
def test_huber_is_delta_times_smooth_l1_with_beta_equal_delta(delta):
    g = torch.Generator().manual_seed(2)
    pred, target = 4 * torch.randn(100, generator=g), 4 * torch.randn(100, generator=g)
    torch.testing.assert_close(
        huber_loss(pred, target, delta=delta, reduction="none"),
        delta * smooth_l1_loss(pred, target, beta=delta, reduction="none"),
    )


def test_cross_entropy_stays_finite_where_log_of_softmax_is_minus_infinity():
    logits = torch.tensor([[0.0, 200.0]])
    target = torch.tensor([0])
    assert torch.isinf(torch.softmax(logits, dim=1).log()[0, 0])
    torch.testing.assert_close(cross_entropy(logits, target), torch.tensor(200.0))


def test_full_label_smoothing_is_cross_entropy_to_the_uniform_distribution():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    target = torch.zeros(6, dtype=torch.long)
    expected = -torch.log_softmax(logits, dim=1).mean(dim=1)
    torch.testing.assert_close(cross_entropy(logits, target, label_smoothing=1.0, reduction="none"), expected)


# --- what torch.nn would broadcast, the companion refuses ----------------------------------------


def test_torch_mse_only_warns_on_n_by_1_against_n_and_compares_every_pair():
    pred, target = torch.randn(5, 1), torch.randn(5)
    with pytest.warns(UserWarning, match="different to the input size"):
        broadcast = nn.MSELoss()(pred, target)
    torch.testing.assert_close(broadcast, ((pred - target.unsqueeze(0)) ** 2).mean())  # a (5, 5) comparison
    assert not torch.isclose(broadcast, mse_loss(pred.squeeze(1), target))


@pytest.mark.parametrize("loss", [mse_loss, l1_loss, smooth_l1_loss, huber_loss])
def test_regression_losses_reject_n_by_1_prediction_against_n_target(loss):
    with pytest.raises(
        ValueError, match=r"prediction of shape \(5, 1\) and target of shape \(5,\).*\(5, 5\)"
    ) as info:
        loss(torch.randn(5, 1), torch.randn(5))
    assert "squeeze the prediction" in str(info.value) and "unsqueeze the target" in str(info.value)


def test_regression_loss_rejects_n_prediction_against_n_by_1_target_with_the_mirrored_advice():
    with pytest.raises(ValueError, match=r"squeeze the target .* or unsqueeze the prediction"):
        mse_loss(torch.randn(5), torch.randn(5, 1))


def test_regression_loss_rejects_unrelated_shapes():
    with pytest.raises(
        ValueError, match=r"\(5, 2\) and target of shape \(3,\) differ: pass a target with the same shape"
    ):
        l1_loss(torch.randn(5, 2), torch.randn(3))


def test_hinge_embedding_rejects_mismatched_shapes_and_labels_other_than_plus_minus_one():
    with pytest.raises(ValueError, match="squeeze the prediction"):
        hinge_embedding_loss(torch.randn(4, 1), torch.ones(4))
    with pytest.raises(ValueError, match=r"only \+1 \(similar\) and -1 .* 2 \* target - 1"):
        hinge_embedding_loss(torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("loss", [smooth_l1_loss, huber_loss])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_non_positive_beta_or_delta_is_rejected_with_what_to_pass(loss, value):
    name = "beta" if loss is smooth_l1_loss else "delta"
    with pytest.raises(
        ValueError, match=rf"{name} must be > 0, got .*; pass a positive threshold such as {name}=1.0"
    ):
        loss(torch.randn(3), torch.randn(3), **{name: value})


@pytest.mark.parametrize("smoothing", [-0.1, 1.5, math.nan])
def test_label_smoothing_outside_zero_one_is_rejected(smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got .*; pass e.g. 0.1"):
        cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=smoothing)


ALL_LOSSES = {
    "mse": lambda r: mse_loss(torch.randn(3), torch.randn(3), reduction=r),
    "l1": lambda r: l1_loss(torch.randn(3), torch.randn(3), reduction=r),
    "smooth_l1": lambda r: smooth_l1_loss(torch.randn(3), torch.randn(3), reduction=r),
    "huber": lambda r: huber_loss(torch.randn(3), torch.randn(3), reduction=r),
    "cross_entropy": lambda r: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction=r),
    "multi_margin": lambda r: multi_margin_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction=r),
    "hinge_embedding": lambda r: hinge_embedding_loss(torch.randn(3), torch.ones(3), reduction=r),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_unknown_reduction_is_rejected_naming_the_three_that_exist(name):
    with pytest.raises(ValueError, match=r"reduction must be 'mean', 'sum' or 'none', got 'average'"):
        ALL_LOSSES[name]("average")


@pytest.mark.parametrize("loss", [cross_entropy, multi_margin_loss])
def test_classification_losses_reject_a_class_index_out_of_range(loss):
    with pytest.raises(
        ValueError, match=r"class index 4, but logits of shape \(3, 4\) have 4 classes: pass indices in 0..3"
    ):
        loss(torch.randn(3, 4), torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="class index -1"):
        loss(torch.randn(3, 4), torch.tensor([0, -1, 1]))


@pytest.mark.parametrize("loss", [cross_entropy, multi_margin_loss])
def test_classification_losses_reject_an_n_by_1_target_and_say_squeeze_it(loss):
    with pytest.raises(
        ValueError,
        match=r"target must have shape \(3,\) for logits of shape \(3, 4\), got \(3, 1\): squeeze the target",
    ):
        loss(torch.randn(3, 4), torch.tensor([[0], [1], [2]]))


def test_classification_losses_reject_a_target_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"got \(2,\): pass one class index per row of logits"):
        cross_entropy(torch.randn(3, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("loss", [cross_entropy, multi_margin_loss])
def test_classification_losses_reject_logits_that_are_not_n_by_c(loss):
    with pytest.raises(
        ValueError, match=r"logits must have shape \(n, C\), got \(4,\); .*logits.unsqueeze\(0\)"
    ):
        loss(torch.randn(4), torch.tensor([1]))


def test_classification_losses_reject_float_targets_and_integer_logits():
    with pytest.raises(
        TypeError, match=r"integer class indices, got dtype torch.float32; pass target.long\(\)"
    ):
        cross_entropy(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(
        TypeError, match=r"logits must be floating point, got torch.int64; pass logits.float\(\)"
    ):
        multi_margin_loss(torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("p", [0, 3, 1.5])
def test_multi_margin_accepts_only_p_one_or_two(p):
    with pytest.raises(ValueError, match=r"p must be 1 or 2 .*; pass p=1 \(hinge\) or p=2 \(squared hinge\)"):
        multi_margin_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), p=p)


# --- reading a loss's settings (used by companion.fit) -----------------------------------------------


def test_loss_option_reads_a_modules_attribute_a_partials_keyword_and_a_functions_default():
    assert loss_option(nn.CrossEntropyLoss(reduction="sum"), "reduction") == "sum"
    assert loss_option(functools.partial(F.cross_entropy, reduction="sum"), "reduction") == "sum"
    assert loss_option(functools.partial(functools.partial(F.nll_loss), ignore_index=3), "ignore_index") == 3
    assert loss_option(F.cross_entropy, "ignore_index") == -100
    assert loss_option(cross_entropy, "reduction") == "mean"
    assert loss_option(lambda output, target: output.sum(), "reduction", "mean") == "mean"
    assert loss_option(nn.MSELoss(), "ignore_index", "absent") == "absent"


def test_class_losses_are_recognised_as_modules_functions_and_partials():
    assert is_class_loss(nn.CrossEntropyLoss()) and is_class_loss(nn.NLLLoss())
    assert is_class_loss(functools.partial(F.cross_entropy, label_smoothing=0.1))
    assert is_class_loss(cross_entropy) and is_class_loss(multi_margin_loss)
    assert not is_class_loss(nn.MSELoss()) and not is_class_loss(mse_loss) and not is_class_loss(None)
