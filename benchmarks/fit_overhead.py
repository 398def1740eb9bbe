"""Does `companion.fit` cost anything over the shortest correct hand-written loop?

The same model, data, seed and epochs are trained by `companion.fit(progress=False)` and by a hand-written
loop that records the same metrics (sample-weighted training loss, validation loss and accuracy under
`torch.inference_mode`). Runs are interleaved (fit, hand, hand, fit, fit, hand, ...) so that a change in
machine load hits both alike and neither always goes first; the figure is the median of the per-pair
ratios fit/hand. Both runs must end with the
same weights, bit for bit: they do the same work. When PyTorch Lightning is importable, its `Trainer`
is timed the same way (it is not a requirement of the book).

Usage: python benchmarks/fit_overhead.py [--repeats 21] [--epochs 3] [--threads N]
The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion.datasets import digits_splits


def data() -> dict[str, TensorDataset]:
    splits = digits_splits(seed=0)
    train_images = splits["train"][0].float().div(255)
    mean, std = train_images.mean(), train_images.std()
    return {
        name: TensorDataset(((images.float().div(255) - mean) / std).unsqueeze(1), labels)
        for name, (images, labels) in splits.items()
    }


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64 * 2 * 2, 10),
    )


def setup(datasets, epochs):
    companion.seed_everything(0)
    model = make_model()
    train = DataLoader(
        datasets["train"], batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(datasets["val"], batch_size=270)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=epochs * len(train))
    return model, train, val, nn.CrossEntropyLoss(), optimizer, scheduler


def run_fit(datasets, epochs):
    model, train, val, loss_fn, optimizer, scheduler = setup(datasets, epochs)
    start = time.perf_counter()
    companion.fit(
        model, train, loss_fn, optimizer, epochs, val_loader=val, scheduler=scheduler, progress=False
    )
    return time.perf_counter() - start, model


def run_hand(datasets, epochs):
    model, train, val, loss_fn, optimizer, scheduler = setup(datasets, epochs)
    start = time.perf_counter()
    history = []
    for _ in range(epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            count += len(y)
        model.eval()
        val_total, correct, val_count = 0.0, 0, 0
        with torch.inference_mode():
            for x, y in val:
                out = model(x)
                val_total += loss_fn(out, y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                val_count += len(y)
        history.append((total / count, val_total / val_count, correct / val_count))
    return time.perf_counter() - start, model


def import_lightning():
    """The Lightning package if one is installed (`lightning` or the older `pytorch_lightning`), else None."""
    for name in ("lightning", "pytorch_lightning"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        except Exception as error:  # installed but broken (e.g. a version clash): say so, compare without it
            print(
                f"{name} is installed but could not be imported ({type(error).__name__}: {error}); skipping it"
            )
            continue
        for logger in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
            logging.getLogger(logger).setLevel(logging.WARNING)  # no "GPU available: False" banner per run
        return module
    return None


def run_lightning(datasets, epochs, L):  # noqa: N803
    class Module(L.LightningModule):
        def __init__(self, model, loss_fn, optimizer, scheduler):
            super().__init__()
            self.model, self.loss_fn, self.opt, self.sched = model, loss_fn, optimizer, scheduler

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            out = self.model(x)
            self.log("val_loss", self.loss_fn(out, y), batch_size=len(y))
            self.log("val_accuracy", (out.argmax(1) == y).float().mean(), batch_size=len(y))

        def configure_optimizers(self):
            return {"optimizer": self.opt, "lr_scheduler": {"scheduler": self.sched, "interval": "step"}}

    model, train, val, loss_fn, optimizer, scheduler = setup(datasets, epochs)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(Module(model, loss_fn, optimizer, scheduler), train, val)
    return time.perf_counter() - start, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = data()
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}; "
        f"{len(datasets['train'])} digits, CNN, {args.epochs} epochs, {args.repeats} interleaved repetitions"
    )

    lightning = import_lightning()
    has_lightning = lightning is not None
    runners = {"fit": run_fit, "hand": run_hand}
    if has_lightning:
        runners["lightning"] = lambda d, e: run_lightning(d, e, lightning)

    for runner in runners.values():  # warm up: first-call costs are not the loop's
        runner(datasets, 1)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(args.repeats):
        models = {}
        order = list(runners.items())
        for name, runner in order if i % 2 == 0 else order[::-1]:  # who goes first alternates too
            seconds, models[name] = runner(datasets, args.epochs)
            times[name].append(seconds)
        same = all(torch.equal(p, q) for p, q in zip(models["fit"].parameters(), models["hand"].parameters()))
        assert same, "fit and the hand-written loop must end with the same weights: they do the same work"

    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = statistics.median(f / h for f, h in zip(times["fit"], times["hand"]))
    for name, t in times.items():
        print(f"{name:>9}: median {median[name]:.3f} s  (min {min(t):.3f}, max {max(t):.3f})")
    print(f"fit / hand-written loop: median ratio {ratio:.3f} (goal: at most 1.05)")
    lightning_ratio = None
    if has_lightning:
        lightning_ratio = statistics.median(lt / h for lt, h in zip(times["lightning"], times["hand"]))
        print(f"Lightning Trainer / hand-written loop: median ratio {lightning_ratio:.3f}")
    else:
        print("Lightning Trainer / hand-written loop: not installed (pip install lightning to compare)")
    print(
        json.dumps(
            {
                "benchmark": "fit_overhead",
                "median_seconds": {k: round(v, 4) for k, v in median.items()},
                "ratio_fit_over_hand": round(ratio, 4),
                "ratio_lightning_over_hand": None if lightning_ratio is None else round(lightning_ratio, 4),
                "repeats": args.repeats,
                "epochs": args.epochs,
                "torch": torch.__version__,
                "threads": threads,
            }
        )
    )


if __name__ == "__main__":
    main()
