import functools
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from training_setup import classification_data, make_model, sgd

import companion
from companion.metrics import EpochMeter, accuracy, is_classification
from companion.train import evaluate, fit


def test_accuracy_counts_neither_right_nor_wrong_the_ignored_labels():
    output = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    target = torch.tensor([0, 1, -100, 1])
    correct, counted = accuracy(output, target)
    assert (correct.item(), counted.item()) == (2, 3)
    assert accuracy(output, torch.tensor([0, 1, 5, 1]), ignore_index=5)[1].item() == 3


def ignored_labels_data():
    """Every third label is -100 (CrossEntropyLoss's ignore_index): padding, say."""
    X, y = classification_data(30)
    y = y.clone()
    y[::3] = -100
    return X, y


def test_fit_and_evaluate_leave_ignored_labels_out_of_accuracy_and_loss():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = ignored_labels_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=8)  # 8, 8, 8, 6: each with its own number ignored
    kept = y != -100
    with torch.no_grad():
        logits = model(X)
    expected_accuracy = (logits.argmax(1)[kept] == y[kept]).float().mean().item()
    expected_loss = F.cross_entropy(logits, y).item()  # the mean over the counted labels
    measured = evaluate(model, loader, nn.CrossEntropyLoss())
    assert measured["accuracy"] == pytest.approx(expected_accuracy)
    assert measured["loss"] == pytest.approx(expected_loss, rel=1e-6)
    history = fit(model, loader, nn.CrossEntropyLoss(), sgd(model, lr=0.0), 1, progress=False)
    assert history["train_accuracy"][0] == pytest.approx(expected_accuracy)
    assert history["train_loss"][0] == pytest.approx(expected_loss, rel=1e-6)


def test_the_epoch_loss_of_a_class_weighted_loss_is_that_loss_over_the_whole_split():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    weight = torch.tensor([0.2, 1.0, 3.0])
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    with torch.no_grad():
        whole = F.cross_entropy(model(X), y, weight=weight).item()
    for loss_fn in (nn.CrossEntropyLoss(weight=weight), functools.partial(F.cross_entropy, weight=weight)):
        assert evaluate(model, loader, loss_fn)["loss"] == pytest.approx(whole, rel=1e-6)


def test_a_summed_class_loss_with_ignored_labels_is_divided_by_the_counted_labels():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = ignored_labels_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    with torch.no_grad():
        whole = F.cross_entropy(model(X), y).item()
    assert evaluate(model, loader, nn.CrossEntropyLoss(reduction="sum"))["loss"] == pytest.approx(
        whole, rel=1e-6
    )


def test_a_user_metric_that_returns_a_batch_mean_is_weighted_by_batch_size():
    meter = EpochMeter(nn.MSELoss(), {"mean_target": lambda output, target: target.float().mean()})
    for target in (torch.ones(8), torch.zeros(2)):
        meter.update(torch.tensor(0.0), torch.zeros(len(target)), target)
    assert meter.compute()["mean_target"] == pytest.approx(8 / 10)


def test_a_user_metric_that_returns_total_and_count_is_their_ratio():
    meter = EpochMeter(nn.MSELoss(), {"positives": lambda o, t: ((t > 0).sum(), torch.tensor(3))})
    for target in (torch.ones(8), torch.zeros(2)):
        meter.update(torch.tensor(0.0), torch.zeros(len(target)), target)
    assert meter.compute()["positives"] == pytest.approx(8 / 6)


def test_a_user_metric_returning_a_vector_says_what_to_return():
    meter = EpochMeter(nn.MSELoss(), {"per_sample": lambda o, t: (o - t).abs()})
    with pytest.raises(TypeError, match=r"metric 'per_sample' must return a scalar tensor.*got \(4,\)"):
        meter.update(torch.tensor(0.0), torch.zeros(4), torch.ones(4))


