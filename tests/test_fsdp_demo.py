"""Chapter 10's sharded launch, ``companion.fsdp_demo``: FSDP2, its distributed checkpoint, DDP's traffic.

In this process: what the measuring functions count, and ``ddp_demo.train``'s new arguments. Across
processes: one ``torchrun --nproc_per_node=2 -m companion.fsdp_demo`` launch (the chapter's command,
with fewer epochs and rounds), whose printed lines, ``results.pt`` and ``dcp/`` the tests read.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from companion import ddp_demo, fsdp_demo
from companion.callbacks import Callback
from companion.launch import TorchrunError, torchrun
from companion.strategy import fsdp_on_cpu_supported

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 2
ROUNDS = 2
TOLERANCE = 1e-5  # largest |difference| between the sharded run's weights and one process's
WHOLE = 9_610  # the digits MLP's parameters: 64 x 128 + 128 + 128 x 10 + 10


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- in this process -------------------------------------------------------------------------------------


def test_bytes_of_counts_each_all_reduce_at_the_size_of_its_dtype():
    assert fsdp_demo.bytes_of([("float32", 9_610)]) == 38_440
    assert fsdp_demo.bytes_of([("bfloat16", 9_610), ("float64", 1)]) == 19_228
    assert fsdp_demo.bytes_of([]) == 0
    for wrong in ("c10::BFloat16", "Tensor"):  # the profiler's spelling; a torch name that is no dtype
        with pytest.raises(ValueError, match=rf"'{wrong}' is not the name of a torch dtype.*'float32', 9610"):
            fsdp_demo.bytes_of([(wrong, 1)])


def _profiler_records_dtypes() -> bool:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.ones(2).sum()
    return all(hasattr(event, "input_dtypes") for event in prof.events())


RECORDS_DTYPES = _profiler_records_dtypes()  # torch 2.14 does, torch 2.6 (the floor) does not


@pytest.mark.skipif(not RECORDS_DTYPES, reason=f"torch {torch.__version__}'s profiler records no dtypes")
def test_traffic_of_records_every_all_reduce_with_its_dtype_and_elements_in_order(group):
    def step():
        dist.all_reduce(torch.ones(7))
        torch.ones(5).sum()  # not a collective: not counted
        dist.all_reduce(torch.ones(3, 2, dtype=torch.bfloat16))

    traffic = fsdp_demo.traffic_of(step)
    assert traffic == [("float32", 7), ("bfloat16", 6)]
    assert fsdp_demo.bytes_of(traffic) == 7 * 4 + 6 * 2
    assert fsdp_demo.traffic_of(lambda: torch.ones(3).sum()) == []


def test_in_bucket_order_puts_the_all_reduces_in_the_order_ddp_handed_them_over():
    # gloo ran the third bucket's all-reduce before the second's (seen in a CI run): the hook's order wins
    recorded = [("float32", 10), ("float32", 1280), ("float32", 8192), ("float32", 128)]
    assert fsdp_demo.in_bucket_order(recorded, [10, 1280, 128, 8192]) == [
        ("float32", 10),
        ("float32", 1280),
        ("float32", 128),
        ("float32", 8192),
    ]
    assert fsdp_demo.in_bucket_order([("bfloat16", 9610)], [9610]) == [("bfloat16", 9610)]


@pytest.mark.parametrize("sizes", [[10, 1280], [10, 1280, 128, 8192, 5], [10, 1280, 128, 7]])
def test_in_bucket_order_refuses_all_reduces_that_are_not_the_hooks_buckets(sizes):
    recorded = [("float32", 10), ("float32", 1280), ("float32", 8192), ("float32", 128)]
    with pytest.raises(ValueError, match="are not the buckets the hook handed over"):
        fsdp_demo.in_bucket_order(recorded, sizes)


@pytest.mark.skipif(RECORDS_DTYPES, reason="this torch's profiler records the dtypes")
def test_traffic_of_says_when_the_profiler_records_no_dtypes(group):
    with pytest.raises(RuntimeError, match=r"does not record \(its events have no input_dtypes\).*hook"):
        fsdp_demo.traffic_of(lambda: dist.all_reduce(torch.ones(3)))


def test_ddp_demo_train_wraps_the_model_before_the_optimizer_and_runs_more_callbacks():
    class Steps(Callback):
        def __init__(self):
            self.steps = 0

        def on_before_optimizer_step(self, state):
            self.steps += 1

    wrapped = []

    def wrap(model):
        wrapped.append(model)
        return model

    steps = Steps()
    run = ddp_demo.train(epochs=1, replicas=2, wrap=wrap, callbacks=[steps])
    assert wrapped == [run.model], "wrap got the new model, and fit trained what it returned"
    assert steps.steps == 20, "the extra callback saw every step of the epoch (1,258 / 64)"
    assert len(run.weights) == 1, "the weights' snapshots still run"
    assert run.optimizer is not None
    assert run.optimizer.param_groups[0]["params"] == list(run.model.parameters())
    assert run.optimizer.state, "the optimizer returned is the one that stepped (it holds momentum)"


def test_ddp_demo_train_refuses_a_model_both_sharded_and_wrapped():
    with pytest.raises(ValueError, match="pass sharded=True .* or a wrap function .*not both"):
        ddp_demo.train(epochs=1, sharded=True, wrap=lambda model: model)


def test_fsdp_demo_without_torchrun_says_how_to_launch_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        fsdp_demo.main(["--backend", "gloo", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "launch it with torchrun --nproc_per_node=2 -m companion.fsdp_demo" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing written"


# --- two processes: one torchrun launch ----------------------------------------------------------------


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """The printed lines, rank 0's ``results.pt`` and the folder of one 2-rank launch of the demo."""
    if not fsdp_on_cpu_supported():
        pytest.skip(f"FSDP2 cannot run on the CPU with torch {torch.__version__}")
    out = tmp_path_factory.mktemp("fsdp_demo")
    args = ["--backend", "gloo", "--out", str(out), "--epochs", str(EPOCHS), "--rounds", str(ROUNDS)]
    try:
        done = torchrun("companion.fsdp_demo", *args, nproc_per_node=2, timeout=180, cwd=ROOT)
    except TorchrunError as error:
        pytest.fail(f"the 2-process launch of companion.fsdp_demo failed: {error}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("rank ")]
    return lines, torch.load(out / "results.pt", weights_only=True), out


def test_the_sharded_run_ends_with_the_weights_of_one_process_on_the_same_global_batches(launch):
    _, results, _ = launch
    alone = ddp_demo.train(epochs=EPOCHS, replicas=2)
    assert len(results["weights"]) == EPOCHS
    for epoch, (sharded, whole) in enumerate(zip(results["weights"], alone.weights), start=1):
        assert _largest_difference(sharded, whole) < TOLERANCE, f"epoch {epoch}"
    other = ddp_demo.train(epochs=1, global_batch=32).weights[0]
    assert _largest_difference(results["weights"][0], other) > 1e-2, "the tolerance tells runs apart"
    assert [row["val_accuracy"] for row in results["history"]] == [
        row["val_accuracy"] for row in alone.history.rows
    ]


def test_each_rank_holds_half_the_parameters_gradients_and_momentum_and_says_so(launch):
    lines, results, _ = launch
    assert results["world_size"] == 2 and len(results["shares"]) == 2
    for share in results["shares"]:
        assert share["strategy"] == "FSDPStrategy"
        assert share["parameters"] == share["optimizer_state"] == (WHOLE // 2, WHOLE)
        assert share["gradients"] == [(WHOLE // 2, WHOLE)] * (EPOCHS * 20), "half, before every step"
    for r in range(2):
        mine = [line for line in lines if line.startswith(f"rank {r}:")]
        assert f"rank {r}: parameters 4,805 of 9,610 (19.2 of 38.4 kB)" in mine
        assert f"rank {r}: momentum   4,805 of 9,610 (19.2 of 38.4 kB)" in mine
        assert any(f"the same at all {EPOCHS * 20} steps: True" in line for line in mine)
        assert f"rank {r}: saved its shards to {launch[2].name}/dcp/" in mine


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # one process: the point
def test_the_distributed_checkpoint_of_two_ranks_loads_whole_into_one_process(launch):
    _, results, out = launch
    assert sorted(p.name for p in (out / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    model = ddp_demo.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=ddp_demo.LR, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights, optim = get_state_dict(model, optimizer)
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=out / "dcp", no_dist=True)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert _largest_difference(model.state_dict(), results["weights"][-1]) == 0
    assert _largest_difference(before, results["weights"][-1]) > 1e-2, "the load changed the weights"
    for p in model.parameters():
        momentum = optimizer.state[p]["momentum_buffer"]
        assert momentum.shape == p.shape and momentum.abs().sum() > 0


def test_ddp_sends_one_bucket_four_with_a_bucket_per_tensor_and_half_the_bytes_in_bf16(launch):
    _, results, _ = launch
    traffic = results["traffic"]
    assert list(traffic) == list(fsdp_demo.COMMUNICATION)
    base, per_tensor, bf16 = traffic.values()
    assert base["traffic"] == [("float32", WHOLE)] and base["all_reduces"] == 1
    assert per_tensor["traffic"] == [("float32", n) for n in (10, 1280, 128, 8192)], "last layer first"
    assert per_tensor["all_reduces"] == 4
    assert bf16["traffic"] == [("bfloat16", WHOLE)] and bf16["all_reduces"] == 1
    assert base["bytes"] == per_tensor["bytes"] == 4 * WHOLE and bf16["bytes"] == 2 * WHOLE
    for found in traffic.values():
        assert len(found["seconds"]) == ROUNDS and all(s > 0 for s in found["seconds"])


def test_bf16_compression_moves_the_weights_more_than_rounding_and_less_than_another_batch_size(launch):
    _, results, _ = launch
    alone = ddp_demo.train(epochs=EPOCHS, replicas=2)  # float32, the same global batches
    compressed = [_largest_difference(c, a) for c, a in zip(results["bf16_weights"], alone.weights)]
    assert len(compressed) == EPOCHS and all(1e-4 < d < 0.05 for d in compressed), compressed
    other = ddp_demo.train(epochs=1, global_batch=32).weights[0]
    assert compressed[0] < _largest_difference(other, alone.weights[0]) / 5
