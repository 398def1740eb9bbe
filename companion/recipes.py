"""Training recipes for accuracy (chapter 8): the pieces a recipe is made of, and the ablation that weighs them.

A *recipe* is everything about a training run except the data: the network, the optimizer and its weight
decay, the learning-rate schedule, the augmentation, the loss. This module holds

- :func:`digits_cnn`, chapter 6's network, with batch norm and dropout as options;
- :func:`parameter_groups`, weight decay on the weights of convolutions and linear layers only;
- :func:`warmup_cosine`, a linear warmup followed by a cosine decay, from torch's own schedulers;
- :func:`digit_augmentation` and :class:`DigitImages`, small random shifts and rotations (torchvision's
  transforms v2) applied to each training image as it is drawn;
- :class:`Recipe`, :func:`train_recipe` and :func:`run_ablation`, which train a recipe on the digits
  with several seeds and record what each run measured; :func:`summarize`, which turns the runs into
  the rows of an ablation table; and :func:`choose_recipe`, the rule that picks the final recipe from
  those rows on the validation split alone.

``scripts/ablation.py`` runs :func:`ablation_recipes` and saves the runs for chapter 8. The test split
is measured for every run, but read once, after the choice.
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

from companion.callbacks import EarlyStopping
from companion.checks import check_module, is_int, is_number
from companion.datasets import digits_splits
from companion.seeding import seed_everything
from companion.train import evaluate, fit

__all__ = [
    "BASELINE",
    "SCHEDULES",
    "DigitImages",
    "Recipe",
    "ablation_recipes",
    "changes",
    "choose_recipe",
    "digit_augmentation",
    "digits_cnn",
    "digits_data",
    "make_optimizer",
    "make_scheduler",
    "parameter_groups",
    "run_ablation",
    "summarize",
    "train_recipe",
    "warmup_cosine",
]

SCHEDULES = ("constant", "step", "warmup_cosine", "onecycle")
OPTIMIZERS = ("adamw", "adam")


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


def train_recipe(recipe: Recipe, seed: int, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``recipe`` once from ``seed`` (the weights, the shuffle, dropout and augmentation draw from it)
    on the digits (:func:`digits_data`; pass ``data`` to build it once for many runs).

    Returns ``{"recipe", "seed", "epochs", "seconds", "cpu_seconds", "val_accuracy", "val_loss",
    "test_accuracy", "test_errors", "history"}``: ``seconds`` is the training time (``fit`` alone) on the
    wall clock, ``cpu_seconds`` the processor time the process used meanwhile, which other programs
    running on the machine inflate far less; the validation and test
    figures are measured after training, with the plain cross-entropy whatever the training loss, and
    ``history`` is ``fit``'s per-epoch rows (without their ``seconds``).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a companion.recipes.Recipe, got {type(recipe).__name__}")
    data = digits_data() if data is None else data
    seed_everything(seed)
    model = digits_cnn(recipe.width, batch_norm=recipe.batch_norm, dropout=recipe.dropout)
    images, labels = data["splits"]["train"]
    train_set: Dataset = (
        DigitImages(
            images, labels, data["mean"], data["std"], digit_augmentation(recipe.rotate, recipe.shift)
        )
        if recipe.rotate or recipe.shift
        else data["train"]
    )
    shuffle = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True, generator=shuffle)
    val_loader = DataLoader(data["val"], batch_size=len(data["val"]))
    test_loader = DataLoader(data["test"], batch_size=len(data["test"]))
    optimizer = make_optimizer(recipe, model)
    scheduler, interval = make_scheduler(recipe, optimizer, len(train_loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    callbacks = [EarlyStopping("val_loss", recipe.patience)] if recipe.patience else []
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
    plain = nn.CrossEntropyLoss()
    val, test = evaluate(model, val_loader, plain), evaluate(model, test_loader, plain)
    return {
        "recipe": recipe.name,
        "seed": seed,
        "epochs": len(history),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "test_accuracy": test["accuracy"],
        "test_errors": round((1 - test["accuracy"]) * len(data["test"])),
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in history],
    }


def run_ablation(
    recipes: Sequence[Recipe],
    seeds: Iterable[int] = (0, 1, 2),
    data: Mapping[str, Any] | None = None,
    log: Any = None,
) -> list[dict[str, Any]]:
    """:func:`train_recipe` for every recipe and seed, in that order; ``log(run)`` after each if given."""
    data = digits_data() if data is None else data
    runs = []
    for recipe in recipes:
        for seed in seeds:
            runs.append(train_recipe(recipe, seed, data))
            if log is not None:
                log(runs[-1])
    return runs


def changes(recipe: Recipe, baseline: Recipe = BASELINE) -> dict[str, Any]:
    """The fields in which ``recipe`` differs from ``baseline``, its name aside."""
    base = asdict(baseline)
    return {k: v for k, v in asdict(recipe).items() if k != "name" and v != base[k]}


def choose_recipe(rows: Sequence[Mapping[str, Any]], recipes: Sequence[Recipe]) -> Recipe:
    """The recipe chosen on the validation split from an ablation's :func:`summarize` rows.

    The rule, fixed before the test split is read: start from the baseline (the first recipe) and add
    every change whose mean validation accuracy is higher than the baseline's, best first; a change that
    would overwrite a field that a better change already set is left out. One such change: its own
    recipe; several: a new recipe named after them; none: the baseline.
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
    """One row per recipe, in the order the runs name them: the mean and the sample standard deviation
    over the seeds of the validation and test accuracy, the mean validation loss, and the mean and the
    largest ``seconds`` and ``cpu_seconds``."""
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
            values = [r[key] for r in group]
            row[key], row[key + "_std"] = statistics.fmean(values), spread(values)
        row["val_loss"] = statistics.fmean(r["val_loss"] for r in group)
        for key in ("seconds", "cpu_seconds"):
            row[key] = statistics.fmean(r[key] for r in group)
            row["max_" + key] = max(r[key] for r in group)
        rows.append(row)
    return rows
