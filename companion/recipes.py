"""Training recipes for accuracy (chapter 8): the pieces a recipe is made of, and the ablation that weighs them.

A *recipe* is everything about a training run except the data: the network, the optimizer and its weight
decay, the learning-rate schedule, the augmentation, the loss. This module holds

- :func:`digits_cnn`, chapter 6's network, with batch norm and dropout as options;
- :func:`parameter_groups`, weight decay on the weights of convolutions and linear layers only;
- :func:`warmup_cosine`, a linear warmup followed by a cosine decay, from torch's own schedulers;
- :func:`digit_augmentation` and :class:`DigitImages`, small random shifts and rotations (torchvision's
  transforms v2) applied to each training image as it is drawn;
- :class:`Recipe`, :func:`train_on` and :func:`train_recipe`, which train a recipe once and keep its
  predicted class for every image it measured;
- :func:`run_ablation`, repeated stratified k-fold over the training and validation images
  (:func:`kfold_pool`, :func:`stratified_folds`, :func:`train_fold`): every recipe on the same folds and
  seeds, so that their predictions are paired; :func:`summarize`, the rows of an ablation table; and
  :func:`choose_recipe`, the rule that picks the final recipe from the k-fold rows alone;
- :func:`ablation_report` and :func:`format_report`: every recipe against the baseline with a paired
  bootstrap interval, McNemar's test and a verdict (:mod:`companion.significance`), the choice, and the
  test split, read once, for the baseline and the chosen recipe;
- recipes that average weights (EMA, SWA: :mod:`companion.callbacks`), mix samples (MixUp, CutMix:
  :mod:`companion.mixing`), predict with test-time augmentation or as an ensemble of seeds
  (:mod:`companion.ensembles`);
- :data:`SEARCH_SPACE`, :func:`search_settings`, :func:`rank_trials`, :func:`search_report` and
  :func:`format_search_report`: the quasi-random search of ``scripts/search.py`` and how to read it.

``scripts/ablation.py`` runs the ablation and saves every run, predictions included, for chapter 8;
``scripts/search.py`` runs the search.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, Dataset, TensorDataset

from companion.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    StochasticWeightAveraging,
    WeightAveraging,
)
from companion.checks import check_module, is_int, is_number
from companion.datasets import digits_splits
from companion.ensembles import SHIFTS, ensemble_probabilities
from companion.mixing import MixCollate
from companion.seeding import seed_everything
from companion.significance import mcnemar, paired_bootstrap
from companion.train import evaluate, fit

__all__ = [
    "BASELINE",
    "SEARCH_SPACE",
    "GOAL_ACCURACY",
    "GOAL_CPU_SECONDS",
    "SCHEDULES",
    "DigitImages",
    "Recipe",
    "ablation_recipes",
    "ablation_report",
    "changes",
    "choose_recipe",
    "decode_labels",
    "digit_augmentation",
    "digits_cnn",
    "digits_data",
    "encode_labels",
    "format_report",
    "format_search_report",
    "kfold_pool",
    "make_optimizer",
    "make_scheduler",
    "parameter_groups",
    "predict",
    "rank_trials",
    "run_ablation",
    "search_report",
    "search_settings",
    "stratified_folds",
    "summarize",
    "train_fold",
    "train_on",
    "train_recipe",
    "trial_score",
    "warmup_cosine",
]

SCHEDULES = ("constant", "step", "warmup_cosine", "onecycle")
OPTIMIZERS = ("adamw", "adam")
AVERAGES = ("none", "ema", "swa")
ENSEMBLE_SEED_STEP = 1000
"""Member ``k`` of an ensemble recipe trains from ``seed + k * ENSEMBLE_SEED_STEP``."""


# --- the network ---------------------------------------------------------------------------------------


def digits_cnn(width: int = 48, *, batch_norm: bool = True, dropout: float = 0.2) -> nn.Sequential:
    """Chapter 6's CNN for 8x8 digits: three 3x3 convolutions of ``width``, ``width`` and ``2 * width``
    channels, each followed by batch norm (if ``batch_norm``) and a ReLU, two 2x2 max-poolings
    (8x8 -> 4x4 -> 2x2), dropout with probability ``dropout``, and a linear layer with 10 scores.

    With the defaults it is chapter 6's network, layer for layer (67,066 parameters), so the same
    seed gives it the same initial weights.
    """
    if not is_int(width) or width < 1:
        raise ValueError(f"width must be a positive int (channels of the first convolution), got {width!r}")
    if not is_number(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}; pass 0 for no dropout")

    def conv(cin: int, cout: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(cout)] if batch_norm else []
        return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU()]

    head = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(
        *conv(1, width),
        *conv(width, width),
        nn.MaxPool2d(2),
        *conv(width, 2 * width),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *head,
        nn.Linear(2 * width * 2 * 2, 10),
    )


# --- weight decay ----------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups for an optimizer: ``[{"params": decayed, "weight_decay": weight_decay},
    {"params": not_decayed, "weight_decay": 0.0}]``.

    Decayed are the parameters with two or more dimensions: the weight matrices of linear layers and
    the kernels of convolutions. Not decayed are the one-dimensional ones: every bias, and the scale and
    shift of normalization layers (batch norm's :math:`\\gamma, \\beta`). Shrinking those towards zero does
    not make the function simpler: a bias only moves a unit's threshold, and a batch-norm scale that a
    following layer can undo is pulled to zero for nothing. (The rule is the dimension, as in timm and
    nanoGPT: it needs no list of layer types.) Parameters that do not require gradients are left out.
    """
    check_module(model)
    if not is_number(weight_decay) or not weight_decay >= 0:
        raise ValueError(
            f"weight_decay must be a number >= 0, got {weight_decay!r}; pass e.g. 1e-2, or 0 for none"
        )
    trained = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": float(weight_decay)},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]


