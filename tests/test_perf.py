"""companion.perf: timers that synchronize and repeat, throughput, the epoch split, the profiler table,
TensorLoader as a drop-in DataLoader, the CPU's bf16 case; and chapter 7's resized digit images."""

from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.autograd import DeviceType
from torch.utils.data import DataLoader, TensorDataset

import companion
import companion.device
from companion import perf
from companion.datasets import resized_digits_imagefolder
from companion.device import bf16_case, cpu_flags
from companion.loading import CachedDataset, TensorLoader
from companion.perf import (
    Comparison,
    SpeedInterval,
    Timing,
    batch_size_of,
    compare,
    consume,
    loader_throughput,
    measure,
    median_interval,
    operator_table,
    rounds_for,
    split_epoch,
    throughput,
    top_operators,
)


class FakeClock:
    """A clock that advances only when told to, and records when it is read."""

    def __init__(self, events: list[str]):
        self.now, self.events = 0.0, events

    def __call__(self) -> float:
        self.events.append("clock")
        return self.now


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA is present and in use; record each torch.cuda.synchronize call in ``events``."""
    events: list[str] = []
    devices: list[object] = []

    def synchronize(device=None):
        events.append("sync")
        devices.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    return events, devices


# --- the timer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [None, "cuda"])
def test_measure_synchronizes_cuda_before_every_clock_read(fake_cuda, device):
    events, devices = fake_cuda
    clock = FakeClock(events)
    measure(lambda: events.append("call"), warmup=1, repeat=3, number=2, device=device, clock=clock)
    assert events.count("clock") == 6 and events.count("call") == 1 + 3 * 2
    for i, event in enumerate(events):
        if event == "clock":
            assert events[i - 1] == "sync", (
                f"the clock was read at event {i} without a sync before it: {events}"
            )
    # the timed calls lie between the two clock reads of their run, never outside
    run = events[events.index("clock") : events.index("clock", events.index("clock") + 1) + 1]
    assert run == ["clock", "call", "call", "sync", "clock"]
    if device == "cuda":
        assert all(d == torch.device("cuda") for d in devices)


def test_synchronize_leaves_cuda_alone_when_this_process_never_used_it(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    perf.synchronize()
    perf.synchronize("cpu")
    assert calls == []
    perf.synchronize("cuda:0")
    assert calls == [torch.device("cuda:0")]


def test_measure_warms_up_then_records_seconds_per_call_of_each_run():
    events: list[str] = []
    clock = FakeClock(events)

    def fn():
        events.append("call")
        clock.now += 0.5  # each call takes half a second on the fake clock

    timing = measure(fn, warmup=2, repeat=4, number=3, clock=clock)
    assert events.count("call") == 2 + 4 * 3
    assert events[:2] == ["call", "call"]  # the warm-up calls come before any clock read
    assert timing.seconds == (0.5, 0.5, 0.5, 0.5)


def test_timing_reports_the_median_and_the_interquartile_range():
    timing = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert timing.median == 3.0  # the outlier does not move it
    assert timing.spread == 2.0  # q3 - q1 = 4 - 2
    assert (timing.min, timing.max) == (1.0, 100.0)
    assert Timing((0.2,)).spread == 0.0
    assert str(Timing((0.0123, 0.0123))) == "12.3 ms per call (median of 2 runs, IQR 0 ns)"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(repeat=0), ValueError, "repeat must be at least 1, got 0; pass e.g. repeat=5"),
        (dict(warmup=-1), ValueError, "warmup must be at least 0, got -1"),  # companion.checks wording
        (dict(number=1.5), TypeError, "number must be an int, got float"),
        (dict(repeat=True), TypeError, "repeat must be an int, got bool"),
        (dict(device=3), TypeError, "device must be a torch.device, a name such as 'cuda', or None, got int"),
        (dict(device="gpu0"), ValueError, "device 'gpu0' is not a device name"),
    ],
)
def test_measure_refuses_bad_arguments_saying_what_to_pass(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        measure(lambda: None, **kwargs)


def test_measure_and_compare_refuse_what_they_cannot_call():
    with pytest.raises(TypeError, match="fn must be a function to call with no arguments, got int"):
        measure(3)
    with pytest.raises(TypeError, match=r"candidates\['b'\] must be a function"):
        compare({"a": lambda: None, "b": None})
    with pytest.raises(TypeError, match="candidates must be a non-empty dict"):
        compare({})


def test_compare_interleaves_the_candidates_and_alternates_who_goes_first():
    order: list[str] = []
    comparison = compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=3)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b"]
    assert [len(s) for s in comparison.seconds.values()] == [3, 3]


def test_ratios_are_medians_of_per_round_ratios():
    comparison = Comparison({"a": (1.0, 2.0, 30.0), "b": (2.0, 2.0, 3.0)})
    # per round a/b = 0.5, 1, 10: the slow third round of `a` (a busy machine) does not set the ratio
    assert comparison.ratio("a", "b") == 1.0
    assert comparison.speedup("b", "a") == 1.0
    assert comparison.speedup("a", "b") == 1.0  # b/a = 2, 1, 0.1
    assert Comparison({"a": (1.0,), "b": (4.0,)}).speedup("a", "b") == 4.0


def test_speedup_compares_samples_per_second_when_calls_do_different_work():
    # a: 20 epochs of 100 samples in 2 s (1,000 samples/s); b: 1 epoch of 100 samples in 1 s (100 samples/s)
    comparison = Comparison({"a": (2.0, 2.0, 2.0), "b": (1.0, 1.0, 1.0)})
    assert comparison.speedup("a", "b", samples={"a": 2000, "b": 100}) == pytest.approx(10.0)
    assert comparison.speedup("a", "b") == 0.5  # per call, a is the slower
    with pytest.raises(KeyError, match="'c' was not timed; the names are 'a', 'b'"):
        comparison.ratio("c", "a")


def test_comparison_table_fits_the_books_column():
    long = "ImageFolder, decoding PNG files every epoch, two persistent workers"
    seconds = (0.5, 0.6, 0.55, 0.52, 0.58, 0.56)
    comparison = Comparison({long: seconds, "slicing": tuple(t * 2e-4 for t in seconds)})
    table = comparison.table("slicing", samples={long: 1257, "slicing": 1257})
    lines = table.splitlines()
    assert all(len(line) <= 88 for line in lines), [len(line) for line in lines]
    assert lines[1].startswith("ImageFolder, decoding PNG") and "2,265" in lines[1]  # 1257 / 0.555 s
    # the speed block: the long name against the baseline, 2e-4 per round exactly, so a 0-width interval
    assert lines[4].endswith("0.000200x (0.000200–0.000200) slower")
    assert "times as fast as 'slicing', the median of 6 per-round ratios" in " ".join(lines[5:])


# --- how sure a ratio is ---------------------------------------------------------------------------------


def test_median_interval_is_the_pair_of_order_statistics_the_binomial_rule_picks():
    # n = 9: P(X(2) <= m <= X(8)) = 1 - 2 (C(9,0) + C(9,1)) / 2^9 = 1 - 20/512; with k = 3 it is 0.82 < 0.95
    assert median_interval([5, 1, 9, 3, 7, 2, 8, 4, 6]) == (2.0, 8.0, 1 - 20 / 512)
    # n = 6 (the fewest for 95 %): only the smallest and largest, 1 - 2/64
    assert median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0]) == (1.0, 6.0, 1 - 2 / 64)
    # n = 12: k = 3, 1 - 2 (1 + 12 + 66) / 4096
    assert median_interval(range(1, 13)) == (3.0, 10.0, 1 - 2 * 79 / 4096)
    assert [rounds_for(level) for level in (0.9, 0.95, 0.99)] == [5, 6, 8]


def test_too_few_rounds_for_a_95_percent_interval_raise_saying_how_many_to_pass():
    five = Comparison({"a": (1.0,) * 5, "b": (2.0,) * 5})
    for call in (lambda: five.interval("a", "b"), lambda: five.verdict("a", "b"), lambda: five.table("b")):
        with pytest.raises(
            ValueError, match=r"5 values cannot give a 95% interval .* 93\.75% for 5.* repeat=6"
        ):
            call()
    assert five.speedup("a", "b") == 2.0  # the median alone still works, as before
    lower = five.interval("a", "b", level=0.9)  # a lower level, stated, is what 5 rounds can give
    assert (lower.low, lower.high, lower.level, lower.rounds) == (2.0, 2.0, 1 - 2 / 32, 5)
    with pytest.raises(ValueError, match="level must lie strictly between 0 and 1"):
        median_interval(range(10), level=1.0)
    with pytest.raises(TypeError, match="level must be a probability"):
        median_interval(range(10), level="95%")


def test_compare_with_a_fake_clock_finds_the_known_ratio_whatever_the_load():
    clock = SimpleNamespace(now=0.0)
    calls = [0]
    loads = [1.0, 10.0, 3.0, 0.5, 7.0, 2.0, 4.0, 1.5]  # the machine's load changes from round to round

    def work(seconds: float):
        def run():
            clock.now += seconds * loads[calls[0] // 2]  # both calls of a round see the same load
            calls[0] += 1

        return run

    comparison = compare(
        {"old": work(3.0), "new": work(1.0)}, warmup=0, repeat=len(loads), clock=lambda: clock.now
    )
    faster = comparison.interval("new", "old")
    assert faster.speedup == pytest.approx(3.0) and faster.contains(3.0) and faster.verdict == "faster"
    assert faster.high - faster.low == pytest.approx(0.0)  # each round's ratio is 3, whatever its load
    assert comparison.verdict("old", "new") == "slower"
    assert str(faster) == "3.00x (3.00–3.00), faster"


@pytest.mark.parametrize("rounds", [6, 10, 15])
def test_the_interval_covers_a_known_ratio_at_its_nominal_rate(rounds):
    # Simulated rounds: a load that changes 20-fold between rounds, per-call noise, and now and then an
    # interruption that makes one call of the round 3 times as long. The new function is 1.25 times as
    # fast; the per-round ratio is 1.25 times noise whose median is 1, so the interval should cover 1.25
    # in a share of the draws close to its level (at least 95 %).
    rng = random.Random(rounds)
    true_ratio, draws, covered = 1.25, 1000, 0
    for _ in range(draws):
        old, new = [], []
        for _ in range(rounds):
            load = math.exp(rng.uniform(0.0, 3.0))
            slow = [1.0, 1.0]
            if rng.random() < 0.2:
                slow[rng.randrange(2)] = 3.0
            old.append(load * math.exp(rng.gauss(0, 0.1)) * slow[0])
            new.append(load / true_ratio * math.exp(rng.gauss(0, 0.1)) * slow[1])
        interval = Comparison({"old": tuple(old), "new": tuple(new)}).interval("new", "old")
        covered += interval.contains(true_ratio)
    level = interval.level
    assert level >= 0.95
    # a binomial count of draws: within 4 standard deviations of the interval's own coverage
    assert abs(covered / draws - level) < 4 * math.sqrt(level * (1 - level) / draws), (covered, level)


def test_the_verdict_at_its_boundaries():
    def verdict(speedups: list[float]) -> str:
        # speedup = t_over / t_name; powers of 2 keep every ratio exact
        comparison = Comparison({"over": tuple(speedups), "name": (1.0,) * len(speedups)})
        return comparison.verdict("name", "over")

    assert verdict([1.0, 2.0, 2.0, 2.0, 2.0, 2.0]) == "no measurable difference"  # touching 1 from above
    assert verdict([0.5, 0.5, 0.5, 0.5, 0.5, 1.0]) == "no measurable difference"  # touching 1 from below
    assert verdict([0.5, 0.5, 1.0, 2.0, 2.0, 2.0]) == "no measurable difference"  # 1 inside
    assert verdict([1.0 + 2**-20, 2.0, 2.0, 2.0, 2.0, 2.0]) == "faster"  # entirely above 1
    assert verdict([0.5, 0.5, 0.5, 0.5, 0.5, 1.0 - 2**-20]) == "slower"  # entirely below 1
    assert SpeedInterval(1.04, 1.0, 1.1, 0.96875, 6).verdict == "no measurable difference"


def test_a_speed_whose_interval_holds_1_is_never_shown_as_a_speed_up():
    same = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    comparison = Comparison(
        {"baseline": same, "noise": (0.9, 0.95, 0.96, 1.0, 1.05, 1.1), "halved": tuple(t / 2 for t in same)}
    )
    noise = comparison.interval("noise", "baseline")
    assert noise.speedup > 1  # the median says 1.02x faster ...
    assert noise.verdict == "no measurable difference" and noise.shown == "≈ 1 (0.909–1.11)"  # ... it is not
    lines = comparison.table("baseline").splitlines()
    rows = {line.split()[0]: line for line in lines[5:7]}
    assert rows["noise"].endswith("≈ 1 (0.909–1.11)  no measurable difference")
    assert rows["halved"].endswith("2.00x (2.00–2.00) faster")
    assert not any(line.startswith("baseline") for line in lines[4:])  # no speed against itself


# --- throughput ----------------------------------------------------------------------------------------


def test_throughput_is_samples_over_the_median_time():
    events: list[str] = []
    clock = FakeClock(events)
    times = iter([0.1, 0.2, 0.4])

    def step():
        clock.now += next(times)

    result = throughput(step, samples=64, warmup=0, repeat=3, clock=clock)
    assert result.per_second == pytest.approx(64 / 0.2)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        throughput(step, samples=0)


def test_loader_throughput_counts_the_samples_of_an_epoch():
    loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=4)
    result = loader_throughput(loader, repeat=2)
    assert result.samples == 10 and len(result.timing.seconds) == 2
    assert loader_throughput(loader, max_batches=2).samples == 8


def test_batch_size_of_reads_the_first_tensor_of_any_batch():
    x = torch.zeros(7, 3)
    assert batch_size_of(x) == batch_size_of((x, torch.zeros(7))) == batch_size_of({"image": x}) == 7
    assert batch_size_of([[x]]) == 7
    with pytest.raises(TypeError, match="cannot count the samples in a batch of type str"):
        batch_size_of("abc")
    with pytest.raises(ValueError, match="0-dimensional"):
        batch_size_of(torch.tensor(1.0))


def test_consume_stops_after_max_batches_and_refuses_non_iterables():
    loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=3)
    assert consume(loader) == 10 and consume(loader, max_batches=2) == 6
    with pytest.raises(TypeError, match="loader must be iterable"):
        consume(5)


# --- the epoch split -----------------------------------------------------------------------------------


class SlowLoader:
    """Three batches of 2 samples; fetching a batch advances the fake clock by 3 seconds."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def __iter__(self):
        for _ in range(3):
            self.clock.now += 3.0
            yield torch.zeros(2, 1), torch.zeros(2)


