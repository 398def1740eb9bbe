import math
import os
import random
import re

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion import callbacks as cbs
from companion.callbacks import Checkpoint, EarlyStopping, load_checkpoint, save_checkpoint
from companion.train import History, NonFiniteLossError, check_output_fits, evaluate, fit

matplotlib.use("Agg")


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


# --- fit is the hand-written loop ---------------------------------------------------------------


def train_one_epoch_by_hand(model, train, loss_fn, opt, sched):
    model.train()
    for x, y in train:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_fit_gives_the_same_weights_as_the_hand_written_loop_bit_for_bit():
    model, train, val, loss_fn, opt, sched = setup(epochs=3)
    for _ in range(3):
        train_one_epoch_by_hand(model, train, loss_fn, opt, sched)
        model.eval()
        with torch.inference_mode():
            for x, y in val:  # iterating a DataLoader draws its base seed from the global generator
                loss_fn(model(x), y)
    expected = params(model)

    model, train, val, loss_fn, opt, sched = setup(epochs=3)
    history = fit(model, train, loss_fn, opt, 3, val_loader=val, scheduler=sched, progress=False)
    assert_same_params(params(model), expected)
    assert len(history) == 3 and history["epoch"] == [1, 2, 3]


def test_history_records_train_and_val_metrics_and_learning_rate_per_epoch():
    model, train, val, loss_fn, opt, sched = setup(epochs=4)
    history = fit(model, train, loss_fn, opt, 4, val_loader=val, scheduler=sched, progress=False)
    assert history.metrics == ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert history["lr"][-1] == pytest.approx(sched.get_last_lr()[0])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert all(0 <= a <= 1 for a in history["val_accuracy"])
    assert history.best("val_loss")["val_loss"] == min(history["val_loss"])
    assert history.best("val_accuracy")["val_accuracy"] == max(history["val_accuracy"])
    assert not model.training, "fit returns the model in eval mode, ready to predict"


def test_train_loss_is_the_sample_weighted_mean_of_the_epoch():
    # lr=0: the weights never change, so the epoch's training loss is the loss of the whole set at once
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # batches of 8, 8, 8, 6
    history = fit(
        model, loader, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0), 1, progress=False
    )
    with torch.no_grad():
        whole = nn.functional.cross_entropy(model(X), y).item()
        batch_means = [nn.functional.cross_entropy(model(xb), yb).item() for xb, yb in loader]
    assert history["train_loss"][0] == pytest.approx(whole, rel=1e-6)
    assert abs(sum(batch_means) / len(batch_means) - whole) > 1e-4, (
        "the unweighted mean of batch means is not it"
    )


def test_summed_loss_is_divided_by_the_number_of_samples():
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    mean = evaluate(model, loader, nn.CrossEntropyLoss())["loss"]
    summed = evaluate(model, loader, nn.CrossEntropyLoss(reduction="sum"))["loss"]
    assert summed == pytest.approx(mean, rel=1e-6)


# --- evaluate ------------------------------------------------------------------------------------


