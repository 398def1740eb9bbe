import collections
import os
import random
import re
import stat

import numpy as np
import pytest
import torch
from torch import nn
from training_setup import assert_same_params, make_model, params, setup

import companion.checkpoint as ckpt
from companion.callbacks import Callback, Checkpoint, EarlyStopping
from companion.checkpoint import (
    CheckpointError,
    load_checkpoint,
    plain_state_dict,
    read_checkpoint,
    save_checkpoint,
)
from companion.optim import FromScratch, adamw_step, sgd_step
from companion.train import fit


def saved_run(tmp_path, **kwargs):
    """A checkpoint of epoch 3 after some AdamW steps (so the optimizer has state), and what wrote it."""
    model, train, _, loss_fn, opt, sched = setup()
    for x, y in train:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, scheduler=sched, epoch=3, train_loader=train, **kwargs
    )
    return path, model, train, opt, sched


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3)


# --- writing -----------------------------------------------------------------------------------------


def test_checkpoint_holds_every_generator_and_loads_with_weights_only(tmp_path):
    path, *_ = saved_run(tmp_path)
    state = torch.load(path, weights_only=True)
    assert set(state["rng"]) == {"torch", "cuda", "python", "numpy", "loader"}
    assert len(state["rng"]["loader"]) == 1 and state["epoch"] == 3
    assert state["optimizer_class"] == "AdamW" and state["scheduler_class"] == "OneCycleLR"


def test_checkpoint_is_written_atomically_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    model, train, _, _, opt, _ = setup()
    path = tmp_path / "c.pt"
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(
        ckpt.os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst))
    )
    save_checkpoint(path, model=model, optimizer=opt, epoch=1)
    ((src, dst),) = replaced
    assert os.path.dirname(src) == str(tmp_path) and dst == path, "the temporary file is in the same folder"
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # interrupted while writing

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, optimizer=opt, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.pt"], "no temporary file is left behind"


def test_a_stale_temporary_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    model = make_model()
    stale = tmp_path / ".c.pt.4242.0123456789abcdef.tmp"  # what a SIGKILL during torch.save leaves
    stale.write_bytes(b"x" * 1000)
    other = tmp_path / ".d.pt.4242.0123456789abcdef.tmp"  # another checkpoint's: not ours to remove
    other.write_bytes(b"x")
    save_checkpoint(tmp_path / "c.pt", model=model)
    assert sorted(os.listdir(tmp_path)) == [".d.pt.4242.0123456789abcdef.tmp", "c.pt"]


def test_the_folder_is_flushed_to_disk_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        ckpt.os,
        "fsync",
        lambda fd: (events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd)),
    )
    monkeypatch.setattr(ckpt.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    save_checkpoint(tmp_path / "c.pt", model=make_model())
    assert events == ["file", "rename", "dir"]


def test_a_directory_is_refused_as_a_checkpoint_file(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory, but a checkpoint is one file"):
        save_checkpoint(tmp_path, model=make_model())
    with pytest.raises(ValueError, match=r"is a directory"):
        load_checkpoint(tmp_path, model=make_model())


# --- reading files that are not checkpoints ------------------------------------------------------------


def test_load_checkpoint_of_a_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*Checkpoint\(path\)"):
        load_checkpoint(tmp_path / "nope.pt", model=make_model())


def test_a_truncated_checkpoint_is_refused_naming_the_file(tmp_path):
    path, *_ = saved_run(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    model = make_model()
    before = params(model)
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(path))} cannot be read as a checkpoint.*truncated"
    ):
        load_checkpoint(path, model=model)
    assert_same_params(params(model), before)


def test_a_text_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("epoch 3 went well\n")
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} cannot be read as a checkpoint"):
        load_checkpoint(path, model=make_model())


def test_a_plain_state_dict_is_refused_as_another_format(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(make_model().state_dict(), path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is not a checkpoint of format"):
        read_checkpoint(path)


# --- refused loads change nothing ------------------------------------------------------------------


def test_a_model_with_another_last_layer_is_refused_before_any_weight_changes(tmp_path):
    path, *_ = saved_run(tmp_path)
    other = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    before = params(other)
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(str(path))}: the model differs.*3.weight: saved \(3, 16\), model \(4, 16\)",
    ):
        load_checkpoint(path, model=other)
    assert_same_params(params(other), before), "the first layer, which fits, was not loaded either"