def test_split_epoch_puts_fetching_in_data_time_and_the_step_in_compute_time():
    clock = FakeClock([])

    def step(batch):
        clock.now += 1.0

    split = split_epoch(SlowLoader(clock), step, clock=clock)
    assert (split.data_seconds, split.compute_seconds) == (9.0, 3.0)
    assert (split.batches, split.samples) == (3, 6)
    assert split.data_fraction == 0.75
    assert str(split) == "3 batches, 6 samples: data 9 s (75%), compute 3 s (25%)"
    assert split_epoch(SlowLoader(clock), step, clock=clock, max_batches=2).batches == 2


def test_split_epoch_synchronizes_the_device_after_each_step(fake_cuda):
    events, _ = fake_cuda
    clock = FakeClock(events)
    split_epoch(SlowLoader(clock), lambda batch: events.append("step"), device="cuda", clock=clock)
    steps = [i for i, e in enumerate(events) if e == "step"]
    assert len(steps) == 3 and all(events[i + 1 : i + 3] == ["sync", "clock"] for i in steps)


def test_split_epoch_refuses_bad_arguments():
    loader = [(torch.zeros(1),)]
    with pytest.raises(TypeError, match="step must be a function of one batch, got NoneType"):
        split_epoch(loader, None)
    with pytest.raises(ValueError, match="max_batches must be at least 1"):
        split_epoch(loader, lambda b: None, max_batches=0)
    with pytest.raises(ValueError, match="the loader yielded no batches"):
        split_epoch([], lambda b: None)


