import functools
import math
import pickle
import random
import re
import sys
import time
import warnings

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset
from training_setup import (
    CutPowerAt,
    PowerCut,
    assert_same_params,
    classification_data,
    loaders,
    make_model,
    params,
    setup,
    sgd,
)

import companion
import companion.train as train_module
from companion.callbacks import Callback, Checkpoint, EarlyStopping
from companion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from companion.history import History
from companion.strategy import SingleDeviceStrategy
from companion.train import NonFiniteLossError, check_output_fits, evaluate, fit

matplotlib.use("Agg")

# --- fit is the hand-written loop ---------------------------------------------------------------


def train_one_epoch_by_hand(model, train, loss_fn, opt, sched=None, clip=None):
    model.train()
    for x, y in train:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
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
    assert not model.training, "fit returns the model in eval mode, ready to predict"


def test_train_loss_is_the_sample_weighted_mean_of_the_epoch():
    # lr=0: the weights never change, so the epoch's training loss is the loss of the whole set at once
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # batches of 8, 8, 8, 6
    history = fit(model, loader, nn.CrossEntropyLoss(), sgd(model, lr=0.0), 1, progress=False)
    with torch.no_grad():
        whole = F.cross_entropy(model(X), y).item()
        batch_means = [F.cross_entropy(model(xb), yb).item() for xb, yb in loader]
    assert history["train_loss"][0] == pytest.approx(whole, rel=1e-6)
    assert abs(sum(batch_means) / len(batch_means) - whole) > 1e-4, (
        "the unweighted mean of batch means is not it"
    )


def test_train_accuracy_is_counted_over_samples_not_averaged_over_batches():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # batches of 8, 8, 8, 6
    history = fit(model, loader, nn.CrossEntropyLoss(), sgd(model, lr=0.0), 1, progress=False)
    with torch.no_grad():
        right = model(X).argmax(1) == y
    per_batch = [right[i : i + 8].float().mean().item() for i in range(0, 30, 8)]
    assert history["train_accuracy"][0] == pytest.approx(right.float().mean().item())
    assert abs(sum(per_batch) / len(per_batch) - right.float().mean().item()) > 1e-3, "the batches differ"


@pytest.mark.parametrize(
    "loss_fn",
    [nn.CrossEntropyLoss(reduction="sum"), functools.partial(F.cross_entropy, reduction="sum")],
    ids=["module", "partial"],
)
def test_a_summed_loss_is_divided_by_the_number_of_samples(loss_fn):
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    mean = evaluate(model, loader, nn.CrossEntropyLoss())["loss"]
    assert evaluate(model, loader, loss_fn)["loss"] == pytest.approx(mean, rel=1e-6)
    history = fit(model, loader, loss_fn, sgd(model, lr=0.0), 1, progress=False)
    assert history["train_loss"][0] == pytest.approx(mean, rel=1e-6)


# --- train and eval modes ------------------------------------------------------------------------


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
    assert model.training, "evaluate puts the model back in train mode, as it found it"
    assert set(metrics) == {"loss", "accuracy"}
    model.eval()
    evaluate(model, val, nn.CrossEntropyLoss())
    assert not model.training, "and back in eval mode, as it found it"


def test_validation_in_fit_runs_in_eval_mode_and_training_in_train_mode():
    companion.seed_everything(0)
    model = Spy()
    train, val = loaders()
    fit(model, train, nn.CrossEntropyLoss(), sgd(model), 1, val_loader=val, progress=False)
    assert model.seen[: len(train)] == [(True, False)] * len(train)
    assert model.seen[len(train) :] == [(False, True)] * len(val)


def test_every_epoch_trains_in_train_mode_even_if_something_left_the_model_in_eval_mode():
    class EvalAtEpochEnd(Callback):  # e.g. a callback that measures something
        def on_train_epoch_end(self, state):
            state.model.eval()

    companion.seed_everything(0)
    model = Spy().eval()
    train, _ = loaders()
    fit(model, train, nn.CrossEntropyLoss(), sgd(model), 3, callbacks=[EvalAtEpochEnd()], progress=False)
    assert model.seen == [(True, False)] * 3 * len(train)


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


# --- fit's options -------------------------------------------------------------------------------


def test_gradient_clipping_is_the_hand_loop_with_clip_grad_norm_bit_for_bit():
    model, train, _, loss_fn, opt, _ = setup()
    opt = sgd(model, lr=0.5)
    for _ in range(2):
        train_one_epoch_by_hand(model, train, loss_fn, opt, clip=0.05)
    expected = params(model)
    model, train, _, loss_fn, _, _ = setup()
    fit(model, train, loss_fn, sgd(model, lr=0.5), 2, gradient_clip_val=0.05, progress=False)
    assert_same_params(params(model), expected)
    model, train, _, loss_fn, _, _ = setup()
    fit(model, train, loss_fn, sgd(model, lr=0.5), 2, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(params(model), expected)), "clipping did something"


class GradNorms(Callback):
    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, state):
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


def test_accumulating_k_batches_is_one_step_on_a_k_times_larger_batch():
    X, y = classification_data(64)

    def run(batch_size, k, loss_fn=None, lr=0.5):
        companion.seed_everything(0)
        model = make_model(dropout=0.0)
        loader = DataLoader(TensorDataset(X, y), batch_size=batch_size)  # no shuffle: the same batches
        norms = GradNorms()
        fit(
            model,
            loader,
            loss_fn or nn.CrossEntropyLoss(),
            sgd(model, lr=lr),
            3,
            accumulate_grad_batches=k,
            callbacks=[norms],
            progress=False,
        )
        return params(model), norms.norms

    large, large_norms = run(32, 1)
    accumulated, accumulated_norms = run(8, 4)
    small, _ = run(8, 1)
    assert len(accumulated_norms) == len(large_norms) == 3 * 2, "one optimizer step per 4 batches"
    assert accumulated_norms == pytest.approx(large_norms, rel=1e-5)
    for p, q in zip(accumulated, large):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(p, q, atol=1e-3) for p, q in zip(small, large)), "4 steps differ from 1"
    summed, _ = run(8, 4, nn.CrossEntropyLoss(reduction="sum"), lr=0.5 / 32)  # not divided by k
    summed_large, _ = run(32, 1, nn.CrossEntropyLoss(reduction="sum"), lr=0.5 / 32)
    for p, q in zip(summed, summed_large):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_accumulation_steps_at_the_end_of_an_epoch_with_a_shorter_last_group():
    X, y = classification_data(40)
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # 5 batches: groups of 2, 2 and 1
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    norms = GradNorms()
    fit(
        model,
        loader,
        nn.CrossEntropyLoss(),
        sgd(model),
        1,
        accumulate_grad_batches=2,
        callbacks=[norms],
        progress=False,
    )
    assert len(norms.norms) == 3

    companion.seed_everything(0)
    by_hand = make_model(dropout=0.0)
    opt = sgd(by_hand)
    batches = list(loader)
    for group in (batches[0:2], batches[2:4], batches[4:5]):
        opt.zero_grad()
        for xb, yb in group:
            (F.cross_entropy(by_hand(xb), yb) / len(group)).backward()
        opt.step()
    for p, q in zip(params(model), params(by_hand)):
        torch.testing.assert_close(p, q)


