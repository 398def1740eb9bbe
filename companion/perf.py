"""Chapter 7, "Making training fast": measure first, then speed up.

Measuring:

- :func:`measure` times a function the way a GPU needs it timed: untimed warm-up calls, then
  repeated runs, each between two device synchronizations, reported as a :class:`Timing` (median
  and spread, never one number);
- :func:`compare` times several functions *side by side*, interleaved round by round, so that a
  change in the machine's load hits all of them alike; its :class:`Comparison` gives ratios as
  medians of per-round ratios, each with a distribution-free interval (:func:`median_interval`)
  and a verdict, as a :class:`SpeedInterval`: faster, slower, or no measurable difference;
  :func:`compare_processes` does the same for whole processes run side by side, each in its own
  environment (a preloaded memory allocator, other threads or kernels);
- :func:`throughput` and :func:`loader_throughput` turn timings into samples per second;
- :func:`split_epoch` splits an epoch into the time spent waiting for data and the time spent
  computing; :func:`top_operators` runs ``torch.profiler`` over a step and returns the operators
  that took the most time, as a table;
- :func:`saved_activation_bytes` counts the bytes autograd keeps for the backward pass of a step,
  exactly: the memory activation checkpointing trades for time.

The tools the chapter speeds training up with live with their concepts: the loader that slices
batches from tensors in memory, :class:`~companion.loading.TensorLoader`, with the other loaders in
:mod:`companion.loading`; :func:`~companion.device.cpu_flags` and :func:`~companion.device.bf16_case`,
which say whether this processor computes in bfloat16 natively, in :mod:`companion.device`.

Imports run one way: this module uses :mod:`companion.checks`, :mod:`companion.device` and
:mod:`companion.loading`; nothing imports this one back.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.autograd import DeviceType

from companion.checks import check_callable, check_device, check_int

__all__ = [
    "Comparison",
    "EpochSplit",
    "OperatorTable",
    "OperatorTime",
    "SpeedInterval",
    "Throughput",
    "Timing",
    "Verdict",
    "batch_size_of",
    "compare",
    "compare_processes",
    "consume",
    "format_ratio",
    "format_seconds",
    "goal_verdict",
    "loader_throughput",
    "measure",
    "median_interval",
    "operator_table",
    "rounds_for",
    "saved_activation_bytes",
    "split_epoch",
    "synchronize",
    "throughput",
    "top_operators",
]

Clock = Callable[[], float]
WIDTH = 88  # the widest line a table here prints: the book's column


# --- synchronizing and formatting ----------------------------------------------------------------------


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait until ``device`` has finished the work queued on it; a no-op on a CPU.

    A GPU runs asynchronously: ``y = model(x)`` returns as soon as the kernels are *queued*, so a
    clock read right after it measures the queueing, not the work. Reading the clock after
    ``torch.cuda.synchronize()`` measures the work. ``device=None`` synchronizes CUDA when this
    process has used it (and does nothing otherwise, without starting a CUDA context).
    """
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return
    device = check_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


def format_seconds(seconds: float) -> str:
    """``seconds`` with a unit that keeps 3 significant digits: ``'1.23 s'``, ``'45.6 ms'``, ``'789 µs'``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


# --- timing one function ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one function, one figure per timed run.

    The median is the figure to quote: unlike the mean it ignores the odd run that the operating
    system interrupted. The spread is the interquartile range :math:`q_{75} - q_{25}` of the runs;
    a spread that is a large part of the median says the machine was busy (time again).
    """

    seconds: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.seconds:
            raise ValueError("a Timing needs at least one run; pass repeat >= 1")

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """The interquartile range of the runs (0 for a single run)."""
        if len(self.seconds) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q3 - q1

    @property
    def min(self) -> float:
        return min(self.seconds)

    @property
    def max(self) -> float:
        return max(self.seconds)

    def __str__(self) -> str:
        runs = len(self.seconds)
        return (
            f"{format_seconds(self.median)} per call (median of {runs} run{'s' if runs > 1 else ''}, "
            f"IQR {format_seconds(self.spread)})"
        )