# --- the profiler ---------------------------------------------------------------------------------------


def test_top_operators_finds_the_matrix_product_that_dominates():
    a, b = torch.randn(300, 300), torch.randn(300, 300)
    table = top_operators(lambda: (a @ b).relu_(), steps=2, top=3)
    assert table.names()[0] == "aten::mm"
    assert table.rows[0].calls_per_step == 1 and table.rows[0].share > 0.5
    assert 0 < sum(row.share for row in table.rows) <= 1 + 1e-9
    assert all(len(line) <= 88 for line in str(table).splitlines())
    with pytest.raises(ValueError, match="steps must be at least 1"):
        top_operators(lambda: None, steps=0)


def event(key, *, cpu_us=0.0, device_us=0.0, on_device=False, annotation=False, count=2):
    """An entry of ``profile.key_averages()`` with the fields the table reads (FunctionEventAvg's names)."""
    return SimpleNamespace(
        key=key,
        count=count,
        self_cpu_time_total=cpu_us,
        self_device_time_total=device_us,
        device_type=DeviceType.CUDA if on_device else DeviceType.CPU,
        is_legacy=False,
        is_user_annotation=annotation,
    )


# A CUDA step as Kineto records it: two operators, the kernel each launched (the same time again, as a
# device event of its own), and a GPU-side user annotation spanning both kernels.
CUDA_STEP = [
    event("aten::mm", cpu_us=50.0, device_us=600.0),
    event("aten::add", cpu_us=30.0, device_us=200.0),
    event("gemm_kernel", device_us=600.0, on_device=True),
    event("elementwise_kernel", device_us=200.0, on_device=True),
    event("train_step", device_us=800.0, on_device=True, annotation=True),
]