# --- schedules -------------------------------------------------------------------------------------------


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    *,
    start_factor: float = 0.01,
    final_lr: float = 0.0,
) -> lr_scheduler.SequentialLR:
    """A linear warmup for ``warmup_steps`` steps, then a cosine decay to ``final_lr`` at ``total_steps``.

    With :math:`\\eta_0` the optimizer's learning rate, :math:`w` = ``warmup_steps`` and :math:`T` =
    ``total_steps``, the rate at step :math:`t` is

    .. math:: \\eta_t = \\eta_0 \\left(s + (1 - s) \\tfrac{t}{w}\\right) \\quad (t < w), \\qquad
              \\eta_t = \\eta_{\\min} + \\tfrac12 (\\eta_0 - \\eta_{\\min})
              \\left(1 + \\cos \\tfrac{\\pi (t - w)}{T - w}\\right) \\quad (t \\ge w),

    with :math:`s` = ``start_factor`` and :math:`\\eta_{\\min}` = ``final_lr``. It is torch's own
    ``LinearLR`` and ``CosineAnnealingLR`` joined by ``SequentialLR``; step it after every optimizer step
    (``fit(..., scheduler_interval="step")``).
    """
    for name, value in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int (optimizer steps), got {type(value).__name__}")
    if not 0 < warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be between 1 and total_steps - 1, got warmup_steps={warmup_steps} for "
            f"total_steps={total_steps}; pass e.g. warmup_steps=total_steps // 10"
        )
    if not 0 < start_factor <= 1:
        raise ValueError(
            f"start_factor must be in (0, 1], the first step's fraction of the rate, got {start_factor}"
        )
    warmup = lr_scheduler.LinearLR(optimizer, start_factor, 1.0, total_iters=warmup_steps)
    decay = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=final_lr)
    return lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])


# --- augmentation ----------------------------------------------------------------------------------------


def digit_augmentation(degrees: float = 10.0, shift: int = 1) -> Any:
    """A random rotation by up to ``degrees`` either way and a random shift by up to ``shift`` whole pixels
    (of 8) in each direction: ``v2.RandomAffine``, with a new draw for every image.

    torchvision draws each shift uniformly in :math:`[-s, s]` and rounds it to whole pixels, so with
    ``shift=1`` an image moves one pixel along each axis half of the time. Pixels that come in from
    outside the image are background (0). The transform takes a ``uint8`` image of shape ``(1, 8, 8)``
    and returns one of the same shape and type; it draws from torch's global generator, which
    :func:`companion.seed_everything` seeds.
    """
    from torchvision.transforms import v2

    if not is_number(degrees) or not 0 <= degrees <= 180:
        raise ValueError(f"degrees must be in [0, 180], the largest rotation either way, got {degrees!r}")
    if not is_int(shift) or not 0 <= shift <= 4:
        raise ValueError(
            f"shift must be a whole number of pixels in [0, 4] (the image is 8x8), got {shift!r}"
        )
    return v2.RandomAffine(degrees=degrees, translate=(shift / 8, shift / 8), fill=0)


class DigitImages(Dataset):
    """Digit images ``uint8 (n, 8, 8)`` and labels, served as normalized float images ``(1, 8, 8)``.

    Each image is transformed first (if ``transform`` is given: augmentation, which draws anew every time
    the image is drawn), then scaled to :math:`[0, 1]` and normalized, :math:`x = (v / 255 - \\mu) / \\sigma`,
    with the training split's ``mean`` :math:`\\mu` and ``std`` :math:`\\sigma`.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, transform: Any = None
    ):
        if images.dtype != torch.uint8 or images.ndim != 3:
            raise ValueError(
                f"images must be uint8 of shape (n, height, width), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
        self.images, self.labels, self.mean, self.std = images.unsqueeze(1), labels, mean, std
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return (image.float() / 255 - self.mean) / self.std, self.labels[i]


def digits_data(seed: int = 0) -> dict[str, Any]:
    """Chapter 6's digits: ``{"splits": digits_splits(seed), "mean": m, "std": s, "val": ds, "test": ds}``,
    where ``m`` and ``s`` are the training split's pixel mean and standard deviation (of values in [0, 1])
    and ``ds`` are normalized ``TensorDataset`` s, exactly as chapter 6 builds them."""
    splits = digits_splits(seed)
    pixels = splits["train"][0].float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()

    def tensors(name: str) -> TensorDataset:
        images, labels = splits[name]
        return TensorDataset(((images.float() / 255 - mean) / std).unsqueeze(1), labels)

    return {"splits": splits, "mean": mean, "std": std, **{name: tensors(name) for name in splits}}


# --- recipes ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One way to train the digits CNN. The defaults are chapter 6's run.

    Attributes:
        name: how the ablation table calls it.
        width, batch_norm, dropout: the network (:func:`digits_cnn`).
        epochs, batch_size, lr: the run; ``lr`` is the peak learning rate of the schedule.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"`` (weight decay as an L2 term added to
            the gradient, which Adam then rescales).
        weight_decay: its coefficient; ``decay_all=False`` leaves biases and norm layers undecayed
            (:func:`parameter_groups`).
        schedule: one of :data:`SCHEDULES` (see :func:`make_scheduler`).
        rotate, shift: augment the training images with random rotations of up to ``rotate`` degrees and
            shifts of up to ``shift`` pixels (:func:`digit_augmentation`); both 0: no augmentation.
        label_smoothing: passed to ``nn.CrossEntropyLoss``.
        patience: early stopping on the validation loss after this many epochs without improvement,
            keeping the best epoch's weights; ``None``: train all epochs.
        average: ``"none"``, or measure an average of the weights instead of the last ones: ``"ema"``
            (:class:`~companion.callbacks.EMAWeightAveraging` with decay ``ema_decay``, updated after
            every step) or ``"swa"`` (:class:`~companion.callbacks.StochasticWeightAveraging` of the
            weights at the end of each of the last ``swa_epochs`` epochs). Either recomputes batch
            norm's statistics for the averaged weights on the unaugmented, unmixed training images.
        mixup_alpha, cutmix_alpha: mix the training batches with MixUp and/or CutMix
            (:class:`~companion.mixing.MixCollate`, soft labels; with both, one of the two per batch);
            ``None``: not that one.
        tta: predict with test-time augmentation (:func:`companion.ensembles.tta_probabilities`, the
            image and its four one-pixel shifts); validation and test figures are then those of the
            averaged probabilities.
        ensemble: train this many networks, from seeds ``seed``, ``seed + 1000``, ... and predict with
            their mean probabilities (:func:`companion.ensembles.ensemble_probabilities`); the run's
            ``seconds`` are all of their training, its ``history`` the first network's.

    The fields after ``patience`` default to what the recipes did before they existed, so a recipe
    saved without them (an older ablation file) reads back as the same recipe.
    """

    name: str = "baseline"
    width: int = 48
    batch_norm: bool = True
    dropout: float = 0.2
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-2
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    decay_all: bool = True
    schedule: str = "onecycle"
    rotate: float = 0.0
    shift: int = 0
    label_smoothing: float = 0.0
    patience: int | None = None
    average: str = "none"
    ema_decay: float = 0.98
    swa_epochs: int = 5
    mixup_alpha: float | None = None
    cutmix_alpha: float | None = None
    tta: bool = False
    ensemble: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be 'adamw' (decoupled weight decay) or 'adam' (L2 in the gradient), got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {self.schedule!r}"
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive learning rate, got {self.lr!r}; pass e.g. lr=1e-2")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not is_number(self.rotate) or not 0 <= self.rotate <= 180:
            raise ValueError(
                f"rotate must be in [0, 180] degrees, got {self.rotate!r}; pass 0 for no rotation"
            )
        if not is_int(self.shift) or not 0 <= self.shift <= 4:
            raise ValueError(
                f"shift must be a whole number of pixels in [0, 4], got {self.shift!r}; pass 0 for no shift"
            )
        if self.patience is not None and (not is_int(self.patience) or self.patience < 1):
            raise ValueError(
                f"patience must be a positive int or None (no early stopping), got {self.patience!r}"
            )
        if self.average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(map(repr, AVERAGES))}, got {self.average!r}")
        if not is_number(self.ema_decay) or not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay!r}; pass e.g. 0.98")
        last = self.epochs if self.average == "swa" else math.inf
        if not is_int(self.swa_epochs) or not 1 <= self.swa_epochs <= last:
            raise ValueError(
                f"swa_epochs must be an int from 1 to epochs={self.epochs}, the last epochs averaged, "
                f"got {self.swa_epochs!r}"
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            alpha = getattr(self, name)
            if alpha is not None and (not is_number(alpha) or not alpha > 0):
                raise ValueError(f"{name} must be a positive number or None (no mixing), got {alpha!r}")
        if not isinstance(self.tta, bool):
            raise TypeError(f"tta must be True or False, got {type(self.tta).__name__} {self.tta!r}")
        if not is_int(self.ensemble) or self.ensemble < 1:
            raise ValueError(
                f"ensemble must be a positive int, the networks trained and averaged, got {self.ensemble!r}"
            )

    def but(self, name: str, **updates: Any) -> Recipe:
        """This recipe with ``changes``, called ``name``: ``baseline.but("no dropout", dropout=0.0)``."""
        unknown = set(updates) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(
                f"a Recipe has no field {sorted(unknown)[0]!r}; its fields are {[f.name for f in fields(self)]}"
            )
        return Recipe(**{**asdict(self), **updates, "name": name})


BASELINE = Recipe()
"""Chapter 6's run: AdamW (weight decay 0.01 on every parameter), one-cycle to 0.01, 15 epochs of 64."""


def ablation_recipes() -> list[Recipe]:
    """The rows of chapter 8's ablation: the baseline, then each change to it alone."""
    b = BASELINE
    return [
        b,
        b.but("constant rate", schedule="constant"),
        b.but("step decay", schedule="step"),
        b.but("warmup + cosine", schedule="warmup_cosine"),
        b.but("Adam + L2", optimizer="adam"),
        b.but("no decay bias/norm", decay_all=False),
        b.but("augmentation", rotate=10.0, shift=1),
        b.but("label smoothing", label_smoothing=0.1),
        b.but("no batch norm", batch_norm=False),
        b.but("no dropout", dropout=0.0),
        b.but("constant + early stop", schedule="constant", patience=3),
        b.but("EMA of weights", average="ema"),
        b.but("SWA, last 5 epochs", average="swa"),
        b.but("MixUp", mixup_alpha=0.2),
        b.but("CutMix", cutmix_alpha=1.0),
        b.but("TTA (1-pixel shifts)", tta=True),
        b.but("3-seed ensemble", ensemble=3),
    ]


def make_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """``AdamW`` or ``Adam`` over ``model`` as ``recipe`` says, with its weight decay on every parameter
    (``decay_all``) or on the weights of convolutions and linear layers only (:func:`parameter_groups`)."""
    if recipe.decay_all:
        groups: Any = [{"params": list(model.parameters()), "weight_decay": recipe.weight_decay}]
    else:
        groups = parameter_groups(model, recipe.weight_decay)
    kind = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=recipe.lr)