def _timed_run(fn: Callable[[], Any], number: int, device: Any, clock: Clock) -> float:
    """Seconds per call of ``number`` calls of ``fn``, between two synchronizations of ``device``."""
    synchronize(device)  # work queued before the run is not the run's
    start = clock()
    for _ in range(number):
        fn()
    synchronize(device)  # the run's work is done before the clock is read
    return (clock() - start) / number


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    number: int = 1,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed runs of ``number`` calls each.

    Each run reads the clock between two synchronizations of ``device`` (see :func:`synchronize`)
    and records :math:`(t_1 - t_0) / \\text{number}`, seconds per call. The warm-up calls absorb
    first-call costs that are not the steady state: memory allocation, kernel selection
    (``cudnn.benchmark``), compilation (``torch.compile``), worker start-up. Use ``number > 1`` for
    calls too short for the clock (well under a millisecond).
    """
    check_callable(fn, "fn", what="a function to call with no arguments", example="lambda: step(batch)")
    return compare(
        {"fn": fn}, warmup=warmup, repeat=repeat, number=number, device=device, clock=clock
    ).timing("fn")


# --- how sure a ratio is ------------------------------------------------------------------------------

Verdict = Literal["faster", "slower", "no measurable difference"]
LEVEL = 0.95  # the probability with which an interval covers what it bounds


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)):
        raise TypeError(f"level must be a probability such as 0.95, got {type(level).__name__}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, e.g. level=0.95; got {level}")
    return float(level)


def _coverage(n: int, k: int) -> float:
    """:math:`P(X_{(k)} \\le m \\le X_{(n+1-k)}) = 1 - 2 P(B \\le k - 1)`, :math:`B \\sim \\text{Binomial}(n, 1/2)`:
    how often the k-th smallest and k-th largest of n draws bracket the median m (see :func:`median_interval`)."""
    return 1.0 - 2.0 * sum(math.comb(n, j) for j in range(k)) / 2**n


def rounds_for(level: float = LEVEL) -> int:
    """The fewest rounds that can give a ``level`` interval for a median: the smallest :math:`n` with
    :math:`1 - 2^{1-n} \\ge` ``level``, the coverage of the smallest and largest of :math:`n` draws
    (6 rounds for 95 %, 8 for 99 %)."""
    level = _check_level(level)
    n = 1
    while _coverage(n, 1) < level:
        n += 1
    return n


def median_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """A distribution-free interval for the median :math:`m` of the distribution ``values`` were drawn
    from: ``(low, high, coverage)``, with ``coverage`` >= ``level``.

    Order statistics, not a bootstrap. Sort the :math:`n` values, :math:`X_{(1)} \\le \\dots \\le X_{(n)}`.
    If they are independent draws from a continuous distribution, each falls below :math:`m` with
    probability 1/2, so the number below it is :math:`B \\sim \\text{Binomial}(n, 1/2)`, whatever the
    distribution. :math:`X_{(k)} \\le m \\le X_{(n+1-k)}` exactly when :math:`k \\le B \\le n - k`, so

    .. math:: P\\bigl(X_{(k)} \\le m \\le X_{(n+1-k)}\\bigr) = 1 - 2 \\sum_{j=0}^{k-1} \\binom{n}{j} 2^{-n}.

    The interval is :math:`[X_{(k)}, X_{(n+1-k)}]` for the largest :math:`k` whose coverage is at least
    ``level``; the coverage returned is that probability (ties only raise it). Fewer than
    :func:`rounds_for` values (6 for 95 %) cannot reach ``level`` even with :math:`k = 1`, the smallest
    and the largest value, whose coverage is :math:`1 - 2^{1-n}` (93.75 % for 5): that raises
    ``ValueError`` rather than give a narrower, weaker interval under the same name.
    """
    level = _check_level(level)
    ordered = sorted(float(v) for v in values)
    n, needed = len(ordered), rounds_for(level)
    if n < needed:
        most = f"at most {_coverage(n, 1):.2%} for {n}" if n > 1 else f"none for {n}"
        raise ValueError(
            f"{n} value{'s' if n != 1 else ''} cannot give a {level:.0%} interval for a median (the smallest "
            f"and largest cover it with probability {most}); pass at least {needed}, e.g. compare(..., "
            f"repeat={needed}), or a lower level"
        )
    k = 1
    while _coverage(n, k + 1) >= level:
        k += 1
    return ordered[k - 1], ordered[n - k], _coverage(n, k)


def goal_verdict(
    low: float, high: float, goal: float, at_most: bool
) -> Literal["met", "missed", "undecided"]:
    """Whether an interval ``[low, high]`` for a ratio meets a goal: ``ratio <= goal`` when ``at_most``,
    else ``ratio >= goal``. ``'met'`` when the whole interval does, ``'missed'`` when none of it does,
    ``'undecided'`` when the goal lies inside it (more rounds, or a quieter machine, may tell)."""
    if low > high:
        raise ValueError(f"an interval runs from its low end to its high end; got low {low} > high {high}")
    inside, outside = (high <= goal, low > goal) if at_most else (low >= goal, high < goal)
    if inside:
        return "met"
    return "missed" if outside else "undecided"


def format_ratio(ratio: float) -> str:
    """A ratio with 3 significant digits, trailing zeros kept (``'1.20'``, ``'0.873'``); from 100 up,
    a whole number with thousands separated (``'1,388'``)."""
    if math.isfinite(ratio) and abs(ratio) >= 99.95:
        return f"{ratio:,.0f}"
    return f"{ratio:#.3g}".rstrip(".")


@dataclass(frozen=True)
class SpeedInterval:
    """How many times as fast one function ran as another, and how sure that is.

    ``speedup`` is the median of the per-round ratios (:meth:`Comparison.speedup`); ``low`` and
    ``high`` bound the median of the distribution those ratios come from, with probability
    ``level`` (at least the level asked for, see :func:`median_interval`), from ``rounds`` rounds.
    """

    speedup: float
    low: float
    high: float
    level: float
    rounds: int

    @property
    def verdict(self) -> Verdict:
        """``'faster'`` when the whole interval lies above 1, ``'slower'`` when it lies below 1, and
        ``'no measurable difference'`` when it holds 1 (an end equal to 1 included)."""
        if self.low > 1:
            return "faster"
        if self.high < 1:
            return "slower"
        return "no measurable difference"

    def contains(self, ratio: float) -> bool:
        """Whether ``ratio`` lies in the interval, ends included."""
        return self.low <= ratio <= self.high

    @property
    def shown(self) -> str:
        """The speed as a table prints it: ``'1.26x (1.20–1.31)'``, and ``'≈ 1 (0.93–1.12)'`` when the
        interval holds 1, which is then never shown as a speed-up or a slow-down."""
        bounds = f"({format_ratio(self.low)}–{format_ratio(self.high)})"
        if self.verdict == "no measurable difference":
            return f"≈ 1 {bounds}"
        return f"{format_ratio(self.speedup)}x {bounds}"

    def __str__(self) -> str:
        return f"{self.shown}, {self.verdict}"


# --- timing several side by side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Seconds per call of several functions, timed in the same rounds (see :func:`compare`)."""

    seconds: dict[str, tuple[float, ...]]

    def _check_name(self, name: str) -> None:
        if name not in self.seconds:
            raise KeyError(f"{name!r} was not timed; the names are {', '.join(map(repr, self.seconds))}")

    def timing(self, name: str) -> Timing:
        self._check_name(name)
        return Timing(self.seconds[name])

    def ratio(self, name: str, to: str) -> float:
        """The median over rounds of :math:`t_\\text{name} / t_\\text{to}`: name's time in units of to's."""
        self._check_name(name)
        self._check_name(to)
        return statistics.median(a / b for a, b in zip(self.seconds[name], self.seconds[to]))

    def speedups(
        self, name: str, over: str, samples: Mapping[str, int] | int | None = None
    ) -> tuple[float, ...]:
        """The per-round ratios, round :math:`i`'s :math:`t_{\\text{over},i} / t_{\\text{name},i}`, or
        with ``samples`` per call, :math:`(n_\\text{name} / t_{\\text{name},i}) / (n_\\text{over} / t_{\\text{over},i})`."""
        self._check_name(name)
        self._check_name(over)
        if samples is None or isinstance(samples, int):
            n_name = n_over = 1
        else:
            n_name, n_over = samples[name], samples[over]
        return tuple((n_name / a) / (n_over / b) for a, b in zip(self.seconds[name], self.seconds[over]))

    def speedup(self, name: str, over: str, samples: Mapping[str, int] | int | None = None) -> float:
        """How many times faster ``name`` ran than ``over`` (below 1: slower), as the median over
        rounds of :math:`t_\\text{over} / t_\\text{name}` (see :meth:`speedups`).

        When one call of each does a different amount of work (say 20 fast epochs against one slow
        one, to time each for long enough), pass ``samples`` per call: the ratio is then of samples
        per second, :math:`(n_\\text{name} / t_\\text{name}) / (n_\\text{over} / t_\\text{over})`.
        """
        return statistics.median(self.speedups(name, over, samples))

    def interval(
        self,
        name: str,
        over: str,
        samples: Mapping[str, int] | int | None = None,
        level: float = LEVEL,
    ) -> SpeedInterval:
        """:meth:`speedup` with a ``level`` interval for it, from the per-round ratios by order
        statistics (:func:`median_interval`), and its verdict. The rounds are taken as independent
        draws: each round times every candidate once, so a change of load between rounds moves the
        times, not the ratios. Fewer rounds than :func:`rounds_for` (6 for 95 %) raise ``ValueError``."""
        ratios = self.speedups(name, over, samples)
        low, high, coverage = median_interval(ratios, level)
        return SpeedInterval(statistics.median(ratios), low, high, coverage, len(ratios))

    def verdict(
        self,
        name: str,
        over: str,
        samples: Mapping[str, int] | int | None = None,
        level: float = LEVEL,
    ) -> Verdict:
        """``'faster'``, ``'slower'`` or ``'no measurable difference'``: ``name`` against ``over``, by
        where the :meth:`interval` lies (see :attr:`SpeedInterval.verdict`)."""
        return self.interval(name, over, samples, level).verdict

    def table(
        self, baseline: str, samples: Mapping[str, int] | int | None = None, level: float = LEVEL
    ) -> str:
        """One line per function: median time per call, spread (IQR) and samples/s (given ``samples``
        per call, one number for all or one per name); then one line per function but ``baseline``:
        its speed relative to ``baseline`` with the ``level`` interval and the verdict (see
        :meth:`interval`). A speed whose interval holds 1 is shown as ``≈ 1``, never as a speed-up.
        No line is wider than 88 characters. Needs :func:`rounds_for` rounds (6 for 95 %)."""
        self._check_name(baseline)
        if isinstance(samples, int):
            samples = {name: samples for name in self.seconds}
        others = [name for name in self.seconds if name != baseline]
        intervals = {name: self.interval(name, baseline, samples, level) for name in others}
        speed_width = max([len("speed"), *(len(iv.shown) for iv in intervals.values())])
        longest = max(len(name) for name in self.seconds)
        label = max(8, min(40, longest, WIDTH - 2 - speed_width - len("no measurable difference")))

        def shown(name: str) -> str:
            return name if len(name) <= label else name[: label - 3] + "..."

        head = f"{'':{label}} {'median':>9} {'IQR':>9}" + (f" {'samples/s':>12}" if samples else "")
        lines = [head]
        for name in self.seconds:
            timing = self.timing(name)
            line = (
                f"{shown(name):{label}} {format_seconds(timing.median):>9} {format_seconds(timing.spread):>9}"
            )
            if samples:
                line += f" {samples[name] / timing.median:>12,.0f}"
            lines.append(line)
        if not others:
            return "\n".join(lines)
        lines.append(f"{'':{label}} {'speed':<{speed_width}} verdict")
        for name, interval in intervals.items():
            lines.append(f"{shown(name):{label}} {interval.shown:<{speed_width}} {interval.verdict}")
        base = baseline if len(baseline) <= 40 else baseline[:37] + "..."
        rounds = len(self.seconds[baseline])
        note = (
            f"speed: times as fast as {base!r}, the median of {rounds} per-round ratios, and in "
            f"brackets a {level:.0%} interval for it (order statistics); ≈ 1: the interval holds 1"
        )
        lines.append(textwrap.fill(note, WIDTH))
        return "\n".join(lines)