def test_bf16_precision_runs_the_forward_pass_in_bfloat16_on_a_cpu():
    class DtypeSpy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 3)
            self.dtypes = set()

        def forward(self, x):
            out = self.linear(x)
            self.dtypes.add(out.dtype)
            return out

    companion.seed_everything(0)
    model = DtypeSpy()
    train, val = loaders()
    before = params(model)
    history = fit(
        model, train, nn.CrossEntropyLoss(), sgd(model), 2, val_loader=val, precision="bf16", progress=False
    )
    assert model.dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters()), "the weights stay float32"
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_loss"])
    assert not all(torch.equal(p, q) for p, q in zip(before, params(model)))


@pytest.mark.parametrize("precision", ["16", "fp16", "16-mixed"])
def test_float16_precision_on_a_cpu_says_to_use_bf16_or_a_gpu(precision):
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match=r"needs a CUDA GPU, but fit runs on cpu: pass precision='bf16'"):
        fit(model, train, loss_fn, opt, 1, precision=precision, progress=False)


def test_an_unknown_precision_lists_the_known_ones():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match=r"precision must be one of '32', .*'bf16'.*got 'half'"):
        fit(model, train, loss_fn, opt, 1, precision="half", progress=False)


def test_options_left_off_do_no_work_per_batch(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("called although the option is off")

    monkeypatch.setattr(torch, "autocast", forbidden)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", forbidden)
    monkeypatch.setattr(torch.amp, "GradScaler", forbidden)
    monkeypatch.setattr(Callback, "on_train_batch_end", forbidden)
    monkeypatch.setattr(Callback, "on_before_optimizer_step", forbidden)

    class EpochOnly(Callback):
        def on_train_epoch_end(self, state):
            pass

    model, train, _, loss_fn, opt, sched = setup(epochs=2)
    fit(model, train, loss_fn, opt, 2, scheduler=sched, callbacks=[EpochOnly()], progress=False)


def test_on_an_accelerator_fit_reads_the_losses_once_per_epoch_not_once_per_step(monkeypatch):
    """A host read (.item(), .tolist()) makes the host wait for the device: fit's own reads are per epoch."""
    monkeypatch.setattr(train_module, "_checks_each_step", lambda device: False)  # as on a GPU
    reads = []
    for name in ("item", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, _real=real):
            if "companion" in sys._getframe(1).f_code.co_filename:  # fit's reads, not torch's own
                reads.append(sys._getframe(1).f_code.co_name)
            return _real(self)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model, train, val, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 3, val_loader=val, progress=False)
    assert len(train) == 4 and len(val) == 2
    per_epoch = len(reads) / 3
    assert per_epoch <= 8, f"{len(reads)} host reads in 3 epochs of 4 + 2 batches: {reads}"
    reads.clear()
    fit(model, train, loss_fn, opt, 6, val_loader=val, progress=False)
    assert len(reads) == 6 * per_epoch, "the same number of reads per epoch: none per batch"


def test_user_metrics_are_recorded_for_training_and_validation():
    def mean_abs_logit(output, targets):  # a batch mean
        return output.abs().mean(dim=1).mean()

    def errors(output, targets):  # a (total, count) pair
        return (output.argmax(1) != targets).sum(), torch.tensor(len(targets))

    model, train, val, loss_fn, _, _ = setup()
    history = fit(
        model,
        train,
        loss_fn,
        sgd(model, lr=0.0),
        1,
        val_loader=val,
        metrics={"mean_abs_logit": mean_abs_logit, "error_rate": errors},
        progress=False,
    )
    row = history.rows[-1]
    assert row["val_error_rate"] == pytest.approx(1 - row["val_accuracy"])
    X, _ = val.dataset.tensors
    with torch.no_grad():
        assert row["val_mean_abs_logit"] == pytest.approx(model(X).abs().mean().item(), rel=1e-6)
    assert {"train_mean_abs_logit", "train_error_rate"} <= set(row)


def test_a_metric_named_like_a_built_in_one_or_not_callable_is_rejected():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match="other than 'loss' and 'accuracy'"):
        fit(model, train, loss_fn, opt, 1, metrics={"accuracy": lambda o, t: o.sum()}, progress=False)
    with pytest.raises(TypeError, match="metric 'f1' must be callable"):
        fit(model, train, loss_fn, opt, 1, metrics={"f1": 0.5}, progress=False)


def test_a_compiled_model_trains_and_its_checkpoint_loads_into_the_plain_model(tmp_path):
    companion.seed_everything(0)
    plain = make_model()
    compiled = torch.compile(plain, backend="eager")
    train, val = loaders()
    path = tmp_path / "compiled.pt"
    before = params(plain)
    history = fit(
        compiled,
        train,
        nn.CrossEntropyLoss(),
        sgd(compiled),
        2,
        val_loader=val,
        callbacks=[Checkpoint(path)],
        progress=False,
    )
    assert not all(torch.equal(p, q) for p, q in zip(before, params(plain))), "it trained"
    assert all(not k.startswith("_orig_mod.") for k in torch.load(path, weights_only=True)["model"])
    fresh = make_model()
    epoch, saved = load_checkpoint(path, model=fresh, restore_rng=False)
    assert epoch == 2 and saved["val_loss"] == history["val_loss"]
    assert_same_params(params(fresh), params(plain))


# --- no float64 on the device ---------------------------------------------------------------------