def make_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> tuple[Any, str | None]:
    """The schedule of ``recipe`` and when ``fit`` must step it: ``(scheduler, "step" | "epoch")``.

    - ``"constant"``: no scheduler, ``(None, None)``;
    - ``"step"``: the rate divided by 10 after half and after three quarters of the epochs
      (``MultiStepLR``, stepped per epoch);
    - ``"warmup_cosine"``: :func:`warmup_cosine` with a warmup of 10% of the steps, stepped per batch;
    - ``"onecycle"``: ``OneCycleLR`` with peak ``recipe.lr`` (chapter 6), stepped per batch.
    """
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "constant":
        return None, None
    if recipe.schedule == "step":
        milestones = sorted({max(1, recipe.epochs // 2), max(1, 3 * recipe.epochs // 4)})
        return lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1), "epoch"
    if recipe.schedule == "warmup_cosine":
        return warmup_cosine(optimizer, total, max(1, total // 10)), "step"
    return lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total), "step"


def _normalized(images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> TensorDataset:
    """Normalized float images ``(n, 1, 8, 8)`` and their labels, as chapter 6 builds them."""
    return TensorDataset(((images.float() / 255 - mean) / std).unsqueeze(1), labels)


def _loader(images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> DataLoader:
    """The whole split as one batch (:func:`_normalized`)."""
    return DataLoader(_normalized(images, labels, mean, std), batch_size=len(labels))


def predict(model: nn.Module, loader: DataLoader) -> torch.Tensor:
    """The class each image of ``loader`` is given, ``argmax`` of its scores, in the loader's order (eval mode)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x).argmax(dim=1) for x, _ in loader])


def encode_labels(labels: Iterable[int]) -> str:
    """Labels 0..9 as one digit each, ``[3, 0, 7] -> "307"``: how the ablation file keeps predictions."""
    values = [int(label) for label in labels]
    if not all(0 <= v <= 9 for v in values):
        raise ValueError(f"labels must be classes 0..9, one digit each, got {sorted(set(values))}")
    return "".join(map(str, values))


def decode_labels(text: str) -> list[int]:
    """The inverse of :func:`encode_labels`: ``"307" -> [3, 0, 7]``."""
    if not isinstance(text, str) or not text.isdigit():
        raise ValueError(f"labels must be a string of digits 0..9, like '307', got {text!r:.40}")
    return [int(ch) for ch in text]


def _train_network(
    recipe: Recipe,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor],
    mean: float,
    std: float,
    val_loader: DataLoader,
) -> tuple[nn.Module, list[dict[str, Any]], float, float]:
    """One network of ``recipe`` trained from ``seed``: ``(model to measure, fit's history, seconds, cpu
    seconds)``. The model to measure is the averaged one where the recipe averages weights (its batch-norm
    statistics recomputed on the training images, unaugmented and unmixed), else the trained one."""
    images, labels = train
    seed_everything(seed)
    model = digits_cnn(recipe.width, batch_norm=recipe.batch_norm, dropout=recipe.dropout)
    augment = digit_augmentation(recipe.rotate, recipe.shift) if recipe.rotate or recipe.shift else None
    train_set: Dataset = (
        DigitImages(images, labels, mean, std, augment)
        if augment is not None
        else _normalized(images, labels, mean, std)  # the same tensors, built once, not image by image
    )
    mixing = None
    if recipe.mixup_alpha is not None or recipe.cutmix_alpha is not None:
        mixing = MixCollate(10, mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha)
    shuffle = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set, batch_size=recipe.batch_size, shuffle=True, generator=shuffle, collate_fn=mixing
    )
    optimizer = make_optimizer(recipe, model)
    scheduler, interval = make_scheduler(recipe, optimizer, len(train_loader))
    # the same loss takes soft (mixed) targets: the cross-entropy against probabilities, soft_cross_entropy
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    callbacks: list[Any] = [EarlyStopping("val_loss", recipe.patience)] if recipe.patience else []
    averaging: WeightAveraging | None = None
    if recipe.average != "none":
        plain_images = DataLoader(_normalized(images, labels, mean, std), batch_size=recipe.batch_size)
        averaging = (
            EMAWeightAveraging(recipe.ema_decay, bn_loader=plain_images)
            if recipe.average == "ema"
            else StochasticWeightAveraging(recipe.epochs - recipe.swa_epochs + 1, bn_loader=plain_images)
        )
        callbacks.append(averaging)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = fit(
        model,
        train_loader,
        loss_fn,
        optimizer,
        recipe.epochs,
        val_loader=val_loader,
        scheduler=scheduler,
        scheduler_interval=interval,
        callbacks=callbacks,
        device="cpu",
        progress=False,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if averaging is not None and averaging.n_averaged > 0:  # early stopping may end before SWA's start
        model = averaging.averaged_model
    return model, list(history), seconds, cpu_seconds


def _measure(recipe: Recipe, models: Sequence[nn.Module], loader: DataLoader) -> dict[str, Any]:
    r"""``{"accuracy", "loss", "predictions"}`` of ``models`` on ``loader``'s images: the plain cross-entropy
    whatever the training loss, the predictions encoded (:func:`encode_labels`).

    One network without TTA: :func:`~companion.train.evaluate` and :func:`predict`, as before TTA and
    ensembles existed. Otherwise the mean probabilities :math:`\bar p` of :mod:`companion.ensembles`
    (each network's TTA mean with ``recipe.tta``), the loss :math:`-\frac1n \sum_i \log \bar p_{i, y_i}`."""
    if len(models) == 1 and not recipe.tta:
        scores = evaluate(models[0], loader, nn.CrossEntropyLoss())
        return {
            "accuracy": scores["accuracy"],
            "loss": scores["loss"],
            "predictions": encode_labels(predict(models[0], loader)),
        }
    shifts = SHIFTS if recipe.tta else None
    probs, labels = [], []
    for x, y in loader:
        probs.append(ensemble_probabilities(models, x, shifts))
        labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    predicted = p.argmax(dim=1)
    loss = nn.functional.nll_loss(p.clamp_min(torch.finfo(p.dtype).tiny).log(), y)
    return {
        "accuracy": (predicted == y).double().mean().item(),
        "loss": loss.item(),
        "predictions": encode_labels(predicted),
    }


def train_on(
    recipe: Recipe,
    seed: int,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` once from ``seed`` on ``train = (images, labels)`` (``uint8 (n, 8, 8)``, ``int64 (n,)``),
    validating on ``val`` after every epoch (the history, and early stopping if the recipe has it); then
    measure ``val`` and, if given, ``test``.

    The images are normalized with the training images' pixel mean and standard deviation (of values in
    [0, 1]), as chapter 6 does. The seed sets the initial weights, the shuffle, dropout and augmentation.

    Returns ``{"recipe", "seed", "epochs", "seconds", "cpu_seconds", "val_accuracy", "val_loss",
    "val_predictions", "history"}``, and ``"test_accuracy", "test_errors", "test_predictions"`` with a
    ``test``: ``seconds`` is the training time (``fit`` alone) on the wall clock, ``cpu_seconds`` the
    processor time the process used meanwhile, which other programs running on the machine inflate far
    less; accuracy and loss are measured after training with the plain cross-entropy whatever the
    training loss; ``*_predictions`` are the predicted classes, one digit per image in the split's order
    (:func:`encode_labels`); ``history`` is ``fit``'s per-epoch rows (without their ``seconds``).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a companion.recipes.Recipe, got {type(recipe).__name__}")
    images, labels = train
    pixels = images.float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()
    val_loader = _loader(*val, mean, std)
    models, history, seconds, cpu_seconds = [], [], 0.0, 0.0
    for member in range(recipe.ensemble):
        model, rows, wall, cpu = _train_network(
            recipe, seed + member * ENSEMBLE_SEED_STEP, (images, labels), mean, std, val_loader
        )
        models.append(model)
        history = history or rows
        seconds, cpu_seconds = seconds + wall, cpu_seconds + cpu
    val_scores = _measure(recipe, models, val_loader)
    run: dict[str, Any] = {
        "recipe": recipe.name,
        "seed": seed,
        "epochs": len(history),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "val_accuracy": val_scores["accuracy"],
        "val_loss": val_scores["loss"],
        "val_predictions": val_scores["predictions"],
    }
    if test is not None:
        test_scores = _measure(recipe, models, _loader(*test, mean, std))
        run["test_accuracy"] = test_scores["accuracy"]
        run["test_errors"] = round((1 - test_scores["accuracy"]) * len(test[1]))
        run["test_predictions"] = test_scores["predictions"]
    run["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    return run


def train_recipe(recipe: Recipe, seed: int, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``recipe`` once from ``seed`` on chapter 6's training split (:func:`digits_data`; pass ``data``
    to build it once for many runs), validate on its validation split and measure its test split:
    :func:`train_on` with ``train``, ``val`` and ``test``, and the same keys.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a companion.recipes.Recipe, got {type(recipe).__name__}")
    splits = (digits_data() if data is None else data)["splits"]
    return train_on(recipe, seed, splits["train"], splits["val"], splits["test"])


# --- the ablation: repeated k-fold for the choice, the test split once ------------------------------------


def kfold_pool(data: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images the ablation chooses on: chapter 6's training split followed by its validation split
    (1,527 digits), ``(images uint8 (n, 8, 8), labels int64 (n,))``. The test split is not in it."""
    splits = (digits_data() if data is None else data)["splits"]
    return (
        torch.cat([splits["train"][0], splits["val"][0]]),
        torch.cat([splits["train"][1], splits["val"][1]]),
    )


def stratified_folds(labels: torch.Tensor, folds: int = 5, seed: int = 0) -> list[int]:
    """The fold (0 .. ``folds`` - 1) of every image for stratified k-fold cross-validation: scikit-learn's
    ``StratifiedKFold(folds, shuffle=True, random_state=seed)``, so that every fold holds each digit in
    about the same proportion. A new ``seed`` gives a new partition: the *repeats* of repeated k-fold."""
    from sklearn.model_selection import StratifiedKFold

    if not is_int(folds) or folds < 2:
        raise ValueError(f"folds must be an int >= 2 (e.g. 5), got {folds!r}")
    fold_of = [0] * len(labels)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(torch.zeros(len(labels)).numpy(), labels.numpy())):
        for i in held_out:
            fold_of[int(i)] = fold
    return fold_of


def train_fold(
    recipe: Recipe,
    seed: int,
    pool: tuple[torch.Tensor, torch.Tensor],
    fold_of: Sequence[int],
    fold: int,
) -> dict[str, Any]:
    """Train ``recipe`` from ``seed`` on the images of ``pool`` outside ``fold`` and validate on those in it
    (``fold_of[i]`` is image ``i``'s fold, :func:`stratified_folds`): :func:`train_on`'s record with
    ``"fold"`` added; its ``"val_predictions"`` follow the order of the fold's images in ``pool``."""
    images, labels = pool
    inside = torch.tensor([f == fold for f in fold_of])
    if len(fold_of) != len(labels) or not inside.any():
        raise ValueError(
            f"fold_of must give a fold to each of the {len(labels)} images and fold {fold!r} must hold some; "
            "pass stratified_folds(labels, folds, seed)"
        )
    run = train_on(recipe, seed, (images[~inside], labels[~inside]), (images[inside], labels[inside]))
    return {"recipe": run.pop("recipe"), "seed": run.pop("seed"), "fold": fold, **run}


def run_ablation(
    recipes: Sequence[Recipe],
    folds: int = 5,
    seeds: Iterable[int] = (0, 1),
    data: Mapping[str, Any] | None = None,
    log: Any = None,
    keep: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Repeated stratified k-fold over :func:`kfold_pool`: for every seed (one repeat), every recipe and
    every fold, :func:`train_fold`, with the folds of ``stratified_folds(labels, folds, seed)`` and the
    training seed ``seed``. So every recipe sees the same folds and seeds, and each image is predicted
    once per seed by every recipe: the predictions are paired.

    Runs in ``keep`` (earlier records of the same recipe, seed and fold) are returned instead of trained
    again; ``log(run)`` is called after each new run. Returns the records in the order seed, recipe, fold.
    """
    pool = kfold_pool(data)
    kept = {(r["recipe"], r["seed"], r["fold"]): dict(r) for r in keep}
    runs = []
    for seed in seeds:
        fold_of = stratified_folds(pool[1], folds, seed)
        for recipe in recipes:
            for fold in range(folds):
                key = (recipe.name, seed, fold)
                if key in kept:
                    runs.append(kept[key])
                    continue
                runs.append(train_fold(recipe, seed, pool, fold_of, fold))
                if log is not None:
                    log(runs[-1])
    return runs


def changes(recipe: Recipe, baseline: Recipe = BASELINE) -> dict[str, Any]:
    """The fields in which ``recipe`` differs from ``baseline``, its name aside."""
    base = asdict(baseline)
    return {k: v for k, v in asdict(recipe).items() if k != "name" and v != base[k]}


def choose_recipe(rows: Sequence[Mapping[str, Any]], recipes: Sequence[Recipe]) -> Recipe:
    """The recipe chosen on validation data from an ablation's :func:`summarize` rows (in chapter 8, the
    k-fold runs of :func:`run_ablation`: never the test split).

    The rule, fixed before the test split is read: start from the baseline (the first recipe) and add
    every change whose validation accuracy is higher than the baseline's, best first; a change that
    would overwrite a field that a better change already set is left out. One such change: its own
    recipe; several: a new recipe named after them; none: the baseline. A tie is not higher.

    The rule picks the best guess; it does not ask for significance. Whether a change is *shown* to be
    better is a separate question, which :func:`ablation_report` answers with a paired test: a change
    that the rule keeps may well be "no significant difference", and then no gain may be claimed for it.
    """
    by_name = {r.name: r for r in recipes}
    accuracy = {row["recipe"]: row["val_accuracy"] for row in rows}
    missing = [r.name for r in recipes if r.name not in accuracy]
    if missing:
        raise ValueError(f"no runs of {missing}: summarize the runs of every recipe first")
    baseline = recipes[0]
    better = sorted(
        (r for r in recipes[1:] if accuracy[r.name] > accuracy[baseline.name]),
        key=lambda r: -accuracy[r.name],
    )
    if len(better) <= 1:
        return better[0] if better else baseline
    fields_set: dict[str, Any] = {}
    taken = []
    for recipe in better:
        change = changes(recipe, baseline)
        if not set(change) & set(fields_set):
            fields_set.update(change)
            taken.append(recipe.name)
    if len(taken) == 1:
        return by_name[taken[0]]
    return baseline.but(" + ".join(taken), **fields_set)


def summarize(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per recipe, in the order the runs name them: the accuracy on the validation split (and the
    test split, where the runs measured it) over all the recipe's runs, with the sample standard deviation
    of the runs' accuracies beside it (``*_std``), the mean validation loss, and the mean and the largest
    ``seconds`` and ``cpu_seconds``. ``seeds`` counts the runs.

    Where runs carry their ``val_predictions`` (k-fold folds of 305 or 306 images), the validation
    accuracy is pooled: the correct predictions of all runs (each run's accuracy times its number of
    images, rounded to a whole count, so that a rounded accuracy in a file gives the same figure) over
    all their predictions. Two recipes with as many correct predictions then tie exactly."""
    by_recipe: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_recipe.setdefault(run["recipe"], []).append(run)
    if not by_recipe:
        raise ValueError("no runs to summarize: pass the list run_ablation returned")

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else math.nan

    rows = []
    for name, group in by_recipe.items():
        row: dict[str, Any] = {"recipe": name, "seeds": len(group)}
        for key in ("val_accuracy", "test_accuracy"):
            if not all(key in r for r in group):  # k-fold runs have no test split
                continue
            values = [r[key] for r in group]
            sizes = [len(r.get(key.replace("accuracy", "predictions"), "")) for r in group]
            if all(sizes):  # count the correct predictions, exactly (the file rounds the accuracies)
                row[key] = sum(round(v * n) for v, n in zip(values, sizes)) / sum(sizes)
            else:
                row[key] = statistics.fmean(values)
            row[key + "_std"] = spread(values)
        row["val_loss"] = statistics.fmean(r["val_loss"] for r in group)
        for key in ("seconds", "cpu_seconds"):
            row[key] = statistics.fmean(r[key] for r in group)
            row["max_" + key] = max(r[key] for r in group)
        rows.append(row)
    return rows


# --- the report: every comparison with its uncertainty -----------------------------------------------------

GOAL_ACCURACY = 0.994
"""Chapter 8's goal, fixed before the test split is read: mean test accuracy over 3 seeds of at least 99.4%..."""
GOAL_CPU_SECONDS = 20.0
"""... with every run trained in under 20 s of processor time (one thread)."""


def _kfold_correct(results: Mapping[str, Any], recipe: str) -> list[list[int]]:
    """Seeds x pool images: 1 where ``recipe``'s k-fold run that held the image out predicted it right."""
    return _correct_grid(results, results["design"]["seeds"], results["kfold_runs"], recipe)


def _correct_grid(
    results: Mapping[str, Any], seeds: Sequence[int], runs: Sequence[Mapping[str, Any]], recipe: str
) -> list[list[int]]:
    """:func:`_kfold_correct` for the ``seeds`` and ``runs`` given (the file's labels and folds)."""
    labels = decode_labels(results["labels"]["pool"])
    grid = []
    for seed in seeds:
        folds = [int(f) for f in results["folds"][str(seed)]]
        row: list[int | None] = [None] * len(labels)
        for run in runs:
            if run["recipe"] == recipe and run["seed"] == seed:
                held_out = [i for i, f in enumerate(folds) if f == run["fold"]]
                for i, p in zip(held_out, decode_labels(run["val_predictions"]), strict=True):
                    row[i] = int(p == labels[i])
        if None in row:
            raise ValueError(f"the k-fold runs of {recipe!r} with seed {seed} do not cover every image")
        grid.append(row)  # type: ignore[arg-type]
    return grid


def _test_correct(results: Mapping[str, Any], recipe: str) -> list[list[int]]:
    """Test seeds x test images: 1 where ``recipe``'s run with that seed predicted the image right."""
    labels = decode_labels(results["labels"]["test"])
    by_seed = {r["seed"]: r for r in results["test_runs"] if r["recipe"] == recipe}
    missing = [s for s in results["design"]["test_seeds"] if s not in by_seed]
    if missing:
        raise ValueError(f"no test runs of {recipe!r} with seeds {missing}")
    return [
        [int(p == y) for p, y in zip(decode_labels(by_seed[s]["test_predictions"]), labels, strict=True)]
        for s in results["design"]["test_seeds"]
    ]


def _against(
    a: list[list[int]], b: list[list[int]], level: float, resamples: int, seed: int
) -> dict[str, Any]:
    """A against B: the paired bootstrap over images and seeds, McNemar pooled over (seed, image) pairs and
    McNemar seed by seed, and the verdict: "better" or "worse" only where the bootstrap interval and the
    pooled McNemar test both say so at ``level``."""
    boot = paired_bootstrap(a, b, level, resamples, seed)
    pooled = mcnemar([x for row in a for x in row], [x for row in b for x in row], level)
    per_seed = [mcnemar(x, y, level) for x, y in zip(a, b)]
    agree = boot.significant and pooled.significant and boot.verdict == pooled.verdict
    verdict = (
        {"A better": "better", "B better": "worse"}[boot.verdict] if agree else "no significant difference"
    )
    return {"bootstrap": boot, "mcnemar": pooled, "mcnemar_per_seed": per_seed, "verdict": verdict}


def ablation_report(
    results: Mapping[str, Any], level: float = 0.05, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Every comparison of the ablation file (``scripts/ablation.py``) against the baseline, with how sure it is.

    ``"validation"``: one row per recipe of the k-fold evaluation, the baseline first: ``accuracy`` over
    all its k-fold predictions (every pool image once per seed) and ``accuracy_std``, the standard
    deviation of its runs' (folds') accuracies; for the others, against the baseline on the same
    seeds x images: ``difference`` (a fraction), ``bootstrap`` (:func:`~companion.significance.paired_bootstrap`,
    resampling images and seeds), ``mcnemar`` (pooled, each (seed, image) pair a pair: a
    seed-by-seed ``mcnemar_per_seed`` beside it, since the seeds of one image are not independent) and
    ``verdict``: ``"better"``, ``"worse"`` or ``"no significant difference"``, better or worse only where
    the bootstrap's interval and the pooled McNemar test both say so at ``level``. Also the mean
    ``val_loss`` and the ``cpu_seconds`` (mean) and ``max_cpu_seconds`` of its runs.

    ``"better"``: the recipes significantly better than the baseline on the k-fold evaluation.
    ``"chosen"``: :func:`choose_recipe` on the k-fold rows of the single changes (the file's choice,
    recomputed). ``"test"``: the baseline's and the chosen recipe's rows on the test split, read once
    (``accuracy`` the mean over the test seeds, ``accuracy_std`` their spread, ``errors`` per seed), and
    the chosen recipe against the baseline on the test seeds x 270 images as above. ``"goal"``: whether
    the chosen recipe's mean test accuracy is at least :data:`GOAL_ACCURACY` and each of its runs
    trained in under :data:`GOAL_CPU_SECONDS` of processor time.
    """
    recipes = [Recipe(**r) for r in results["recipes"]]
    names = [r.name for r in recipes]
    baseline = names[0]
    runs = results["kfold_runs"]
    base_grid = _kfold_correct(results, baseline)
    rows = []
    for row in summarize(runs):
        name = row["recipe"]
        mine = {
            "recipe": name,
            "runs": row["seeds"],
            "accuracy": row["val_accuracy"],
            "accuracy_std": row["val_accuracy_std"],
            "val_loss": row["val_loss"],
            "cpu_seconds": row["cpu_seconds"],
            "max_cpu_seconds": row["max_cpu_seconds"],
        }
        if name != baseline:
            grid = _kfold_correct(results, name)
            mine.update(_against(grid, base_grid, level, resamples, seed))
            mine["difference"] = mine["bootstrap"].difference
        rows.append(mine)
    singles = [row for row in summarize(runs) if row["recipe"] in names]
    chosen = choose_recipe(singles, recipes).name
    test_names = [baseline] + ([chosen] if chosen != baseline else [])
    test_rows = []
    for row in summarize(results["test_runs"]):
        if row["recipe"] not in test_names:
            continue
        test_rows.append(
            {
                "recipe": row["recipe"],
                "seeds": row["seeds"],
                "accuracy": row["test_accuracy"],
                "accuracy_std": row["test_accuracy_std"],
                "errors": [r["test_errors"] for r in results["test_runs"] if r["recipe"] == row["recipe"]],
                "max_cpu_seconds": row["max_cpu_seconds"],
                "max_seconds": row["max_seconds"],
            }
        )
    final = next(r for r in test_rows if r["recipe"] == chosen)
    comparison = None
    if chosen != baseline:
        comparison = _against(
            _test_correct(results, chosen), _test_correct(results, baseline), level, resamples, seed
        )
        comparison["difference"] = comparison["bootstrap"].difference
    return {
        "design": dict(results["design"]),
        "level": level,
        "validation": rows,
        "better": [r["recipe"] for r in rows if r.get("verdict") == "better"],
        "worse": [r["recipe"] for r in rows if r.get("verdict") == "worse"],
        "chosen": chosen,
        "test": test_rows,
        "test_comparison": comparison,
        "goal": {
            "accuracy": GOAL_ACCURACY,
            "cpu_seconds": GOAL_CPU_SECONDS,
            "met": final["accuracy"] >= GOAL_ACCURACY and final["max_cpu_seconds"] < GOAL_CPU_SECONDS,
        },
    }


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def _p(p: float) -> str:
    """A p-value in at most 6 characters: two significant digits, or ``<.001``."""
    return "<.001" if p < 0.001 else f"{p:.2g}"


SHORT_VERDICTS = {"better": "better", "worse": "worse", "no significant difference": "n.s."}
"""How :func:`format_report`'s table spells each verdict, so that a row fits a page of 88 columns."""


def format_report(report: Mapping[str, Any], part: str = "all") -> str:
    """:func:`ablation_report` as text: the design, the k-fold table and the choice (``part="validation"``),
    then the test split and the goal (``part="test"``); ``"all"``: both, in that order.

    Every line fits in 88 columns (a book page): a recipe name longer than the table's name column gets a
    line of its own above its figures, and the table writes "no significant difference" as ``n.s.``."""
    if part not in ("all", "validation", "test"):
        raise ValueError(f"part must be 'all', 'validation' or 'test', got {part!r}")
    d, level = report["design"], report["level"]
    conf = f"{100 * (1 - level):g}%"
    w = 21  # the recipe column: "constant + early stop"; a longer name gets its own line
    lines = [
        f"choice: {d['folds']}-fold stratified cross-validation of {d['pool_images']:,} images "
        "(train + val),",
        f"repeated with seeds {', '.join(map(str, d['seeds']))}: {d['folds'] * d['repeats']} runs per "
        "recipe, each image predicted once per seed",
        "",
        f"{'':{w}s} {'accuracy':>12s} {'vs baseline (pp)':^20s} {'':5s} {'McNemar p':^18s}",
        f"{'recipe':{w}s} {'(%)':>12s} {'diff':>5s} {conf + ' interval':>14s} {'+/-':>5s} "
        f"{'all':>6s} {'per seed':>11s} verdict",
    ]
    for row in report["validation"]:
        acc = f"{100 * row['accuracy']:5.2f} ± {100 * row['accuracy_std']:4.2f}"
        name = row["recipe"]
        if len(name) > w:
            lines.append(name)
            name = ""
        if "verdict" not in row:
            lines.append(f"{name:{w}s} {acc:>12s}")
            continue
        boot, pooled = row["bootstrap"], row["mcnemar"]
        per_seed = " ".join(_p(c.p_value) for c in row["mcnemar_per_seed"])
        interval = f"[{_pp(boot.low)}, {_pp(boot.high)}]"
        lines.append(
            f"{name:{w}s} {acc:>12s} {_pp(row['difference']):>5s} {interval:>14s} "
            f"{f'{pooled.a_only}/{pooled.b_only}':>5s} {_p(pooled.p_value):>6s} {per_seed:>11s} "
            f"{SHORT_VERDICTS[row['verdict']]}"
        )
    lines += [
        "",
        "+/-: predictions only the recipe / only the baseline got right, over seeds x images",
        f"n.s.: no significant difference at level {level:g}",
        f"significantly better than the baseline on k-fold: {', '.join(report['better']) or 'none'}",
        f"significantly worse: {', '.join(report['worse']) or 'none'}",
        f"chosen on k-fold validation: {report['chosen']}",
    ]
    validation, lines = lines, []
    wt = max(len(row["recipe"]) for row in report["test"]) + 1
    lines += [
        f"test split, read once: {d['test_images']} images x seeds {', '.join(map(str, d['test_seeds']))} "
        f"(the same images for every seed)",
    ]
    for row in report["test"]:
        lines.append(
            f"{row['recipe']:{wt}s} {100 * row['accuracy']:6.2f} ± {100 * row['accuracy_std']:4.2f} %   "
            f"errors per seed {row['errors']}"
        )
    comparison = report["test_comparison"]
    if comparison is not None:
        boot, pooled = comparison["bootstrap"], comparison["mcnemar"]
        lines += [
            f"chosen - baseline: {_pp(comparison['difference'])} pp, {conf} interval "
            f"[{_pp(boot.low)}, {_pp(boot.high)}] (images and seeds resampled)",
            f"McNemar over the {pooled.pairs} (seed, image) pairs: {pooled.a_only}/{pooled.b_only}, "
            f"p = {pooled.p_value:.3g}; per seed p = "
            f"{', '.join(f'{c.p_value:.2g}' for c in comparison['mcnemar_per_seed'])}",
            f"verdict: {comparison['verdict']}",
        ]
    goal = report["goal"]
    lines.append(
        f"goal (mean test accuracy >= {100 * goal['accuracy']:g}%, every run < {goal['cpu_seconds']:g} s "
        f"of processor time): {'met' if goal['met'] else 'not met'}"
    )
    parts = {"validation": [validation], "test": [lines], "all": [validation, lines]}[part]
    return "\n\n".join("\n".join(line.rstrip() for line in p) for p in parts)


# --- a quasi-random search (scripts/search.py) -------------------------------------------------------------

SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-3, "high": 3e-2, "scale": "log"},
    "weight_decay": {"low": 1e-4, "high": 1e-1, "scale": "log"},
    "label_smoothing": {"low": 0.0, "high": 0.2, "scale": "linear"},
    "dropout": {"low": 0.0, "high": 0.5, "scale": "linear"},
}
"""The settings ``scripts/search.py`` searches, each over ``[low, high]`` on its scale."""


def search_settings(
    point: Sequence[float], space: Mapping[str, Mapping[str, Any]] = SEARCH_SPACE
) -> dict[str, float]:
    r"""The recipe settings at ``point``, a point :math:`u` of the unit cube (one coordinate per setting of
    ``space``, in its order): on a ``"log"`` scale :math:`\text{low}\,(\text{high}/\text{low})^{u}`, on a
    ``"linear"`` one :math:`\text{low} + (\text{high} - \text{low})\,u`; each rounded to 3 significant
    digits, so that the file and the page show the values trained with."""
    if len(point) != len(space):
        raise ValueError(f"point must have one coordinate per setting ({len(space)}), got {len(point)}")
    settings = {}
    for u, (name, dim) in zip(point, space.items()):
        if not is_number(u) or not 0 <= u <= 1:
            raise ValueError(f"point's coordinates must lie in [0, 1], got {u!r} for {name}")
        low, high = dim["low"], dim["high"]
        value = low * (high / low) ** u if dim["scale"] == "log" else low + (high - low) * u
        settings[name] = float(f"{value:.3g}")
    return settings


def trial_score(trial: Mapping[str, Any]) -> tuple[float, float]:
    """``(accuracy, val_loss)`` of a search trial: its accuracy pooled over the held-out images of its runs
    (:func:`summarize`), and the mean of their validation losses."""
    (row,) = summarize(trial["runs"])
    return row["val_accuracy"], row["val_loss"]


def rank_trials(trials: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The trials best first: the higher pooled accuracy, then (a tie) the lower validation loss, then the
    earlier trial."""
    return sorted(trials, key=lambda t: (-trial_score(t)[0], trial_score(t)[1], t["trial"]))


def search_report(
    results: Mapping[str, Any], level: float = 0.05, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """What ``scripts/search.py``'s file says: ``"trials"``, one row per trial, best first
    (:func:`rank_trials`: ``trial``, ``settings``, ``accuracy``, ``val_loss``, ``max_cpu_seconds``);
    ``"best"``, the trials re-run; ``"reruns"``, the baseline and each re-run trial on the repeats it never
    saw (``accuracy`` pooled over them), each trial against the baseline on those seeds x images as in
    :func:`ablation_report` (``difference``, ``bootstrap``, ``mcnemar``, ``verdict``); ``"adopt"``, the
    re-run trials significantly better than the baseline (none: keep the baseline)."""
    design = results["design"]
    ranked = rank_trials(results["trials"])
    trials = [
        {
            "trial": t["trial"],
            "settings": t["settings"],
            "accuracy": trial_score(t)[0],
            "val_loss": trial_score(t)[1],
            "max_cpu_seconds": max(r["cpu_seconds"] for r in t["runs"]),
        }
        for t in ranked
    ]
    best = [t["trial"] for t in ranked[: design["best"]]]
    if best != list(results["best"]):
        raise ValueError(f"the file re-ran trials {results['best']}, but its trials rank {best} best")
    reruns, seeds = results["reruns"], design["rerun_seeds"]
    base = _correct_grid(results, seeds, reruns, BASELINE.name)
    rows = []
    for name in [BASELINE.name] + [f"trial {t}" for t in best]:
        (summary,) = summarize(r for r in reruns if r["recipe"] == name)
        row: dict[str, Any] = {
            "recipe": name,
            "runs": summary["seeds"],
            "accuracy": summary["val_accuracy"],
            "max_cpu_seconds": summary["max_cpu_seconds"],
        }
        if name != BASELINE.name:
            row.update(_against(_correct_grid(results, seeds, reruns, name), base, level, resamples, seed))
            row["difference"] = row["bootstrap"].difference
        rows.append(row)
    return {
        "design": dict(design),
        "level": level,
        "trials": trials,
        "best": best,
        "reruns": rows,
        "adopt": [r["recipe"] for r in rows if r.get("verdict") == "better"],
    }


def format_search_report(report: Mapping[str, Any]) -> str:
    """:func:`search_report` as text, every line at most 88 columns: the trials best first, then the
    re-runs against the baseline."""
    d = report["design"]
    names = list(d["space"])
    short = {"lr": "lr", "weight_decay": "decay", "label_smoothing": "smooth", "dropout": "dropout"}
    lines = [
        f"{d['trials']} trials, {d['sequence'].split('.draw')[0].split('.')[-1]}; each scored on folds "
        f"{', '.join(map(str, d['score_folds']))} of repeat {d['score_seed']}",
        f"{'trial':>5s} " + " ".join(f"{short.get(n, n)[:8]:>8s}" for n in names) + f" {'accuracy %':>10s} "
        f"{'val loss':>8s}",
    ]
    for t in report["trials"]:
        values = " ".join(f"{t['settings'][n]:8.3g}" for n in names)
        lines.append(f"{t['trial']:5d} {values} {100 * t['accuracy']:10.2f} {t['val_loss']:8.4f}")
    lines += [
        "",
        f"re-run on every fold of repeat(s) {', '.join(map(str, d['rerun_seeds']))}, unseen by the trials:",
        f"{'recipe':10s} {'accuracy %':>10s} {'diff pp':>8s} {'95% interval':>16s} {'+/-':>7s} "
        f"{'McNemar p':>9s} verdict",
    ]
    for row in report["reruns"]:
        if "verdict" not in row:
            lines.append(f"{row['recipe']:10s} {100 * row['accuracy']:10.2f}")
            continue
        boot, pooled = row["bootstrap"], row["mcnemar"]
        lines.append(
            f"{row['recipe']:10s} {100 * row['accuracy']:10.2f} {_pp(row['difference']):>8s} "
            f"{f'[{_pp(boot.low)}, {_pp(boot.high)}]':>16s} {f'{pooled.a_only}/{pooled.b_only}':>7s} "
            f"{_p(pooled.p_value):>9s} {SHORT_VERDICTS[row['verdict']]}"
        )
    lines.append(f"adopt: {', '.join(report['adopt']) or 'none; the baseline stays'}")
    return "\n".join(line.rstrip() for line in lines)