def test_gpu_shares_are_of_the_kernels_time_counted_once_as_torch_s_own_table_counts_it():
    table = operator_table(CUDA_STEP, steps=2, device_time=True)
    assert table.names() == ["aten::mm", "aten::add"]  # the operators; their kernels are not rows again
    assert [row.share for row in table.rows] == [pytest.approx(0.75), pytest.approx(0.25)]
    assert table.rows[0].self_seconds_per_step == pytest.approx(300e-6)
    assert "GPU self/step" in str(table)


def test_top_operators_on_cuda_counts_each_gpu_second_once(monkeypatch):
    class FakeProfile:
        def __init__(self, activities):
            assert torch.profiler.ProfilerActivity.CUDA in activities

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def key_averages(self):
            return CUDA_STEP

    monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    monkeypatch.setattr(perf, "synchronize", lambda device=None: None)  # no GPU here
    table = top_operators(lambda: None, steps=2, device="cuda")
    assert table.device_time
    assert [row.share for row in table.rows] == [pytest.approx(0.75), pytest.approx(0.25)]  # not 0.25, 0.08


def test_the_cpu_table_is_every_event_s_self_cpu_time():
    table = operator_table(CUDA_STEP[:2], steps=1, top=1)
    assert table.names() == ["aten::mm"] and table.rows[0].share == pytest.approx(50 / 80)
    assert not table.device_time