class Float64Detector(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.ops.append(str(func))
        return out


def test_fit_and_evaluate_create_no_float64_tensor_for_a_float32_model():
    """Apple's MPS has no float64, and default_device() picks it: accumulators stay float32 or on the host."""
    model, train, val, loss_fn, opt, sched = setup(epochs=2)
    metrics = {"errors": lambda o, t: ((o.argmax(1) != t).sum(), torch.tensor(len(t)))}
    with Float64Detector() as detector:
        fit(model, train, loss_fn, opt, 2, val_loader=val, scheduler=sched, metrics=metrics, progress=False)
        evaluate(model, val, loss_fn)
    assert detector.ops == []
    with Float64Detector() as detector:  # the detector does see one
        torch.zeros(2).double()
    assert detector.ops


# --- errors that say what to pass ---------------------------------------------------------------


def test_non_finite_loss_stops_naming_epoch_and_step_before_the_step_changes_the_weights():
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders(batch_size=8)  # 4 steps per epoch
    calls, snapshot = [], {}

    def loss_fn(output, target):
        calls.append(1)
        loss = F.cross_entropy(output, target)
        if len(calls) == 7:  # epoch 2, step 3
            snapshot["params"] = params(model)
            return loss * math.inf
        return loss

    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 2, step 3 of 4") as info:
        fit(model, train, loss_fn, sgd(model), 5, progress=False)
    assert isinstance(info.value, FloatingPointError) and (info.value.epoch, info.value.step) == (2, 3)
    assert_same_params(params(model), snapshot["params"])
    assert "before that step could change the weights" in str(info.value)
    assert "gradient_clip_val" in str(info.value), "advice fit itself can follow"


def test_on_an_accelerator_the_check_runs_at_the_epoch_end_and_names_the_first_bad_step(monkeypatch):
    monkeypatch.setattr(train_module, "_checks_each_step", lambda device: False)  # as on a GPU
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders(batch_size=8)
    calls = []

    def loss_fn(output, target):
        calls.append(1)
        loss = F.cross_entropy(output, target)
        return loss * math.nan if len(calls) == 6 else loss  # epoch 2, step 2

    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2, step 2 of 4") as info:
        fit(model, train, loss_fn, sgd(model), 5, progress=False)
    assert len(calls) == 8, "the epoch ran to its end before the check"
    assert "the weights may already be nan" in str(info.value) and info.value.checked_each_step is False


def test_non_finite_loss_error_survives_pickling_with_its_fields():
    error = NonFiniteLossError(math.nan, 3, 7, 10, checked_each_step=False)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.epoch, copy.step, copy.steps, copy.checked_each_step) == (3, 7, 10, False)
    assert str(copy) == str(error)


def test_a_diverging_learning_rate_raises_instead_of_training_on_nans():
    companion.seed_everything(0)
    model = make_model()
    train, _ = loaders()
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at epoch \d+, step \d+"):
        fit(model, train, nn.CrossEntropyLoss(), sgd(model, lr=1e30), 20, progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_an_optimizer_over_another_models_parameters_is_rejected():
    model, train, _, loss_fn, _, _ = setup()
    other = make_model()
    before = params(model)
    with pytest.raises(ValueError, match=r"none of them the model's.*model.parameters\(\)"):
        fit(model, train, loss_fn, sgd(other), 1, progress=False)
    assert_same_params(params(model), before)


def test_an_optimizer_over_part_of_the_model_is_fine_tuning_and_accepted():
    model, train, _, loss_fn, _, _ = setup()
    first = params(model)[0]
    fit(model, train, loss_fn, torch.optim.SGD(model[-1].parameters(), lr=0.1), 1, progress=False)
    assert torch.equal(params(model)[0], first)


def test_float_class_labels_with_cross_entropy_say_to_pass_long_targets():
    X, y = classification_data()
    loader = DataLoader(TensorDataset(X, y.float()), batch_size=8)
    model = make_model()
    with pytest.raises(ValueError, match=r"class labels must be integers, so pass targets.long\(\)"):
        fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 1, progress=False)
    with pytest.raises(ValueError, match=r"targets.long\(\)"):  # also with no loss given: whole numbers
        check_output_fits(torch.zeros(8, 3), y[:8].float())


def test_empty_loader_is_rejected_with_what_to_pass():
    model = make_model()
    empty = DataLoader(TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="train_loader is empty.*at least one sample"):
        fit(model, empty, nn.CrossEntropyLoss(), sgd(model), 1, progress=False)
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
        fit(model, loader, nn.MSELoss(), sgd(model), 1, progress=False)
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
        ((4, 3), (4, 2), "one value per target, shape (4, 2)"),
    ],
)
def test_float_targets_of_another_shape_get_the_fix_that_fits(out, tgt, fix):
    with pytest.raises(ValueError, match=re.escape(fix)):
        check_output_fits(torch.zeros(out), torch.rand(tgt))


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
    check_output_fits(torch.zeros(4, 3), torch.rand(4, 3), nn.CrossEntropyLoss())  # class probabilities
    check_output_fits(torch.zeros(4, 2), torch.tensor([0.5, 1.5, 2.0, 3.0]).unsqueeze(1).expand(4, 2))
    check_output_fits({"logits": torch.zeros(2, 3)}, torch.zeros(2))


@pytest.mark.parametrize("epochs", [0, -3])
def test_non_positive_epochs_are_rejected_with_what_to_pass(epochs):
    model = make_model()
    train, _ = loaders()
    with pytest.raises(ValueError, match=rf"epochs must be at least 1, got {epochs}; .*epochs=10"):
        fit(model, train, nn.CrossEntropyLoss(), sgd(model), epochs, progress=False)


@pytest.mark.parametrize("epochs", [2.0, "3", True, None])
def test_epochs_that_are_not_an_int_are_a_type_error(epochs):
    model = make_model()
    train, _ = loaders()
    with pytest.raises(TypeError, match=r"epochs must be an int.*pass e.g. epochs=10"):
        fit(model, train, nn.CrossEntropyLoss(), sgd(model), epochs, progress=False)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("gradient_clip_val", 0, "gradient_clip_val must be a positive number"),
        ("gradient_clip_val", math.inf, "gradient_clip_val must be a positive number"),
        ("accumulate_grad_batches", 0, "accumulate_grad_batches must be a positive int"),
        ("accumulate_grad_batches", 2.0, "accumulate_grad_batches must be a positive int"),
    ],
)
def test_bad_clipping_or_accumulation_says_what_to_pass(option, value, message):
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match=message + ".*pass e.g."):
        fit(model, train, loss_fn, opt, 1, progress=False, **{option: value})


def test_batches_that_are_not_pairs_are_a_type_error():
    model = make_model()
    X, y = classification_data()
    loader = DataLoader(TensorDataset(X, y, y), batch_size=8)
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\), got a list of 3"):
        fit(model, loader, nn.CrossEntropyLoss(), sgd(model), 1, progress=False)


def test_loss_that_is_not_reduced_to_a_scalar_is_rejected():
    model = make_model()
    train, _ = loaders()
    with pytest.raises(ValueError, match=r"scalar tensor, got \(8,\).*reduction='mean'"):
        fit(model, train, nn.CrossEntropyLoss(reduction="none"), sgd(model), 1, progress=False)


def test_an_optimizer_that_is_not_one_is_a_type_error():
    model, train, _, loss_fn, _, _ = setup()
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        fit(model, train, loss_fn, object(), 1, progress=False)


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