def compare(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeat: int = 5,
    number: int = 1,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> Comparison:
    """Time each of ``candidates`` (name -> function of no arguments), interleaved.

    After ``warmup`` untimed calls of each, there are ``repeat`` rounds; each round times every
    candidate once (as :func:`measure` does: ``number`` calls between two synchronizations), in
    the order given on even rounds and in reverse on odd ones, so that none always goes first. A
    ratio is then taken within each round, where the machine's load was the same for both, and
    the median over rounds is reported: on a shared machine that is far steadier than a ratio of
    two separately measured medians.
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise TypeError(
            "candidates must be a non-empty dict of name -> function to time, e.g. "
            "{'eager': lambda: step(model), 'compiled': lambda: step(compiled)}"
        )
    for name, fn in candidates.items():
        check_callable(
            fn,
            f"candidates[{name!r}]",
            what="a function to call with no arguments",
            example=f"{{{name!r}: lambda: step(batch)}}",
        )
    warmup = check_int(warmup, "warmup", least=0, example="warmup=1")
    repeat = check_int(repeat, "repeat", least=1, example="repeat=5")
    number = check_int(number, "number", least=1, example="number=10")
    if device is not None:
        device = check_device(device)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    order = list(candidates.items())
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeat):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            seconds[name].append(_timed_run(fn, number, device, clock))
    return Comparison({name: tuple(s) for name, s in seconds.items()})


def _environ_with(variables: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment, updated by ``variables``; a value of ``None`` removes the variable."""
    env = dict(os.environ)
    for key, value in variables.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def _run_side_by_side(
    command: list[str], environments: Mapping[str, Mapping[str, str | None]], timeout: float
) -> dict[str, tuple[str, str, int]]:
    """Start ``command`` once per environment, all at once; wait for each: ``(stdout, stderr, status)`` by name."""
    running = {}
    with contextlib.ExitStack() as files:  # files, not pipes: a chatty process never waits for a reader
        for name, variables in environments.items():
            out, err = (files.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            process = subprocess.Popen(command, env=_environ_with(variables), stdout=out, stderr=err)
            running[name] = (process, out, err)
        finished = {}
        try:
            for name, (process, out, err) in running.items():
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"the process {name!r} ran past timeout={timeout} s") from None
                out.seek(0)
                err.seek(0)
                finished[name] = (out.read(), err.read(), process.returncode)
        finally:
            for process, _, _ in running.values():
                if process.poll() is None:  # after a timeout: no process outlives the call
                    process.kill()
                    process.wait()
    return finished


def _read_report(name: str, out: str, err: str, status: int) -> dict[str, Any]:
    """The JSON object a process printed last, with its ``"seconds"``; a clear error if it failed or did not."""
    if status != 0:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(
            f"the process {name!r} exited with status {status}; its last lines of stderr:\n{tail}"
        )
    lines = out.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict) or not isinstance(report.get("seconds"), list) or not report["seconds"]:
        last = lines[-1] if lines else "(nothing)"
        raise ValueError(
            f"the process {name!r} must print, as its last line, a JSON object with 'seconds', its list "
            f'of round times, e.g. print(json.dumps({{"seconds": rounds}})); it printed {last[:200]!r}'
        )
    return report


