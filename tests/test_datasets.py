import math

import pytest
import torch

from companion.datasets import make_linear_regression


def test_linear_regression_shapes_fit_nn_linear_and_mse():
    X, y, w = make_linear_regression(50, 3, noise=0.1, seed=0)
    assert X.shape == (50, 3) and y.shape == (50, 1) and w.shape == (3,)
    assert X.dtype == y.dtype == w.dtype == torch.float32


def test_dtype_is_float32_whatever_the_default_unless_asked():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert make_linear_regression(5, 2)[0].dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)
    assert all(t.dtype == torch.float64 for t in make_linear_regression(5, 2, dtype=torch.float64))


def test_integer_dtype_is_rejected_with_what_to_pass():
    with pytest.raises(TypeError, match="pass e.g. torch.float64"):
        make_linear_regression(5, 2, dtype=torch.int64)


def test_noiseless_targets_are_exactly_linear_in_the_true_weights():
    X, y, w = make_linear_regression(20, 4, noise=0.0, seed=3)
    torch.testing.assert_close(y.squeeze(1), X @ w)


def test_noise_has_the_requested_standard_deviation():
    X, y, w = make_linear_regression(20_000, 2, noise=0.5, seed=1)
    residual = y.squeeze(1) - X @ w
    assert abs(residual.std().item() - 0.5) < 0.02


def test_same_seed_same_data_and_global_rng_untouched():
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    a = make_linear_regression(10, 2, seed=5)
    b = make_linear_regression(10, 2, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert torch.equal(torch.rand(1), expected_next)
    c = make_linear_regression(10, 2, seed=6)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("n, d", [(0, 3), (-5, 3), (10, 0)])
def test_non_positive_sizes_are_rejected(n, d):
    with pytest.raises(ValueError, match="must be a positive number"):
        make_linear_regression(n, d)


@pytest.mark.parametrize("noise", [-0.1, math.nan])
def test_negative_or_nan_noise_is_rejected_with_what_to_pass(noise):
    with pytest.raises(ValueError, match="pass 0 for exact targets"):
        make_linear_regression(10, 2, noise=noise)


def test_float_size_is_a_type_error():
    with pytest.raises(TypeError, match="n must be an int"):
        make_linear_regression(10.0, 2)


def test_digits_splits_are_disjoint_stratified_and_cover_all_images():
    from companion.datasets import digits_splits

    splits = digits_splits(seed=0)
    sizes = {k: len(v[1]) for k, v in splits.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["train"] / 1797 - 0.70) < 0.01 and abs(sizes["test"] / 1797 - 0.15) < 0.01
    for images, labels in splits.values():
        assert images.dtype == torch.uint8 and images.shape[1:] == (8, 8) and int(images.max()) == 255
        counts = torch.bincount(labels, minlength=10).float()
        assert (counts / counts.sum() - 0.1).abs().max() < 0.02  # each class about a tenth
    # together the three parts are exactly the dataset: no image lost, none in two parts
    from sklearn.datasets import load_digits

    digits = load_digits()
    every = sorted(
        tuple(img.flatten().tolist()) + (int(lab),) for v in splits.values() for img, lab in zip(*v)
    )
    expected = sorted(
        tuple(torch.from_numpy(img).mul(255 / 16).round().to(torch.uint8).flatten().tolist()) + (int(lab),)
        for img, lab in zip(digits.images, digits.target)
    )
    assert every == expected


def test_digits_splits_are_deterministic_per_seed():
    from companion.datasets import digits_splits

    a, b, c = digits_splits(0), digits_splits(0), digits_splits(1)
    assert torch.equal(a["test"][1], b["test"][1]) and torch.equal(a["test"][0], b["test"][0])
    assert not torch.equal(a["test"][1], c["test"][1])