# --- TensorLoader ---------------------------------------------------------------------------------------


def batches_equal(a, b) -> bool:
    return len(a) == len(b) and all(
        len(p) == len(q) and all(torch.equal(s, t) for s, t in zip(p, q)) for p, q in zip(a, b)
    )


@pytest.mark.parametrize("shuffle, drop_last, seeded", list(itertools.product([True, False], repeat=3)))
def test_tensorloader_yields_a_dataloaders_batches_and_draws_the_same_random_numbers(
    shuffle, drop_last, seeded
):
    x, y = torch.randn(103, 3), torch.arange(103)
    runs = []
    for make in (
        lambda g: DataLoader(TensorDataset(x, y), 10, shuffle=shuffle, generator=g, drop_last=drop_last),
        lambda g: TensorLoader(x, y, batch_size=10, shuffle=shuffle, generator=g, drop_last=drop_last),
    ):
        torch.manual_seed(1)
        generator = torch.Generator().manual_seed(5) if seeded else None
        loader = make(generator)
        epochs = [list(loader) for _ in range(3)]
        states = (torch.get_rng_state(), generator.get_state() if seeded else None)
        runs.append((len(loader), epochs, states))
    (len_d, epochs_d, states_d), (len_t, epochs_t, states_t) = runs
    assert len_d == len_t == (10 if drop_last else 11)
    assert all(batches_equal(d, t) for d, t in zip(epochs_d, epochs_t))
    assert torch.equal(states_d[0], states_t[0])  # the global RNG (dropout's) is left in the same state
    if seeded:
        assert torch.equal(states_d[1], states_t[1])
    if shuffle:
        assert not torch.equal(epochs_t[0][0][1], epochs_t[1][0][1])  # a new order every epoch