def test_one_cycle_is_stepped_after_every_optimizer_step():
    model, train, _, loss_fn, opt, sched = setup(epochs=3)
    fit(model, train, loss_fn, opt, 3, scheduler=sched, progress=False)
    assert sched.last_epoch == 3 * len(train)
    model, train, _, loss_fn, opt, sched = setup(epochs=3)
    fit(model, train, loss_fn, opt, 3, scheduler=sched, accumulate_grad_batches=2, progress=False)
    assert sched.last_epoch == 3 * len(train) // 2


def test_reduce_lr_on_plateau_is_stepped_with_the_validation_loss():
    model, train, val, loss_fn, opt, _ = setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    history = fit(model, train, loss_fn, opt, 3, val_loader=val, scheduler=plateau, progress=False)
    assert plateau.best == min(history["val_loss"])


# --- resuming ------------------------------------------------------------------------------------


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
    with pytest.raises(PowerCut):
        fit(
            model,
            train,
            loss_fn,
            opt,
            epochs,
            val_loader=val,
            scheduler=sched,
            callbacks=[EarlyStopping(patience=50), Checkpoint(path), CutPowerAt(3)],
            progress=False,
        )
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


def test_resuming_an_early_stopped_run_trains_no_further_and_keeps_its_best_weights(tmp_path):
    model, train, val, loss_fn, opt, _ = setup()
    for g in opt.param_groups:
        g["lr"] = 3.0  # the validation loss soon gets worse
    path = tmp_path / "c.pt"
    stopper = EarlyStopping(patience=2)
    first = fit(
        model, train, loss_fn, opt, 30, val_loader=val, callbacks=[stopper, Checkpoint(path)], progress=False
    )
    assert len(first) < 30
    ended_with = params(model)
    model, train, val, loss_fn, opt, _ = setup(seed=7)
    history = fit(
        model,
        train,
        loss_fn,
        opt,
        30,
        val_loader=val,
        callbacks=[EarlyStopping(patience=2), Checkpoint(path)],
        progress=False,
        resume_from=path,
    )
    assert len(history) == len(first)
    assert_same_params(params(model), ended_with)


def test_resuming_with_fewer_epochs_than_the_checkpoint_holds_says_what_to_pass(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    fit(model, train, loss_fn, opt, 3, callbacks=[Checkpoint(path)], progress=False)
    before = params(model)
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(path))} holds 3 epochs, more than epochs=2: pass epochs=3"
    ):
        fit(model, train, loss_fn, opt, 2, callbacks=[Checkpoint(path)], progress=False, resume_from=path)
    assert_same_params(params(model), before)


def test_a_refused_resume_leaves_model_optimizer_and_callbacks_untouched(tmp_path):
    model, train, val, loss_fn, opt, _ = setup()
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

    companion.seed_everything(5)
    other = nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4)
    )  # another last layer
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.05)
    stopper = EarlyStopping()
    stopper.best, stopper.wait = 0.5, 1  # as a run would have left it
    before, torch_rng = params(other), torch.get_rng_state()
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(path))}.*3.weight: saved \(3, 16\), model \(4, 16\)"
    ):
        fit(
            other,
            train,
            loss_fn,
            other_opt,
            4,
            val_loader=val,
            callbacks=[stopper, Checkpoint(path)],
            progress=False,
            resume_from=path,
        )
    assert_same_params(params(other), before)
    assert other_opt.state_dict()["state"] == {}
    assert (stopper.best, stopper.wait) == (0.5, 1), "on_fit_start did not run: nothing was reset"
    assert torch.equal(torch.get_rng_state(), torch_rng)


def test_resuming_with_persistent_workers_is_refused_before_anything_changes(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=1, train_loader=train)
    persistent = DataLoader(
        train.dataset,
        batch_size=8,
        shuffle=True,
        generator=torch.Generator(),
        num_workers=1,
        persistent_workers=True,
    )
    fresh = make_model()
    before = params(fresh)
    with pytest.raises(
        CheckpointError, match=r"persistent_workers=True.*exact only with persistent_workers=False"
    ):
        fit(
            fresh,
            persistent,
            loss_fn,
            torch.optim.AdamW(fresh.parameters()),
            3,
            progress=False,
            resume_from=path,
        )
    assert_same_params(params(fresh), before)


@pytest.mark.parametrize(
    "setting, value",
    [("accumulate_grad_batches", 2), ("gradient_clip_val", 1.0), ("precision", "bf16")],
)
def test_resuming_with_other_step_settings_is_refused_before_anything_loads(tmp_path, setting, value):
    path = tmp_path / "c.pt"
    model, train, _, loss_fn, opt, sched = setup(epochs=4)  # a OneCycleLR sized for 4 epochs of k = 1
    fit(model, train, loss_fn, opt, 2, scheduler=sched, callbacks=[Checkpoint(path)], progress=False)
    model, train, _, loss_fn, opt, sched = setup(epochs=4)
    before = params(model)
    with pytest.raises(CheckpointError, match=rf"saved by a fit with {setting}=.*Resume with {setting}="):
        fit(
            model,
            train,
            loss_fn,
            opt,
            4,
            scheduler=sched,
            callbacks=[Checkpoint(path)],
            progress=False,
            resume_from=path,
            **{setting: value},
        )
    assert_same_params(params(model), before)
    assert opt.state_dict()["state"] == {} and sched.last_epoch == 0


def test_a_precision_resumes_under_any_of_its_names(tmp_path):
    path = tmp_path / "c.pt"
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 1, callbacks=[Checkpoint(path)], precision="bf16", progress=False)
    assert torch.load(path, weights_only=True)["fit_settings"] == {
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "precision": "bf16",
    }
    model, train, _, loss_fn, opt, _ = setup()
    history = fit(model, train, loss_fn, opt, 2, precision="bf16-mixed", progress=False, resume_from=path)
    assert len(history) == 2


# --- the progress bar and the package -------------------------------------------------------------


