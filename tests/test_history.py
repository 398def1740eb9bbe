import math

import matplotlib
import pytest

from companion.history import History

matplotlib.use("Agg")


def history(values, metric="val_loss"):
    return History({"epoch": i, metric: v} for i, v in enumerate(values, 1))


def test_best_is_the_lowest_loss_and_the_highest_accuracy_by_default():
    h = History(
        [
            {"epoch": 1, "val_loss": 0.5, "val_accuracy": 0.8},
            {"epoch": 2, "val_loss": 0.3, "val_accuracy": 0.7},
            {"epoch": 3, "val_loss": 0.4, "val_accuracy": 0.9},
        ]
    )
    assert h.best("val_loss")["epoch"] == 2
    assert h.best("val_accuracy")["epoch"] == 3
    assert h.best("val_loss", mode="max")["epoch"] == 1


def test_best_never_picks_a_non_finite_epoch():
    assert history([math.nan, 0.5, 0.4])["epoch"] == [1, 2, 3]
    assert history([math.nan, 0.5, 0.4]).best("val_loss")["epoch"] == 3
    assert history([math.nan, 0.5, 0.6], "val_accuracy").best("val_accuracy")["epoch"] == 3
    assert history([0.5, -math.inf, 0.4]).best("val_loss")["epoch"] == 3


def test_best_of_equal_values_is_the_earliest_epoch():
    assert history([0.5, 0.3, 0.3]).best("val_loss")["epoch"] == 2


def test_best_with_an_unknown_mode_raises_instead_of_guessing():
    with pytest.raises(ValueError, match=r"mode must be 'min'.*or 'max'.*got 'maximum'.*mode='max'"):
        history([0.5, 0.6], "val_accuracy").best("val_accuracy", mode="maximum")


def test_best_of_an_empty_or_all_nan_history_says_why_there_is_none():
    with pytest.raises(ValueError, match="history is empty"):
        History().best("epoch")
    with pytest.raises(ValueError, match=r"no epoch has a finite val_loss"):
        history([math.nan, math.inf]).best("val_loss")


def test_history_of_an_unknown_metric_lists_the_known_ones():
    with pytest.raises(KeyError, match=r"no metric 'val_acc'.*\['train_loss'\]"):
        History([{"epoch": 1, "train_loss": 1.0}])["val_acc"]


def test_a_metric_missing_from_an_epoch_reads_as_nan():
    h = History([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7}])
    assert h.metrics == ["train_loss", "val_loss"]
    assert math.isnan(h["val_loss"][0]) and h["val_loss"][1] == 0.7


def test_history_plot_returns_a_figure_with_labelled_loss_and_accuracy_panels():
    h = History(
        [
            {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_accuracy": 0.5},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8},
        ]
    )
    fig = h.plot()
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xlabel() == "epoch" and loss_ax.get_ylabel() == "loss (log scale)"
    assert acc_ax.get_ylabel() == "accuracy"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train loss", "val loss"]
    assert list(acc_ax.lines[0].get_ydata()) == [0.5, 0.8]
    matplotlib.pyplot.close(fig)


def test_repr_shows_the_epochs_and_the_last_row_rounded():
    assert repr(history([0.123456, 0.654321])) == "History(epochs=2, last={'epoch': 2, 'val_loss': 0.6543})"