def test_fit_ends_with_the_same_weights_with_a_tensorloader_as_with_a_dataloader():
    x, y = torch.randn(200, 8), torch.randint(0, 3, (200,))
    weights = []
    for make in (
        lambda g: DataLoader(TensorDataset(x, y), 32, shuffle=True, generator=g),
        lambda g: TensorLoader(x, y, batch_size=32, shuffle=True, generator=g),
    ):
        companion.seed_everything(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        loader = make(torch.Generator().manual_seed(0))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        companion.fit(model, loader, nn.CrossEntropyLoss(), optimizer, 3, progress=False)
        weights.append(list(model.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_tensorloader_from_a_cached_dataset_matches_the_dataloader_over_it():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), i % 4

    cached = CachedDataset(Pairs())
    make = dict(batch_size=6, shuffle=True)
    from_loader = list(DataLoader(cached, generator=torch.Generator().manual_seed(3), **make))
    from_tensors = list(TensorLoader.from_dataset(cached, generator=torch.Generator().manual_seed(3), **make))
    assert batches_equal(from_loader, from_tensors)
    assert from_tensors[0][1].dtype == torch.int64
    with pytest.raises(ValueError, match="this CachedDataset has a transform"):
        TensorLoader.from_dataset(CachedDataset(Pairs(), transform=torch.neg))
    with pytest.raises(TypeError, match="from_dataset takes a TensorDataset or a CachedDataset, got Pairs"):
        TensorLoader.from_dataset(Pairs())
    tensors = TensorDataset(torch.zeros(5, 2), torch.ones(5))
    assert len(TensorLoader.from_dataset(tensors, batch_size=2)) == 3


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((), {}, TypeError, "TensorLoader needs at least one tensor"),
        (([1, 2],), {}, TypeError, "argument 0 is list: pass tensors"),
        ((torch.tensor(1.0),), {}, TypeError, "argument 0 is a 0-dimensional tensor"),
        ((torch.zeros(3), torch.zeros(4)), {}, ValueError, r"different numbers of samples, \[3, 4\]"),
        ((torch.zeros(0),), {}, ValueError, "the tensors hold no samples"),
        ((torch.zeros(3),), dict(batch_size=0), ValueError, "batch_size must be at least 1"),
        ((torch.zeros(3),), dict(shuffle="yes"), TypeError, "shuffle must be True or False"),
        ((torch.zeros(3),), dict(generator=0), TypeError, "generator must be a torch.Generator or None"),
    ],
)
def test_tensorloader_refuses_bad_arguments_saying_what_to_pass(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        TensorLoader(*args, **kwargs)


def test_tensorloader_moves_the_tensors_once_to_its_device():
    loader = TensorLoader(torch.zeros(4, 2, dtype=torch.float64), batch_size=3, device="cpu")
    assert [tuple(b[0].shape) for b in loader] == [(3, 2), (1, 2)]
    assert repr(loader) == "TensorLoader((4, 2), batch_size=3, shuffle=False, drop_last=False)"


# --- the CPU's bf16 case ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, case",
    [
        ("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "amx"),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16", "avx512_bf16"),
        ("flags\t\t: fpu avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni", "avx512"),
        ("flags\t\t: fpu avx2 avx512f avx512pf avx512er", "none"),  # Xeon Phi: no AVX512BW/VL
        ("flags\t\t: fpu sse4_2 avx2 fma", "none"),
        ("Features\t: fp asimd sve bf16 i8mm", "arm_bf16"),
    ],
)
def test_bf16_case_reads_the_flags_of_proc_cpuinfo(tmp_path, line, case):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{line}\n\nprocessor\t: 1\n{line}\n")
    assert bf16_case(cpu_flags(cpuinfo)) == case
    assert case in companion.device.BF16_CASES