def compare_processes(
    script: str,
    environments: Mapping[str, Mapping[str, str | None]],
    *,
    args: Sequence[str] = (),
    timeout: float = 300,
) -> tuple[Comparison, dict[str, dict[str, Any]]]:
    """Run the Python source ``script`` once per environment, all processes *at the same time*, and
    compare the rounds each one timed: what :func:`compare` does for functions, for settings that only
    a new process can take (a preloaded memory allocator, ``OMP_NUM_THREADS``, ``ATEN_CPU_CAPABILITY``).

    Each process runs ``python -c script *args`` in this process's environment updated by its entry
    of ``environments`` (name -> variables; a value of ``None`` removes the variable, so
    ``{"LD_PRELOAD": None}`` runs without a preloaded library). The script times its own rounds and
    prints, as the last line of its output, a JSON object with ``"seconds"``: one time per round, as
    many rounds in every process; anything else in the object is its report (a loss, a count).

    Processes started together run side by side, under the same load in each round, so round
    :math:`i`'s ratio :math:`t_{\text{a},i} / t_{\text{b},i}` is paired as :func:`compare`'s rounds are
    (as long as they run at similar speeds): the :class:`Comparison` of their rounds gives the same
    intervals and verdicts. Returns it, and each process's report by name.
    """
    if not isinstance(script, str) or not script.strip():
        raise TypeError(f"script must be Python source as a str, got {type(script).__name__}")
    if not isinstance(environments, Mapping) or len(environments) < 2:
        raise ValueError(
            "environments must be a dict of at least 2 names -> environment variables, e.g. "
            "{'jemalloc': {'LD_PRELOAD': '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'}, 'glibc': {'LD_PRELOAD': None}}"
        )
    finished = _run_side_by_side([sys.executable, "-c", script, *map(str, args)], environments, timeout)
    reports = {name: _read_report(name, *result) for name, result in finished.items()}
    rounds = {name: len(report["seconds"]) for name, report in reports.items()}
    if len(set(rounds.values())) != 1:
        raise ValueError(f"every process must time as many rounds, to pair them; they timed {rounds}")
    seconds = {name: tuple(float(s) for s in report.pop("seconds")) for name, report in reports.items()}
    return Comparison(seconds), reports


