"""How sure is an accuracy comparison? Paired tests for two classifiers judged on the same images (chapter 8).

Two recipes measured on the same images are *paired*: each image is seen by both, and what matters is
where they disagree. On 270 images one image is 0.37 percentage points, and a difference of one or two
images is what a re-drawn seed gives anyway. This module holds

- :func:`mcnemar`, the exact McNemar test on the images one classifier gets right and the other wrong;
- :func:`paired_bootstrap`, an interval for the difference of two accuracies that resamples the images
  and the seeds together, keeping every pair intact;
- :class:`Comparison`, what either returns: the difference, the evidence, and a verdict in plain words.

Both take the correctness of each prediction (``True``/``1`` for a correct one), never the predictions
themselves: ``[p == y for p, y in zip(predicted, labels)]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from companion.checks import is_int, is_number

__all__ = ["Comparison", "mcnemar", "paired_bootstrap"]

VERDICTS = ("A better", "B better", "no significant difference")


@dataclass(frozen=True)
class Comparison:
    """Classifier A against classifier B on the same images.

    Attributes:
        method: ``"exact McNemar"`` or ``"paired bootstrap"``.
        difference: A's accuracy minus B's, over all the pairs (a fraction: 0.01 is one percentage point).
        p_value: McNemar's two-sided p-value; ``None`` for the bootstrap.
        low, high: the bootstrap's interval for ``difference`` at confidence ``1 - level``; ``None`` for
            McNemar.
        a_only, b_only: pairs that A gets right and B wrong, and the reverse (the discordant pairs).
        pairs: how many pairs were compared.
        level: the significance level, e.g. 0.05.
        significant: McNemar: ``p_value < level``; bootstrap: the interval does not contain 0
            (``low > 0`` or ``high < 0``; an end at exactly 0 contains it).
    """

    method: str
    difference: float
    p_value: float | None
    low: float | None
    high: float | None
    a_only: int
    b_only: int
    pairs: int
    level: float
    significant: bool

    @property
    def verdict(self) -> str:
        """``"A better"`` or ``"B better"`` when the difference is significant at :attr:`level` (the sign
        says which), else ``"no significant difference"``."""
        if not self.significant:
            return "no significant difference"
        return "A better" if self.difference > 0 else "B better"

    def __str__(self) -> str:
        if self.p_value is not None:
            evidence = f"p = {self.p_value:.3g}"
        else:
            evidence = (
                f"{100 * (1 - self.level):g}% interval [{100 * self.low:+.2f}, {100 * self.high:+.2f}] pp"
            )
        return (
            f"{self.method}: A - B = {100 * self.difference:+.2f} pp over {self.pairs} pairs "
            f"({self.a_only} A only, {self.b_only} B only), {evidence}: {self.verdict} at level {self.level:g}"
        )


def _check_level(level: Any) -> float:
    if not is_number(level) or not 0 < level < 1:
        raise ValueError(
            f"level must be a probability in (0, 1), the test's significance level; got {level!r}"
        )
    return float(level)


def _bits(values: Any, name: str) -> list[int]:
    """``values`` as a list of 0/1, refusing anything that is not a correct/incorrect flag."""
    if hasattr(values, "tolist"):  # a tensor or a numpy array
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"{name} must be a sequence of correct/incorrect flags (bools or 0/1), got {type(values).__name__}"
        )
    bad = [v for v in values if not (isinstance(v, bool) or (is_int(v) and v in (0, 1)))]
    if bad:
        raise ValueError(
            f"{name} must hold only True/False or 1/0 (was each prediction correct?), got {bad[0]!r}; "
            f"pass [p == y for p, y in zip(predicted, labels)], not the predictions"
        )
    return [int(v) for v in values]


def _paired_bits(correct_a: Any, correct_b: Any) -> tuple[list[int], list[int]]:
    a, b = _bits(correct_a, "correct_a"), _bits(correct_b, "correct_b")
    if len(a) != len(b):
        raise ValueError(
            f"correct_a has {len(a)} predictions and correct_b {len(b)}: pass both classifiers' "
            "results on the same images, in the same order"
        )
    if not a:
        raise ValueError("no predictions to compare: pass one flag per image for each classifier")
    return a, b


def mcnemar(correct_a: Sequence[Any], correct_b: Sequence[Any], level: float = 0.05) -> Comparison:
    """The exact McNemar test: do A and B differ on the images where they disagree?

    ``correct_a[i]`` and ``correct_b[i]`` say whether A and B classified image ``i`` correctly. Pairs
    where both agree say nothing about which is better; of the discordant ones, :math:`b` are right for A
    only and :math:`c` for B only, :math:`n = b + c`. If A and B were equally good, each discordant pair
    would go either way with probability 1/2, so :math:`b \\sim \\mathrm{Binomial}(n, 1/2)`, and the
    two-sided exact p-value is

    .. math:: p = \\min\\Bigl(1,\\; 2 \\sum_{k=0}^{\\min(b, c)} \\binom{n}{k} \\frac{1}{2^n}\\Bigr),

    the probability of a split at least as lopsided as the one seen, either way (:math:`p = 1` when
    :math:`n = 0` or :math:`b = c`). The sum is computed exactly in integers (``math.comb``).
    Significant when :math:`p <` ``level``.

    The pairs must be independent: the same image predicted by several seeds gives several pairs that
    tend to agree, which this test counts as independent evidence. Pool seeds only with that said, or
    test each seed alone, or use :func:`paired_bootstrap`, which resamples images.

    Example: :math:`b = 1, c = 6` gives :math:`p = 2 (1 + 7) / 2^7 = 0.125`: six to one is not enough.
    """
    level = _check_level(level)
    a, b_ = _paired_bits(correct_a, correct_b)
    a_only = sum(x and not y for x, y in zip(a, b_))
    b_only = sum(y and not x for x, y in zip(a, b_))
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1))
    p_value = min(1.0, 2 * tail / 2**n)  # integer / integer: Python rounds the exact quotient once
    return Comparison(
        method="exact McNemar",
        difference=(a_only - b_only) / len(a),
        p_value=p_value,
        low=None,
        high=None,
        a_only=a_only,
        b_only=b_only,
        pairs=len(a),
        level=level,
        significant=p_value < level,
    )


def _grid(values: Any, name: str) -> list[list[int]]:
    """Flags as seeds x images: a flat sequence is one seed."""
    if hasattr(values, "tolist"):  # a tensor or a numpy array
        values = values.tolist()
    if (
        isinstance(values, Sequence)
        and values
        and all(
            hasattr(row, "tolist") or (isinstance(row, Sequence) and not isinstance(row, str))
            for row in values
        )
    ):
        rows = [_bits(row, name) for row in values]
    else:
        rows = [_bits(values, name)]
    if len({len(row) for row in rows}) != 1:
        raise ValueError(
            f"every seed's row of {name} must cover the same images, got rows of {sorted({len(r) for r in rows})}"
        )
    return rows


def paired_bootstrap(
    correct_a: Sequence[Any],
    correct_b: Sequence[Any],
    level: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """An interval for A's accuracy minus B's, resampling images and seeds together, pairs intact.

    ``correct_a[s][i]`` says whether A, trained with seed ``s``, got image ``i`` right; likewise B, with
    the same seeds and images (a flat sequence is one seed). With :math:`d_{si} = a_{si} - b_{si}` the
    difference is :math:`\\bar d = \\frac{1}{SN} \\sum_{s,i} d_{si}`. Each resample draws :math:`N`
    images and :math:`S` seeds with replacement, independently, and takes the mean of :math:`d` over the
    drawn seeds x drawn images: an image drawn twice counts twice for every drawn seed. Since A and B
    are always drawn together (the same seed and image), the pairing is kept; since whole images are
    drawn, an image that is hard for every seed moves every seed's term at once, so the S predictions of
    an image are not counted as S independent ones. The interval is the percentile interval: the
    ``level / 2`` and ``1 - level / 2`` quantiles of the resampled means. Significant when it does not
    contain 0.

    ``seed`` seeds a generator of its own (the global one is not touched), so a call is reproducible.
    With one seed (S = 1) it is the ordinary paired bootstrap over images.
    """
    level = _check_level(level)
    if not is_int(resamples) or resamples < 100:
        raise ValueError(f"resamples must be an int >= 100 (e.g. 2000), got {resamples!r}")
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    a, b = _grid(correct_a, "correct_a"), _grid(correct_b, "correct_b")
    if (len(a), len(a[0])) != (len(b), len(b[0])):
        raise ValueError(
            f"correct_a is {len(a)} seeds x {len(a[0])} images and correct_b {len(b)} x {len(b[0])}: "
            "pass both classifiers' results for the same seeds and images, in the same order"
        )
    if not a[0]:
        raise ValueError("no predictions to compare: pass one flag per image for each classifier")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)  # (S, N)
    seeds, images = d.shape
    g = torch.Generator().manual_seed(seed)
    image_draws = torch.randint(images, (resamples, images), generator=g)
    seed_draws = torch.randint(seeds, (resamples, seeds), generator=g)
    ones = torch.ones(resamples, images, dtype=torch.float64)
    image_counts = torch.zeros(resamples, images, dtype=torch.float64).scatter_add_(1, image_draws, ones)
    seed_counts = torch.zeros(resamples, seeds, dtype=torch.float64).scatter_add_(
        1, seed_draws, torch.ones(resamples, seeds, dtype=torch.float64)
    )
    means = ((seed_counts @ d) * image_counts).sum(dim=1) / (seeds * images)  # v^T D w / (S N)
    low, high = torch.quantile(means, torch.tensor([level / 2, 1 - level / 2], dtype=torch.float64)).tolist()
    flat_a, flat_b = [x for row in a for x in row], [x for row in b for x in row]
    a_only = sum(x and not y for x, y in zip(flat_a, flat_b))
    b_only = sum(y and not x for x, y in zip(flat_a, flat_b))
    return Comparison(
        method="paired bootstrap",
        difference=d.mean().item(),
        p_value=None,
        low=low,
        high=high,
        a_only=a_only,
        b_only=b_only,
        pairs=seeds * images,
        level=level,
        significant=low > 0 or high < 0,
    )