def test_bf16_case_is_unknown_where_the_flags_cannot_be_read(tmp_path):
    assert cpu_flags(tmp_path / "missing") is None
    assert bf16_case(None) == "unknown"
    with pytest.raises(TypeError, match="flags must be a collection of flag names"):
        bf16_case("avx2 avx512_bf16")


# --- resized digit images (companion.datasets, for chapter 7) -------------------------------------------


def test_resized_digits_are_written_once_at_the_asked_size(tmp_path):
    from torchvision.datasets import ImageFolder

    root = resized_digits_imagefolder(tmp_path / "digits_16", size=16, count=30)
    folder = ImageFolder(root)
    assert len(folder) == 30 and folder[0][0].size == (16, 16)
    first = sorted(root.glob("*/*.png"))[0]
    written = first.stat().st_mtime_ns
    assert resized_digits_imagefolder(tmp_path / "digits_16", size=16, count=30) == root
    assert first.stat().st_mtime_ns == written  # found complete: nothing was written again
    with pytest.raises(FileExistsError, match="is not a complete tree of 30 digits of 32x32 pixels"):
        resized_digits_imagefolder(root, size=32, count=30)


def test_resized_digits_refuse_bad_sizes_and_counts(tmp_path):
    with pytest.raises(ValueError, match="size must be between 1 and 1024 pixels, got 0"):
        resized_digits_imagefolder(tmp_path / "a", size=0)
    with pytest.raises(
        ValueError, match=r"count must be between 1 and 1257 \(the training digits\), got 5000"
    ):
        resized_digits_imagefolder(tmp_path / "a", size=8, count=5000)
    with pytest.raises(TypeError, match="size must be an int, got float"):
        resized_digits_imagefolder(tmp_path / "a", size=8.0)


def test_saved_activation_bytes_counts_each_saved_storage_once_and_not_the_weights():
    # Linear(4, 3) saves its input x (2 x 4 floats) and its weight; ReLU saves its output (2 x 3 floats),
    # which the second Linear saves again as its input: 32 + 24 bytes, the weights excluded
    companion.seed_everything(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(2, 4)
    assert (
        perf.saved_activation_bytes(lambda: net(x).sum(), exclude=net.parameters()) == 2 * 4 * 4 + 2 * 3 * 4
    )
    with_weights = perf.saved_activation_bytes(lambda: net(x).sum())
    # and the second Linear's weight (1 x 3), which its input's gradient needs; the first Linear's is not
    # saved, since x needs no gradient
    assert with_weights == 2 * 4 * 4 + 2 * 3 * 4 + 1 * 3 * 4
    with torch.no_grad():
        assert perf.saved_activation_bytes(lambda: net(x).sum()) == 0  # no graph, nothing saved


def test_checkpointing_leaves_only_the_segments_inputs_saved_and_the_gradients_equal():
    from torch.utils.checkpoint import checkpoint

    companion.seed_everything(0)
    body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
    x = torch.randn(5, 8, requires_grad=True)
    grads = []
    for wrap in (lambda h: body(h), lambda h: checkpoint(body, h, use_reentrant=False)):
        saved = perf.saved_activation_bytes(
            lambda wrap=wrap: wrap(x).sum().backward(), exclude=body.parameters()
        )
        grads.append([x.grad.clone(), *(p.grad.clone() for p in body.parameters())])
        x.grad = None
        body.zero_grad(set_to_none=True)
        # plain: x and the two ReLU outputs (the second Linear saves the first ReLU's output as its input);
        # checkpointed: only x, the segment's input
        assert saved == (3 * 5 * 8 * 4 if len(grads) == 1 else 5 * 8 * 4)
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_saved_activation_bytes_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="function of no arguments"):
        perf.saved_activation_bytes(torch.ones(2))
    with pytest.raises(TypeError, match="exclude=model.parameters"):
        perf.saved_activation_bytes(lambda: None, exclude=torch.ones(2))