def test_a_model_with_other_layers_names_the_missing_and_unexpected_weights(tmp_path):
    path, *_ = saved_run(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint lacks: 1.weight, 1.bias; the checkpoint has weights the model lacks: 0.weight",
    ):
        load_checkpoint(path, model=nn.Sequential(nn.Identity(), nn.Linear(5, 16)))


def test_an_optimizer_with_two_parameter_groups_is_refused_before_the_weights_load(tmp_path):
    path, *_ = saved_run(tmp_path)
    model = make_model()
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[3].parameters()}])
    before, opt_before = params(model), opt.state_dict()
    with pytest.raises(
        CheckpointError, match=r"parameter groups differ: saved 1 group\(s\) of \[4\].*given 2 group"
    ):
        load_checkpoint(path, model=model, optimizer=opt)
    assert_same_params(params(model), before)
    assert opt.state_dict() == opt_before


def test_an_adamw_checkpoint_is_refused_by_sgd_with_momentum(tmp_path):
    path, *_ = saved_run(tmp_path)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = params(model)
    with pytest.raises(CheckpointError, match=r"a AdamW optimizer, not of a SGD"):
        load_checkpoint(path, model=model, optimizer=opt)
    assert_same_params(params(model), before)
    assert opt.param_groups[0]["momentum"] == 0.9


def test_another_scheduler_class_is_refused(tmp_path):
    path, *_ = saved_run(tmp_path)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=r"OneCycleLR scheduler, not of a StepLR"):
        load_checkpoint(path, model=model, optimizer=opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 1))


def test_resuming_with_other_callbacks_or_another_loader_says_what_to_pass(tmp_path):
    model, train, _, _, opt, _ = setup()
    stopper = EarlyStopping()
    stopper.wait = 2
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, optimizer=opt, epoch=2, train_loader=train, callbacks=[stopper]
    )
    with pytest.raises(
        CheckpointError, match=r"callbacks \['EarlyStopping'\] but .* given are \[\]: resume with the same"
    ):
        load_checkpoint(path, model=make_model(), callbacks=[], train_loader=train)

    unseeded = torch.utils.data.DataLoader(train.dataset, batch_size=8, shuffle=True)
    other, other_stopper = make_model(), EarlyStopping()
    before = params(other)
    with pytest.raises(CheckpointError, match=r"1 DataLoader generator state\(s\) but train_loader has 0"):
        load_checkpoint(path, model=other, train_loader=unseeded, callbacks=[other_stopper])
    assert_same_params(params(other), before)
    assert other_stopper.wait == 0
    fresh = make_model()
    epoch, history = load_checkpoint(path, model=fresh, restore_rng=False)  # weights only
    assert epoch == 2 and len(history) == 0
    assert_same_params(params(fresh), params(model))


# --- what a load restores ---------------------------------------------------------------------------


def test_a_load_restores_python_numpy_and_torch_generators_to_where_the_save_left_them(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    after_save = draws()
    draws(), draws()  # the run goes on drawing
    load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, train_loader=train)
    again = draws()
    assert again[:2] == after_save[:2], "Python's and NumPy's random state restored"
    assert torch.equal(again[2], after_save[2])


def test_restore_rng_false_leaves_every_generator_alone(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    after_save = draws()
    states = random.getstate(), np.random.get_state(legacy=False), torch.get_rng_state()
    loader_state = train.generator.get_state()
    load_checkpoint(path, model=model, optimizer=opt, scheduler=sched, train_loader=train, restore_rng=False)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state(legacy=False)["state"]["key"], states[1]["state"]["key"])
    assert torch.equal(torch.get_rng_state(), states[2]) and torch.equal(
        train.generator.get_state(), loader_state
    )
    assert draws()[0] != after_save[0]


