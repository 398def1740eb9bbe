"""fit under DistributedDataParallel (chapter 10).

Two kinds of tests. In this process: the samplers, the launcher, and fit in a process group of one
rank (gloo, an in-memory store), which runs every check and collective of the DDP path. Across
processes: one ``torchrun --nproc_per_node=2`` launch runs this file as a script (``worker`` below);
each rank plays every scenario and saves what it saw, and the tests named after each behaviour read
those results. Run as a script (by torchrun), this file runs ``worker`` and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset
from training_setup import CutPowerAt, PowerCut, classification_data, make_model, params

import companion
from companion import ddp_demo
from companion.callbacks import Callback, Checkpoint, CSVLogger, EarlyStopping
from companion.checkpoint import (
    CheckpointError,
    plain_state_dict,
    read_checkpoint,
    rng_state,
    save_checkpoint,
)
from companion.distributed import GlobalOrderSampler, check_backend, repeats_in_last_batch, setup
from companion.launch import TorchrunError, run_process_group, torchrun
from companion.train import evaluate, fit

HERE = Path(__file__).resolve()

# --- samplers (no process group) --------------------------------------------------------------------


def test_global_order_sampler_yields_the_ranks_global_batches_repeats_included():
    dataset = TensorDataset(torch.arange(11.0))
    world, b = 2, 3
    sampler = GlobalOrderSampler(dataset, world, seed=7)
    ranks = [DistributedSampler(dataset, world, r, shuffle=True, seed=7) for r in range(world)]
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        order, shards = list(sampler), [list(s) for s in ranks]
        assert len(order) == len(sampler) == 12, "11 samples padded to 2 x 6"
        local = [[shard[i : i + b] for i in range(0, len(shard), b)] for shard in shards]
        for j in range(len(local[0])):  # global batch j = the ranks' local batches j
            assert sorted(order[j * world * b : (j + 1) * world * b]) == sorted(local[0][j] + local[1][j])
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first, "set_epoch reshuffles"


def test_repeats_in_last_batch_finds_the_samples_the_distributed_sampler_appends():
    dataset = TensorDataset(torch.arange(11.0))  # 11 samples on 4 ranks: 3 each, 1 repeat
    loaders = [
        DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, 4, r, shuffle=True, seed=0))
        for r in range(4)
    ]
    repeats = [repeats_in_last_batch(loader) for loader in loaders]
    assert repeats == [0, 0, 0, 1]
    shards = [list(loader.sampler) for loader in loaders]
    everything = [i for shard in shards for i in shard]
    assert len(everything) == 12 and len(set(everything)) == 11
    real = [i for shard, n in zip(shards, repeats) for i in shard[: len(shard) - n]]
    assert sorted(real) == list(range(11)), "without the repeats, each sample exactly once"
    dropping = DistributedSampler(dataset, 4, 3, drop_last=True)
    assert repeats_in_last_batch(DataLoader(dataset, batch_size=2, sampler=dropping)) == 0
    never_yielded = DataLoader(dataset, batch_size=2, drop_last=True, sampler=loaders[3].sampler)
    assert repeats_in_last_batch(never_yielded) == 0, "3 samples in batches of 2: the last is dropped"
    custom = DataLoader(dataset, batch_sampler=BatchSampler(loaders[3].sampler, 2, False))
    assert repeats_in_last_batch(custom) == 1
    assert repeats_in_last_batch(DataLoader(dataset, batch_size=2)) == 0


def test_fit_calls_set_epoch_of_the_sampler_every_epoch_also_in_one_process():
    class Recording(DistributedSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.epochs = []

        def set_epoch(self, epoch):
            self.epochs.append(epoch)
            super().set_epoch(epoch)

    X, y = classification_data(24)
    dataset = TensorDataset(X, y)
    sampler = Recording(dataset, num_replicas=1, rank=0, seed=0)
    model = make_model()
    fit(
        model,
        DataLoader(dataset, batch_size=8, sampler=sampler),
        nn.CrossEntropyLoss(),
        _sgd(model),
        3,
        progress=False,
    )
    assert sampler.epochs == [0, 1, 2]


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


# --- setup and the backend -----------------------------------------------------------------------------


def test_nccl_on_a_cpu_is_refused_with_what_to_use_instead(monkeypatch):
    with pytest.raises(ValueError, match=r"NCCL, which all-reduces CUDA tensors only.*'gloo' backend"):
        check_backend("nccl", torch.device("cpu"))
    check_backend("gloo", torch.device("cpu"))
    check_backend("cpu:gloo,cuda:nccl", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="this rank computes on cpu: use the 'gloo' backend"):
        setup("nccl")
    assert not dist.is_initialized(), "refused before joining anything"


def test_setup_outside_torchrun_joins_no_group_and_returns_the_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert setup() == torch.device("cpu")
    assert not dist.is_initialized()


# --- fit in a process group of one rank ------------------------------------------------------------------


def _sharded(n=32, batch_size=8, seed=0, **kwargs):
    X, y = classification_data(n)
    dataset = TensorDataset(X, y)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=DistributedSampler(dataset, seed=seed, **kwargs)
    )


def test_in_a_group_a_loader_without_distributed_sampler_is_refused_saying_how_to_build_one(group):
    model = make_model()
    X, y = classification_data(32)
    plain = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True)
    before = params(model)
    with pytest.raises(
        ValueError, match=r"rank 0: train_loader has no DistributedSampler \(its sampler is a "
    ):
        fit(model, plain, nn.CrossEntropyLoss(), _sgd(model), 1, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(params(model), before))


def test_a_sampler_built_for_another_world_size_is_refused(group):
    X, y = classification_data(32)
    dataset = TensorDataset(X, y)
    wrong = DataLoader(dataset, batch_size=8, sampler=DistributedSampler(dataset, num_replicas=2, rank=0))
    model = make_model()
    with pytest.raises(ValueError, match=r"built for rank 0 of 2, but this process is rank 0 of 1"):
        fit(model, wrong, nn.CrossEntropyLoss(), _sgd(model), 1, progress=False)


def test_an_nccl_group_for_a_model_on_the_cpu_is_refused(group, monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda *args: "nccl")
    model = make_model()
    with pytest.raises(ValueError, match=r"rank 0: the process group uses NCCL.*'gloo' backend"):
        fit(model, _sharded(), nn.CrossEntropyLoss(), _sgd(model), 1, progress=False)


def test_in_a_group_a_loader_without_length_is_refused(group):
    X, y = classification_data(32)
    batches = DataLoader(TensorDataset(X, y), batch_size=8, sampler=DistributedSampler(TensorDataset(X, y)))

    class NoLength:
        sampler = batches.sampler

        def __iter__(self):
            return iter(batches)

    model = make_model()
    with pytest.raises(ValueError, match="train_loader has no length: under DDP the ranks compare"):
        fit(model, NoLength(), nn.CrossEntropyLoss(), _sgd(model), 1, progress=False)


def test_a_group_of_one_rank_trains_exactly_as_one_process_without_a_group():
    def run():
        companion.seed_everything(0)
        model = make_model(dropout=0.0)
        history = fit(
            model,
            _sharded(seed=3, num_replicas=1, rank=0),
            nn.CrossEntropyLoss(),
            _sgd(model),
            3,
            progress=False,
        )
        return params(model), history

    alone, alone_history = run()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        grouped, grouped_history = run()
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(p, q) for p, q in zip(alone, grouped))
    assert grouped_history["train_loss"] == alone_history["train_loss"]


def test_a_ddp_model_is_accepted_and_checkpoints_store_the_plain_names(group, tmp_path):
    companion.seed_everything(0)
    model = make_model()
    wrapped = DistributedDataParallel(model)
    path = tmp_path / "ddp.pt"
    fit(
        wrapped,
        _sharded(),
        nn.CrossEntropyLoss(),
        _sgd(wrapped),
        2,
        callbacks=[Checkpoint(path)],
        progress=False,
    )
    saved = torch.load(path, weights_only=True)
    assert set(saved["model"]) == set(model.state_dict()), "no 'module.' prefix"
    assert set(plain_state_dict(wrapped)) == set(model.state_dict())
    assert saved["world_size"] == 1 and len(saved["rank_rng"]) == 1
    assert read_checkpoint(path).epoch == 2


def test_a_checkpoint_of_two_ranks_is_refused_by_one_process_with_what_to_do(tmp_path):
    model = make_model()
    opt = _sgd(model)
    path = save_checkpoint(
        tmp_path / "two.pt", model=model, optimizer=opt, rank_rng=[rng_state(), rng_state()]
    )
    with pytest.raises(
        CheckpointError, match=r"saved by a run on 2 process\(es\) and this one has 1.*restore_rng=False"
    ):
        fit(
            model,
            _sharded(num_replicas=1, rank=0),
            nn.CrossEntropyLoss(),
            _sgd(model),
            2,
            resume_from=path,
            progress=False,
        )
    from companion.checkpoint import load_checkpoint

    assert load_checkpoint(path, model=make_model(), restore_rng=False)[0] == 0, "the weights load alone"


# --- the launcher --------------------------------------------------------------------------------------


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _gone(pids, within=10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_running(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


AGENT = """
import os, subprocess, sys, time
workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(2)]
with open(sys.argv[1], "w") as f:
    f.write(" ".join(str(p) for p in [os.getpid()] + [w.pid for w in workers]))
