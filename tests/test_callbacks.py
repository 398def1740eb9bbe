import csv
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from training_setup import (
    CutPowerAt,
    PowerCut,
    StopAfter,
    assert_same_params,
    classification_data,
    make_model,
    params,
    setup,
    sgd,
)

import companion
from companion.callbacks import (
    HOOKS,
    Callback,
    Checkpoint,
    CSVLogger,
    EarlyStopping,
    FitState,
    hook_callers,
    run_order,
)
from companion.checkpoint import load_checkpoint, read_checkpoint
from companion.history import History
from companion.train import fit

# --- the hooks ------------------------------------------------------------------------------------


class Recorder(Callback):
    """Records every hook call with the epoch (and batch) it came at."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, state):
        self.calls.append(("on_fit_start", state.epoch))

    def on_train_epoch_start(self, state):
        self.calls.append(("on_train_epoch_start", state.epoch, state.model.training))

    def on_before_optimizer_step(self, state):
        self.calls.append(("on_before_optimizer_step", state.global_step))

    def on_train_batch_end(self, state, loss, batch_idx):
        self.calls.append(("on_train_batch_end", batch_idx, loss))

    def on_validation_epoch_end(self, state):
        self.calls.append(("on_validation_epoch_end", state.epoch, "val_loss" in state.history.rows[-1]))

    def on_train_epoch_end(self, state):
        self.calls.append(("on_train_epoch_end", state.epoch, len(state.history)))

    def on_fit_end(self, state):
        self.calls.append(("on_fit_end", state.epoch))


def test_fit_calls_the_hooks_in_lightnings_order_with_the_state_so_far():
    model, train, val, loss_fn, opt, _ = setup()
    recorder = Recorder()
    fit(model, train, loss_fn, opt, 2, val_loader=val, callbacks=[recorder], progress=False)
    names = [c[0] for c in recorder.calls]
    per_batch = ["on_before_optimizer_step", "on_train_batch_end"]
    epoch = ["on_train_epoch_start", *per_batch * 4, "on_validation_epoch_end", "on_train_epoch_end"]
    assert names == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    assert recorder.calls[0] == ("on_fit_start", 0)
    assert recorder.calls[1] == ("on_train_epoch_start", 1, True), "the model is in train mode by then"
    steps = [c[1] for c in recorder.calls if c[0] == "on_before_optimizer_step"]
    assert steps == list(range(8)), "global_step counts the steps taken before this one"
    assert [c[1] for c in recorder.calls if c[0] == "on_train_batch_end"] == [0, 1, 2, 3] * 2
    assert ("on_validation_epoch_end", 2, True) in recorder.calls
    assert ("on_train_epoch_end", 2, 2) in recorder.calls and recorder.calls[-1] == ("on_fit_end", 2)


def test_without_a_validation_loader_there_is_no_validation_hook():
    model, train, _, loss_fn, opt, _ = setup()
    recorder = Recorder()
    fit(model, train, loss_fn, opt, 1, callbacks=[recorder], progress=False)
    assert "on_validation_epoch_end" not in [c[0] for c in recorder.calls]


def test_on_train_batch_end_gets_each_batchs_loss():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    recorder = Recorder()
    history = fit(
        model, loader, nn.CrossEntropyLoss(), sgd(model, lr=0.0), 1, callbacks=[recorder], progress=False
    )
    losses = [c[2] for c in recorder.calls if c[0] == "on_train_batch_end"]
    with torch.no_grad():
        expected = [F.cross_entropy(model(xb), yb).item() for xb, yb in loader]
    assert losses == pytest.approx(expected)
    assert history["train_loss"][0] == pytest.approx(sum(v * n for v, n in zip(losses, [8, 8, 8, 6])) / 30)


def test_on_before_optimizer_step_sees_the_gradients_the_step_will_use():
    class ZeroGrads(Callback):  # what the step uses: zero gradients leave plain SGD's weights alone
        def on_before_optimizer_step(self, state):
            assert all(p.grad is not None for p in state.model.parameters())
            for p in state.model.parameters():
                p.grad.zero_()

    model, train, _, loss_fn, _, _ = setup()
    before = params(model)
    fit(model, train, loss_fn, sgd(model), 2, callbacks=[ZeroGrads()], progress=False)
    assert_same_params(params(model), before)


def test_per_batch_hooks_are_called_only_on_callbacks_that_override_them():
    class EpochOnly(Callback):
        def on_train_epoch_end(self, state):
            pass

    class Duck:  # not a Callback subclass: what it has is what it implements
        def on_train_batch_end(self, state, loss, batch_idx):
            pass

    epoch_only, duck = EpochOnly(), Duck()
    assert hook_callers([epoch_only, duck], "on_train_batch_end") == [duck.on_train_batch_end]
    assert hook_callers([epoch_only, duck], "on_train_epoch_end") == [epoch_only.on_train_epoch_end]
    assert all(callable(getattr(Callback(), h)) for h in HOOKS)


def test_a_callback_that_sets_should_stop_ends_training_after_that_epoch():
    model, train, _, loss_fn, opt, sched = setup()
    history = fit(model, train, loss_fn, opt, 6, scheduler=sched, callbacks=[StopAfter(2)], progress=False)
    assert len(history) == 2


def test_every_callback_runs_at_the_epoch_where_one_asks_to_stop():
    recorder = Recorder()
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 6, callbacks=[StopAfter(2), recorder], progress=False)
    assert ("on_train_epoch_end", 2, 2) in recorder.calls, "the callback after the stopping one still ran"


def test_on_epoch_end_of_the_old_api_says_what_it_is_called_now():
    class Old:
        def on_epoch_end(self, epoch, history, state):
            return True

    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(
        TypeError, match=r"on_epoch_end\(\).*rename it on_train_epoch_end\(state\).*should_stop"
    ):
        fit(model, train, loss_fn, opt, 1, callbacks=[Old()], progress=False)


def test_a_misspelt_hook_or_an_object_with_no_hook_is_a_type_error():
    class Typo(Callback):
        def on_train_epoch_ends(self, state):
            pass

    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(TypeError, match=r"on_train_epoch_ends\(\), which is not a hook fit calls"):
        fit(model, train, loss_fn, opt, 1, callbacks=[Typo()], progress=False)
    with pytest.raises(TypeError, match="implements none of the hooks"):
        fit(model, train, loss_fn, opt, 1, callbacks=[object()], progress=False)
    with pytest.raises(TypeError, match=r"pass callbacks=\[\.\.\.\]"):
        fit(model, train, loss_fn, opt, 1, callbacks=EarlyStopping(), progress=False)


def test_checkpoints_run_after_the_other_callbacks_whatever_their_place(tmp_path):
    first, last = Checkpoint(tmp_path / "a.pt"), Checkpoint(tmp_path / "b.pt", monitor="val_loss")
    stopper, logger = EarlyStopping(), CSVLogger(tmp_path / "log.csv")
    assert run_order([first, stopper, last, logger]) == (stopper, logger, first, last)


# --- EarlyStopping ----------------------------------------------------------------------------------


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    model, train, val, loss_fn, opt, _ = setup()
    stopper = EarlyStopping("val_loss", patience=2)
    best = {}

    class Keep(Callback):  # record the weights of each epoch to compare with what EarlyStopping restores
        def on_train_epoch_end(self, state):
            best[state.epoch] = params(state.model)

    for g in opt.param_groups:
        g["lr"] = 3.0  # so large the validation loss gets worse after the first epochs
    history = fit(model, train, loss_fn, opt, 30, val_loader=val, callbacks=[Keep(), stopper], progress=False)
    losses = history["val_loss"]
    best_epoch = losses.index(min(losses)) + 1
    assert stopper.best_epoch == best_epoch and len(history) == best_epoch + 2 == stopper.stopped_epoch
    assert_same_params(params(model), best[best_epoch])


def test_a_reused_early_stopping_starts_afresh_in_the_next_fit():
    model, train, val, loss_fn, opt, _ = setup()
    for g in opt.param_groups:
        g["lr"] = 3.0  # so large the validation loss gets worse after the first epochs
    stopper = EarlyStopping("val_loss", patience=2)
    first = fit(model, train, loss_fn, opt, 40, val_loader=val, callbacks=[stopper], progress=False)
    assert stopper.stopped_epoch == len(first) < 40, "the first run stopped early: its state says stop"

    def worse(output, target):  # the second run's losses are all far above the first run's best
        return F.cross_entropy(output, target) + 100

    model, train, val, _, _, _ = setup(seed=1)
    untrained = params(model)  # lr=0 keeps its weights
    history = fit(
        model, train, worse, sgd(model, lr=0.0), 2, val_loader=val, callbacks=[stopper], progress=False
    )
    assert len(history) == 2, "the first run's patience and best loss do not stop the second"
    assert stopper.best_epoch == 1 and stopper.best == history["val_loss"][0] > 100
    assert_same_params(params(model), untrained), "it ends with its own weights, not the first model's best"


def early_stopping_run(values, **kwargs):
    """Feed EarlyStopping one monitored value per epoch, as fit would; return it and the stopping epoch."""
    stopper = EarlyStopping("val_loss", restore_best_weights=False, **kwargs)
    state = FitState(nn.Linear(1, 1), None, None, len(values), torch.device("cpu"), History())
    stopper.on_fit_start(state)
    for epoch, v in enumerate(values, 1):
        state.epoch = epoch
        state.history.append({"epoch": epoch, "val_loss": v})
        stopper.on_train_epoch_end(state)
        if state.should_stop:
            return stopper, epoch
    return stopper, None


def test_min_delta_counts_only_improvements_larger_than_it():
    stopper, stopped = early_stopping_run([1.0, 0.95, 0.92, 0.85, 0.84, 0.83], patience=2, min_delta=0.1)
    assert (stopper.best, stopper.best_epoch, stopped) == (1.0, 1, 3), "0.95 and 0.92 are within 0.1 of 1.0"
    stopper, stopped = early_stopping_run([1.0, 0.95, 0.92, 0.85, 0.84, 0.83], patience=2)
    assert (stopper.best, stopper.best_epoch, stopped) == (0.83, 6, None)


def test_max_mode_improves_upwards_by_more_than_min_delta_and_non_finite_values_never_improve():
    stopper, stopped = early_stopping_run([0.5, math.nan, 0.6, 0.55], patience=2, mode="max")
    assert (stopper.best, stopper.best_epoch, stopped) == (0.6, 3, None)
    stopper, stopped = early_stopping_run([0.5, 0.55, 0.58, 0.7], patience=2, mode="max", min_delta=0.1)
    assert (stopper.best, stopper.best_epoch, stopped) == (0.5, 1, 3), "0.55 and 0.58 are within 0.1 of 0.5"
    stopper, stopped = early_stopping_run([1.0, math.nan, math.inf], patience=2)
    assert (stopper.best_epoch, stopped) == (1, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patience": 0}, "patience must be a positive int"),
        ({"min_delta": -0.1}, "min_delta must be >= 0"),
        ({"mode": "maximum"}, "mode must be 'min'.*or 'max'.*got 'maximum'"),
    ],
)
def test_early_stopping_rejects_bad_settings_with_what_to_pass(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_early_stopping_on_a_metric_fit_does_not_record_says_what_to_pass():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*pass val_loader to fit"):
        fit(model, train, loss_fn, opt, 1, callbacks=[EarlyStopping("val_loss")], progress=False)


# --- Checkpoint -------------------------------------------------------------------------------------


def test_a_directory_as_checkpoint_path_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"Checkpoint\(path\): .* is a directory.*last.pt"):
        Checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"CSVLogger\(path\): .* is a directory"):
        CSVLogger(tmp_path)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be a positive int"),
        ({"monitor": "val_loss", "every_n_epochs": 2}, "every_n_epochs does not apply"),
        ({"mode": "max"}, "pass monitor=... with it"),
        ({"monitor": "val_loss", "mode": "lowest"}, "mode must be 'min'"),
    ],
)
def test_checkpoint_rejects_settings_that_do_not_fit_together(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Checkpoint(tmp_path / "c.pt", **kwargs)


def test_checkpoint_saves_after_the_last_epoch_even_between_its_every_n_epochs(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    fit(model, train, loss_fn, opt, 5, callbacks=[Checkpoint(path, every_n_epochs=3)], progress=False)
    assert read_checkpoint(path).epoch == 5


def test_checkpoint_saves_the_epoch_where_training_stopped_early(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    saved = []

    class Spy(Callback):
        def on_train_epoch_end(self, state):
            if path.exists():
                saved.append(read_checkpoint(path).epoch)

    history = fit(
        model,
        train,
        loss_fn,
        opt,
        10,
        callbacks=[Checkpoint(path, every_n_epochs=3), StopAfter(5), Spy()],
        progress=False,
    )
    assert len(history) == 5
    checkpoint = read_checkpoint(path)
    assert (checkpoint.epoch, checkpoint.stopped) == (5, True)
    assert saved == [3, 3], "epochs 3 and 5 were saved after the other callbacks had run"


def test_a_monitored_checkpoint_holds_the_best_epoch(tmp_path):
    model, train, val, loss_fn, opt, _ = setup()
    for g in opt.param_groups:
        g["lr"] = 3.0
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    history = fit(
        model,
        train,
        loss_fn,
        opt,
        8,
        val_loader=val,
        callbacks=[Checkpoint(best, monitor="val_loss"), Checkpoint(last)],
        progress=False,
    )
    best_epoch = history.best("val_loss")["epoch"]
    assert best_epoch < 8, "the run must have a best epoch before its last for this test to say anything"
    assert read_checkpoint(best).epoch == best_epoch and read_checkpoint(last).epoch == 8
    fresh = make_model()
    load_checkpoint(best, model=fresh, restore_rng=False)
    assert companion.evaluate(fresh, val, loss_fn)["loss"] == history.best("val_loss")["val_loss"]


def test_a_checkpoint_before_early_stopping_saves_the_state_it_reached_at_that_epoch(tmp_path):
    model, train, val, loss_fn, opt, _ = setup()
    for g in opt.param_groups:
        g["lr"] = 3.0
    path = tmp_path / "c.pt"
    stopper = EarlyStopping(patience=2)
    fit(model, train, loss_fn, opt, 30, val_loader=val, callbacks=[Checkpoint(path), stopper], progress=False)
    (saved,) = read_checkpoint(path)._state["callbacks"]
    assert saved["name"] == "EarlyStopping"
    assert (
        (saved["state"]["wait"], saved["state"]["stopped_epoch"])
        == (stopper.wait, stopper.stopped_epoch)
        == (
            2,
            read_checkpoint(path).epoch,
        )
    )


def test_a_run_killed_mid_training_resumes_from_its_last_checkpoint(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    with pytest.raises(PowerCut):
        fit(model, train, loss_fn, opt, 6, callbacks=[Checkpoint(path), CutPowerAt(4)], progress=False)
    saved = read_checkpoint(path)
    assert (saved.epoch, saved.stopped, len(saved.history)) == (3, False, 3)


# --- CSVLogger ----------------------------------------------------------------------------------------


def test_csv_logger_writes_one_row_per_epoch_also_across_a_resume(tmp_path):
    log, path = tmp_path / "logs" / "metrics.csv", tmp_path / "c.pt"
    model, train, val, loss_fn, opt, _ = setup()
    with pytest.raises(PowerCut):
        fit(
            model,
            train,
            loss_fn,
            opt,
            4,
            val_loader=val,
            callbacks=[CSVLogger(log), Checkpoint(path), CutPowerAt(3)],
            progress=False,
        )
    model, train, val, loss_fn, opt, _ = setup()
    history = fit(
        model,
        train,
        loss_fn,
        opt,
        4,
        val_loader=val,
        callbacks=[CSVLogger(log), Checkpoint(path)],
        progress=False,
        resume_from=path,
    )
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["epoch", *history.metrics]
    assert [float(r["val_loss"]) for r in rows] == history["val_loss"]


class SeesTheError(Callback):
    def __init__(self):
        self.calls = []

    def on_exception(self, state, exception):
        self.calls.append(("on_exception", type(exception).__name__, state.epoch))

    def on_fit_end(self, state):
        self.calls.append(("on_fit_end",))


def test_an_error_in_a_callback_calls_on_exception_of_every_callback_and_not_on_fit_end():
    model, train, _, loss_fn, opt, _ = setup()
    seen = SeesTheError()
    wrong = EarlyStopping(monitor="val_loss")  # no val_loader: raises at the end of epoch 1
    with pytest.raises(ValueError, match="monitors 'val_loss'"):
        fit(model, train, loss_fn, opt, 3, callbacks=[seen, wrong], progress=False)
    assert seen.calls == [("on_exception", "ValueError", 1)]
    assert "on_exception" in HOOKS and not model.training
    fit(model, train, loss_fn, opt, 1, callbacks=[seen], progress=False)
    assert seen.calls[-1] == ("on_fit_end",), "a run that ends well calls on_fit_end"


# --- what the mutation tests asked for (issue 17) ------------------------------------------------------


def one_epoch_state(rows, **kwargs):
    """A FitState at the end of epoch ``len(rows)``, with ``rows`` as its history."""
    model = nn.Linear(2, 1)
    history = History(rows)
    return FitState(
        model, sgd(model), None, len(rows), torch.device("cpu"), history, epoch=len(rows), **kwargs
    )


@pytest.mark.parametrize(
    "callback, who",
    [
        (EarlyStopping("val_loss"), "EarlyStopping"),
        (Checkpoint("unused.pt", monitor="val_loss"), "Checkpoint"),
    ],
)
def test_a_monitor_fit_does_not_record_is_named_with_the_callback_and_the_metrics_it_records(callback, who):
    state = one_epoch_state([{"epoch": 1, "train_loss": 0.5, "lr": 0.1}])
    message = (
        rf"^{who} monitors 'val_loss', which this fit does not record; it records \['train_loss', 'lr'\]: "
        r"pass val_loader to fit, or monitor one of those$"
    )
    with pytest.raises(ValueError, match=message):
        callback.on_train_epoch_end(state)


def test_early_stopping_waits_five_epochs_by_default_and_one_is_the_least_patience():
    stopper, stopped = early_stopping_run([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert (stopper.patience, stopped) == (5, 6)
    stopper, stopped = early_stopping_run([1.0, 2.0, 0.5], patience=1)
    assert (stopper.best_epoch, stopped) == (1, 2)


def test_an_equal_value_is_no_improvement_in_max_mode_either():
    stopper, stopped = early_stopping_run([0.5, 0.5, 0.5], patience=2, mode="max")
    assert (stopper.best_epoch, stopped) == (1, 3)


def test_early_stopping_starts_from_nothing():
    stopper = EarlyStopping()
    state = stopper.state_dict()
    assert math.isnan(state.pop("best"))
    assert state == {"best_epoch": 0, "wait": 0, "stopped_epoch": 0, "best_weights": None}


def test_early_stopping_without_a_finite_value_or_without_restoring_leaves_the_last_weights():
    for restore, values in ((True, [math.nan, math.nan, math.nan]), (False, [1.0, 2.0, 3.0])):
        stopper = EarlyStopping(patience=5, restore_best_weights=restore)
        state = one_epoch_state([])
        stopper.on_fit_start(state)
        for epoch, v in enumerate(values, 1):
            state.epoch = epoch
            state.history.append({"epoch": epoch, "val_loss": v})
            stopper.on_train_epoch_end(state)
        last = params(state.model)
        stopper.on_fit_end(state)
        assert_same_params(params(state.model), last)


def test_checkpoint_settings_that_do_not_fit_together_are_refused_in_full(tmp_path):
    with pytest.raises(ValueError, match=r"a second Checkpoint can save every n epochs\)$"):
        Checkpoint(tmp_path / "c.pt", monitor="val_loss", every_n_epochs=2)
    with pytest.raises(ValueError, match=r"^mode says which way monitor improves: .* or leave mode out$"):
        Checkpoint(tmp_path / "c.pt", mode="max")


def test_a_monitored_checkpoint_follows_the_mode_it_is_given(tmp_path):
    rows = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_loss": 2.0}]
    assert Checkpoint(tmp_path / "c.pt", monitor="val_loss", mode="max").due(one_epoch_state(rows))
    assert not Checkpoint(tmp_path / "c.pt", monitor="val_loss").due(one_epoch_state(rows))


def test_a_checkpoint_saves_the_scaler_and_the_step_count(tmp_path):
    path = tmp_path / "c.pt"
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    state = one_epoch_state([{"epoch": 1, "train_loss": 0.5}], scaler=scaler, global_step=7)
    Checkpoint(path).on_train_epoch_end(state)
    saved = read_checkpoint(path)
    assert saved.global_step == 7 and saved._state["scaler"]["scale"] == 64.0


def test_csv_logger_makes_missing_folders_and_leaves_a_missing_metric_empty(tmp_path):
    log = tmp_path / "runs" / "7" / "metrics.csv"
    state = one_epoch_state(
        [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.3}]
    )
    CSVLogger(log).on_train_epoch_end(state)
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {"epoch": "1", "train_loss": "0.5", "val_loss": ""},
        {"epoch": "2", "train_loss": "0.4", "val_loss": "0.3"},
    ]


def test_checkpoint_and_csv_logger_show_their_settings(tmp_path):
    assert repr(Checkpoint("runs/best.pt", monitor="val_accuracy")) == (
        "Checkpoint('runs/best.pt', monitor='val_accuracy', mode='max')"
    )
    assert (
        repr(Checkpoint("runs/last.pt", every_n_epochs=2)) == "Checkpoint('runs/last.pt', every_n_epochs=2)"
    )
    assert repr(CSVLogger("runs/log.csv")) == "CSVLogger('runs/log.csv')"