# --- compare_processes: whole processes side by side, each in its environment ----------------------------

# Each process reports the variable X as it saw it, after a line of other output. Both wait until both
# have started (a file each in the folder given as argv[1]): the processes run at the same time, or
# neither finishes.
SIDE_BY_SIDE = """
import json, os, pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
(folder / os.environ["NAME"]).touch()
deadline = time.monotonic() + 60
while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
print("a line before the report")
print(json.dumps({"seconds": [0.2, 0.4, 0.2], "x": os.environ.get("X"), "both": len(list(folder.iterdir()))}))
"""


def test_compare_processes_runs_each_environment_at_the_same_time_and_pairs_their_rounds(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("X", "this process's")
    comparison, reports = perf.compare_processes(
        SIDE_BY_SIDE,
        {"set": {"NAME": "a", "X": "1"}, "removed": {"NAME": "b", "X": None}},
        args=[tmp_path],
        timeout=120,
    )
    assert reports == {"set": {"x": "1", "both": 2}, "removed": {"x": None, "both": 2}}
    assert comparison.seconds == {"set": (0.2, 0.4, 0.2), "removed": (0.2, 0.4, 0.2)}
    assert comparison.speedup("set", "removed") == 1.0


def test_compare_processes_names_the_process_that_failed_with_its_stderr():
    script = (
        "import json, os, sys\n"
        "if os.environ['WHAT'] == 'b':\n"
        "    sys.exit('no ' + os.environ['WHAT'])\n"
        "print(json.dumps({'seconds': [1.0]}))"
    )
    with pytest.raises(RuntimeError, match=r"the process 'b' exited with status 1;(.|\n)*no b"):
        perf.compare_processes(script, {"a": {"WHAT": "a"}, "b": {"WHAT": "b"}})


@pytest.mark.parametrize(
    "printed", ["print('done')", "print('{\"loss\": 0.5}')", "print('{\"seconds\": []}')", "pass"]
)
def test_compare_processes_says_what_a_script_must_print(printed):
    with pytest.raises(
        ValueError, match=r"the process 'a' must print, as its last line, a JSON object with 'seconds'"
    ):
        perf.compare_processes(printed, {"a": {}, "b": {}})


def test_compare_processes_refuses_unpaired_rounds_fewer_than_two_processes_and_a_runaway():
    rounds = "import json, os; print(json.dumps({'seconds': [1.0] * int(os.environ['N'])}))"
    with pytest.raises(ValueError, match=r"as many rounds, to pair them; they timed \{'a': 2, 'b': 3\}"):
        perf.compare_processes(rounds, {"a": {"N": "2"}, "b": {"N": "3"}})
    with pytest.raises(ValueError, match="at least 2 names"):
        perf.compare_processes(rounds, {"a": {"N": "2"}})
    with pytest.raises(TypeError, match="Python source as a str"):
        perf.compare_processes(lambda: None, {"a": {}, "b": {}})
    with pytest.raises(RuntimeError, match=r"the process 'a' ran past timeout=1 s"):
        perf.compare_processes("import time; time.sleep(30)", {"a": {}, "b": {}}, timeout=1)
