"""MixUp and CutMix (chapter 8): soft labels, the mixing weight's distribution, the loss, and fit."""

import math
import pickle

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import companion
from companion.mixing import MixCollate, argmax_accuracy, mixing_transform, soft_cross_entropy
from companion.train import check_output_fits, fit


def image_batch(n=6, classes=10, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g), torch.arange(n) % classes


def lambdas(mix, draws):
    """The MixUp weight of each of `draws` batches: image 0's share of its own label (class 0, partner class 1)."""
    images, labels = image_batch(n=2)
    return torch.tensor([mix.mix(images, labels)[1][0, 0].item() for _ in range(draws)])


@pytest.mark.parametrize("kwargs", [{"mixup_alpha": 0.4}, {"mixup_alpha": None, "cutmix_alpha": 1.0}])
def test_mixed_labels_are_probabilities_over_the_classes_that_sum_to_one(kwargs):
    torch.manual_seed(0)
    images, labels = image_batch()
    mixed, soft = MixCollate(10, **kwargs).mix(images, labels)
    assert mixed.shape == images.shape and soft.shape == (6, 10) and soft.dtype == torch.float32
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert (soft >= 0).all()
    # the share not on an image's own label is on its partner's, the image before it
    partner = labels.roll(1)
    torch.testing.assert_close(soft[torch.arange(6), labels] + soft[torch.arange(6), partner], torch.ones(6))


def test_mixup_blends_each_image_with_the_one_before_it_by_the_labels_weight():
    torch.manual_seed(1)
    images, labels = image_batch()
    mixed, soft = MixCollate(10, mixup_alpha=1.0).mix(images, labels)
    lam = soft[0, labels[0]]
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_the_mixup_weight_follows_beta_alpha_alpha(alpha):
    torch.manual_seed(0)
    lam = lambdas(MixCollate(2, mixup_alpha=alpha), 4000)
    variance = 1 / (4 * (2 * alpha + 1))  # of Beta(alpha, alpha), whose mean is 1/2
    assert abs(lam.mean().item() - 0.5) < 0.03
    assert abs(lam.var().item() / variance - 1) < 0.1
    # alpha < 1 piles the weights near 0 and 1 (mostly one image), alpha > 1 near 1/2
    near_the_ends = ((lam < 0.1) | (lam > 0.9)).float().mean().item()
    assert near_the_ends > 0.5 if alpha < 1 else near_the_ends < 0.1  # 0.056 for alpha = 2


def test_cutmix_gives_the_partner_label_the_share_of_the_image_its_box_covers():
    torch.manual_seed(0)
    n, size = 5, 16
    images = (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    labels = torch.arange(n)
    mix = MixCollate(n, mixup_alpha=None, cutmix_alpha=1.0)
    partial = 0
    for _ in range(50):
        mixed, soft = mix.mix(images, labels)
        # every image's pixels are its own value or its partner's (the image before it, in one box)
        pasted = (mixed == images.roll(1, 0)).float().mean(dim=(1, 2, 3))
        own = (mixed == images).float().mean(dim=(1, 2, 3))
        torch.testing.assert_close(pasted + own, torch.ones(n))
        torch.testing.assert_close(soft[torch.arange(n), labels.roll(1)], pasted)
        partial += int(0 < pasted[0] < 1)
    assert partial > 25  # most draws paste a box that is neither empty nor the whole image


def test_both_alphas_choose_mixup_or_cutmix_for_each_batch():
    torch.manual_seed(0)
    transform = mixing_transform(10, mixup_alpha=0.2, cutmix_alpha=1.0)
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["MixUp", "CutMix"]
    assert type(mixing_transform(10)).__name__ == "MixUp"


def test_nn_cross_entropy_takes_the_soft_labels_and_equals_the_formula():
    torch.manual_seed(0)
    scores = torch.randn(6, 10)
    _, soft = MixCollate(10, mixup_alpha=1.0).mix(*image_batch())
    torch.testing.assert_close(nn.CrossEntropyLoss()(scores, soft), soft_cross_entropy(scores, soft))
    by_hand = -sum((soft[i] * scores[i].log_softmax(0)).sum() for i in range(6)) / 6
    torch.testing.assert_close(soft_cross_entropy(scores, soft), by_hand)
    # one-hot targets give the loss of the labels themselves
    labels = torch.arange(6)
    torch.testing.assert_close(
        soft_cross_entropy(scores, nn.functional.one_hot(labels, 10).float()),
        nn.CrossEntropyLoss()(scores, labels),
    )


def test_fits_check_accepts_soft_targets_of_the_scores_shape_and_names_another_number_of_classes():
    check_output_fits(torch.randn(4, 10), torch.full((4, 10), 0.1), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="shape"):
        check_output_fits(torch.randn(4, 3), torch.full((4, 10), 0.1), nn.CrossEntropyLoss())


def small_cnn(classes=3):
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, classes),
    )