# --- samples per second -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    """``samples`` processed per call, and the :class:`Timing` of the calls."""

    samples: int
    timing: Timing

    @property
    def per_second(self) -> float:
        """Samples per second at the median time: :math:`n / \\operatorname{median}(t)`."""
        return self.samples / self.timing.median

    def __str__(self) -> str:
        return f"{self.per_second:,.0f} samples/s ({self.samples} samples per call: {self.timing})"


def batch_size_of(batch: Any) -> int:
    """The number of samples in ``batch``: the length of its first tensor (a batch may be a tensor,
    a tuple or list such as ``(inputs, targets)``, or a dict)."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0:
            raise ValueError("a batch cannot be a 0-dimensional tensor: its first dimension counts samples")
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size_of(batch[0])
    raise TypeError(
        f"cannot count the samples in a batch of type {type(batch).__name__}: a batch must be a tensor "
        "or a tuple, list or dict whose first item is one"
    )


def consume(loader: Iterable, max_batches: int | None = None) -> int:
    """Iterate over ``loader`` (one epoch, or its first ``max_batches`` batches); return the samples seen."""
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be iterable (a DataLoader, a TensorLoader), got {type(loader).__name__}"
        )
    if max_batches is not None:
        max_batches = check_int(max_batches, "max_batches", least=1, example="max_batches=20")
    samples = 0
    for i, batch in enumerate(loader):
        samples += batch_size_of(batch)
        if max_batches is not None and i + 1 == max_batches:
            break
    return samples


def throughput(
    fn: Callable[[], Any],
    samples: int,
    *,
    warmup: int = 1,
    repeat: int = 5,
    number: int = 1,
    device: torch.device | str | None = None,
    clock: Clock = time.perf_counter,
) -> Throughput:
    """Samples per second of ``fn``, which processes ``samples`` samples per call: e.g. a training
    step on a batch (``samples`` = the batch size) or an epoch (the dataset's length). Timed with
    :func:`measure`."""
    samples = check_int(samples, "samples", least=1, example="samples=64")
    timing = measure(fn, warmup=warmup, repeat=repeat, number=number, device=device, clock=clock)
    return Throughput(samples, timing)


def loader_throughput(
    loader: Iterable,
    *,
    repeat: int = 3,
    max_batches: int | None = None,
    clock: Clock = time.perf_counter,
) -> Throughput:
    """Samples per second that ``loader`` delivers, over whole epochs (or ``max_batches`` batches).

    One untimed pass first counts the samples and warms up (starts persistent workers, fills the
    operating system's file cache), then ``repeat`` timed passes. Only the loading is timed: the
    batches are dropped as they come, so this is the most the loader can feed a training loop.
    """
    samples = consume(loader, max_batches)
    if samples == 0:
        raise ValueError("the loader yielded no samples; pass a loader over a non-empty dataset")
    timing = measure(lambda: consume(loader, max_batches), warmup=0, repeat=repeat, clock=clock)
    return Throughput(samples, timing)


# --- where an epoch's time goes --------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochSplit:
    """An epoch's time, split into waiting for the next batch (data) and the training step (compute)."""

    data_seconds: float
    compute_seconds: float
    batches: int
    samples: int

    @property
    def seconds(self) -> float:
        return self.data_seconds + self.compute_seconds

    @property
    def data_fraction(self) -> float:
        """The share of the epoch spent waiting for data, :math:`t_\\text{data} / (t_\\text{data} + t_\\text{compute})`."""
        return self.data_seconds / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"{self.batches} batches, {self.samples} samples: data {format_seconds(self.data_seconds)} "
            f"({self.data_fraction:.0%}), compute {format_seconds(self.compute_seconds)} "
            f"({1 - self.data_fraction:.0%})"
        )


def split_epoch(
    loader: Iterable,
    step: Callable[[Any], Any],
    *,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    clock: Clock = time.perf_counter,
) -> EpochSplit:
    """Run one epoch, ``step(batch)`` for each batch of ``loader``, timing the two parts apart.

    Data time runs from asking the loader for a batch until it arrives (starting the iterator,
    and so any worker processes, counts as data time); compute time from then until ``step``
    has returned and ``device`` is synchronized (see :func:`synchronize`). With
    :math:`t_\\text{data}` a large share of the epoch the model waits for its data, and a faster
    model would not make the epoch faster: make loading faster first. The two parts are also
    marked ``"data"`` and ``"compute"`` with ``torch.profiler.record_function``, so they show up
    by name when the epoch runs under ``torch.profiler``.
    """
    if not isinstance(loader, Iterable):
        raise TypeError(
            f"loader must be iterable (a DataLoader, a TensorLoader), got {type(loader).__name__}"
        )
    check_callable(step, "step", what="a function of one batch", example="def step(batch): ...")
    if max_batches is not None:
        max_batches = check_int(max_batches, "max_batches", least=1, example="max_batches=20")
    if device is not None:
        device = check_device(device)
    data = compute = 0.0
    batches = samples = 0
    synchronize(device)
    start = clock()
    with torch.profiler.record_function("data"):
        iterator = iter(loader)
    while max_batches is None or batches < max_batches:
        with torch.profiler.record_function("data"):
            batch = next(iterator, None)
        arrived = clock()
        data += arrived - start
        if batch is None:
            break
        with torch.profiler.record_function("compute"):
            step(batch)
        synchronize(device)
        start = clock()
        compute += start - arrived
        batches += 1
        samples += batch_size_of(batch)
    if batches == 0:
        raise ValueError("the loader yielded no batches; pass a loader over a non-empty dataset")
    return EpochSplit(data, compute, batches, samples)


# --- the profiler's top operators ------------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorTime:
    """One operator in a profile: its self time (excluding the operators it called) per step."""

    name: str
    calls_per_step: float
    self_seconds_per_step: float
    share: float  # of the self time of all operators


@dataclass(frozen=True)
class OperatorTable:
    """The operators that took the most self time, most first; ``str()`` is a table of <= 88 columns."""

    rows: tuple[OperatorTime, ...]
    steps: int
    device_time: bool  # True: self time on the GPU, False: on the CPU

    def names(self) -> list[str]:
        return [row.name for row in self.rows]

    def __str__(self) -> str:
        where = "GPU" if self.device_time else "CPU"
        name_width = WIDTH - 1 - 10 - 1 - 13 - 1 - 6
        lines = [f"{'operator':{name_width}} {'calls/step':>10} {where + ' self/step':>13} {'share':>6}"]
        for row in self.rows:
            name = row.name if len(row.name) <= name_width else row.name[: name_width - 3] + "..."
            lines.append(
                f"{name:{name_width}} {row.calls_per_step:>10.3g} "
                f"{format_seconds(row.self_seconds_per_step):>13} {row.share:>6.1%}"
            )
        return "\n".join(lines)


# the kinds of device whose events are kernels (torch.autograd.profiler_util's table counts the same)
_KERNEL_DEVICES = {
    getattr(DeviceType, name) for name in ("CUDA", "PrivateUse1", "MTIA", "XPU") if hasattr(DeviceType, name)
}


def _is_kernel(event: Any) -> bool:
    """A device-side event (a kernel, or a memory copy) rather than an operator the CPU ran."""
    return event.device_type in _KERNEL_DEVICES


def _device_us(event: Any) -> float:
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)))