def test_a_load_restores_the_optimizer_and_scheduler_state(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    fresh = make_model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.05)
    fresh_sched = torch.optim.lr_scheduler.OneCycleLR(fresh_opt, max_lr=0.05, total_steps=24)
    epoch, _ = load_checkpoint(
        path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched, train_loader=train
    )
    assert epoch == 3 and fresh_sched.last_epoch == sched.last_epoch == 4
    for p, q in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(fresh_opt.state[p]["exp_avg"], opt.state[q]["exp_avg"])


def test_weights_are_stored_under_their_plain_names_for_compiled_models(tmp_path):
    model = make_model()
    compiled = torch.compile(model, backend="eager")
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    assert list(plain_state_dict(compiled)) == list(model.state_dict())
    path = save_checkpoint(tmp_path / "c.pt", model=compiled)
    again = torch.compile(make_model(), backend="eager")
    load_checkpoint(path, model=again, restore_rng=False)
    assert_same_params(params(again), params(model))


def test_a_from_scratch_optimizer_resumes_and_another_update_rule_is_refused_before_anything_loads(tmp_path):
    model, train, _, loss_fn, _, _ = setup()
    opt = FromScratch(model.parameters(), adamw_step, lr=0.01)
    fit(model, train, loss_fn, opt, 2, callbacks=[Checkpoint(tmp_path / "c.pt")], progress=False)
    again = make_model()
    again_opt = FromScratch(again.parameters(), adamw_step, lr=0.01)
    load_checkpoint(tmp_path / "c.pt", model=again, optimizer=again_opt, train_loader=train)
    assert_same_params(params(again), params(model))
    other = make_model()
    before = params(other)
    with pytest.raises(CheckpointError, match=r"settings this FromScratch does not: .*betas"):
        load_checkpoint(
            tmp_path / "c.pt", model=other, optimizer=FromScratch(other.parameters(), sgd_step, lr=0.1)
        )
    assert_same_params(params(other), before)


def test_a_grad_scalers_state_is_saved_and_restored(tmp_path):
    model = make_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    path = save_checkpoint(tmp_path / "c.pt", model=model, scaler=scaler)
    again = torch.amp.GradScaler("cpu")
    load_checkpoint(path, model=make_model(), scaler=again, restore_rng=False)
    assert again.get_scale() == 1024.0
    with pytest.raises(CheckpointError, match="it holds no scaler state: pass scaler=None"):
        load_checkpoint(save_checkpoint(tmp_path / "d.pt", model=model), model=model, scaler=again)


# --- a checkpoint that would never load is refused when it is written (issue 17) -------------------


class RecentLosses(Callback):
    """Keeps the last three training losses in a deque: it pickles, but weights_only refuses it."""

    def __init__(self):
        self.recent = collections.deque(maxlen=3)

    def on_train_epoch_end(self, state):
        self.recent.append(state.history.rows[-1]["train_loss"])

    def state_dict(self):
        return {"recent": self.recent, "epochs": len(self.recent)}

    def load_state_dict(self, state):
        self.recent = collections.deque(state["recent"], maxlen=3)


def test_a_callback_state_that_would_not_load_is_refused_at_the_first_save_naming_callback_key_and_type(
    tmp_path,
):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    with pytest.raises(
        CheckpointError,
        match=r"never be resumed: the state_dict\(\) of callback RecentLosses\['recent'\] is a collections.deque",
    ) as info:
        fit(model, train, loss_fn, opt, 3, callbacks=[RecentLosses(), Checkpoint(path)], progress=False)
    assert "e.g. list(...)" in str(info.value)
    assert not path.exists(), "nothing is written"


def test_a_numpy_scalar_deep_in_a_state_is_named_with_its_place(tmp_path):
    model = make_model()

    class Best(Callback):
        def on_fit_start(self, state):
            pass

        def state_dict(self):
            return {"scores": [{"val_loss": np.float64(0.25)}]}

        def load_state_dict(self, state):
            pass

    with pytest.raises(CheckpointError, match=r"Best\['scores'\]\[0\]\['val_loss'\] is a numpy.float64"):
        save_checkpoint(tmp_path / "c.pt", model=model, callbacks=[Best()])


