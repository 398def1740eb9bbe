"""companion.debugging.mistakes: each check catches the planted bug of chapter 9's gallery, stays quiet on
the healthy code, and refuses bad arguments with a message that says what to pass instead."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from companion.debugging import (
    Difference,
    batch_sizes,
    dims_summing_to_one,
    first_difference,
    graph_size,
    optimizer_coverage,
    parameter_snapshot,
    read_inplace_error,
    samples_mixed_by_reshape,
    tensors_holding_graphs,
    unchanged_parameters,
)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _loss_of(model: nn.Module) -> torch.Tensor:
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    return nn.functional.cross_entropy(model(x), y)


def _steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        _loss_of(model).backward()
        optimizer.step()


# total += loss


def test_graph_size_grows_by_one_steps_graph_per_step_when_a_total_keeps_the_loss():
    model = _mlp()
    total, sizes = 0.0, []
    for _ in range(4):
        loss = _loss_of(model)
        loss.backward()
        total += loss  # the bug
        sizes.append(graph_size(total))
    per_step = sizes[1] - sizes[0]
    assert per_step > 0 and sizes == [sizes[0] + k * per_step for k in range(4)]


def test_graph_size_is_zero_for_a_total_of_items_or_detached_losses():
    model = _mlp()
    total, detached = 0.0, torch.zeros(())
    for _ in range(3):
        loss = _loss_of(model)
        total += loss.item()
        detached += loss.detach()
    assert graph_size(torch.tensor(total)) == 0 and graph_size(detached) == 0


def test_graph_size_counts_each_shared_node_once():
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    z = y + y  # one AddBackward, one MulBackward, one AccumulateGrad
    assert graph_size(z) == 3


def test_tensors_holding_graphs_names_only_the_attached_tensors_inside_lists_too():
    model = _mlp()
    loss = _loss_of(model)
    found = tensors_holding_graphs({"total": loss * 2, "clean": loss.item(), "losses": [loss.detach(), loss]})
    assert set(found) == {"total", "losses[1]"}
    assert found["total"] == graph_size(loss) + 1
    assert tensors_holding_graphs({"total": loss.item(), "n": 3}) == {}


def test_graph_checks_refuse_what_is_not_a_tensor_or_a_mapping():
    with pytest.raises(TypeError, match="torch.Tensor"):
        graph_size(1.0)
    with pytest.raises(TypeError, match="mapping from names"):
        tensors_holding_graphs([torch.zeros(1)])


# the optimizer and the model's parameters


def test_optimizer_coverage_finds_a_layer_replaced_after_the_optimizer_was_built():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model[2] = nn.Linear(8, 3)  # the bug
    coverage = optimizer_coverage(model, optimizer)
    assert coverage.missing == ["2.weight", "2.bias"] and coverage.stale == 2 and not coverage.ok
    assert "build the optimizer after" in coverage.verdict


def test_optimizer_coverage_passes_a_healthy_optimizer_and_reports_frozen_parameters_apart():
    model = _mlp()
    assert optimizer_coverage(model, torch.optim.Adam(model.parameters())).ok
    model[0].weight.requires_grad_(False)
    coverage = optimizer_coverage(model, torch.optim.Adam(p for p in model.parameters() if p.requires_grad))
    assert coverage.ok and coverage.frozen == ["0.weight"] and "frozen" in coverage.verdict


def test_optimizer_coverage_finds_a_param_group_left_out():
    model = _mlp()
    coverage = optimizer_coverage(model, torch.optim.SGD(model[2].parameters(), lr=0.1))
    assert coverage.missing == ["0.weight", "0.bias"] and coverage.stale == 0 and not coverage.ok


def test_optimizer_coverage_refuses_what_is_not_an_optimizer():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        optimizer_coverage(_mlp(), [torch.zeros(1)])
    with pytest.raises(TypeError, match="nn.Module"):
        optimizer_coverage("model", torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_unchanged_parameters_names_the_layer_the_optimizer_no_longer_updates():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model[2] = nn.Linear(8, 3)
    snapshot = parameter_snapshot(model)
    _steps(model, optimizer)
    assert unchanged_parameters(model, snapshot) == ["2.weight", "2.bias"]


def test_unchanged_parameters_names_a_frozen_layer_and_nothing_in_a_healthy_run():
    model = _mlp()
    snapshot = parameter_snapshot(model)
    _steps(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert unchanged_parameters(model, snapshot) == []
    frozen = _mlp()
    frozen[0].requires_grad_(False)
    snapshot = parameter_snapshot(frozen)
    _steps(frozen, torch.optim.SGD(frozen.parameters(), lr=0.1))
    assert unchanged_parameters(frozen, snapshot) == ["0.weight", "0.bias"]


def test_unchanged_parameters_refuses_a_snapshot_of_another_model():
    model = _mlp()
    with pytest.raises(ValueError, match="does not have"):
        unchanged_parameters(model, {"9.weight": torch.zeros(1)})
    snapshot = parameter_snapshot(model)
    model[2] = nn.Linear(8, 5)
    with pytest.raises(ValueError, match="after the model's last change"):
        unchanged_parameters(model, snapshot)
    with pytest.raises(TypeError, match="parameter_snapshot"):
        unchanged_parameters(model, [1])


# softmax along the wrong dimension


def test_dims_summing_to_one_finds_a_softmax_over_the_batch():
    scores = torch.randn(5, 3)
    assert dims_summing_to_one(scores.softmax(dim=1)) == [1]
    assert dims_summing_to_one(scores.softmax(dim=0)) == [0]
    assert dims_summing_to_one(scores.log_softmax(dim=1).exp()) == [1]


def test_dims_summing_to_one_finds_no_dimension_in_logits_or_log_probabilities():
    scores = torch.randn(5, 3)
    assert dims_summing_to_one(scores) == []
    assert dims_summing_to_one(scores.log_softmax(dim=1)) == []
    assert dims_summing_to_one(torch.tensor([[0.5, float("nan")]])) == []


def test_dims_summing_to_one_refuses_integers_scalars_and_a_bad_tolerance():
    with pytest.raises(ValueError, match="floating-point"):
        dims_summing_to_one(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least one dimension"):
        dims_summing_to_one(torch.tensor(1.0))
    with pytest.raises(ValueError, match="atol"):
        dims_summing_to_one(torch.ones(2) / 2, atol=0)


# batch norm and the short last batch


def _loader(n: int, batch_size: int, drop_last: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(n, 2)), batch_size=batch_size, drop_last=drop_last)


def test_batch_sizes_finds_a_last_batch_of_one_and_drop_last_removes_it():
    assert batch_sizes(_loader(1257, 157)) == [157] * 8 + [1]
    assert batch_sizes(_loader(1257, 157, drop_last=True)) == [157] * 8
    assert batch_sizes(_loader(1256, 157)) == [157] * 8
    assert [len(batch[0]) for batch in _loader(10, 4)] == batch_sizes(_loader(10, 4))


def test_a_batch_of_one_is_what_batch_norm_refuses_in_training_mode():
    norm = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm(torch.randn(1, 3))


def test_batch_sizes_refuses_what_it_cannot_count():
    with pytest.raises(TypeError, match="DataLoader"):
        batch_sizes([torch.zeros(2)])
    with pytest.raises(ValueError, match="batch_size=None"):
        batch_sizes(DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=None))


# an in-place change that autograd refuses


def test_read_inplace_error_names_the_operation_as_older_torch_words_it_too():
    # torch 2.6 names the backward node ("SigmoidBackward0") where torch 2.14 names the operation
    older = RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace operation: "
        "[torch.FloatTensor [4, 3]], which is output 0 of SigmoidBackward0, is at version 1; expected "
        "version 0 instead."
    )
    assert read_inplace_error(older).producer == "Sigmoid"


def test_read_inplace_error_names_the_producer_the_shape_and_the_versions():
    x = torch.randn(4, 3, requires_grad=True)
    h = torch.sigmoid(x)
    h += 1  # the bug: sigmoid's backward needs its output
    with pytest.raises(RuntimeError) as caught:
        h.sum().backward()
    reading = read_inplace_error(caught.value)
    assert reading is not None
    assert (reading.tensor, reading.producer, reading.version, reading.expected) == (
        "torch.FloatTensor [4, 3]",
        "Sigmoid",
        1,
        0,
    )
    assert "out of place" in reading.advice


def test_read_inplace_error_is_none_for_other_errors_and_refuses_non_exceptions():
    assert read_inplace_error(ValueError("Expected more than 1 value per channel")) is None
    with pytest.raises(TypeError, match="exception"):
        read_inplace_error("modified by an inplace operation")


# view where permute was meant


def test_samples_mixed_by_reshape_counts_every_sample_a_view_of_pixel_major_data_mixes():
    torch.manual_seed(0)
    images = torch.randn(6, 1, 4, 4)
    stored = images.squeeze(1).permute(1, 2, 0).contiguous()  # (4, 4, n)
    assert samples_mixed_by_reshape(stored, stored.view(6, 1, 4, 4), sample_dim=-1) == 6
    assert samples_mixed_by_reshape(stored, stored.permute(2, 0, 1).unsqueeze(1), sample_dim=-1) == 0


def test_samples_mixed_by_reshape_passes_a_layout_change_inside_each_sample():
    torch.manual_seed(0)
    channels_last = torch.randn(5, 4, 4, 3)
    assert samples_mixed_by_reshape(channels_last, channels_last.permute(0, 3, 1, 2)) == 0
    assert (
        samples_mixed_by_reshape(channels_last, channels_last.reshape(5, 3, 4, 4)) == 0
    )  # not seen: documented


def test_samples_mixed_by_reshape_refuses_tensors_that_are_not_the_same_data():
    with pytest.raises(ValueError, match="same number of elements"):
        samples_mixed_by_reshape(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sample_dim must index"):
        samples_mixed_by_reshape(torch.zeros(4, 3), torch.zeros(4, 3), sample_dim=2)
    with pytest.raises(ValueError, match="pass the sample_dim"):
        samples_mixed_by_reshape(torch.zeros(4, 3), torch.zeros(3, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        samples_mixed_by_reshape([1, 2], torch.zeros(2))


# the same seed twice


def _records(labels_at_step_1: int) -> list[dict]:
    return [
        {"weights": torch.ones(3), "labels": torch.tensor([0, 1]), "loss": 0.5},
        {"weights": torch.ones(3), "labels": torch.tensor([labels_at_step_1, 1]), "loss": 0.5},
    ]


def test_first_difference_names_the_first_step_and_value_that_differ():
    assert first_difference(_records(0), _records(2)) == Difference(step=1, name="labels")
    changed = _records(0)
    changed[1]["loss"] = 0.25
    assert first_difference(_records(0), changed) == Difference(step=1, name="loss")


def test_first_difference_is_none_for_runs_that_agree_bit_for_bit():
    assert first_difference(_records(0), _records(0)) is None


def test_first_difference_finds_a_loader_without_its_own_generator():
    def run(draw_between: bool, generator: torch.Generator | None) -> list[dict]:
        torch.manual_seed(0)
        data = DataLoader(TensorDataset(torch.arange(20)), batch_size=5, shuffle=True, generator=generator)
        if draw_between:
            torch.rand(1)
        return [{"batch": batch} for (batch,) in data]

    assert first_difference(run(False, None), run(True, None)) == Difference(step=0, name="batch")
    seeded = [torch.Generator().manual_seed(0) for _ in range(2)]
    assert first_difference(run(False, seeded[0]), run(True, seeded[1])) is None


def test_first_difference_refuses_records_that_do_not_line_up():
    with pytest.raises(ValueError, match="2 and 1 records"):
        first_difference(_records(0), _records(0)[:1])
    with pytest.raises(ValueError, match="record the same names"):
        first_difference([{"a": 1}], [{"b": 1}])
    with pytest.raises(TypeError, match="list of dicts"):
        first_difference([1], [1])
