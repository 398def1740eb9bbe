"""Weight averaging callbacks (chapter 8): EMA and SWA against hand computations, batch norm, resumes."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from training_setup import CutPowerAt, PowerCut, assert_same_params, params, setup, sgd

import companion
from companion.callbacks import (
    Callback,
    Checkpoint,
    EMAWeightAveraging,
    StochasticWeightAveraging,
)
from companion.train import fit


class RecordWeights(Callback):
    """The model's weights after every optimizer step and at the end of every epoch."""

    def __init__(self):
        self.steps, self.epochs = [], []

    def on_train_batch_end(self, state, loss, batch_idx):
        self.steps.append(params(state.model))

    def on_train_epoch_end(self, state):
        self.epochs.append(params(state.model))


def small_run(callback, epochs=3, seed=0):
    model, train, val, loss_fn, opt, _ = setup(seed=seed)
    recorder = RecordWeights()
    fit(model, train, loss_fn, opt, epochs, callbacks=[recorder, callback], progress=False)
    return model, recorder


def test_ema_equals_the_hand_computed_recursion_over_every_step():
    decay = 0.9
    ema = EMAWeightAveraging(decay)
    _, recorder = small_run(ema)
    expected = [w.double() for w in recorder.steps[0]]  # a_1 = w_1
    for weights in recorder.steps[1:]:
        expected = [decay * a + (1 - decay) * w.double() for a, w in zip(expected, weights)]
    got = list(ema.averaged_model.parameters())
    assert ema.n_averaged == len(recorder.steps) == 12  # 3 epochs of 4 batches
    for a, e in zip(got, expected):
        torch.testing.assert_close(a.double(), e, rtol=1e-5, atol=1e-6)
    # and it is no copy of the last weights: the average lags behind them
    assert not all(torch.allclose(a, w) for a, w in zip(got, recorder.steps[-1]))


def test_ema_moves_once_per_optimizer_step_under_gradient_accumulation():
    model, train, _, loss_fn, opt, _ = setup()
    ema = EMAWeightAveraging(0.5)
    fit(model, train, loss_fn, opt, 2, callbacks=[ema], accumulate_grad_batches=2, progress=False)
    assert ema.n_averaged == 4  # 2 epochs of 4 batches, a step every 2


def test_swa_equals_the_mean_of_the_weights_at_the_end_of_each_epoch_from_the_start_epoch():
    swa = StochasticWeightAveraging(swa_epoch_start=3)
    _, recorder = small_run(swa, epochs=6)
    averaged = recorder.epochs[2:]  # epochs 3, 4, 5, 6
    expected = [torch.stack([w[i] for w in averaged]).mean(0) for i in range(len(averaged[0]))]
    assert swa.n_averaged == 4
    for a, e in zip(swa.averaged_model.parameters(), expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_the_model_keeps_its_own_weights_and_the_average_is_a_separate_network():
    swa = StochasticWeightAveraging(swa_epoch_start=2)
    model, recorder = small_run(swa, epochs=4)
    assert_same_params(params(model), recorder.epochs[-1])
    assert swa.averaged_model is not model and not swa.averaged_model.training


def bn_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(24, 3, generator=g) * 2 + 1
    y = torch.randint(0, 2, (24,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # no shuffle: the hand pass sees the same batches
    return model, loader, X


def test_update_bn_recomputes_the_running_statistics_for_the_averaged_weights():
    model, loader, X = bn_problem()
    swa = StochasticWeightAveraging(swa_epoch_start=2)
    fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 3, callbacks=[swa], progress=False)
    averaged = swa.averaged_model
    # by hand: the equal-weight mean over batches of each batch's mean and unbiased variance
    with torch.no_grad():
        hidden = [averaged[0](xb) for xb in X.split(8)]
    mean = torch.stack([h.mean(0) for h in hidden]).mean(0)
    var = torch.stack([h.var(0, unbiased=True) for h in hidden]).mean(0)
    bn = averaged[1]
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    # the statistics the model itself ran up belong to its own weights: not those
    assert not torch.allclose(model[1].running_mean, bn.running_mean)


def test_without_update_bn_the_averaged_network_holds_the_models_own_last_statistics():
    model, loader, _ = bn_problem()
    swa = StochasticWeightAveraging(swa_epoch_start=2, update_bn=False)
    fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 3, callbacks=[swa], progress=False)
    assert torch.equal(swa.averaged_model[1].running_mean, model[1].running_mean)
    assert torch.equal(swa.averaged_model[1].running_var, model[1].running_var)


def test_use_buffers_averages_the_running_statistics_like_the_weights():
    model, loader, _ = bn_problem()
    stats = []

    class RecordStats(Callback):
        def on_train_epoch_end(self, state):
            stats.append(state.model[1].running_mean.clone())

    swa = StochasticWeightAveraging(swa_epoch_start=2, use_buffers=True)
    fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 3, callbacks=[RecordStats(), swa], progress=False)
    torch.testing.assert_close(swa.averaged_model[1].running_mean, torch.stack(stats[1:]).mean(0))