class Spy(nn.Module):
    """Records the mode and the grad mode each forward ran in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        return self.linear(x)


def test_evaluate_runs_in_eval_mode_under_inference_mode_and_restores_the_mode():
    model = Spy().train()
    _, val = loaders()
    metrics = evaluate(model, val, nn.CrossEntropyLoss())
    assert set(model.seen) == {(False, True)}
    assert model.training, "evaluate puts the model back in the mode it found it in"
    assert set(metrics) == {"loss", "accuracy"}


def test_validation_in_fit_runs_in_eval_mode_and_training_in_train_mode():
    companion.seed_everything(0)
    model = Spy()
    train, val = loaders()
    fit(
        model,
        train,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        1,
        val_loader=val,
        progress=False,
    )
    assert model.seen[: len(train)] == [(True, False)] * len(train)
    assert model.seen[len(train) :] == [(False, True)] * len(val)


def test_evaluate_is_deterministic_with_dropout_and_counts_accuracy():
    companion.seed_everything(0)
    model = make_model(dropout=0.5)
    _, val = loaders()
    a, b = evaluate(model, val, nn.CrossEntropyLoss()), evaluate(model, val, nn.CrossEntropyLoss())
    assert a == b
    X, y = next(iter(DataLoader(val.dataset, batch_size=100)))
    with torch.no_grad():
        expected = (model.eval()(X).argmax(1) == y).float().mean().item()
    assert a["accuracy"] == pytest.approx(expected)


def test_regression_metrics_have_no_accuracy():
    from companion.datasets import make_linear_regression

    X, y, _ = make_linear_regression(20, 3)
    metrics = evaluate(nn.Linear(3, 1), DataLoader(TensorDataset(X, y), batch_size=6), nn.MSELoss())
    assert set(metrics) == {"loss"}


# --- errors that say what to pass ---------------------------------------------------------------


def test_non_finite_loss_stops_naming_epoch_and_step_before_the_step_changes_the_weights():
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders(batch_size=8)  # 4 steps per epoch
    calls, snapshot = [], {}

    def loss_fn(output, target):
        calls.append(1)
        loss = nn.functional.cross_entropy(output, target)
        if len(calls) == 7:  # epoch 2, step 3
            snapshot["params"] = params(model)
            return loss * math.inf
        return loss

    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 2, step 3 of 4") as info:
        fit(model, train, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), 5, progress=False)
    assert isinstance(info.value, FloatingPointError) and (info.value.epoch, info.value.step) == (2, 3)
    assert_same_params(params(model), snapshot["params"])
    assert "Lower the learning rate" in str(info.value)


def test_on_an_accelerator_the_check_runs_at_the_epoch_end_and_names_the_first_bad_step(monkeypatch):
    import companion.train as train_module

    monkeypatch.setattr(
        train_module, "_checks_each_step", lambda device: False
    )  # as on a GPU: no sync per step
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders(batch_size=8)
    calls = []

    def loss_fn(output, target):
        calls.append(1)
        loss = nn.functional.cross_entropy(output, target)
        return loss * math.nan if len(calls) == 6 else loss  # epoch 2, step 2

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2 of 4"):
        fit(model, train, loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), 5, progress=False)
    assert len(calls) == 8, "the epoch ran to its end before the check"


def test_a_diverging_learning_rate_raises_instead_of_training_on_nans():
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders()
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at epoch \d+, step \d+"):
        fit(
            model,
            train,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=1e30),
            20,
            progress=False,
        )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_empty_loader_is_rejected_with_what_to_pass():
    model = make_model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="train_loader is empty.*at least one sample"):
        fit(
            model,
            empty,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            1,
            progress=False,
        )
    short = DataLoader(
        TensorDataset(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long)), batch_size=4, drop_last=True
    )
    with pytest.raises(ValueError, match=r"drop_last=True, at least batch_size"):
        evaluate(model, short, nn.CrossEntropyLoss())


def test_output_n_by_1_against_targets_n_raises_naming_both_shapes():
    from companion.datasets import make_linear_regression

    X, y, _ = make_linear_regression(32, 3)
    loader = DataLoader(TensorDataset(X, y.squeeze(1)), batch_size=8)  # targets (8,), output (8, 1)
    model = nn.Linear(3, 1)
    with pytest.raises(
        ValueError, match=re.escape("prediction of shape (8, 1) and target of shape (8,) differ")
    ) as info:
        fit(model, loader, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), 1, progress=False)
    assert "broadcast them to (8, 8)" in str(info.value) and "squeeze" in str(info.value)


def test_logits_with_too_few_classes_raise_naming_the_largest_label():
    X, y = classification_data()  # labels 0, 1, 2
    loader = DataLoader(TensorDataset(X, y), batch_size=40)
    with pytest.raises(ValueError, match=r"outputs 2 class scores.*label 2.*nn.Linear\(\.\.\., 3\)"):
        evaluate(make_model(classes=2), loader, nn.CrossEntropyLoss())


@pytest.mark.parametrize(
    "out, tgt, fix",
    [
        ((4, 1), (4,), "pred.squeeze(-1)"),
        ((4,), (4, 1), "target.squeeze(-1)"),
        ((2, 4), (2, 2, 2), "view_as"),
        ((4, 3), (4,), "one value per target, shape (4,)"),
    ],
)
def test_float_targets_of_another_shape_get_the_fix_that_fits(out, tgt, fix):
    with pytest.raises(ValueError, match=re.escape(fix)):
        check_output_fits(torch.zeros(out), torch.zeros(tgt))


def test_class_labels_of_shape_n_by_1_suggest_squeeze():
    X, y = classification_data()
    with pytest.raises(ValueError, match=r"targets.squeeze\(1\)"):
        check_output_fits(torch.zeros(40, 3), y.unsqueeze(1))


def test_integer_targets_against_one_output_per_sample_explain_class_scores():
    with pytest.raises(ValueError, match=r"one score per class, shape \(4, C\)"):
        check_output_fits(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_batch_sizes_that_differ_are_rejected():
    with pytest.raises(ValueError, match=r"4 outputs for 5 targets"):
        check_output_fits(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))


def test_matching_shapes_and_non_tensors_pass():
    check_output_fits(torch.zeros(4, 1), torch.zeros(4, 1))
    check_output_fits(
        torch.zeros(4, 3), torch.tensor([0, 2, -100, 1])
    )  # -100: CrossEntropyLoss's ignore_index
    check_output_fits(torch.zeros(2, 3, 5), torch.zeros(2, 5, dtype=torch.long))  # per-position classes
    check_output_fits({"logits": torch.zeros(2, 3)}, torch.zeros(2))


@pytest.mark.parametrize("epochs", [0, -3])
def test_non_positive_epochs_are_rejected_with_what_to_pass(epochs):
    model = make_model()
    train, _ = loaders()
    with pytest.raises(ValueError, match=rf"epochs must be at least 1, got {epochs}; .*epochs=10"):
        fit(
            model,
            train,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs,
            progress=False,
        )


@pytest.mark.parametrize("epochs", [2.0, "3", True, None])
def test_epochs_that_are_not_an_int_are_a_type_error(epochs):
    model = make_model()
    train, _ = loaders()
    with pytest.raises(TypeError, match=r"epochs must be an int.*pass e.g. epochs=10"):
        fit(
            model,
            train,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            epochs,
            progress=False,
        )


def test_batches_that_are_not_pairs_are_a_type_error():
    model = make_model()
    X, y = classification_data()
    loader = DataLoader(TensorDataset(X, y, y), batch_size=8)
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\), got a list of 3"):
        fit(
            model,
            loader,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            1,
            progress=False,
        )


def test_loss_that_is_not_reduced_to_a_scalar_is_rejected():
    model = make_model()
    train, _ = loaders()
    with pytest.raises(ValueError, match=r"scalar tensor, got \(8,\).*reduction='mean'"):
        fit(
            model,
            train,
            nn.CrossEntropyLoss(reduction="none"),
            torch.optim.SGD(model.parameters(), lr=0.1),
            1,
            progress=False,
        )


# --- schedulers ----------------------------------------------------------------------------------


def test_a_scheduler_of_unknown_interval_must_be_told_when_to_step():
    model, train, _, loss_fn, _, _ = setup()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with pytest.raises(
        ValueError, match=r"say when to step a StepLR: pass scheduler_interval='step'.*'epoch'"
    ):
        fit(model, train, loss_fn, opt, 2, scheduler=step_lr, progress=False)
    history = fit(
        model, train, loss_fn, opt, 2, scheduler=step_lr, scheduler_interval="epoch", progress=False
    )
    assert history["lr"] == [pytest.approx(0.05), pytest.approx(0.025)]  # recorded before the epoch's step
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_one_cycle_is_stepped_after_every_batch():
    model, train, _, loss_fn, opt, sched = setup(epochs=3)
    fit(model, train, loss_fn, opt, 3, scheduler=sched, progress=False)
    assert sched.last_epoch == 3 * len(train)


def test_reduce_lr_on_plateau_is_stepped_with_the_validation_loss():
    model, train, val, loss_fn, opt, _ = setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    history = fit(model, train, loss_fn, opt, 3, val_loader=val, scheduler=plateau, progress=False)
    assert plateau.best == min(history["val_loss"])


# --- callbacks ------------------------------------------------------------------------------------


class StopAfter:
    """A callback in two lines: ask fit to stop after `epochs` epochs."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, epoch, history, state):
        return epoch >= self.epochs