def operator_table(
    events: Iterable[Any], *, steps: int, top: int = 10, device_time: bool = False
) -> OperatorTable:
    """The ``top`` operators of a profile's ``key_averages()`` by self time, per step of ``steps``.

    CPU time (``device_time=False``): every event's ``self_cpu_time_total``, and each share is of their sum.

    GPU time: an operator's ``self_device_time_total`` is the time of the kernels it launched itself, and
    each kernel is an event of its own too, with the same time. So the rows are the operators (the events
    the CPU ran), and the total they are shares of is the kernels' time alone: summed over both, every
    GPU second would count twice and every share be about halved. That total is the one torch's own
    ``key_averages().table()`` prints as "Self CUDA time total" (device events, less user annotations;
    with the legacy profiler, which keeps kernel time in the CPU events, those).
    """
    events = list(events)
    if device_time:
        candidates = [e for e in events if not _is_kernel(e)]
        total = sum(
            _device_us(e)
            for e in events
            if (_is_kernel(e) and not getattr(e, "is_user_annotation", False))
            or (not _is_kernel(e) and getattr(e, "is_legacy", False))
        )
        self_us = _device_us
    else:
        candidates = events
        total = sum(float(e.self_cpu_time_total) for e in events)

        def self_us(event: Any) -> float:
            return float(event.self_cpu_time_total)

    ranked = sorted(candidates, key=self_us, reverse=True)[:top]
    rows = tuple(
        OperatorTime(
            name=e.key,
            calls_per_step=e.count / steps,
            self_seconds_per_step=self_us(e) * 1e-6 / steps,
            share=self_us(e) / total if total > 0 else 0.0,
        )
        for e in ranked
        if self_us(e) > 0
    )
    return OperatorTable(rows, steps, device_time)


