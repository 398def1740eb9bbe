r"""Learning curves (chapter 9): what do the training and validation curves of a :class:`History` say?

:func:`read_learning_curves` reads them as a practitioner would and returns a :class:`CurveReading`: a
verdict (diverged, learning rate too high, data leak, chance level, overfitting, underfitting, healthy)
and the findings behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from companion.checks import is_int
from companion.history import History

__all__ = [
    "CHANCE",
    "JUMP",
    "MEMORIZED",
    "RISE",
    "STALLED",
    "TRACKS",
    "CurveReading",
    "chance_of_a_perfect_score",
    "read_learning_curves",
]

JUMP = 0.2  # a training loss that rises by more than 20 % (and 0.01) in one epoch has jumped
RISE = 0.25  # a validation loss 25 % above its minimum at the end has turned up
STALLED = 0.5  # a training loss still above half its first epoch's value has hardly fallen
CHANCE = 2.0  # a late validation accuracy of at most 2 / C on average is no better than guessing
MEMORIZED = 1e-3  # a training loss below 1/1000 of its first epoch's value: the training set is memorized
TRACKS = 1.5  # a validation loss at most 1.5 times the training loss in every late epoch tracks it


def chance_of_a_perfect_score(accuracy: float, n: int) -> float:
    r"""The probability that a model which gets each image right with probability ``accuracy`` gets all
    ``n`` validation images right: :math:`P(K = n) = a^n` for :math:`K \sim \text{Binomial}(n, a)`.

    A perfect score is no evidence of a leak when this is not small: at :math:`a = 0.996` (1 error in
    270) a perfect score on :math:`n = 270` images comes about one run in three, :math:`0.996^{270}
    \approx 0.34`. The images are assumed independent, each right with the same probability.
    """
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a probability between 0 and 1, got {accuracy!r}")
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be the number of validation images, an int >= 1, got {n!r}")
    return float(accuracy) ** n


@dataclass(frozen=True)
class CurveReading:
    """The reading of a pair of learning curves: the ``verdict`` and the ``findings`` behind it."""

    verdict: str
    findings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([self.verdict, *(f"- {f}" for f in self.findings)])


def read_learning_curves(history: History, *, classes: int | None = None) -> CurveReading:
    r"""Read ``train_loss`` and ``val_loss`` (and accuracies, if any) the way a practitioner would.

    The rules, checked in this order (the first that holds gives the verdict; every one that holds is
    a finding):

    - ``"diverged"``: a loss is ``nan`` or ``inf``.
    - ``"learning rate too high"``: the training loss jumped up (by more than 20 % and 0.01) in at least
      two epochs, or ended above where it started.
    - ``"suspect a data leak"``: the validation accuracy reached 100 %, *and* the validation loss
      followed the training loss all the way down: the training loss ended below ``MEMORIZED`` (1/1000)
      of its first value, and in every epoch of the last half the validation loss stayed within
      ``TRACKS`` (1.5) times the training loss. Held-out data stays well above a memorized training set
      (a loss many times the training loss); data the model trained on does not. A perfect score alone
      is no evidence: a model that errs on 1 image in 270 scores 100 % on 270 images about one run in
      three (:func:`chance_of_a_perfect_score`). The rule cannot tell a leak from a task so easy that
      held-out data is fitted as closely as the training data, nor see a leak in a run whose loss has a
      floor (label smoothing); :func:`shared_samples` gives the proof either way.
    - ``"chance level"`` (with ``classes``): the validation accuracy, averaged over the last half of the
      epochs, is at most :math:`2 / C`, twice a guess's: nothing learned carries over (labels shuffled or
      misaligned with the inputs?). An average, because a model that learned nothing scores a noisy
      accuracy: one epoch may reach twice chance by luck.
    - ``"overfitting"``: the validation loss ended at least 25 % above its minimum while the training
      loss kept falling after that epoch.
    - ``"underfitting"``: the training loss ended above half its first epoch's value: the model does not
      fit even the data it trains on.
    - otherwise ``"healthy"``.

    These are rules of thumb with fixed thresholds (``JUMP``, ``RISE``, ``CHANCE``, ``MEMORIZED``, ``TRACKS``,
    ``STALLED``), not proofs: read the curves too (``history.plot()``).
    """
    if not isinstance(history, History):
        raise TypeError(
            f"history must be a companion.history.History (what fit returns), got {type(history).__name__}"
        )
    missing = [m for m in ("train_loss", "val_loss") if m not in history.metrics]
    if missing:
        raise ValueError(
            f"the history has no {' or '.join(missing)}: it records {history.metrics}; pass val_loader to fit "
            "so that there is a validation curve to read"
        )
    if len(history) < 3:
        raise ValueError(
            f"a curve of {len(history)} epoch(s) is too short to read: train for at least 3 epochs"
        )
    if classes is not None and (not is_int(classes) or classes < 2):
        raise ValueError(f"classes must be the number of classes, an int >= 2, got {classes!r}")
    train, val = history["train_loss"], history["val_loss"]
    found: list[tuple[str, str]] = []
    if not all(math.isfinite(v) for v in train + val):
        found.append(("diverged", "a loss became nan or inf: lower the learning rate or find_nan_source"))
    else:
        jumps = [
            e
            for e in range(1, len(train))
            if train[e] > (1 + JUMP) * train[e - 1] and train[e] - train[e - 1] > 0.01
        ]
        if len(jumps) >= 2 or train[-1] > train[0]:
            found.append(
                (
                    "learning rate too high",
                    f"the training loss jumped up in {len(jumps)} epoch(s) and ended at {train[-1] / train[0]:.0%} "
                    "of its first value: the steps overshoot",
                )
            )
        accuracy = history["val_accuracy"] if "val_accuracy" in history.metrics else []
        half = len(train) // 2
        tracking = max(v / t if t > 0 else math.inf for t, v in zip(train[half:], val[half:]))
        if accuracy and max(accuracy) >= 1.0 and train[-1] < MEMORIZED * train[0] and tracking <= TRACKS:
            found.append(
                (
                    "suspect a data leak",
                    f"the validation accuracy reached 100% and the validation loss followed the training "
                    f"loss down to {train[-1] / train[0]:.1e} of its first value (at most {tracking:.2f}x "
                    "the training loss in each of the last "
                    f"{len(train) - half} epochs), as on data the model trained on: check that no "
                    "validation sample is a training sample (shared_samples)",
                )
            )
        late = accuracy[len(accuracy) // 2 :]
        if late and classes is not None and sum(late) / len(late) <= CHANCE / classes:
            found.append(
                (
                    "chance level",
                    f"the validation accuracy of the last {len(late)} epochs averages {sum(late) / len(late):.0%}, "
                    f"no better than a guess among {classes} classes: are the labels shuffled or misaligned "
                    "with the inputs?",
                )
            )
        best = min(range(len(val)), key=val.__getitem__)
        if val[-1] >= (1 + RISE) * val[best] and train[-1] < train[best]:
            found.append(
                (
                    "overfitting",
                    f"the validation loss ended {val[-1] / val[best] - 1:.0%} above its minimum (epoch "
                    f"{best + 1}) while the training loss kept falling",
                )
            )
        if train[-1] > STALLED * train[0]:
            found.append(
                (
                    "underfitting",
                    f"the training loss ended at {train[-1] / train[0]:.0%} of its first value: more capacity, "
                    "more epochs or a higher learning rate",
                )
            )
    if not found:
        return CurveReading("healthy", ["both losses fell, and the validation loss ended near its minimum"])
    return CurveReading(found[0][0], [finding for _, finding in found])