def test_a_callback_returning_true_stops_training_after_that_epoch():
    model, train, _, loss_fn, opt, sched = setup()
    history = fit(model, train, loss_fn, opt, 6, scheduler=sched, callbacks=[StopAfter(2)], progress=False)
    assert len(history) == 2


def test_a_callback_without_on_epoch_end_is_a_type_error():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(TypeError, match="no on_epoch_end"):
        fit(model, train, loss_fn, opt, 1, callbacks=[object()], progress=False)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model, train, val, loss_fn, opt, _ = setup()
    stopper = EarlyStopping("val_loss", patience=2)
    best = {}

    class Keep:  # record the weights of each epoch to compare with what EarlyStopping restores
        def on_epoch_end(self, epoch, history, state):
            best[epoch] = params(state.model)

    # lr so large the validation loss gets worse after the first epochs
    for g in opt.param_groups:
        g["lr"] = 3.0
    history = fit(model, train, loss_fn, opt, 30, val_loader=val, callbacks=[Keep(), stopper], progress=False)
    losses = history["val_loss"]
    best_epoch = losses.index(min(losses)) + 1
    assert stopper.best_epoch == best_epoch and len(history) == best_epoch + 2 == stopper.stopped_epoch
    assert_same_params(params(model), best[best_epoch])