def top_operators(
    fn: Callable[[], Any],
    *,
    steps: int = 3,
    warmup: int = 1,
    top: int = 10,
    device: torch.device | str | None = None,
) -> OperatorTable:
    """Profile ``steps`` calls of ``fn`` with ``torch.profiler``; return the ``top`` operators by self time.

    An operator's *self* time excludes the operators it called (``aten::linear`` calls
    ``aten::addmm``, which does the arithmetic): the self times add up to the profiled time, so
    each row's share says where the time went. On a CUDA ``device`` the GPU's self time is used,
    since that is where the kernels run (see :func:`operator_table`). ``warmup`` untimed calls come
    first (see :func:`measure`).
    """
    check_callable(fn, "fn", what="a function to call with no arguments", example="lambda: step(batch)")
    steps = check_int(steps, "steps", least=1, example="steps=3")
    warmup = check_int(warmup, "warmup", least=0, example="warmup=1")
    top = check_int(top, "top", least=1, example="top=10")
    device = check_device(device) if device is not None else None
    on_gpu = device is not None and device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for _ in range(warmup):
        fn()
    synchronize(device)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            fn()
        synchronize(device)
    return operator_table(profile.key_averages(), steps=steps, top=top, device_time=on_gpu)


# --- the memory a backward pass keeps ---------------------------------------------------------------------


