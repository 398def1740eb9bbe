"""companion.ensembles: test-time augmentation and ensembles average class probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.ensembles import (
    SHIFTS,
    ensemble_probabilities,
    shift_images,
    tta_probabilities,
)


def small_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 8 * 8, 10),
    )  # fmt: skip


def shift_invariant_model() -> nn.Sequential:
    # a 1x1 convolution, then the largest value of each channel anywhere: moving the content moves no maximum
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 1), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(6, 10))


def digits_with_a_blank_border(n: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    images = torch.zeros(n, 1, 8, 8)
    images[:, :, 1:7, 1:7] = torch.rand(n, 1, 6, 6)  # a one-pixel background border, as the 8x8 digits have
    return images


def test_shift_moves_content_down_and_right_and_repeats_the_edge_behind_it():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = shift_images(image, 1, 0)[0, 0]
    assert torch.equal(down[1:], image[0, 0, :3]) and torch.equal(down[0], image[0, 0, 0])  # edge repeated
    left = shift_images(image, 0, -1)[0, 0]
    assert torch.equal(left[:, :3], image[0, 0, :, 1:]) and torch.equal(left[:, 3], image[0, 0, :, 3])
    assert torch.equal(shift_images(image, 0, 0), image)
    # no wrapping: torch.roll would carry the last row in at the top
    assert not torch.equal(down, torch.roll(image, 1, dims=2)[0, 0])


def test_a_shift_invariant_model_gives_the_same_answer_with_tta():
    model, images = shift_invariant_model(), digits_with_a_blank_border()
    plain = model.eval()(images).softmax(dim=1)
    torch.testing.assert_close(tta_probabilities(model, images), plain)


def test_tta_is_the_mean_softmax_over_the_shifted_copies():
    model, images = small_cnn(0), digits_with_a_blank_border()
    model.eval()
    expected = torch.stack([model(shift_images(images, dy, dx)).softmax(1) for dy, dx in SHIFTS]).mean(0)
    got = tta_probabilities(model, images)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(len(images)))  # probabilities, not logits
    assert not torch.allclose(got, model(images).softmax(1))  # this model is not shift-invariant


def test_tta_with_only_the_identity_shift_is_the_models_softmax():
    model, images = small_cnn(0), digits_with_a_blank_border()
    torch.testing.assert_close(tta_probabilities(model, images, ((0, 0),)), model.eval()(images).softmax(1))


def test_an_ensemble_of_one_equals_the_model():
    model, images = small_cnn(0), digits_with_a_blank_border()
    torch.testing.assert_close(ensemble_probabilities([model], images), model.eval()(images).softmax(1))


def test_an_ensemble_averages_probabilities_not_logits():
    models, images = [small_cnn(0), small_cnn(1)], digits_with_a_blank_border()
    with torch.no_grad():
        models[1][-1].weight.mul_(20)  # one member with much larger scores
    probs = [m.eval()(images).softmax(1) for m in models]
    got = ensemble_probabilities(models, images)
    torch.testing.assert_close(got, (probs[0] + probs[1]) / 2)
    from_logits = ((models[0](images) + models[1](images)) / 2).softmax(1)
    assert not torch.allclose(got, from_logits, atol=1e-3)
    with_tta = ensemble_probabilities(models, images, SHIFTS)
    torch.testing.assert_close(
        with_tta, (tta_probabilities(models[0], images) + tta_probabilities(models[1], images)) / 2
    )


def test_predictions_use_eval_mode_without_a_graph_and_restore_the_training_mode():
    model, images = small_cnn(0), digits_with_a_blank_border()
    model.train()
    first = tta_probabilities(model, images)
    again = ensemble_probabilities([model], images)
    assert model.training  # restored
    torch.testing.assert_close(first, tta_probabilities(model, images))  # no dropout: repeatable
    assert not first.requires_grad and first.is_inference()
    assert torch.equal(model[1].num_batches_tracked, torch.tensor(0))  # batch norm statistics untouched
    torch.testing.assert_close(again, model.eval()(images).softmax(1))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, x: ensemble_probabilities([], x), ValueError, "models is empty"),
        (lambda m, x: ensemble_probabilities(m, x), TypeError, "models must be a list of torch.nn.Module"),
        (
            lambda m, x: ensemble_probabilities([m, "net"], x),
            TypeError,
            r"models\[1\] must be a torch.nn.Module",
        ),
        (lambda m, x: tta_probabilities(m, x[:, 0]), ValueError, r"images must have shape \(B, C, H, W\)"),
        (
            lambda m, x: ensemble_probabilities([m], x[0]),
            ValueError,
            r"images must have shape \(B, C, H, W\)",
        ),
        (lambda m, x: tta_probabilities(m, x.long()), TypeError, "images must be floats"),
        (lambda m, x: tta_probabilities(m, x.tolist()), TypeError, "images must be a tensor"),
        (lambda m, x: tta_probabilities(m, x, []), ValueError, "shifts must be a non-empty sequence"),
        (lambda m, x: tta_probabilities(m, x, [(0, 0.5)]), ValueError, r"each shift must be a pair of ints"),
        (lambda m, x: tta_probabilities(m, x, [(8, 0)]), ValueError, "moves a 8x8 image off itself"),
        (lambda m, x: tta_probabilities("net", x), TypeError, "model must be a torch.nn.Module"),
    ],
)
def test_bad_input_is_refused_with_what_to_pass(call, error, message):
    with pytest.raises(error, match=message):
        call(small_cnn(0), digits_with_a_blank_border())