def test_progress_bar_goes_to_stderr_and_only_when_asked(capsys):
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 2, progress=False)
    assert capsys.readouterr() == ("", "")
    fit(model, train, loss_fn, opt, 2, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "epoch 2/2" in err and "8/8" in err


def test_top_level_exports_fit_evaluate_and_history():
    assert companion.fit is fit and companion.evaluate is evaluate and companion.History is History
    assert train_module.History is History


# --- what the output check lets through (issue 17) ------------------------------------------------


def void_labelled(n=24, void=255):
    """Every fourth label is `void`, the label VOC and Cityscapes give the pixels no class covers."""
    X, y = classification_data(n)
    y = y.clone()
    y[::4] = void
    return X, y


def test_a_void_label_of_255_is_the_losses_ignore_index_not_a_class():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = void_labelled()
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    kept = y != 255
    with torch.no_grad():
        logits = model(X)
    for loss_fn in (
        nn.CrossEntropyLoss(ignore_index=255),
        functools.partial(F.cross_entropy, ignore_index=255),
    ):
        measured = evaluate(model, loader, loss_fn)
        assert measured["accuracy"] == pytest.approx(
            (logits.argmax(1)[kept] == y[kept]).float().mean().item()
        )
        assert measured["loss"] == pytest.approx(
            F.cross_entropy(logits, y, ignore_index=255).item(), rel=1e-6
        )
    history = fit(model, loader, nn.CrossEntropyLoss(ignore_index=255), sgd(model), 2, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"])
    pixels = torch.randint(0, 3, (2, 4, 4))
    pixels[:, 0] = 255  # a void row in each image
    check_output_fits(torch.zeros(2, 3, 4, 4), pixels, nn.CrossEntropyLoss(ignore_index=255))


def test_a_label_the_loss_does_not_ignore_is_still_checked_against_the_classes():
    with pytest.raises(ValueError, match=r"label 255: the last layer must output at least 256 scores"):
        check_output_fits(torch.zeros(4, 3), torch.tensor([0, 1, 255, 2]), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match=r"label -1, but class labels run from 0 to 2.*ignore_index=-1"):
        check_output_fits(torch.zeros(4, 3), torch.tensor([0, 1, -1, 2]), nn.CrossEntropyLoss())
    check_output_fits(torch.zeros(4, 3), torch.tensor([0, 1, -1, 2]), nn.CrossEntropyLoss(ignore_index=-1))


class TinyLanguageModel(nn.Module):
    """Tokens (B, T) -> next-token scores (B, T, V): the classes come last, as in every language model."""

    def __init__(self, vocabulary=11, width=8):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocabulary, width), nn.Linear(width, vocabulary)

    def forward(self, tokens):
        return self.head(self.embed(tokens))


def test_a_language_models_scores_with_a_loss_that_flattens_them_train():
    companion.seed_everything(0)
    tokens = torch.randint(0, 11, (16, 7))
    loader = DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=4)  # (4, 6) -> (4, 6, 11)
    model = TinyLanguageModel()
    before = params(model)

    def flattened(scores, targets):
        return F.cross_entropy(scores.flatten(0, 1), targets.flatten())

    history = fit(model, loader, flattened, sgd(model), 2, val_loader=loader, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_loss"])
    assert not all(torch.equal(p, q) for p, q in zip(before, params(model)))


def test_quantile_regression_with_its_own_loss_trains():
    companion.seed_everything(0)
    X = torch.randn(32, 4)
    y = X[:, :1] + 0.1 * torch.randn(32, 1)  # (n, 1): one target, three quantiles predicted for it
    quantiles = torch.tensor([0.1, 0.5, 0.9])

    def pinball(predicted, target):
        error = target - predicted  # (n, 3): broadcast on purpose
        return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()

    model = nn.Linear(4, 3)
    history = fit(
        model, DataLoader(TensorDataset(X, y), batch_size=8), pinball, sgd(model), 3, progress=False
    )
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_cross_entropy_with_the_classes_last_says_to_move_them_not_to_reshape_the_targets():
    with pytest.raises(ValueError, match=r"movedim\(-1, 1\).*shape \(2, 11, 7\)") as info:
        check_output_fits(torch.zeros(2, 7, 11), torch.zeros(2, 7, dtype=torch.long), nn.CrossEntropyLoss())
    assert "(2, 11)" not in str(info.value), "targets of shape (2, 11) would be wrong advice"


def test_a_subclass_of_a_known_loss_with_its_own_forward_is_called_as_it_is():
    class FlatCrossEntropy(nn.CrossEntropyLoss):
        def forward(self, scores, targets):
            return super().forward(scores.flatten(0, -2), targets.flatten())

    check_output_fits(torch.zeros(2, 7, 11), torch.zeros(2, 7, dtype=torch.long), FlatCrossEntropy())
    with pytest.raises(ValueError, match="movedim"):
        check_output_fits(torch.zeros(2, 7, 11), torch.zeros(2, 7, dtype=torch.long), nn.CrossEntropyLoss())


def test_check_output_false_lets_a_refused_set_up_through():
    X = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(X, X[:, :1]), batch_size=8)  # (8, 1) targets for (8, 3) outputs
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"prediction of shape \(8, 3\) and target of shape \(8, 1\) differ"):
        fit(model, loader, nn.MSELoss(), sgd(model), 1, progress=False)
    with pytest.warns(UserWarning, match="target size"):  # torch's own warning: a broadcast, asked for
        history = fit(
            model, loader, nn.MSELoss(), sgd(model), 1, val_loader=loader, progress=False, check_output=False
        )
        measured = evaluate(model, loader, nn.MSELoss(), check_output=False)
    assert math.isfinite(history["val_loss"][0]) and measured["loss"] == pytest.approx(history["val_loss"][0])
    with pytest.raises(TypeError, match="check_output must be True or False"):
        fit(model, loader, nn.MSELoss(), sgd(model), 1, progress=False, check_output=0)


# --- accumulation, interruption and the GradScaler (issue 17) -------------------------------------


