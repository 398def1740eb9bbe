"""companion.significance: paired tests of two classifiers on the same images, against answers known by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import companion
from companion.significance import Comparison, mcnemar, paired_bootstrap


def flags(a_only: int, b_only: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Correct/incorrect flags for A and B with the given counts of each kind of pair."""
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    return a, b


# --- McNemar ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_only, b_only, p_value",
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 0.125
        (6, 1, 0.125),  # symmetric
        (0, 10, 2 / 1024),
        (10, 0, 2 / 1024),
        (0, 6, 2 / 64),
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (5, 5, 1.0),  # b = c: the sum passes one half, capped at 1
        (3, 4, 1.0),  # 2 * (1 + 7 + 21 + 35) / 128 = 1
        (0, 0, 1.0),  # no discordant pair: no evidence
        (1, 0, 1.0),  # 2 * 1/2
    ],
)
def test_mcnemar_p_value_matches_the_hand_computed_binomial_tail(a_only, b_only, p_value):
    result = mcnemar(*flags(a_only, b_only, both=50, neither=3))
    assert result.p_value == pytest.approx(p_value, rel=1e-12)
    assert (result.a_only, result.b_only, result.pairs) == (a_only, b_only, a_only + b_only + 53)


def test_mcnemar_is_decided_by_the_discordant_pairs_alone():
    few = mcnemar(*flags(1, 9))
    many = mcnemar(*flags(1, 9, both=10_000, neither=500))
    assert few.p_value == many.p_value == pytest.approx(2 * 11 / 1024)
    assert many.difference == pytest.approx(-8 / 10_510)  # the difference does count every pair


def test_mcnemar_stays_exact_for_thousands_of_discordant_pairs():
    # 2^n overflows a float for n > 1023; the tail is summed in integers
    result = mcnemar(*flags(1000, 1100))
    assert 0 < result.p_value < 0.05
    assert mcnemar(*flags(1500, 1500)).p_value == 1.0


def test_mcnemar_verdict_at_the_boundary_of_the_level():
    # b = 1, c = 6 gives p = 0.125 exactly: significant only at a level above it
    a, b = flags(1, 6)
    assert mcnemar(a, b, level=0.125).verdict == "no significant difference"  # p < level is required
    assert mcnemar(a, b, level=0.126).verdict == "B better"
    assert mcnemar(b, a, level=0.126).verdict == "A better"
    assert mcnemar(a, b).verdict == "no significant difference"  # 0.05
    assert mcnemar(*flags(0, 10)).verdict == "B better"  # p = 0.00195


def test_mcnemar_accepts_bools_tensors_and_numpy_arrays():
    a, b = flags(0, 10, both=5)
    expected = mcnemar(a, b)
    assert mcnemar([bool(x) for x in a], [bool(x) for x in b]) == expected
    assert mcnemar(torch.tensor(a, dtype=torch.bool), torch.tensor(b)) == expected
    assert mcnemar(np.array(a, dtype=bool), np.array(b)) == expected


@pytest.mark.parametrize(
    "a, b, error, message",
    [
        ([1, 0, 1], [1, 0], ValueError, "correct_a has 3 predictions and correct_b 2"),
        ([1, 2, 0], [1, 0, 0], ValueError, r"correct_a must hold only True/False or 1/0.*got 2"),
        ([1, 0], [0.5, 1], ValueError, r"correct_b must hold only True/False or 1/0.*got 0.5"),
        ([], [], ValueError, "no predictions to compare"),
        ("101", "011", TypeError, "correct_a must be a sequence of correct/incorrect flags"),
    ],
)
def test_mcnemar_refuses_bad_input_with_what_to_pass(a, b, error, message):
    with pytest.raises(error, match=message):
        mcnemar(a, b)


@pytest.mark.parametrize("level", [0, 1, -0.1, 1.5, "0.05", True])
def test_both_tests_refuse_a_level_outside_0_1(level):
    a, b = flags(1, 6)
    with pytest.raises(ValueError, match=r"level must be a probability in \(0, 1\)"):
        mcnemar(a, b, level=level)
    with pytest.raises(ValueError, match=r"level must be a probability in \(0, 1\)"):
        paired_bootstrap(a, b, level=level)


# --- the paired bootstrap -----------------------------------------------------------------------------------


def draws(n: int, p_a: float, p_b: float, rng: random.Random) -> tuple[list[int], list[int]]:
    return [int(rng.random() < p_a) for _ in range(n)], [int(rng.random() < p_b) for _ in range(n)]


