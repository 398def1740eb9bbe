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


def test_best_by_default_is_the_lowest_val_loss():
    assert history([0.5, 0.3, 0.4]).best()["epoch"] == 2


def test_best_compares_the_values_themselves_even_near_the_largest_float():
    """Scaling the values before comparing them (2 * 1.7e308 is inf) would make these ties."""
    assert history([1.0e308, 1.7e308], "val_accuracy").best("val_accuracy")["epoch"] == 2
    assert history([1.7e308, 1.0e308]).best("val_loss")["epoch"] == 2


def test_best_and_plot_of_an_empty_history_say_so_in_full():
    with pytest.raises(ValueError, match=r"^the history is empty: fit for at least one epoch first$"):
        History().best("epoch")
    with pytest.raises(ValueError, match=r"^the history is empty: there is nothing to plot yet$"):
        History().plot()


def three_epochs():
    return History(
        [
            {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_accuracy": 0.5, "lr": 0.1},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_accuracy": 0.8, "lr": 0.1},
            {"epoch": 3, "train_loss": 0.25, "val_loss": 0.6, "val_accuracy": 0.9, "lr": 0.01},
        ]
    )


def test_history_plot_draws_each_epoch_as_a_small_dot_on_titled_log_scale_panels():
    fig = three_epochs().plot()
    loss_ax, acc_ax = fig.axes
    assert tuple(fig.get_size_inches()) == pytest.approx((11.0, 3.6))  # 5.5 inches per panel
    assert (loss_ax.get_title(), acc_ax.get_title()) == ("Learning curves: loss", "Learning curves: accuracy")
    assert loss_ax.get_yscale() == "log" and acc_ax.get_yscale() == "linear"
    line = loss_ax.lines[0]
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [1.0, 0.5, 0.25]
    assert (line.get_marker(), line.get_markersize()) == ("o", 3)
    assert loss_ax.xaxis.get_gridlines()[0].get_alpha() == 0.3
    matplotlib.pyplot.close(fig)


def test_history_plot_of_chosen_metrics_under_a_title_draws_only_those():
    fig = three_epochs().plot(["val_loss"], title="Run 7")
    (ax,) = fig.axes
    assert ax.get_title() == "Run 7: loss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["val loss"]
    assert tuple(fig.get_size_inches()) == pytest.approx((5.5, 3.6))
    matplotlib.pyplot.close(fig)


def test_history_plot_keeps_a_linear_scale_for_a_loss_that_reaches_zero():
    h = History([{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.0}])
    fig = h.plot()
    assert fig.axes[0].get_yscale() == "linear" and fig.axes[0].get_ylabel() == "loss"
    matplotlib.pyplot.close(fig)


def test_repr_shows_the_last_of_several_epochs_and_an_empty_history_too():
    assert repr(history([0.5, 0.25, 0.125])) == "History(epochs=3, last={'epoch': 3, 'val_loss': 0.125})"
    assert repr(History()) == "History(epochs=0, last={})"


def test_a_history_iterates_over_its_rows():
    h = history([0.5, 0.25])
    assert list(h) == [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.25}] and len(h) == 2