class WithoutLength:
    """The batches of `loader` (a loader or a list), from one that cannot say how many there are (a stream)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def test_accumulation_over_a_loader_without_length_divides_the_last_group_by_its_own_size():
    X, y = classification_data(40)
    sized = DataLoader(TensorDataset(X, y), batch_size=8)  # 5 batches, k = 3: groups of 3 and 2

    def run(loader):
        companion.seed_everything(0)
        model = make_model(dropout=0.0)
        norms = GradNorms()
        fit(
            model,
            loader,
            nn.CrossEntropyLoss(),
            sgd(model, lr=0.5),
            2,
            accumulate_grad_batches=3,
            callbacks=[norms],
            progress=False,
        )
        return params(model), norms.norms

    weights, norms = run(sized)
    streamed, streamed_norms = run(WithoutLength(sized))
    assert streamed_norms == pytest.approx(norms, rel=1e-5), "the hooks see the same gradients"
    for p, q in zip(streamed, weights):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class Recorder(Callback):
    """Records whether fit ended with on_fit_end or on_exception."""

    def __init__(self):
        self.calls = []

    def on_fit_end(self, state):
        self.calls.append("on_fit_end")

    def on_exception(self, state, exception):
        self.calls.append("on_exception")


class InterruptAt(Callback):
    """Press Ctrl-C after batch `batch_idx` of the first epoch; record what on_exception sees."""

    def __init__(self, batch_idx):
        self.batch_idx, self.seen = batch_idx, []

    def on_train_batch_end(self, state, loss, batch_idx):
        if batch_idx == self.batch_idx:
            raise KeyboardInterrupt

    def on_exception(self, state, exception):
        gradients = any(p.grad is not None for p in state.model.parameters())
        self.seen.append((type(exception), state.epoch, state.model.training, gradients))


def test_an_interrupt_mid_fit_leaves_the_model_ready_to_predict_and_calls_on_exception():
    model, train, _, loss_fn, opt, _ = setup()
    interrupt, after = InterruptAt(batch_idx=2), Recorder()  # batch 2 starts a group of 2: half accumulated
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            train,
            loss_fn,
            opt,
            3,
            accumulate_grad_batches=2,
            callbacks=[interrupt, after],
            progress=False,
        )
    assert interrupt.seen == [(KeyboardInterrupt, 1, True, True)], "the hook sees the state the error left"
    assert not model.training, "dropout off: predictions are deterministic again"
    assert all(p.grad is None for p in model.parameters()), "no half-accumulated gradient is left"
    assert after.calls == ["on_exception"], "on_fit_end does not run"


def test_an_error_in_the_model_mid_epoch_leaves_it_in_eval_mode_without_gradients():
    class FailsAtCall(nn.Module):
        def __init__(self, call):
            super().__init__()
            self.net, self.calls, self.call = make_model(), 0, call

        def forward(self, x):
            self.calls += 1
            if self.calls == self.call:
                raise RuntimeError("out of memory (pretend)")
            return self.net(x)

    model = FailsAtCall(call=3)
    train, _ = loaders()
    with pytest.raises(RuntimeError, match="pretend"):
        fit(model, train, nn.CrossEntropyLoss(), sgd(model), 2, progress=False)
    assert not model.training and all(p.grad is None for p in model.parameters())


class ChangedSteps(Callback):
    """Counts the batches after which the weights changed, and records fit's global_step at the end."""

    def __init__(self):
        self.changed, self.last, self.global_step = 0, None, None

    def on_train_epoch_start(self, state):
        if self.last is None:
            self.last = params(state.model)

    def on_train_batch_end(self, state, loss, batch_idx):
        now = params(state.model)
        self.changed += not all(torch.equal(p, q) for p, q in zip(now, self.last))
        self.last = now

    def on_fit_end(self, state):
        self.global_step = state.global_step


def test_a_step_the_grad_scaler_skips_counts_neither_as_a_step_nor_for_the_scheduler(monkeypatch):
    # float16 with a GradScaler, as fit runs it on a GPU (autocast and the scaler work on a CPU too)
    monkeypatch.setattr(train_module, "_autocast_dtype", lambda precision, device: torch.float16)
    companion.seed_everything(0)
    X, y = torch.randn(64, 4) * 300, torch.randint(0, 3, (64,))  # large inputs: the first scaled
    model = nn.Linear(4, 3)  # gradients overflow float16 until the scaler has lowered its scale
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    steps = ChangedSteps()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autocast's float16 on a CPU
        fit(
            model,
            DataLoader(TensorDataset(X, y), batch_size=8),
            nn.CrossEntropyLoss(),
            opt,
            3,
            scheduler=schedule,
            scheduler_interval="step",
            callbacks=[steps],
            precision="16",
            progress=False,
        )
    assert 0 < steps.changed < 3 * 8, "some steps were skipped, some taken"
    assert steps.global_step == steps.changed == schedule.last_epoch


# --- what the mutation tests asked for (issue 17) ------------------------------------------------------


def test_a_non_finite_loss_error_says_where_when_it_was_caught_and_what_to_do():
    advice = (
        ". Lower the learning rate, clip the gradients (fit(..., gradient_clip_val=1.0)), or check the inputs "
        "and targets for nan/inf."
    )
    assert str(NonFiniteLossError(math.nan, 2, 3, 10)) == (
        "the loss is nan at epoch 2, step 3 of 10: training stopped before that step could change the weights"
        + advice
    )
    assert str(NonFiniteLossError(math.inf, 1, 4, None, checked_each_step=False)) == (
        "the loss is inf at epoch 1, step 4: this device is checked once per epoch (a check per step would "
        "make it wait for the host), so the steps after that one ran on non-finite numbers and the weights "
        "may already be nan: resume from a checkpoint of an earlier epoch" + advice
    )


def test_whole_number_float_targets_for_scores_of_two_or_more_classes_are_taken_for_labels():
    message = (
        r"^the targets are floats \(torch.float32\) of shape \(4,\) for class scores of shape \(4, 2\): class "
        r"labels must be integers, so pass targets.long\(\) \(e.g. TensorDataset\(inputs, labels.long\(\)\)\). "
        r"Float targets of the scores' shape \(4, 2\) would be class probabilities.$"
    )
    with pytest.raises(ValueError, match=message):
        check_output_fits(torch.zeros(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(
        ValueError, match=r"targets.long\(\)"
    ):  # per-position labels (n, L) for scores (n, C, L)
        check_output_fits(torch.zeros(2, 3, 4), torch.zeros(2, 4))


@pytest.mark.parametrize(
    "target", [torch.tensor([0.5, 1.0, 1.5, 0.0]), torch.zeros(0)], ids=["fractions", "empty"]
)
def test_float_targets_that_are_not_whole_numbers_are_not_taken_for_labels(target):
    with pytest.raises(ValueError) as info:
        check_output_fits(torch.zeros(len(target), 3), target)
    assert "targets.long()" not in str(info.value)


def test_scores_and_labels_of_other_positions_are_refused_with_both_shapes_in_full():
    message = r"these scores need targets of shape \(4, 5\), and these targets scores of shape \(4, C, 6\)\.$"
    with pytest.raises(ValueError, match=message):
        check_output_fits(torch.zeros(4, 3, 5), torch.zeros(4, 6, dtype=torch.long))


def test_an_error_mid_step_leaves_no_gradient_on_the_model_or_on_the_losss_own_parameters():
    class ScaledLoss(nn.Module):  # a loss with a parameter of its own, which the optimizer also trains
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, output, target):
            return self.scale * F.cross_entropy(output, target)

    class FailsBeforeTheStep(Callback):
        def on_before_optimizer_step(self, state):
            raise RuntimeError("planted")

    model, train, _, _, _, _ = setup()
    loss_fn = ScaledLoss()
    # the first layer is frozen in all but name: it gets gradients, but the optimizer does not step it
    opt = torch.optim.SGD([*model[-1].parameters(), loss_fn.scale], lr=0.1)
    with pytest.raises(RuntimeError, match="planted"):
        fit(
            model,
            train,
            loss_fn,
            opt,
            1,
            callbacks=[FailsBeforeTheStep()],
            check_output=False,
            progress=False,
        )
    assert all(p.grad is None for p in [*model.parameters(), loss_fn.scale])


def test_evaluate_names_its_loader_and_its_settings_in_what_it_refuses():
    model = make_model()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(TypeError, match=r"^loader must be an iterable of \(inputs, targets\) batches"):
        evaluate(model, 3, loss_fn)
    with pytest.raises(ValueError, match=r"^loader is empty, it yields no batches"):
        evaluate(model, [], loss_fn)
    with pytest.raises(
        TypeError, match=r"^each batch of loader must be a pair \(inputs, targets\), got a Tensor"
    ):
        evaluate(model, [torch.zeros(2, 5)], loss_fn)
    with pytest.raises(TypeError, match=r"^check_output must be True or False, got int 1"):
        evaluate(model, [(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))], loss_fn, check_output=1)
    with pytest.raises(ValueError, match=r"needs a CUDA GPU, but fit runs on cpu"):
        evaluate(model, [(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))], loss_fn, precision="16")