def test_a_pass_where_every_label_is_ignored_has_nan_accuracy_not_an_error():
    meter = EpochMeter(nn.CrossEntropyLoss())
    meter.update(torch.tensor(math.nan), torch.zeros(2, 3), torch.tensor([-100, -100]))
    result = meter.compute()
    assert math.isnan(result["accuracy"]) and math.isnan(result["loss"])


def test_classification_means_scores_n_by_c_for_integer_labels_n():
    assert is_classification(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    assert not is_classification(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    assert not is_classification(torch.zeros(4, 3), torch.zeros(4))
    assert not is_classification(torch.zeros(4, 3, 2), torch.zeros(4, 2, dtype=torch.long))


def test_a_class_weighted_loss_with_void_labels_of_255_is_that_loss_over_the_whole_split():
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(30)
    y = y.clone()
    y[::3] = 255  # VOC's void label: any value can be the ignore_index, not only negative ones
    weight = torch.tensor([0.2, 1.0, 3.0])
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=255)
    with torch.no_grad():
        logits = model(X)
    meter = EpochMeter(loss_fn)
    for i in range(0, 30, 8):  # batches of 8, 8, 8, 6, each with its own share of void labels
        meter.update(loss_fn(logits[i : i + 8], y[i : i + 8]), logits[i : i + 8], y[i : i + 8])
    measured = meter.compute()
    kept = y != 255
    assert measured["loss"] == pytest.approx(loss_fn(logits, y).item(), rel=1e-6)
    assert measured["accuracy"] == pytest.approx((logits.argmax(1)[kept] == y[kept]).float().mean().item())
    loader = DataLoader(TensorDataset(X, y), batch_size=8)
    assert evaluate(model, loader, loss_fn)["loss"] == pytest.approx(loss_fn(logits, y).item(), rel=1e-6)


def test_a_user_metric_returning_a_non_tensor_says_what_type_it_got():
    meter = EpochMeter(nn.MSELoss(), {"listed": lambda o, t: [0.1, 0.2, 0.3]})
    with pytest.raises(TypeError, match=r"metric 'listed' must return a scalar tensor.*got list$"):
        meter.update(torch.tensor(0.0), torch.zeros(4), torch.ones(4))


@pytest.mark.parametrize("position", [0, 1])
def test_a_user_metric_pair_with_a_vector_names_the_metric(position):
    pair = [torch.tensor(1.0), torch.tensor(2.0)]
    pair[position] = torch.ones(4)
    meter = EpochMeter(nn.MSELoss(), {"pair": lambda o, t: tuple(pair)})
    with pytest.raises(TypeError, match=r"^metric 'pair' must return a scalar tensor.*got \(4,\)$"):
        meter.update(torch.tensor(0.0), torch.zeros(4), torch.ones(4))


def test_two_class_scores_are_classification_and_get_an_accuracy():
    assert is_classification(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    meter = EpochMeter(nn.CrossEntropyLoss())
    meter.update(0.5, torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1, 1]))
    assert meter.compute()["accuracy"] == pytest.approx(2 / 3)


def test_a_loss_that_is_not_a_known_class_loss_is_weighted_by_batch_size_even_with_ignored_labels():
    """Only a loss known to leave ignored labels out (CrossEntropyLoss, NLLLoss) is weighted by counted labels."""
    meter = EpochMeter(lambda output, target: F.cross_entropy(output, target))
    meter.update(1.0, torch.zeros(2, 3), torch.tensor([0, -100]))  # one label counted, two samples
    meter.update(4.0, torch.zeros(2, 3), torch.tensor([1, 2]))
    assert meter.compute()["loss"] == pytest.approx((1.0 * 2 + 4.0 * 2) / 4)


def test_a_user_metric_that_counted_nothing_is_nan_not_an_error():
    meter = EpochMeter(nn.MSELoss(), metrics={"hits": lambda o, t: (torch.tensor(0.0), torch.tensor(0.0))})
    meter.update(0.5, torch.zeros(2, 1), torch.zeros(2, 1))
    assert math.isnan(meter.compute()["hits"])