def digit_like_data(n=48, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    images[torch.arange(n), 0, labels * 2, :] += 2.0  # each class lights its own row
    return images, labels


def test_fit_trains_with_mixup_recording_val_accuracy_but_no_train_accuracy_for_soft_labels():
    companion.seed_everything(0)
    images, labels = digit_like_data()
    train = DataLoader(
        TensorDataset(images[:36], labels[:36]),
        batch_size=12,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=MixCollate(3, mixup_alpha=0.2, cutmix_alpha=1.0),
    )
    val = DataLoader(TensorDataset(images[36:], labels[36:]), batch_size=12)
    model = small_cnn()
    history = fit(
        model,
        train,
        nn.CrossEntropyLoss(),
        torch.optim.AdamW(model.parameters(), lr=0.05),
        8,
        val_loader=val,
        metrics={"argmax_accuracy": argmax_accuracy},
        progress=False,
    )
    assert "train_accuracy" not in history.metrics
    assert {"train_loss", "val_loss", "val_accuracy", "train_argmax_accuracy", "val_argmax_accuracy"} <= set(
        history.metrics
    )
    assert all(math.isfinite(v) for v in history["train_loss"])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] == history["val_argmax_accuracy"][-1] == 1.0  # an easy problem, learnt


def test_fit_with_soft_labels_for_another_number_of_classes_says_so_before_training():
    images, labels = digit_like_data()
    train = DataLoader(TensorDataset(images, labels), batch_size=12, collate_fn=MixCollate(4))
    model = small_cnn(classes=3)
    with pytest.raises(ValueError, match=r"\(12, 3\).*\(12, 4\)"):
        fit(
            model,
            train,
            nn.CrossEntropyLoss(),
            torch.optim.SGD(model.parameters(), lr=0.1),
            1,
            progress=False,
        )


def test_argmax_accuracy_counts_the_label_with_the_largest_share_and_plain_labels_alike():
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.4, 0.0], [0.0, 0.2, 0.8]])
    assert [int(v) for v in argmax_accuracy(scores, soft)] == [2, 3]
    assert [int(v) for v in argmax_accuracy(scores, torch.tensor([0, 0, 2]))] == [2, 3]


def test_a_mix_collate_survives_pickling_and_mixes_in_a_spawned_worker():
    collate = pickle.loads(pickle.dumps(MixCollate(10, mixup_alpha=0.2, cutmix_alpha=1.0)))
    images, labels = image_batch(n=8)
    loader = DataLoader(
        TensorDataset(images, labels),
        batch_size=4,
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=collate,
    )
    batches = list(loader)
    assert [tuple(x.shape) + tuple(y.shape) for x, y in batches] == [(4, 1, 8, 8, 4, 10)] * 2
    torch.testing.assert_close(torch.cat([y for _, y in batches]).sum(1), torch.ones(8))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_classes": 1}, ValueError, "num_classes must be at least 2"),
        ({"num_classes": True}, TypeError, "num_classes must be an int"),
        ({"num_classes": 10, "mixup_alpha": 0.0}, ValueError, r"mixup_alpha must be in \(0, inf\)"),
        ({"num_classes": 10, "cutmix_alpha": -1.0}, ValueError, r"cutmix_alpha must be in \(0, inf\)"),
        ({"num_classes": 10, "mixup_alpha": True}, TypeError, "mixup_alpha must be a number"),
        ({"num_classes": 10, "mixup_alpha": None}, ValueError, "both None: pass at least one"),
    ],
)
def test_bad_settings_are_refused_with_what_to_pass(kwargs, error, message):
    with pytest.raises(error, match=message):
        MixCollate(**kwargs)


@pytest.mark.parametrize(
    "images, labels, error, message",
    [
        (torch.rand(4, 64), torch.arange(4), ValueError, r"shape \(B, C, H, W\).*unsqueeze\(1\)"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4), TypeError, "must be floats.*ToDtype"),
        (torch.rand(4, 1, 8, 8), torch.arange(4).float(), ValueError, "integer class label.*labels.long"),
        (
            torch.rand(4, 1, 8, 8),
            torch.full((4, 10), 0.1),
            ValueError,
            "mix labels that are not mixed already",
        ),
        (torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 10]), ValueError, r"from 0 to 10.*allows 0..9"),
        (torch.rand(4, 1, 8, 8), torch.tensor([0, -1, 2, 3]), ValueError, r"from -1 to 3"),
        ([torch.rand(1, 8, 8)] * 4, torch.arange(4), TypeError, "image and label tensors"),
    ],
)
def test_a_batch_that_cannot_be_mixed_is_refused_saying_what_to_pass(images, labels, error, message):
    with pytest.raises(error, match=message):
        MixCollate(10).mix(images, labels)


def test_samples_that_are_not_pairs_are_refused():
    with pytest.raises(TypeError, match=r"\(image, label\) pairs"):
        MixCollate(10)([torch.rand(1, 8, 8), torch.rand(1, 8, 8)])