def test_evaluate_of_a_loader_without_a_length_that_yields_nothing_says_so():
    with pytest.raises(
        ValueError, match=r"^loader yielded no samples: pass a loader over at least one sample$"
    ):
        evaluate(make_model(), iter([]), nn.CrossEntropyLoss())


def test_evaluate_of_a_single_sample_is_its_loss():
    model = make_model(dropout=0.0)
    x, y = torch.ones(1, 5), torch.tensor([1])
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    assert evaluate(model, [(x, y)], nn.CrossEntropyLoss())["loss"] == pytest.approx(expected)


def test_evaluate_refuses_a_loss_per_sample_even_in_a_single_batch():
    model = make_model()
    with pytest.raises(ValueError, match=r"^loss_fn must return a scalar tensor, got \(4,\)"):
        evaluate(
            model,
            [(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))],
            nn.CrossEntropyLoss(reduction="none"),
        )


def test_evaluate_passes_inputs_that_are_not_tensors_to_the_model_as_they_are():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 3)

        def forward(self, pair):
            first, second = pair
            return self.linear(first + second)

    model = Pair()
    x, y = torch.ones(4, 5), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        expected = F.cross_entropy(model.linear(2 * x), y).item()
    assert evaluate(model, [((x, x), y)], nn.CrossEntropyLoss())["loss"] == pytest.approx(expected)


class RepeatsTwo(SingleDeviceStrategy):
    """As a DistributedSampler would: the last batch of a DataLoader ends with two repeated samples."""

    def repeats(self, loader):
        return 2 if isinstance(loader, DataLoader) else 0


def test_evaluate_counts_once_the_samples_a_sampler_repeats_at_the_end(monkeypatch):
    model = make_model(dropout=0.0)
    X, y = classification_data(10)
    monkeypatch.setattr(train_module, "current_strategy", lambda model=None: RepeatsTwo())
    with torch.no_grad():
        logits = model(X)
    for n, batch_size in ((10, 4), (10, 6), (9, 4), (8, 4)):  # last batches: 2 + 2, 4 + 2, 1 + 2, 0 + 2
        index = torch.cat([torch.arange(n), torch.arange(2)])  # as a DistributedSampler pads
        loader = DataLoader(TensorDataset(X[index], y[index]), batch_size=batch_size)
        expected = F.cross_entropy(logits[:n], y[:n]).item()
        measured = evaluate(model, loader, nn.CrossEntropyLoss())
        assert measured["loss"] == pytest.approx(expected, rel=1e-6), (n, batch_size)
        assert measured["accuracy"] == (logits[:n].argmax(1) == y[:n]).sum().item() / n


@pytest.mark.parametrize(
    "output, target, message",
    [
        (
            torch.zeros(4, 3, 5),
            torch.zeros(4, 1, 5, dtype=torch.long),
            r"for targets of shape \(4, 1, 5\): class labels have one dimension less than the scores: pass "
            r"targets.squeeze\(1\) \(shape \(4, 5\)\)\.$",
        ),
        (
            torch.zeros(4, 3),
            torch.tensor(1),
            r"for targets of shape \(\): the model must output one score per class, shape \(n, C\); for "
            r"regression, pass float targets \(targets.float\(\)\) of the output's shape\.$",
        ),
        (
            torch.zeros(4, 5, 3),
            torch.zeros(4, 5, dtype=torch.long),
            r"these have them last: return output.movedim\(-1, 1\) from the model \(shape \(4, 3, 5\)\), or "
            r"flatten both in a loss of your own, e.g. lambda output, targets: "
            r"F.cross_entropy\(output.flatten\(0, -2\), targets.flatten\(\)\), which fit calls as it is\.$",
        ),
    ],
    ids=["squeeze", "scalar-target", "classes-last"],
)
def test_class_labels_of_the_wrong_shape_are_refused_with_the_shape_to_pass(output, target, message):
    with pytest.raises(ValueError, match=message):
        check_output_fits(output, target, nn.CrossEntropyLoss())


def test_a_negative_label_other_than_the_ignore_index_names_both():
    with pytest.raises(
        ValueError, match=r"hold label -5, .* this loss skips the label -100 \(its ignore_index\)"
    ):
        check_output_fits(torch.zeros(4, 3), torch.tensor([0, 1, -5, 2]), nn.CrossEntropyLoss())


def test_a_negative_label_for_a_loss_that_skips_none_says_which_labels_to_pass():
    message = (
        r"^the targets hold label -100, but class labels run from 0 to 2 and this loss skips no label \(its "
        r"ignore_index\): pass labels in 0..2, or give the loss the label that marks what to skip, e.g. "
        r"nn.CrossEntropyLoss\(ignore_index=-100\)\.$"
    )
    with pytest.raises(ValueError, match=message):
        check_output_fits(torch.zeros(4, 3), torch.tensor([0, 1, -100, 2]), nn.MultiMarginLoss())


def test_the_range_of_a_single_label_is_checked_too():
    with pytest.raises(ValueError, match=r"hold label 5: the last layer must output at least 6 scores"):
        check_output_fits(torch.zeros(1, 3), torch.tensor([5]), nn.CrossEntropyLoss())


def test_reduce_lr_on_plateau_without_validation_is_stepped_with_the_training_loss():
    model, train, _, loss_fn, opt, _ = setup()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    history = fit(model, train, loss_fn, opt, 3, scheduler=plateau, progress=False)
    assert plateau.best == min(history["train_loss"])


def test_the_progress_bar_shows_the_losses_and_accuracies_and_nothing_else(capsys):
    model, train, val, loss_fn, opt, _ = setup()
    history = fit(model, train, loss_fn, opt, 1, val_loader=val, progress=True)
    err = capsys.readouterr().err
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert f"{name}={history[name][0]:.4g}" in err
    assert "lr=" not in err and "seconds=" not in err and "epoch=" not in err


