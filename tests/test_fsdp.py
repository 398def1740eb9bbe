"""Sharded training (FSDP2) and distributed checkpoints (chapter 10).

In this process: the strategy's choices and refusals, and one process's side of the checkpoints. Across
processes: one ``torchrun --nproc_per_node=2`` launch runs this file as a script (``worker`` below):
each rank trains the digits sharded and replicated, measures its share, saves and loads distributed
checkpoints, and saves what it saw; the tests named after each behaviour read those results. Before
the launch, the ``ranks`` fixture saves, in this process, the checkpoint that the two ranks load.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from training_setup import classification_data, make_model, params

from companion import ddp_demo
from companion.callbacks import Callback
from companion.distributed import GlobalOrderSampler
from companion.launch import TorchrunError, torchrun
from companion.seeding import seed_everything
from companion.strategy import (
    DDPStrategy,
    FSDPStrategy,
    SingleDeviceStrategy,
    current_strategy,
    fsdp_on_cpu_supported,
    shard_model,
    shard_sizes,
)
from companion.train import fit

HERE = Path(__file__).resolve()
EPOCHS = 3  # of the digits demo, for the equivalence
TOLERANCE = 1e-5  # largest |difference| allowed between sharded, replicated and one-process weights
FULL = StateDictOptions(full_state_dict=True)  # whole tensors on every rank (cpu_offload: on rank 0 only)


# --- in this process ----------------------------------------------------------------------------------


@pytest.mark.skipif(
    not fsdp_on_cpu_supported(), reason=f"FSDP2 cannot run on the CPU with torch {torch.__version__}"
)
def test_a_sharded_model_gets_the_fsdp_strategy_and_a_plain_one_ddp(group):
    plain, sharded = make_model(dropout=0.0), shard_model(make_model(dropout=0.0))
    assert type(current_strategy(plain)) is DDPStrategy and type(current_strategy()) is DDPStrategy
    assert type(current_strategy(sharded)) is FSDPStrategy
    assert shard_model(sharded) is sharded, "a sharded model is taken as it is"
    strategy = FSDPStrategy()
    assert strategy.wrap_model(sharded, torch.device("cpu")) is sharded
    with strategy.block_backward_sync(sharded, True):
        assert not sharded[0]._get_fsdp_state()._fsdp_param_group.reduce_grads, "no reduce-scatter"
    assert sharded[0]._get_fsdp_state()._fsdp_param_group.reduce_grads, "switched back on after the block"


def test_the_fsdp_strategy_refuses_a_model_that_is_not_sharded_saying_what_to_call(group):
    with pytest.raises(ValueError, match=r"got a Sequential: call companion\.strategy\.shard_model\(model\)"):
        FSDPStrategy().wrap_model(make_model(), torch.device("cpu"))


def test_shard_model_refuses_to_run_without_a_process_group():
    assert type(current_strategy(make_model())) is SingleDeviceStrategy
    with pytest.raises(ValueError, match="none is initialized: launch with torchrun"):
        shard_model(make_model())
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        shard_model("model")


def test_shard_model_says_when_this_torch_cannot_shard_on_the_cpu(group, monkeypatch):
    class OldCPUStream:  # torch 2.6's torch.cpu.Stream: no record_event
        pass

    monkeypatch.setattr(torch.cpu, "Stream", OldCPUStream)
    assert not fsdp_on_cpu_supported()
    with pytest.raises(RuntimeError, match=r"cannot shard on the CPU with torch .*no record_event.*DDP"):
        shard_model(make_model())


def test_shard_sizes_counts_plain_tensors_whole():
    assert shard_sizes([torch.zeros(3, 4), torch.zeros(5)]) == (17, 17)
    with pytest.raises(TypeError, match="got a int"):
        shard_sizes([torch.zeros(2), 3])


# --- two processes: one torchrun launch -----------------------------------------------------------------


class Shares(Callback):
    """This rank's share of the gradients, before each step: ``(local, whole)`` elements."""

    def __init__(self):
        self.gradients = []

    def on_before_optimizer_step(self, state):
        self.gradients.append(shard_sizes(p.grad for p in state.model.parameters()))


def _whole_state(model, optimizer):
    """The model's and the optimizer's state, whole, as plain tensors (a collective under FSDP)."""
    weights, optim = get_state_dict(model, optimizer, options=FULL)
    return {"model": weights, "optim": optim}