print("started", flush=True)
if sys.argv[2] == "hang":
    time.sleep(600)
"""


def test_a_launch_that_hangs_is_stopped_at_its_timeout_with_every_process_it_started(tmp_path):
    pids_file = tmp_path / "pids"
    with pytest.raises(TorchrunError, match=r"did not finish within 8 s, so all its processes were stopped"):
        run_process_group([sys.executable, "-c", AGENT, str(pids_file), "hang"], timeout=8)
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 3
    assert _gone(pids), "the launcher and both workers are stopped"


def test_workers_that_outlive_their_launcher_are_stopped_too(tmp_path):
    pids_file = tmp_path / "pids"
    result = run_process_group([sys.executable, "-c", AGENT, str(pids_file), "exit"], timeout=60)
    assert result.stdout == "started\n"
    assert _gone([int(p) for p in pids_file.read_text().split()])


def test_a_failed_launch_raises_with_its_exit_status_and_last_output():
    failing = (
        "import sys; print('ValueError: rank 1: something the worker said', file=sys.stderr); sys.exit(3)"
    )
    with pytest.raises(
        TorchrunError, match=r"failed with exit status 3\. Its last output:\nValueError: rank 1: something"
    ):
        run_process_group([sys.executable, "-c", failing], timeout=60)


def test_torchrun_needs_a_positive_number_of_processes():
    with pytest.raises(ValueError, match="nproc_per_node must be a positive int"):
        torchrun("companion.ddp_demo", nproc_per_node=0)


# --- two processes: one torchrun launch, every scenario ------------------------------------------------

EPOCHS = 3  # of the digits demo, for the equivalence


class StopOnRank(Callback):
    """Asks to stop at `epoch`, on one rank only (as a time limit reached on one machine would)."""

    def __init__(self, rank, epoch):
        self.rank, self.epoch = rank, epoch

    def on_train_epoch_end(self, state):
        if dist.get_rank() == self.rank and state.epoch >= self.epoch:
            state.should_stop = True


def _error(call):
    try:
        call()
    except ValueError as error:
        return f"{type(error).__name__}: {error}"
    return None


def _resumable(rank, callbacks, resume_from=None):
    companion.seed_everything(100 + rank)  # each rank its own generator, so its own dropout masks
    model = make_model(dropout=0.3)
    loader = _sharded(n=40, batch_size=4, seed=5)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    fit(
        model,
        loader,
        nn.CrossEntropyLoss(),
        opt,
        4,
        callbacks=callbacks,
        resume_from=resume_from,
        progress=False,
    )
    return params(model)


def worker(out: Path) -> None:
    """Every scenario, on each rank of a 2-process torchrun launch; saves ``out/rank<r>.pt``."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {}
    loss_fn = nn.CrossEntropyLoss()

    # the digits demo: weights after each epoch, and the history, on every rank
    run = ddp_demo.train(epochs=EPOCHS)
    seen["weights"], seen["history"] = run.weights, run.history.rows

    # metrics of 11 samples sharded over 2 ranks (rank 1 repeats one): evaluate and fit's train_ metrics
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    seen["evaluate"] = evaluate(model, _sharded(n=11, batch_size=2, shuffle=False), loss_fn)
    frozen = fit(model, _sharded(n=11, batch_size=2, seed=1), loss_fn, _sgd(model, lr=0.0), 1, progress=False)
    seen["frozen"] = frozen.rows[-1]

    # a stop asked for on rank 1 only; rank 0's files only; the progress bar
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        model = make_model()
        callbacks = [
            StopOnRank(1, 2),
            EarlyStopping("train_loss", patience=50),
            CSVLogger(out / f"log_from_rank{rank}.csv"),
            Checkpoint(out / f"last_from_rank{rank}.pt"),
        ]
        stopped = fit(model, _sharded(), loss_fn, _sgd(model), 5, callbacks=callbacks, progress=True)
    seen["stopped_epochs"], seen["progress_written"] = len(stopped), bool(stderr.getvalue())

    # resume: an interrupted run, resumed on both ranks, against an uninterrupted one
    path = out / "resume.pt"
    uninterrupted = _resumable(rank, [])
    try:
        _resumable(rank, [Checkpoint(path), CutPowerAt(3)])
    except PowerCut:
        pass
    seen["resumed_equal"] = all(
        torch.equal(p, q) for p, q in zip(_resumable(rank, [Checkpoint(path)], path), uninterrupted)
    )

    # accumulation under DDP: a comm hook counts the all-reduces
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    wrapped = DistributedDataParallel(model)
    calls = []

    def counting(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    wrapped.register_comm_hook(None, counting)
    fit(
        wrapped,
        _sharded(batch_size=4, seed=2),
        loss_fn,
        _sgd(wrapped),
        2,
        accumulate_grad_batches=2,
        progress=False,
    )
    seen["accumulated"], seen["allreduces"] = params(model), len(calls)

    # bad set-ups, each caught on every rank
    model = make_model()
    X, y = classification_data(24 if rank == 0 else 16)
    own = TensorDataset(X, y)  # rank 0: 24 samples, rank 1: 16
    uneven = DataLoader(own, batch_size=4, sampler=DistributedSampler(own))
    seen["uneven_error"] = _error(lambda: fit(model, uneven, loss_fn, _sgd(model), 1, progress=False))
    plain = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    seen["no_sampler_error"] = _error(
        lambda: fit(model, _sharded() if rank == 0 else plain, loss_fn, _sgd(model), 1, progress=False)
    )
    torch.save(seen, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks saw, from one torchrun launch of :func:`worker`."""
    out = tmp_path_factory.mktemp("ddp")
    try:
        torchrun(str(HERE), str(out), nproc_per_node=2, module=False, timeout=400, cwd=HERE.parent.parent)
    except TorchrunError as error:
        pytest.fail(f"the 2-process torchrun launch failed: {error}")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_two_process_ddp_ends_with_the_weights_of_one_process_on_the_global_batch(ranks):
    _, seen = ranks
    alone = ddp_demo.train(epochs=EPOCHS, replicas=2)  # one process, global batches of 64, the same order
    assert len(alone.weights) == len(seen[0]["weights"]) == EPOCHS
    for epoch, (ddp, one) in enumerate(zip(seen[0]["weights"], alone.weights), 1):
        diff = max((ddp[k] - one[k]).abs().max().item() for k in one)
        assert diff < 1e-6, f"epoch {epoch}: the weights differ by {diff}"
    smaller = ddp_demo.train(epochs=1, global_batch=32)  # one process on one rank's batch: not the same
    assert (
        max((seen[0]["weights"][0][k] - smaller.weights[0][k]).abs().max().item() for k in alone.weights[0])
        > 1e-2
    )
    for a, b in zip(seen[0]["weights"][-1].values(), seen[1]["weights"][-1].values()):
        assert torch.equal(a, b), "every rank holds the same weights"


def test_every_rank_records_the_same_history_of_the_whole_dataset(ranks):
    _, seen = ranks
    assert seen[0]["history"] == seen[1]["history"]
    alone = ddp_demo.train(epochs=EPOCHS, replicas=2)
    for ddp, one in zip(seen[0]["history"], alone.history.rows):
        assert ddp["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
        assert ddp["val_accuracy"] == one["val_accuracy"]
        # one process trained on (and counted) the one repeated sample; DDP counts each sample once
        assert ddp["train_loss"] == pytest.approx(one["train_loss"], rel=1e-2)


def test_sharded_metrics_are_the_whole_datasets_counting_each_sample_once(ranks):
    _, seen = ranks
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(11)
    whole = evaluate(model, DataLoader(TensorDataset(X, y), batch_size=11), nn.CrossEntropyLoss())
    for r in range(2):
        assert seen[r]["evaluate"]["loss"] == pytest.approx(whole["loss"], abs=1e-6)
        assert seen[r]["evaluate"]["accuracy"] == whole["accuracy"]
        assert seen[r]["frozen"]["train_loss"] == pytest.approx(whole["loss"], abs=1e-6), (
            "lr=0: the same weights"
        )
        assert seen[r]["frozen"]["train_accuracy"] == whole["accuracy"]


def test_a_stop_asked_for_on_one_rank_stops_every_rank_at_that_epoch(ranks):
    _, seen = ranks
    assert [s["stopped_epochs"] for s in seen] == [2, 2]


def test_only_rank_0_writes_logs_and_checkpoints_and_shows_progress(ranks):
    out, seen = ranks
    assert (out / "log_from_rank0.csv").exists() and (out / "last_from_rank0.pt").exists()
    assert not (out / "log_from_rank1.csv").exists() and not (out / "last_from_rank1.pt").exists()
    assert [s["progress_written"] for s in seen] == [True, False]
    saved = read_checkpoint(out / "last_from_rank0.pt")
    assert saved.epoch == 2 and saved.stopped, "saved after the epoch where every rank stopped"


def test_a_ddp_run_resumed_from_its_checkpoint_ends_with_the_uninterrupted_weights(ranks):
    out, seen = ranks
    assert [s["resumed_equal"] for s in seen] == [True, True]
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["world_size"] == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"]), (
        "each rank's own generators are saved"
    )


def test_accumulation_under_ddp_all_reduces_once_per_step_and_matches_the_global_batch(ranks):
    _, seen = ranks
    assert [s["allreduces"] for s in seen] == [4, 4], "2 epochs x 2 steps: the other 4 batches under no_sync"
    companion.seed_everything(0)
    model = make_model(dropout=0.0)
    X, y = classification_data(32)
    dataset = TensorDataset(X, y)
    one = DataLoader(
        dataset, batch_size=16, sampler=GlobalOrderSampler(dataset, 2, seed=2)
    )  # 2 ranks x 2 x 4
    fit(model, one, nn.CrossEntropyLoss(), _sgd(model), 2, progress=False)
    for p, q in zip(seen[0]["accumulated"], params(model)):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_ranks_that_disagree_on_the_number_of_batches_all_get_the_same_clear_error(ranks):
    _, seen = ranks
    expected = (
        "ValueError: the ranks disagree on the number of batches per epoch of train_loader "
        "(rank 0 has 3, rank 1 has 2)"
    )
    assert all(s["uneven_error"].startswith(expected) for s in seen), [s["uneven_error"] for s in seen]


def test_a_rank_without_a_distributed_sampler_stops_every_rank_with_a_clear_error(ranks):
    _, seen = ranks
    expected = "ValueError: rank 1: train_loader has no DistributedSampler"
    assert all(s["no_sampler_error"].startswith(expected) for s in seen), [
        s["no_sampler_error"] for s in seen
    ]


if __name__ == "__main__":  # run by torchrun from the `ranks` fixture
    worker(Path(sys.argv[1]))
