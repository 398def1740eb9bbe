"""The small training problems the tests of the loop share (test_train, test_callbacks,
test_checkpoint, test_metrics): data, models, loaders, and callbacks that stop or interrupt a run."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion.callbacks import Callback


def classification_data(n=40, d=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return X, y % classes


def make_model(d=5, classes=3, dropout=0.2):
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, classes))


def loaders(generator=True, batch_size=8, n=40):
    X, y = classification_data(n)
    g = torch.Generator().manual_seed(1) if generator else None
    train = DataLoader(TensorDataset(X[:32], y[:32]), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(TensorDataset(X[32:], y[32:]), batch_size=5)
    return train, val


def setup(epochs=6, generator=True, seed=0):
    """Model, loaders, loss, AdamW and a per-step OneCycleLR: everything a resume has to restore."""
    companion.seed_everything(seed)
    model = make_model()
    train, val = loaders(generator)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(train))
    return model, train, val, nn.CrossEntropyLoss(), opt, sched


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same_params(a, b):
    assert len(a) == len(b)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


class StopAfter(Callback):
    """Ask fit to stop after `epochs` epochs."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, state):
        if state.epoch >= self.epochs:
            state.should_stop = True


class PowerCut(Exception):
    pass


class CutPowerAt(Callback):
    """Kill the run at the start of epoch `epoch`, as a switched-off machine would: no callback runs after."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, state):
        if state.epoch == self.epoch:
            raise PowerCut(f"power cut at the start of epoch {state.epoch}")
