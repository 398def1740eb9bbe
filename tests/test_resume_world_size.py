"""fit resumes a checkpoint of another world size where asked (``resume_world_size="any"``, chapter 10).

A 2-rank run's checkpoint resumes in one process, and a one-process run's on 2 ranks (one
``torchrun --nproc_per_node=2`` launch runs this file as a script, ``worker`` below). Without the flag
both are refused, the message naming it. Run as a script (by torchrun), this file runs ``worker``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from training_setup import classification_data, make_model, params

import companion
from companion.callbacks import Callback, Checkpoint, EarlyStopping
from companion.checkpoint import CheckpointError, plain_state_dict, read_checkpoint, resume_seed
from companion.distributed import rank, world_size
from companion.launch import TorchrunError, torchrun
from companion.train import fit

HERE = Path(__file__).resolve()
GLOBAL_BATCH, SAVED_AT, EPOCHS = 8, 2, 4


class AtResume(Callback):
    """What the resumed run holds when its first epoch starts: weights, optimizer and seed."""

    def __init__(self) -> None:
        self.seen: dict | None = None

    def on_train_epoch_start(self, state) -> None:
        if self.seen is None:
            self.seen = {
                "epoch": state.epoch,
                "weights": {k: v.clone() for k, v in plain_state_dict(state.model).items()},
                "optimizer": copy.deepcopy(state.optimizer.state_dict()),
                "lr": state.optimizer.param_groups[0]["lr"],
                "seed": torch.initial_seed(),
            }


def run(epochs, callbacks=(), resume_from=None, resume_world_size="same"):
    """The same run on any world size: a global batch of 8 (4 per rank on 2 ranks), dropout, AdamW,
    a per-epoch StepLR and EarlyStopping (state to restore)."""
    companion.seed_everything(0)
    model = make_model(dropout=0.3)
    X, y = classification_data(48)
    dataset = TensorDataset(X, y)
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), seed=5)
    loader = DataLoader(dataset, batch_size=GLOBAL_BATCH // world_size(), sampler=sampler)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    history = fit(
        model,
        loader,
        nn.CrossEntropyLoss(),
        opt,
        epochs,
        scheduler=sched,
        scheduler_interval="epoch",
        callbacks=[EarlyStopping("train_loss", patience=50), *callbacks],
        resume_from=resume_from,
        resume_world_size=resume_world_size,
        progress=False,
    )
    return model, history


def _refusal(call) -> str | None:
    try:
        call()
    except CheckpointError as error:
        return str(error)
    return None


def worker(out: Path) -> None:
    """On each of 2 ranks: save a 2-rank checkpoint; resume the 1-process one, with and without the flag."""
    dist.init_process_group("gloo")
    seen = {}
    run(SAVED_AT, [Checkpoint(out / "two.pt")])
    seen["refused"] = _refusal(lambda: run(EPOCHS, resume_from=out / "one.pt"))
    at_resume = AtResume()
    model, history = run(EPOCHS, [at_resume], resume_from=out / "one.pt", resume_world_size="any")
    seen["at_resume"], seen["history"], seen["final"] = at_resume.seen, history.rows, params(model)
    torch.save(seen, out / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """A one-process checkpoint (``one.pt``), then one 2-rank launch of :func:`worker` (``two.pt``)."""
    out = tmp_path_factory.mktemp("resume")
    run(SAVED_AT, [Checkpoint(out / "one.pt")])
    try:
        torchrun(str(HERE), str(out), nproc_per_node=2, module=False, timeout=300, cwd=HERE.parent.parent)
    except TorchrunError as error:
        pytest.fail(f"the 2-process torchrun launch failed: {error}")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _saved(path):
    return torch.load(path, weights_only=True)


def test_a_two_rank_checkpoint_is_refused_in_one_process_naming_resume_world_size(launched):
    out, _ = launched
    message = _refusal(lambda: run(EPOCHS, resume_from=out / "two.pt"))
    assert message is not None
    assert "saved by a run on 2 process(es) and this one has 1" in message
    assert 'fit(..., resume_from=path, resume_world_size="any")' in message
    assert "the data order and random draws differ from an uninterrupted run" in message


def test_a_two_rank_checkpoint_resumes_in_one_process_from_the_saved_state(launched):
    out, _ = launched
    saved = _saved(out / "two.pt")
    assert saved["world_size"] == 2
    at_resume = AtResume()
    model, history = run(EPOCHS, [at_resume], resume_from=out / "two.pt", resume_world_size="any")
    seen = at_resume.seen
    assert seen["epoch"] == SAVED_AT + 1, "goes on from the saved epoch"
    assert all(torch.equal(seen["weights"][k], v) for k, v in saved["model"].items())
    steps = [s["step"].item() for s in seen["optimizer"]["state"].values()]
    assert steps == [s["step"].item() for s in saved["optimizer"]["state"].values()] and steps[0] > 0
    assert all(
        torch.equal(seen["optimizer"]["state"][i]["exp_avg"], saved["optimizer"]["state"][i]["exp_avg"])
        for i in saved["optimizer"]["state"]
    ), "AdamW's moments restored"
    assert seen["lr"] == pytest.approx(0.01 * 0.5**SAVED_AT), "StepLR stepped twice before"
    assert len(history) == EPOCHS and history.rows[:SAVED_AT] == saved["history"]
    assert seen["seed"] == resume_seed(saved["rank_rng"][0], 0), "rank 0 re-seeded from the checkpoint"
    assert not any(torch.equal(p, saved["model"][k]) for p, k in zip(params(model), saved["model"])), (
        "and it trained on"
    )


def test_resuming_on_another_world_size_is_deterministic_and_restores_the_callbacks(launched):
    out, _ = launched
    early = EarlyStopping("train_loss", patience=50)
    saved = read_checkpoint(out / "two.pt")
    saved.restore(
        model=make_model(dropout=0.3),
        callbacks=[early],
        any_world_size=True,
    )
    restored, expected = early.state_dict(), _saved(out / "two.pt")["callbacks"][0]["state"]
    for key in ("best", "best_epoch", "wait", "stopped_epoch"):
        assert restored[key] == expected[key], key
    assert expected["best_epoch"] > 0, "a state worth restoring"
    first, _ = run(EPOCHS, resume_from=out / "two.pt", resume_world_size="any")
    second, _ = run(EPOCHS, resume_from=out / "two.pt", resume_world_size="any")
    assert all(torch.equal(p, q) for p, q in zip(params(first), params(second)))


def test_a_one_process_checkpoint_is_refused_on_two_ranks_without_the_flag(launched):
    _, ranks = launched
    for seen in ranks:
        assert "saved by a run on 1 process(es) and this one has 2" in seen["refused"]
        assert 'resume_world_size="any"' in seen["refused"]


def test_a_one_process_checkpoint_resumes_on_two_ranks_each_reseeded_differently(launched):
    out, ranks = launched
    saved = _saved(out / "one.pt")
    assert saved["world_size"] == 1
    for r, seen in enumerate(ranks):
        assert seen["at_resume"]["epoch"] == SAVED_AT + 1
        assert all(torch.equal(seen["at_resume"]["weights"][k], v) for k, v in saved["model"].items())
        assert seen["at_resume"]["seed"] == resume_seed(saved["rng"], r)
        assert len(seen["history"]) == EPOCHS and seen["history"][:SAVED_AT] == saved["history"]
    assert ranks[0]["at_resume"]["seed"] != ranks[1]["at_resume"]["seed"]
    assert all(torch.equal(p, q) for p, q in zip(ranks[0]["final"], ranks[1]["final"])), "DDP: in step"


def test_on_the_same_world_size_resume_world_size_any_resumes_exactly(launched):
    out, _ = launched
    uninterrupted, _ = run(EPOCHS)
    resumed, _ = run(EPOCHS, resume_from=out / "one.pt", resume_world_size="any")
    assert all(torch.equal(p, q) for p, q in zip(params(uninterrupted), params(resumed)))


def test_resume_seed_differs_by_rank_and_by_saved_state():
    companion.seed_everything(0)
    a = {"torch": torch.get_rng_state()}
    torch.rand(1)
    b = {"torch": torch.get_rng_state()}
    assert resume_seed(a, 0) == resume_seed(a, 0)
    assert len({resume_seed(a, 0), resume_seed(a, 1), resume_seed(b, 0)}) == 3
    assert 0 <= resume_seed(a, 5) < 2**32
    with pytest.raises(ValueError, match="rank must be a non-negative int"):
        resume_seed(a, -1)


def test_resume_world_size_must_be_same_or_any():
    model = make_model()
    X, y = classification_data(8)
    with pytest.raises(ValueError, match=r"resume_world_size must be 'same' .* or 'any' .*got 'all'"):
        fit(
            model,
            DataLoader(TensorDataset(X, y), batch_size=4),
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            1,
            resume_world_size="all",
            progress=False,
        )


if __name__ == "__main__":  # run by torchrun from the `launched` fixture
    worker(Path(sys.argv[1]))