def test_bootstrap_interval_covers_a_known_difference_at_about_its_nominal_rate():
    # A is right with probability 0.9, B with 0.85, independently: the true difference is 0.05
    rng = random.Random(0)
    covered = 0
    trials = 100
    for trial in range(trials):
        a, b = draws(300, 0.90, 0.85, rng)
        result = paired_bootstrap(a, b, resamples=500, seed=trial)
        covered += result.low <= 0.05 <= result.high
    assert 0.87 <= covered / trials <= 0.99  # nominal 0.95; a percentile interval runs a little short


def test_bootstrap_finds_a_large_difference_and_says_which_side_is_better():
    rng = random.Random(1)
    a, b = zip(*(draws(2000, 0.95, 0.85, rng) for _ in range(3)))  # 3 seeds x 2000 images
    result = paired_bootstrap(list(a), list(b))
    assert result.low < 0.10 < result.high and result.low > 0
    assert result.verdict == "A better" and result.pairs == 6000
    assert paired_bootstrap(list(b), list(a)).verdict == "B better"


def test_bootstrap_difference_is_the_mean_over_seeds_and_images():
    a = [[1, 1, 1, 0], [1, 0, 1, 1]]
    b = [[1, 0, 0, 0], [1, 0, 1, 0]]
    result = paired_bootstrap(a, b)
    assert result.difference == pytest.approx(3 / 8)
    assert (result.a_only, result.b_only, result.pairs) == (3, 0, 8)


def test_bootstrap_of_identical_classifiers_is_the_point_zero_and_not_significant():
    a, _ = flags(3, 4, both=20)
    result = paired_bootstrap(a, a)
    assert result.low == result.high == 0.0  # an interval that touches 0 contains it
    assert result.verdict == "no significant difference"


def test_bootstrap_of_a_always_better_classifier_is_significant():
    result = paired_bootstrap([[1] * 30] * 2, [[0] * 30] * 2)
    assert result.low == result.high == 1.0 and result.verdict == "A better"


def test_bootstrap_resamples_seeds_so_one_lucky_seed_is_not_a_finding():
    # seed 0: A better on 40 images of 400; seed 1: no difference. Over images alone, pooled, that looks
    # significant; drawing the seeds too, half the resamples hold seed 1 alone or seed 0 alone.
    a0, b0 = flags(40, 0, both=360)
    a1, b1 = flags(0, 0, both=400)
    pooled_as_one_seed = paired_bootstrap(a0 + a1, b0 + b1)
    two_seeds = paired_bootstrap([a0, a1], [b0, b1])
    assert pooled_as_one_seed.verdict == "A better"
    assert two_seeds.difference == pooled_as_one_seed.difference == pytest.approx(0.05)
    assert two_seeds.low <= 0.0 and two_seeds.verdict == "no significant difference"


def test_seeded_bootstrap_is_reproducible_and_leaves_the_global_generator_alone():
    rng = random.Random(2)
    a, b = draws(300, 0.9, 0.88, rng)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, again = paired_bootstrap(a, b, seed=7), paired_bootstrap(a, b, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert first == again
    other = paired_bootstrap(a, b, seed=8)
    assert (other.low, other.high) != (first.low, first.high)


@pytest.mark.parametrize(
    "a, b, kwargs, error, message",
    [
        ([[1, 0], [1, 1]], [[1, 0]], {}, ValueError, r"correct_a is 2 seeds x 2 images and correct_b 1 x 2"),
        ([1, 0, 1], [1, 0], {}, ValueError, "correct_a is 1 seeds x 3 images and correct_b 1 x 2"),
        ([[1, 0], [1]], [[1, 0], [1, 0]], {}, ValueError, "every seed's row of correct_a must cover"),
        ([], [], {}, ValueError, "no predictions to compare"),
        ([1, 3], [1, 0], {}, ValueError, "correct_a must hold only True/False or 1/0"),
        ([1, 0], [1, 0], {"resamples": 10}, ValueError, "resamples must be an int >= 100"),
        ([1, 0], [1, 0], {"seed": 0.5}, TypeError, "seed must be an int"),
    ],
)
def test_bootstrap_refuses_bad_input_with_what_to_pass(a, b, kwargs, error, message):
    with pytest.raises(error, match=message):
        paired_bootstrap(a, b, **kwargs)


# --- the verdict ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "difference, significant, verdict",
    [
        (0.01, True, "A better"),
        (-0.01, True, "B better"),
        (0.01, False, "no significant difference"),
        (-0.5, False, "no significant difference"),
    ],
)
def test_verdict_names_the_better_side_only_when_significant(difference, significant, verdict):
    result = Comparison("exact McNemar", difference, 0.01, None, None, 1, 2, 100, 0.05, significant)
    assert result.verdict == verdict
    assert str(result).endswith(f"{verdict} at level 0.05")


def test_the_tests_are_importable_from_the_package():
    assert companion.mcnemar is mcnemar and companion.paired_bootstrap is paired_bootstrap
