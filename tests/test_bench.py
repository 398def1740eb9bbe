"""benchmarks/fit_overhead.py compares like with like: every runner does the same computation."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "fit_overhead.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("fit_overhead", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = load_benchmark()
CASES = {case.name: case for case in bench.CASES}
EPOCHS = 2


def tiny(case):
    """The first 100 samples of each split: 2 or 4 batches per epoch, the last one short.

    Short, as in the benchmark (1,257 training images): when the samples fill the last batch exactly,
    Lightning stops at the known length without exhausting the sampler, while a ``for`` loop asks once
    more and so `RandomSampler` draws one more (unused) permutation from the loader's generator. From the
    second epoch on the two would then shuffle differently and could not be compared bit for bit.
    """
    return bench.data(case.flat, limit=100)


def test_the_cases_are_the_ones_the_issue_names():
    assert (CASES["MLP"].batch_size, CASES["MLP"].epochs) == (32, 5)
    sizes = [tuple(p.shape) for p in CASES["MLP"].make_model().parameters()]
    assert sizes == [(128, 64), (128,), (10, 128), (10,)]
    assert tuple(tiny(CASES["MLP"])["train"][0][0].shape) == (64,)
    assert tuple(tiny(CASES["CNN"])["train"][0][0].shape) == (1, 8, 8)


@pytest.mark.parametrize("name", CASES)
def test_fit_and_the_hand_loop_end_with_the_same_weights_and_metrics(name):
    case = CASES[name]
    datasets = tiny(case)
    fit, hand = bench.run_fit(case, datasets, EPOCHS), bench.run_hand(case, datasets, EPOCHS)
    untrained = bench.setup(case, datasets, EPOCHS)[0]
    assert not bench.same_weights(
        hand.model, untrained
    )  # the hand loop trained: the check below means something
    assert bench.same_weights(fit.model, hand.model)
    assert fit.last == pytest.approx(hand.last, rel=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_lightning_ends_with_the_hand_loops_weights_and_metrics(name):
    pytest.importorskip("lightning")
    lightning = bench.import_lightning()
    case = CASES[name]
    datasets = tiny(case)
    threads = torch.get_num_threads()
    light = bench.run_lightning(case, datasets, EPOCHS, lightning)
    hand = bench.run_hand(case, datasets, EPOCHS)
    assert bench.same_weights(light.model, hand.model)
    assert light.last == pytest.approx(hand.last, rel=1e-6)  # Lightning logs float32 means
    assert torch.get_num_threads() == threads


def test_measure_times_each_runner_once_per_repeat():
    case = CASES["MLP"]
    times = bench.measure(
        case, tiny(case), {"fit": bench.run_fit, "hand": bench.run_hand}, repeats=2, epochs=1
    )
    assert {name: len(t) for name, t in times.items()} == {"fit": 2, "hand": 2}
    assert all(s > 0 for t in times.values() for s in t)
    assert bench.ratio({"fit": [2.0, 3.0, 9.0], "hand": [1.0, 1.0, 3.0]}, "fit") == 3.0


def test_measure_refuses_a_runner_that_does_other_work():
    case = CASES["MLP"]

    def one_step_more(case, datasets, epochs):
        run = bench.run_hand(case, datasets, epochs)
        with torch.no_grad():
            next(run.model.parameters()).add_(1e-3)
        return run

    runners = {"fit": one_step_more, "hand": bench.run_hand}
    with pytest.raises(AssertionError, match="fit and the hand-written loop must end with the same weights"):
        bench.measure(case, tiny(case), runners, repeats=1, epochs=1)


# --- benchmarks/data_pipeline.py and benchmarks/run.py ---------------------------------------------------


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARK.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pipeline_bench = load_script("data_pipeline")


@pytest.fixture(scope="module")
def tiny_pipeline_figures(tmp_path_factory):
    """The data-pipeline benchmark on 40 images, one round, one worker: a smoke run, not a measurement."""
    return pipeline_bench.run(repeats=1, count=40, workers=1, root=tmp_path_factory.mktemp("images"))


def test_the_data_pipeline_benchmark_times_the_six_pipelines_against_the_limit(tiny_pipeline_figures):
    figures = tiny_pipeline_figures
    assert list(figures["pipelines"]) == [
        "ImageFolder, 0 workers",
        "ImageFolder, 1 workers",
        "ImageFolder, 1 persistent workers",
        "CachedDataset, DataLoader",
        "CachedDataset, TensorLoader",
        "slicing in memory (limit)",
    ]
    assert figures["pipelines"]["slicing in memory (limit)"]["over_limit"] == 1.0
    assert figures["pipelines"]["ImageFolder, 0 workers"]["over_naive"] == 1.0
    assert all(r["samples_per_second"] > 0 for r in figures["pipelines"].values())
    # decoding 40 PNG files against slicing 40 cached tensors: a gap of far more than 2x on any machine
    assert figures["cached_over_naive"] > 2
    assert (figures["images"], figures["size"], figures["batch_size"]) == (40, 8, 64)


def test_the_goals_are_judged_only_on_the_real_digits(tiny_pipeline_figures):
    rows = pipeline_bench.rows(tiny_pipeline_figures)
    assert [r[3] for r in rows[-2:]] == [">= 20", ">= 0.8"]
    assert all(verdict is None for *_, verdict in rows)  # 40 images are not what the goals are set for
    assert len(rows) == 5 + 2


def test_the_data_pipeline_benchmark_refuses_a_pipeline_that_loses_images(tmp_path):
    from companion.loading import TensorLoader

    root = pipeline_bench.resized_digits_imagefolder(tmp_path / "d", size=8, count=20)
    made = pipeline_bench.pipelines(root, workers=1, fast_epochs=1)
    tensors = made["CachedDataset, TensorLoader"].loader.tensors
    made["CachedDataset, TensorLoader"].loader = TensorLoader(
        *tensors, batch_size=16, drop_last=True
    )  # 4 lost
    with pytest.raises(AssertionError, match="CachedDataset, TensorLoader does not deliver the same images"):
        pipeline_bench.check_same_images(made)


def test_make_bench_prints_one_table_that_fits_the_column():
    run = load_script("run")
    case = _case(1.01, 1.4, fit_interval=[0.99, 1.03], lightning_interval=[1.3, 1.5])
    fit_rows = [("fit overhead", *row) for row in bench.rows({"cases": {"CNN": case}})]
    table = run.table(
        fit_rows
        + [("data pipeline", "CachedDataset, TensorLoader / limit", 0.93, [0.85, 0.97], ">= 0.8", "met")]
    )
    lines = table.splitlines()
    assert len(lines) == 7 and all(len(line) <= 88 for line in lines)
    assert lines[1].split()[-1] == "met" and lines[2].split()[-1] == "0.99–1.03"
    assert "Lightning / hand loop" in lines[3] and lines[3].split()[-1] == "1.4"
    assert lines[-2].endswith("met") and lines[-1].endswith("0.85–0.97")


@pytest.mark.parametrize(
    ("interval", "verdict"),
    [([0.99, 1.04], "met"), ([0.99, 1.05], "met"), ([1.02, 1.08], "undecided"), ([1.06, 1.2], "missed")],
)
def test_the_fit_goal_is_judged_on_the_interval_not_the_median(interval, verdict):
    # the same median, 1.03, below the goal of 1.05: only the interval says whether the goal is met
    (row,) = bench.rows({"cases": {"MLP": _case(1.03, None, fit_interval=interval)}})
    assert row[2] == interval and row[3] == "<= 1.05" and row[4] == verdict


def test_a_smoke_run_without_an_interval_judges_no_goal():
    (row,) = bench.rows({"cases": {"MLP": _case(1.2, None)}})
    assert row[2] is None and row[4] is None


def test_the_interval_is_left_out_below_six_repeats_and_brackets_the_median_from_six():
    few = {"fit": [1.0, 1.1, 1.2], "hand": [1.0, 1.0, 1.0]}
    assert bench.interval(few, "fit") is None
    times = {"fit": [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], "hand": [1.0] * 6}
    assert bench.interval(times, "fit") == [1.0, 1.5]  # 6 rounds: the smallest and largest ratio (96.9 %)


@pytest.mark.parametrize(
    ("low", "high", "goal", "at_most", "verdict"),
    [
        (0.90, 1.00, 1.0, True, "met"),
        (0.90, 1.01, 1.0, True, "undecided"),
        (1.01, 1.10, 1.0, True, "missed"),
        (20.0, 30.0, 20.0, False, "met"),
        (19.0, 30.0, 20.0, False, "undecided"),
        (10.0, 19.9, 20.0, False, "missed"),
    ],
)
def test_goal_verdict_meets_a_goal_only_with_the_whole_interval(low, high, goal, at_most, verdict):
    from companion.perf import goal_verdict

    assert goal_verdict(low, high, goal, at_most=at_most) == verdict


def test_goal_verdict_refuses_an_interval_the_wrong_way_round():
    from companion.perf import goal_verdict

    with pytest.raises(ValueError, match="low 2 > high 1"):
        goal_verdict(2, 1, 1.5, at_most=True)


def _case(fit, lightning, fit_interval=None, lightning_interval=None):
    return {
        "ratio_fit_over_hand": fit,
        "ratio_lightning_over_hand": lightning,
        "interval_fit_over_hand": fit_interval,
        "interval_lightning_over_hand": lightning_interval,
    }