def test_update_bn_uses_bn_loader_when_given():
    model, loader, X = bn_problem()
    other = DataLoader(TensorDataset(X * 3, torch.zeros(24, dtype=torch.long)), batch_size=24)
    swa = StochasticWeightAveraging(swa_epoch_start=1, bn_loader=other)
    fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 2, callbacks=[swa], progress=False)
    with torch.no_grad():
        expected = swa.averaged_model[0](X * 3).mean(0)
    torch.testing.assert_close(swa.averaged_model[1].running_mean, expected)


def test_the_averaged_model_validates_with_evaluate():
    model, train, val, loss_fn, opt, _ = setup()
    ema = EMAWeightAveraging(0.9)
    fit(model, train, loss_fn, opt, 3, callbacks=[ema], progress=False)
    metrics = companion.evaluate(ema.averaged_model, val, loss_fn)
    assert set(metrics) == {"loss", "accuracy"} and 0 <= metrics["accuracy"] <= 1


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: EMAWeightAveraging(0.0), ValueError, "strictly between 0 and 1"),
        (lambda: EMAWeightAveraging(1.0), ValueError, "strictly between 0 and 1"),
        (lambda: EMAWeightAveraging(1.5), ValueError, "pass e.g. decay=0.99"),
        (lambda: EMAWeightAveraging(float("nan")), ValueError, "strictly between 0 and 1"),
        (lambda: EMAWeightAveraging(True), TypeError, "decay must be a number"),
        (lambda: EMAWeightAveraging("0.9"), TypeError, "decay must be a number"),
        (lambda: StochasticWeightAveraging(0), ValueError, "positive int"),
        (lambda: StochasticWeightAveraging(-2), ValueError, "positive int"),
        (lambda: StochasticWeightAveraging(True), TypeError, "must be an int"),
        (lambda: StochasticWeightAveraging(2.0), TypeError, "must be an int"),
        (lambda: StochasticWeightAveraging(2, update_bn=1), TypeError, "update_bn must be True or False"),
        (lambda: EMAWeightAveraging(0.9, use_buffers=None), TypeError, "use_buffers must be True or False"),
        (lambda: EMAWeightAveraging(0.9, bn_loader=3), TypeError, "bn_loader must be a DataLoader"),
    ],
)
def test_bad_arguments_are_refused_with_what_to_pass(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_a_start_epoch_after_the_last_epoch_is_refused_before_training():
    model, train, _, loss_fn, opt, _ = setup()
    before = params(model)
    with pytest.raises(ValueError, match="swa_epoch_start=5 comes after the last epoch .epochs=3."):
        fit(model, train, loss_fn, opt, 3, callbacks=[StochasticWeightAveraging(5)], progress=False)
    assert_same_params(params(model), before)


def test_the_averaged_model_before_any_update_says_how_to_get_one():
    with pytest.raises(ValueError, match="before fit starts"):
        EMAWeightAveraging(0.9).update(None)
    with pytest.raises(ValueError, match="averaged no weights yet.*the end of epoch 4"):
        _ = StochasticWeightAveraging(4).averaged_model


@pytest.mark.parametrize(
    "make",
    [lambda: EMAWeightAveraging(0.8), lambda: StochasticWeightAveraging(swa_epoch_start=2)],
    ids=["ema", "swa"],
)
def test_a_resumed_run_ends_with_the_same_average_as_an_uninterrupted_one_bit_for_bit(tmp_path, make):
    model, train, val, loss_fn, opt, sched = setup(epochs=5)
    straight = make()
    fit(model, train, loss_fn, opt, 5, val_loader=val, scheduler=sched, callbacks=[straight], progress=False)
    path = tmp_path / "c.pt"
    model, train, val, loss_fn, opt, sched = setup(epochs=5)
    with pytest.raises(PowerCut):
        fit(
            model,
            train,
            loss_fn,
            opt,
            5,
            val_loader=val,
            scheduler=sched,
            callbacks=[make(), Checkpoint(path), CutPowerAt(4)],
            progress=False,
        )
    model, train, val, loss_fn, opt, sched = setup(epochs=5)
    resumed = make()
    fit(
        model,
        train,
        loss_fn,
        opt,
        5,
        val_loader=val,
        scheduler=sched,
        callbacks=[resumed, Checkpoint(path)],
        progress=False,
        resume_from=path,
    )
    assert resumed.n_averaged == straight.n_averaged > 0
    assert_same_params(params(resumed.averaged_model), params(straight.averaged_model))
    assert all(
        torch.equal(a, b) for a, b in zip(resumed.averaged_model.buffers(), straight.averaged_model.buffers())
    )