def test_early_stopping_on_a_metric_fit_does_not_record_says_what_to_pass():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*pass val_loader to fit"):
        fit(model, train, loss_fn, opt, 1, callbacks=[EarlyStopping("val_loss")], progress=False)


def test_checkpoint_before_a_stateful_callback_is_rejected(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match="put Checkpoint last"):
        fit(
            model,
            train,
            loss_fn,
            opt,
            1,
            callbacks=[Checkpoint(tmp_path / "c.pt"), EarlyStopping()],
            progress=False,
        )


# --- checkpoints and resuming ----------------------------------------------------------------------


@pytest.mark.parametrize("generator", [True, False], ids=["loader-generator", "global-rng-shuffle"])
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, generator):
    epochs = 6
    model, train, val, loss_fn, opt, sched = setup(epochs, generator)
    stopper = EarlyStopping(patience=50)
    fit(
        model,
        train,
        loss_fn,
        opt,
        epochs,
        val_loader=val,
        scheduler=sched,
        callbacks=[stopper],
        progress=False,
    )
    uninterrupted = params(model)

    path = tmp_path / "run" / "last.pt"
    model, train, val, loss_fn, opt, sched = setup(epochs, generator)
    first = fit(
        model,
        train,
        loss_fn,
        opt,
        epochs,
        val_loader=val,
        scheduler=sched,
        callbacks=[EarlyStopping(patience=50), Checkpoint(path), StopAfter(2)],
        progress=False,
    )
    assert len(first) == 2 and path.is_file()
    # something else draws random numbers in between (a new process would start from other states)
    random.random(), np.random.rand(), torch.rand(5), next(iter(train))

    model, train, val, loss_fn, opt, sched = setup(epochs, generator, seed=123)  # other initial weights
    resumed_stopper = EarlyStopping(patience=50)
    history = fit(
        model,
        train,
        loss_fn,
        opt,
        epochs,
        val_loader=val,
        scheduler=sched,
        callbacks=[resumed_stopper, Checkpoint(path)],
        progress=False,
        resume_from=path,
    )
    assert_same_params(params(model), uninterrupted)
    assert (resumed_stopper.best, resumed_stopper.best_epoch) == (stopper.best, stopper.best_epoch)
    assert history["epoch"] == list(range(1, epochs + 1))
    assert history["val_loss"][:2] == first["val_loss"]


def test_without_restoring_the_random_generators_the_resumed_run_differs(tmp_path):
    """The reason the checkpoint stores RNG states: the shuffle and the dropout masks depend on them."""
    epochs = 4
    model, train, val, loss_fn, opt, sched = setup(epochs)
    fit(model, train, loss_fn, opt, epochs, scheduler=sched, progress=False)
    uninterrupted = params(model)

    path = tmp_path / "last.pt"
    model, train, val, loss_fn, opt, sched = setup(epochs)
    fit(
        model,
        train,
        loss_fn,
        opt,
        epochs,
        scheduler=sched,
        callbacks=[Checkpoint(path), StopAfter(2)],
        progress=False,
    )
    torch.rand(5), next(iter(train))
    model, train, val, loss_fn, opt, sched = setup(epochs, seed=5)
    start, history = load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, restore_rng=False)
    assert start == 2 and len(history) == 2
    for _ in range(start, epochs):
        train_one_epoch_by_hand(model, train, loss_fn, opt, sched)
    assert not all(torch.equal(p, q) for p, q in zip(params(model), uninterrupted))