def _digits_fit(model, epochs, callbacks=(), replicas=None):
    train_set, _ = ddp_demo.digits_datasets()
    optimizer = torch.optim.SGD(model.parameters(), lr=ddp_demo.LR, momentum=0.9)
    loader = ddp_demo.train_loader(train_set, ddp_demo.GLOBAL_BATCH, ddp_demo.SEED, replicas)
    fit(model, loader, nn.CrossEntropyLoss(), optimizer, epochs, callbacks=list(callbacks), progress=False)
    return optimizer


def _accumulating(model, sharded_over=None):
    """Two epochs, 2 batches of 4 per rank accumulated per step (one process: the global batches of 16)."""
    X, y = classification_data(32)
    dataset = TensorDataset(X, y)
    if sharded_over is None:
        loader = DataLoader(dataset, batch_size=4, sampler=DistributedSampler(dataset, seed=2))
    else:
        loader = DataLoader(dataset, batch_size=16, sampler=GlobalOrderSampler(dataset, sharded_over, seed=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    k = 2 if sharded_over is None else 1
    fit(model, loader, nn.CrossEntropyLoss(), optimizer, 2, accumulate_grad_batches=k, progress=False)


def worker(out: Path) -> None:
    """Every scenario, on each rank of a 2-process torchrun launch; saves ``out/rank<r>.pt``."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    seen = {}

    # the digits demo, sharded and replicated: the weights after each epoch, gathered whole
    started = time.perf_counter()
    seen["fsdp_weights"] = ddp_demo.train(epochs=EPOCHS, sharded=True).weights
    seen["fsdp_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    seen["ddp_weights"] = ddp_demo.train(epochs=EPOCHS).weights
    seen["ddp_seconds"] = time.perf_counter() - started

    # this rank's share: parameters, gradients (before each step), optimizer state (momentum)
    seed_everything(ddp_demo.SEED)
    model = shard_model(ddp_demo.make_model())
    shares = Shares()
    optimizer = _digits_fit(model, 2, [shares])
    seen["strategy"] = type(current_strategy(model)).__name__
    seen["parameters"] = shard_sizes(model.parameters())
    seen["gradients"] = shares.gradients
    seen["optimizer_state"] = shard_sizes(t for s in optimizer.state.values() for t in s.values())
    seen["state_is_sharded"] = all(
        isinstance(t, torch.distributed.tensor.DTensor) for s in optimizer.state.values() for t in s.values()
    )

    # a distributed checkpoint saved by the 2 ranks (each writes its shards), and the whole state it holds
    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=out / "saved_by_2")
    seen["saved_by_2"] = _whole_state(model, optimizer)

    # the checkpoint one process saved, loaded by the 2 ranks into a sharded model
    seed_everything(123)  # other initial weights than the saved ones
    model = shard_model(ddp_demo.make_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=ddp_demo.LR, momentum=0.9)
    weights, optim = get_state_dict(model, optimizer)  # creates the optimizer's (zero) state to load into
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=out / "saved_by_1")
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    seen["loaded_from_1"] = _whole_state(model, optimizer)
    seen["loaded_local"] = shard_sizes(model.parameters())

    # accumulation: the reduce-scatter switched off for the batches before each step's last
    seed_everything(0)
    model = shard_model(make_model(dropout=0.0))
    _accumulating(model)
    seen["accumulated"] = [p.full_tensor() for p in model.parameters()]

    torch.save(seen, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _save_by_one_process(out: Path) -> dict:
    """One epoch of the digits in this process, saved with ``dcp.save`` (no process group); its whole state."""
    seed_everything(7)
    model = ddp_demo.make_model()
    optimizer = _digits_fit(model, 1, replicas=2)
    weights, optim = get_state_dict(model, optimizer)
    dcp.save(
        {"model": weights, "optim": optim}, checkpoint_id=out / "saved_by_1"
    )  # no process group here: one process
    return _whole_state(model, optimizer)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What this process saved, and what each of the 2 ranks saw, from one torchrun launch of :func:`worker`."""
    if not fsdp_on_cpu_supported():  # torch 2.6 (make test-floor): shard_model says so, tested below
        pytest.skip(f"FSDP2 cannot run on the CPU with torch {torch.__version__}")
    out = tmp_path_factory.mktemp("fsdp")
    saved_by_1 = _save_by_one_process(out)
    try:
        torchrun(str(HERE), str(out), nproc_per_node=2, module=False, timeout=120, cwd=HERE.parent.parent)
    except TorchrunError as error:
        pytest.fail(f"the 2-process torchrun launch failed: {error}")
    return out, saved_by_1, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_fsdp_on_two_ranks_ends_with_the_weights_of_ddp_and_of_one_process(ranks):
    _, _, seen = ranks
    alone = ddp_demo.train(epochs=EPOCHS, replicas=2)  # one process, global batches of 64, the same order
    fsdp, ddp = seen[0]["fsdp_weights"], seen[0]["ddp_weights"]
    assert len(fsdp) == len(ddp) == len(alone.weights) == EPOCHS
    for epoch in range(EPOCHS):
        assert _largest_difference(fsdp[epoch], ddp[epoch]) < TOLERANCE, f"epoch {epoch + 1}: FSDP vs DDP"
        assert _largest_difference(fsdp[epoch], alone.weights[epoch]) < TOLERANCE, f"epoch {epoch + 1}"
    assert _largest_difference(fsdp[0], ddp_demo.train(epochs=1, global_batch=32).weights[0]) > 1e-2, (
        "the tolerance tells runs apart: one process on another batch size is far off"
    )
    for a, b in zip(fsdp[-1].values(), seen[1]["fsdp_weights"][-1].values()):
        assert torch.equal(a, b), "every rank gathers the same weights"


def test_each_rank_holds_half_the_parameters_gradients_and_optimizer_state(ranks):
    _, _, seen = ranks
    whole = sum(p.numel() for p in ddp_demo.make_model().parameters())  # 9610
    assert [s["strategy"] for s in seen] == ["FSDPStrategy", "FSDPStrategy"]
    for key in ("parameters", "optimizer_state"):
        local = [s[key][0] for s in seen]
        assert all(s[key][1] == whole for s in seen), key
        assert sum(local) == whole and local == [whole // 2, whole // 2], f"{key}: {local} of {whole}"
    assert all(s["state_is_sharded"] for s in seen), "the momentum is a DTensor shard"
    for s in seen:
        assert len(s["gradients"]) == 2 * 20, "2 epochs of 20 steps"
        assert set(s["gradients"]) == {(whole // 2, whole)}, "after the reduce-scatter, half the gradient"


def test_a_checkpoint_saved_by_two_ranks_loads_whole_into_one_process(ranks):
    out, _, seen = ranks
    saved = seen[0]["saved_by_2"]
    model = ddp_demo.make_model()  # other weights, no process group
    optimizer = torch.optim.SGD(model.parameters(), lr=ddp_demo.LR, momentum=0.9)
    weights, optim = get_state_dict(model, optimizer)
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=out / "saved_by_2")  # no process group here: one process
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    loaded = _whole_state(model, optimizer)
    assert _largest_difference(loaded["model"], saved["model"]) == 0
    for name, momentum in saved["optim"]["state"].items():
        assert torch.equal(loaded["optim"]["state"][name]["momentum_buffer"], momentum["momentum_buffer"])
    assert len(saved["optim"]["state"]) == 4, "the momentum of every parameter, by name"
    assert not any(torch.equal(a, b) for a, b in zip(params(ddp_demo.make_model()), params(model)))


def test_a_checkpoint_saved_by_one_process_loads_sharded_into_two_ranks(ranks):
    _, saved, seen = ranks
    for s in seen:
        assert _largest_difference(s["loaded_from_1"]["model"], saved["model"]) == 0
        for name, momentum in saved["optim"]["state"].items():
            assert torch.equal(
                s["loaded_from_1"]["optim"]["state"][name]["momentum_buffer"], momentum["momentum_buffer"]
            )
        assert s["loaded_local"][0] * 2 == s["loaded_local"][1], "each rank loaded its half only"


def test_accumulation_under_fsdp_matches_one_process_on_the_global_batch(ranks):
    _, _, seen = ranks
    seed_everything(0)
    model = make_model(dropout=0.0)
    _accumulating(model, sharded_over=2)
    for p, q in zip(seen[0]["accumulated"], params(model)):
        torch.testing.assert_close(p, q, rtol=0, atol=TOLERANCE)


if __name__ == "__main__":  # run by torchrun from the `ranks` fixture
    worker(Path(sys.argv[1]))