class Window:
    """A class of the user's own, which torch.load rebuilds once it is allowed."""

    def __init__(self, values=()):
        self.values = list(values)


class KeepsWindow(Callback):
    def __init__(self):
        self.window = Window()

    def on_train_epoch_end(self, state):
        self.window.values.append(state.epoch)

    def state_dict(self):
        return {"window": self.window}

    def load_state_dict(self, state):
        self.window = state["window"]


def test_a_class_allowed_with_safe_globals_saves_and_resumes(tmp_path):
    model, train, _, loss_fn, opt, _ = setup()
    path = tmp_path / "c.pt"
    with pytest.raises(CheckpointError, match=r"KeepsWindow\['window'\].*add_safe_globals\(\[Window\]\)"):
        fit(model, train, loss_fn, opt, 2, callbacks=[KeepsWindow(), Checkpoint(path)], progress=False)
    model, train, _, loss_fn, opt, _ = setup()
    with torch.serialization.safe_globals([Window]):
        fit(model, train, loss_fn, opt, 2, callbacks=[KeepsWindow(), Checkpoint(path)], progress=False)
        resumed = KeepsWindow()
        fit(
            model,
            train,
            loss_fn,
            opt,
            3,
            callbacks=[resumed, Checkpoint(path)],
            progress=False,
            resume_from=path,
        )
    assert resumed.window.values == [1, 2, 3]


# --- what the mutation tests asked for (issue 17) ------------------------------------------------------


def test_weights_that_do_not_fit_are_listed_four_at_most_then_counted():
    three_layers = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as info:
        ckpt.load_plain_state_dict(three_layers, {})
    assert str(info.value) == (
        "the weights do not fit this model: the model has weights the checkpoint lacks: "
        "0.weight, 0.bias, 1.weight, 1.bias and 2 more"
    )
    with pytest.raises(CheckpointError, match=r"lacks: 0.weight, 0.bias, 1.weight, 1.bias$"):
        ckpt.load_plain_state_dict(three_layers[:2], {})


def test_the_generators_of_a_loader_are_found_through_its_sampler_and_its_batch_sampler():
    data = torch.utils.data.TensorDataset(torch.arange(8.0))
    g = torch.Generator()
    sampler = torch.utils.data.RandomSampler(data, generator=g)
    unbatched = torch.utils.data.DataLoader(data, batch_size=None, sampler=sampler)
    batched = torch.utils.data.DataLoader(
        data, batch_sampler=torch.utils.data.BatchSampler(sampler, 4, False)
    )
    assert unbatched.batch_sampler is None and batched.sampler is not sampler
    assert ckpt.loader_generators(unbatched) == [g] and ckpt.loader_generators(batched) == [g]