def test_an_epoch_without_batches_is_refused_and_one_of_a_single_sample_trains():
    model = make_model()
    loss_fn = nn.CrossEntropyLoss()
    with pytest.raises(
        ValueError,
        match=r"^train_loader yielded no batches in this epoch: pass a loader that yields at least one batch "
        r"per pass$",
    ):
        fit(model, WithoutLength([]), loss_fn, sgd(model), 1, progress=False)
    one = WithoutLength([(torch.ones(1, 5), torch.tensor([1]))])
    assert len(fit(model, one, loss_fn, sgd(model), 2, progress=False)) == 2


def test_an_epochs_seconds_are_its_wall_time():
    model, train, _, loss_fn, opt, _ = setup()
    started = time.perf_counter()
    history = fit(model, train, loss_fn, opt, 2, progress=False)
    elapsed = time.perf_counter() - started
    assert all(0 < s < elapsed for s in history["seconds"]) and sum(history["seconds"]) <= elapsed


def test_the_output_is_checked_on_the_first_batch_of_a_fit_only(monkeypatch):
    calls = []
    real = train_module.check_output_fits
    monkeypatch.setattr(train_module, "check_output_fits", lambda *a: calls.append(1) or real(*a))
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 3, progress=False)
    assert len(train) == 4 and len(calls) == 1


@pytest.mark.parametrize("each_step", [True, False], ids=["cpu", "as-on-an-accelerator"])
def test_fit_trains_on_the_samples_a_sampler_repeats_but_counts_them_once(monkeypatch, each_step):
    model = make_model(dropout=0.0)
    X, y = classification_data(10)
    monkeypatch.setattr(train_module, "current_strategy", lambda model=None: RepeatsTwo())
    monkeypatch.setattr(train_module, "_checks_each_step", lambda device: each_step)
    with torch.no_grad():
        logits = model(X)

    def padded(n, batch_size):  # the first n samples, then two of them again, as a DistributedSampler pads
        index = torch.cat([torch.arange(n), torch.arange(2)])
        return DataLoader(TensorDataset(X[index], y[index]), batch_size=batch_size)

    for n, batch_size in ((10, 4), (10, 6), (9, 4), (8, 4)):  # last batches: 2 + 2, 4 + 2, 1 + 2, 0 + 2
        history = fit(
            model, padded(n, batch_size), nn.CrossEntropyLoss(), sgd(model, lr=0.0), 1, progress=False
        )
        expected = F.cross_entropy(logits[:n], y[:n]).item()
        assert history["train_loss"][0] == pytest.approx(expected, rel=1e-6), (n, batch_size)
        assert history["train_accuracy"][0] == (logits[:n].argmax(1) == y[:n]).sum().item() / n


def test_fit_tells_a_sampler_with_set_epoch_which_epoch_starts():
    class Recorded(torch.utils.data.SequentialSampler):
        epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

    model, train, _, loss_fn, opt, _ = setup()
    sampler = Recorded(train.dataset)
    fit(model, DataLoader(train.dataset, batch_size=8, sampler=sampler), loss_fn, opt, 3, progress=False)
    assert sampler.epochs == [0, 1, 2]


def test_an_epochs_last_short_group_steps_before_its_last_batch_ends():
    class Steps(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, state, loss, batch_idx):
            self.seen.append(state.global_step)

    model, train, _, loss_fn, opt, _ = setup()
    steps = Steps()
    fit(model, train, loss_fn, opt, 1, accumulate_grad_batches=3, callbacks=[steps], progress=False)
    assert len(train) == 4 and steps.seen == [0, 0, 1, 2]


def test_a_training_batch_that_is_not_a_pair_names_train_loader():
    model = make_model()
    with pytest.raises(TypeError, match=r"^each batch of train_loader must be a pair \(inputs, targets\)"):
        fit(model, [torch.zeros(2, 5)], nn.CrossEntropyLoss(), sgd(model), 1, progress=False)


def test_the_progress_bar_counts_batches_also_for_a_loader_without_a_length(capsys):
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, WithoutLength(list(train)), loss_fn, opt, 2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and re.search(r"(?<![A-Za-z])batch/s|s/batch(?![A-Za-z])", err)


class UsedOnce(nn.Module):
    """A model whose second layer takes part in the first forward pass only."""

    def __init__(self) -> None:
        super().__init__()
        self.always, self.once = nn.Linear(2, 1), nn.Linear(2, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.always(x) + self.once(x) if self.calls == 1 else self.always(x)


def test_a_parameter_without_a_gradient_in_a_later_step_is_not_moved_by_momentum():
    """The last step's gradients are set to None, not to zero: a parameter the next batch does not use has
    no gradient, and SGD skips it, as with ``optimizer.zero_grad()`` in a hand loop (with zeros, momentum
    would move it again)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]

    def trained(n_batches: int) -> torch.Tensor:
        torch.manual_seed(1)
        model = UsedOnce()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        fit(model, batches[:n_batches], nn.MSELoss(), opt, epochs=1, progress=False)
        return model.once.weight.detach().clone()

    torch.manual_seed(1)
    untrained = UsedOnce().once.weight.detach().clone()
    after_one, after_two = trained(1), trained(2)
    assert not torch.equal(after_one, untrained)  # the first step moved it
    assert torch.equal(after_one, after_two)  # the second, without its gradient, did not


def test_a_metric_named_loss_is_rejected_like_accuracy():
    model, train, _, loss_fn, opt, _ = setup()
    with pytest.raises(ValueError, match="other than 'loss' and 'accuracy'"):
        fit(model, train, loss_fn, opt, 1, metrics={"loss": lambda o, t: o.sum()}, progress=False)


def test_a_loss_function_returning_a_python_float_is_refused_as_not_a_scalar_tensor():
    model, train, _, _, opt, _ = setup()
    with pytest.raises(ValueError, match="scalar"):
        fit(model, train, lambda o, t: 1.0, opt, 1, progress=False)


def test_the_output_checks_see_through_functools_partial_and_name_the_problem():
    with pytest.raises(ValueError, match="differ"):
        check_output_fits(
            torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), functools.partial(F.mse_loss)
        )
    with pytest.raises(ValueError, match=r"targets\.long\(\)"):
        check_output_fits(torch.randn(4, 3), torch.tensor([0.5, 1.2, 0.0, 2.0]), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="differ"):  # an element-wise loss: compared shape for shape
        check_output_fits(torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 1.0]), nn.MSELoss())


def test_a_model_without_parameters_is_evaluated_on_the_cpu():
    loader = [(torch.ones(3, 2), torch.ones(3, 2))]
    assert evaluate(nn.Flatten(), loader, nn.MSELoss())["loss"] == 0.0


def test_fit_shows_a_progress_bar_unless_told_not_to(capsys):
    model, train, _, loss_fn, opt, _ = setup()
    fit(model, train, loss_fn, opt, 1)
    assert "epoch 1/1" in capsys.readouterr().err
