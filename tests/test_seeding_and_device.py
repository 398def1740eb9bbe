import random

import numpy as np
import pytest
import torch

import companion
from companion import default_device, seed_everything


def draw() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    seed_everything(123)
    first = draw()
    seed_everything(123)
    second = draw()
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2])


def test_different_seeds_give_different_draws():
    seed_everything(1)
    a = draw()
    seed_everything(2)
    b = draw()
    assert a[0] != b[0] and a[1] != b[1] and not torch.equal(a[2], b[2])


def test_seed_everything_returns_a_generator_seeded_with_the_same_value():
    g = seed_everything(7)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("bad", [-1, 2**32])
def test_seed_out_of_range_is_rejected_with_what_to_pass(bad):
    with pytest.raises(ValueError, match="non-negative 32-bit integer"):
        seed_everything(bad)


@pytest.mark.parametrize("bad", [1.5, "0", None, True])
def test_seed_that_is_not_an_int_is_a_type_error(bad):
    with pytest.raises(TypeError, match="seed must be an int"):
        seed_everything(bad)


def test_a_numpy_integer_seeds_as_the_same_python_int_does():
    seed_everything(np.int64(7))
    numpy_seeded = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7)
    assert numpy_seeded == (random.random(), np.random.rand(), torch.rand(1).item())


def test_default_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert default_device() == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")


def test_default_device_is_usable_here():
    assert torch.zeros(1, device=default_device()).device.type == default_device().type


def test_top_level_exports_the_chapter_one_helpers():
    assert companion.seed_everything is seed_everything
    assert companion.default_device is default_device