def test_checkpoint_holds_every_generator_and_loads_with_weights_only(tmp_path):
    model, train, _, _, opt, sched = setup()
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, epoch=3, train_loader=train
    )
    state = torch.load(path, weights_only=True)
    assert set(state["rng"]) == {"torch", "cuda", "python", "numpy", "loader"}
    assert len(state["rng"]["loader"]) == 1 and state["epoch"] == 3


def test_checkpoint_is_written_atomically_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    model, train, _, _, opt, _ = setup()
    path = tmp_path / "c.pt"
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(
        cbs.os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst))
    )
    save_checkpoint(path, model=model, optimizer=opt, epoch=1)
    ((src, dst),) = replaced
    assert os.path.dirname(src) == str(tmp_path) and dst == path, "the temporary file is in the same folder"
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # interrupted while writing

    monkeypatch.setattr(cbs.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=opt, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"], "no temporary file is left behind"


def test_resuming_with_other_callbacks_or_another_loader_says_what_to_pass(tmp_path):
    model, train, val, loss_fn, opt, sched = setup()
    path = tmp_path / "c.pt"
    fit(
        model,
        train,
        loss_fn,
        opt,
        2,
        val_loader=val,
        callbacks=[EarlyStopping(), Checkpoint(path)],
        progress=False,
    )
    with pytest.raises(ValueError, match="resume with the same callbacks"):
        fit(
            model,
            train,
            loss_fn,
            opt,
            3,
            val_loader=val,
            callbacks=[Checkpoint(path)],
            progress=False,
            resume_from=path,
        )
    unseeded, _ = loaders(generator=False)
    other = make_model()
    before = params(other)
    with pytest.raises(ValueError, match=r"1 DataLoader generator state\(s\) but train_loader has 0"):
        fit(
            other,
            unseeded,
            loss_fn,
            torch.optim.SGD(other.parameters(), lr=0.1),
            3,
            val_loader=val,
            callbacks=[EarlyStopping(), Checkpoint(path)],
            progress=False,
            resume_from=path,
        )
    assert_same_params(params(other), before)  # a refused resume changes nothing
    fresh = make_model()
    epoch, history = load_checkpoint(
        path, model=fresh, restore_rng=False
    )  # weights only: no callbacks needed
    assert epoch == 2 and len(history) == 2
    assert_same_params(params(fresh), params(model))


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    fit(model, train, loss_fn, opt, 2, callbacks=[Checkpoint(path)], progress=False)
    before = params(model)
    history = fit(
        model, train, loss_fn, opt, 2, callbacks=[Checkpoint(path)], progress=False, resume_from=path
    )
    assert len(history) == 2
    assert_same_params(params(model), before)


def test_load_checkpoint_of_a_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*Checkpoint\\(path\\)"):
        load_checkpoint(tmp_path / "nope.pt", model=make_model())


# --- History and the progress bar ------------------------------------------------------------------


def test_history_plot_returns_a_figure_with_labelled_loss_and_accuracy_panels():
    h = History(
        [
            {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_accuracy": 0.5},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8},
        ]
    )
    fig = h.plot()
    loss_ax, acc_ax = fig.axes
    assert (
        loss_ax.get_xlabel() == "epoch"
        and loss_ax.get_ylabel() == "loss (log scale)"
        and acc_ax.get_ylabel() == "accuracy"
    )
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss", "val loss"]
    assert list(acc_ax.lines[0].get_ydata()) == [0.5, 0.8]
    matplotlib.pyplot.close(fig)


def test_history_of_an_unknown_metric_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no metric 'val_acc'.*\['train_loss'\]"):
        History([{"epoch": 1, "train_loss": 1.0}])["val_acc"]


def test_progress_bar_goes_to_stderr_and_only_when_asked(capsys):
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 2, progress=False)
    assert capsys.readouterr() == ("", "")
    fit(model, train, loss_fn, opt, 2, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "epoch 2/2" in err and "8/8" in err


def test_top_level_exports_fit_evaluate_and_history():
    assert companion.fit is fit and companion.evaluate is evaluate and companion.History is History