def test_workers_that_are_not_persistent_do_not_stop_a_resume(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    workers = torch.utils.data.DataLoader(
        train.dataset, batch_size=8, shuffle=True, generator=torch.Generator(), num_workers=2
    )
    read_checkpoint(path).check(model=model, train_loader=workers)  # no worker starts: nothing raises


def test_persistent_workers_are_refused_naming_which_loader_had_them(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    persistent = torch.utils.data.DataLoader(
        train.dataset, batch_size=8, generator=torch.Generator(), num_workers=1, persistent_workers=True
    )
    tail = (
        r" training DataLoader has persistent_workers=True. Its workers draw their random seed once, in the "
        r"loader's first epoch, so a resumed run would shuffle and augment differently from the uninterrupted "
        r"one: a resume is exact only with persistent_workers=False. To go on anyway, inexactly, load the "
        r"state with load_checkpoint\(path, model=..., optimizer=..., scheduler=..., restore_rng=False\) "
        r"and fit the remaining epochs$"
    )
    with pytest.raises(CheckpointError, match=r": this" + tail):
        read_checkpoint(path).check(model=model, train_loader=persistent)
    saved = read_checkpoint(path)
    saved._state["persistent_workers"] = True
    with pytest.raises(CheckpointError, match=r": the saved run's" + tail):
        saved.check(model=model, train_loader=train)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_checkpoint_with_cuda_generators_resumes_on_a_machine_without_cuda(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    saved = read_checkpoint(path)
    saved._state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    saved.restore(model=model, optimizer=opt, scheduler=sched, train_loader=train)  # CUDA's state is skipped


def test_set_rng_state_refuses_a_loader_with_other_generators_in_full(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    unseeded = torch.utils.data.DataLoader(train.dataset, batch_size=8, shuffle=True)
    message = (
        r"^cannot restore these random generators: it holds 1 DataLoader generator state\(s\) but train_loader "
        r"has 0 generator\(s\): resume with a loader built the same way "
        r"\(DataLoader\(..., generator=torch.Generator\(\)\) if it had one\)$"
    )
    with pytest.raises(CheckpointError, match=message):
        ckpt.set_rng_state(read_checkpoint(path)._state["rng"], unseeded)
    with pytest.raises(CheckpointError, match=r"train_loader has 0 generator"):
        read_checkpoint(path).check(model=model, train_loader=unseeded)  # restore_rng=True by default


def test_a_checkpoint_is_written_into_folders_it_makes(tmp_path):
    path = save_checkpoint(tmp_path / "runs" / "7" / "c.pt", model=make_model())
    assert read_checkpoint(path).epoch == 0


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("\nthe first line of this message is blank")


def test_a_state_that_cannot_even_be_pickled_is_refused_with_the_pickle_error():
    for bad, reason in (
        (lambda: 0, r"\(Can't (pickle|get local object).*lambda"),
        (Unpicklable(), r"\(RuntimeError\)"),
    ):
        with pytest.raises(CheckpointError, match=reason):
            ckpt._check_reads_back({"extra": {"x": bad}, "callbacks": []}, [])


def test_a_refused_value_is_shown_whole_up_to_60_characters_then_cut():
    def refusal(length):
        bad = collections.deque(["x" * (length - 11)])  # repr: deque(['xx...x'])
        with pytest.raises(CheckpointError) as info:
            ckpt._check_reads_back({"extra": bad, "callbacks": []}, [])
        return re.search(r"collections.deque \((.*?)\), which", str(info.value)).group(1)

    assert refusal(60) == repr(collections.deque(["x" * 49]))
    assert refusal(61) == "deque(['" + "x" * 49 + "..."
    assert len(refusal(61)) == 60


def test_a_refused_value_names_the_reason_up_to_its_first_sentence():
    with pytest.raises(
        CheckpointError, match=r"refuses \(Unsupported global: GLOBAL collections.deque [^.]*\)\."
    ):
        ckpt._check_reads_back({"extra": collections.deque([1]), "callbacks": []}, [])


def test_an_optimizer_from_another_update_rule_and_other_groups_is_refused_in_full(tmp_path):
    path, *_ = saved_run(tmp_path)
    model = make_model()
    opt = torch.optim.AdamW([{"params": model[0].parameters()}, {"params": model[3].parameters()}])
    with pytest.raises(
        CheckpointError,
        match=r"given 2 group\(s\) of \[2, 2\] parameters; build the optimizer "
        r"as for the saved run \(the same groups, over the same parameters, in the same order\)$",
    ):
        read_checkpoint(path).check(model=model, optimizer=opt)
    saved = read_checkpoint(path)
    saved._state["optimizer_settings"] = ["lr", "nu", "zeta"]
    with pytest.raises(
        CheckpointError, match=r"does not: nu, zeta; resume with the optimizer \(and update rule\)"
    ):
        saved.check(model=model, optimizer=torch.optim.AdamW(model.parameters()))


def test_a_checkpoint_of_another_number_of_processes_is_refused_unless_only_the_weights_load(tmp_path):
    path, model, train, opt, sched = saved_run(tmp_path)
    saved = read_checkpoint(path)
    saved._state["world_size"] = 2
    message = (
        r"it was saved by a run on 2 process\(es\) and this one has 1: each rank resumes its own random "
        r"generators and its own shard of the data, so resume on as many \(torchrun --nproc_per_node=2 in all\), "
        r"or load the weights alone \(load_checkpoint\(..., restore_rng=False\)\) and fit the remaining epochs, "
        r'or go on here with fit\(..., resume_from=path, resume_world_size="any"\) \(load_checkpoint\(..., '
        r"any_world_size=True\)\), which restores everything but re-seeds each rank's random generators, so the "
        r"data order and random draws differ from an uninterrupted run$"
    )
    with pytest.raises(CheckpointError, match=message):
        saved.check(model=model)
    saved.restore(model=model, restore_rng=False)


def test_each_restored_callback_gets_its_own_copy_of_the_saved_state(tmp_path):
    class Seen(Callback):
        def __init__(self):
            self.seen = {"epochs": [1, 2]}

        def on_train_epoch_end(self, state):
            self.seen["epochs"].append(state.epoch)

        def state_dict(self):
            return self.seen

        def load_state_dict(self, state):
            self.seen = state

    path = save_checkpoint(tmp_path / "c.pt", model=make_model(), callbacks=[Seen()])
    saved = read_checkpoint(path)
    first, second = Seen(), Seen()
    saved.restore(model=make_model(), callbacks=[first], restore_rng=False)
    first.seen["epochs"].append(3)
    saved.restore(model=make_model(), callbacks=[second], restore_rng=False)
    assert second.seen == {"epochs": [1, 2]}


def test_other_fit_settings_are_refused_in_full(tmp_path):
    path = save_checkpoint(
        tmp_path / "c.pt", model=make_model(), fit_settings={"accumulate_grad_batches": 2, "precision": "32"}
    )
    message = (
        r"^cannot load the checkpoint .*c.pt: it was saved by a fit with accumulate_grad_batches=2, "
        r"precision='32', and this one has accumulate_grad_batches=1, precision='bf16': each shapes every "
        r"optimizer step \(how many steps an epoch takes, which a per-step scheduler was sized for, and what each "
        r"step computes\), so the run would not go on as it began. Resume with accumulate_grad_batches=2, "
        r"precision='32', or load the weights alone \(load_checkpoint\(path, model=..., restore_rng=False\)\) and "
        r"start a new fit$"
    )
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path).check(
            model=make_model(), fit_settings={"accumulate_grad_batches": 1, "precision": "bf16"}
        )


def test_a_checkpoint_with_the_generators_of_each_rank_restores_this_ranks(tmp_path):
    torch.manual_seed(1)
    this_rank = ckpt.rng_state()
    after = torch.rand(3)
    torch.manual_seed(2)
    path = save_checkpoint(tmp_path / "c.pt", model=make_model(), rank_rng=[this_rank])
    load_checkpoint(path, model=make_model())
    assert torch.equal(torch.rand(3), after)


def test_a_file_of_another_kind_is_refused_saying_what_it_found(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(collections.deque([1]), path)
    message = (
        rf"(?s)^{re.escape(str(path))} cannot be read as a checkpoint \(UnpicklingError: .*\): the file is "
        r"truncated or is not a checkpoint; pass a file that save_checkpoint or Checkpoint wrote$"
    )
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    for saved, found in (
        ([1, 2], "'list'"),
        ({"format": "companion.checkpoint/1"}, "'companion.checkpoint/1'"),
    ):
        torch.save(saved, path)
        with pytest.raises(
            CheckpointError,
            match=rf"of format 'companion.checkpoint/2' \(found {found}\): pass a file that "
            r"companion.checkpoint.save_checkpoint or companion.callbacks.Checkpoint wrote$",
        ):
            read_checkpoint(path)


def test_a_checkpoint_of_a_model_alone_holds_epoch_zero_and_nothing_else_to_restore(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", model=make_model())
    saved = read_checkpoint(path)
    assert (saved.epoch, saved.global_step, saved.stopped) == (0, 0, False)
    assert saved._state["optimizer_class"] is None and saved._state["scheduler_class"] is None


class OnlyLoaderAttributes:
    """A loader of the user's own, with some of a DataLoader's attributes."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def __iter__(self):
        return iter([])


@pytest.mark.parametrize(
    "attributes, persistent",
    [
        ({"persistent_workers": True}, False),
        ({"persistent_workers": True, "num_workers": 0}, False),
        ({"num_workers": 2}, False),
        ({"persistent_workers": True, "num_workers": 2}, True),
    ],
)
def test_a_loader_is_recorded_as_persistent_only_with_workers_that_persist(tmp_path, attributes, persistent):
    loader = OnlyLoaderAttributes(**attributes)
    path = save_checkpoint(tmp_path / "c.pt", model=make_model(), train_loader=loader)
    assert read_checkpoint(path)._state["persistent_workers"] is persistent


def test_a_callback_with_state_dict_but_no_load_state_dict_is_not_saved(tmp_path):
    class WriteOnly(Callback):
        def on_fit_start(self, state):
            pass

        def state_dict(self):
            return {"seen": 1}

    path = save_checkpoint(tmp_path / "c.pt", model=make_model(), callbacks=[WriteOnly(), EarlyStopping()])
    assert [c["name"] for c in read_checkpoint(path)._state["callbacks"]] == ["EarlyStopping"]


def test_a_refused_key_is_named_as_a_key_and_a_numpy_scalar_gets_no_safe_globals_advice(tmp_path):
    class Best(Callback):
        def on_fit_start(self, state):
            pass

        def state_dict(self):
            return {np.int64(3): 0.25}

        def load_state_dict(self, state):
            pass

    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path / "c.pt", model=make_model(), callbacks=[Best()])
    message = str(info.value)
    assert re.search(
        r"the state_dict\(\) of callback \S*Best \(a key\) is a numpy.int64 \(np.int64\(3\)\)", message
    )
    assert message.endswith("(a list, a dict, an int or float, a tensor: e.g. list(...), float(...))")


def test_a_directory_is_refused_with_a_file_name_in_it_to_pass(tmp_path):
    with pytest.raises(
        ValueError, match=rf"pass a file name such as {re.escape(str(tmp_path / 'last.pt'))}$"
    ):
        read_checkpoint(tmp_path)


def test_a_checkpoint_with_the_generators_of_two_ranks_belongs_to_two_processes(tmp_path):
    state = ckpt.rng_state()
    path = save_checkpoint(tmp_path / "c.pt", model=make_model(), rank_rng=[state, state])
    with pytest.raises(CheckpointError, match=r"saved by a run on 2 process\(es\) and this one has 1"):
        load_checkpoint(path, model=make_model())


def test_a_state_that_cannot_even_be_pickled_without_a_message_is_named_by_its_error_type():
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError()  # no message at all

    from companion.checkpoint import _load_error

    assert _load_error({"state": Unpicklable()}) == "RuntimeError"


def test_a_model_sharded_across_ranks_is_refused_by_checkpoints_before_training(tmp_path):
    """FSDP2's shards (DTensors) in a one-file checkpoint would hold rank 0's shard only: refused, saying
    what to use instead, by save_checkpoint, by Checkpoint before the first step, and by a resume."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plain = make_model(dropout=0.0)
    X, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    save_checkpoint(tmp_path / "plain.pt", model=plain)  # a whole model: saved as always
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = make_model(dropout=0.0)
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        before = [p.detach().full_tensor().clone() for p in model.parameters()]
        message = r"sharded across ranks \(\d+ DTensor shards.*torch\.distributed\.checkpoint"
        with pytest.raises(CheckpointError, match=message):
            save_checkpoint(tmp_path / "a.pt", model=model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.utils.data.TensorDataset(X, y)
        sampler = torch.utils.data.DistributedSampler(data, num_replicas=1, rank=0, seed=0)
        loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)
        with pytest.raises(CheckpointError, match=message):
            fit(
                model,
                loader,
                nn.CrossEntropyLoss(),
                opt,
                1,
                callbacks=[Checkpoint(tmp_path / "b.pt")],
                progress=False,
            )
        assert all(torch.equal(a, p.detach().full_tensor()) for a, p in zip(before, model.parameters()))
        assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(tmp_path / "plain.pt").check(model=model)
    finally:
        dist.destroy_process_group()