def saved_activation_bytes(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Run ``fn()`` and return the bytes of the tensors autograd saved for the backward pass meanwhile.

    Autograd keeps what each operation needs to differentiate it (a linear layer's input, a ReLU's
    output): the *activations*, which live from the forward pass until ``backward()``. Every saved
    tensor passes through a ``torch.autograd.graph.saved_tensors_hooks`` pack hook; this one records
    the storage under it, so a tensor saved twice (a ReLU's output, which the next layer saves as its
    input too) or a view of a saved tensor counts once: :math:`\\sum_s \\text{bytes}(s)` over the
    distinct storages :math:`s`. Pass ``exclude=model.parameters()``: the weights are saved too, but
    they live in memory anyway. The count is exact and the same on every run and machine (sizes, not
    timings). The whole storage under a saved view counts: a batch sliced out of a dataset's tensor
    counts the dataset (clone the batch, or pass the dataset's tensor in ``exclude``). Under
    ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` the tensors saved
    inside a checkpointed segment are dropped and recomputed in the backward pass, so only the
    segment's inputs count. ``fn`` may be a whole step, one forward and one backward pass: what its
    forward pass saved counts, though the backward pass has freed it since.
    """
    check_callable(
        fn,
        "fn",
        what="a function of no arguments that runs a forward pass",
        example="lambda: loss_fn(model(x), y)",
    )
    if isinstance(exclude, torch.Tensor) or not isinstance(exclude, Iterable):
        raise TypeError(
            f"exclude must be an iterable of tensors, e.g. exclude=model.parameters(); got {type(exclude).__name__}"
        )
    skipped = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skipped:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())
