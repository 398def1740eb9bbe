"""companion.datasets.digits_imagefolder and companion.loading, chapter 5: the digits as an ImageFolder tree, checked loading, channel
statistics, the in-memory cache, the stream and the seeded loader."""

from __future__ import annotations

import importlib
import json
import pickle
import random
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset, IterableDataset, TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

import companion.datasets as datasets
import companion.loading as loading
from companion.datasets import DIGITS_MARKER, digits_imagefolder, digits_splits
from companion.loading import (
    CachedDataset,
    ImageStream,
    channel_stats,
    load_imagefolder,
    make_loader,
    seed_worker,
)

TO_FLOAT = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
GRAY = v2.Compose([v2.Grayscale(), *TO_FLOAT])


# --- digits_imagefolder -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory) -> Path:
    """The real tree, written once for the module (about a second)."""
    return digits_imagefolder(tmp_path_factory.mktemp("data") / "digits", seed=0)


def tiny_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Two images per class and split, so that behaviour tests write 60 files, not 1,797."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat(2)
    return {
        s: (torch.randint(0, 256, (20, 8, 8), generator=g, dtype=torch.uint8), labels)
        for s in datasets.SPLITS
    }


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(datasets, "digits_splits", tiny_splits)


def test_tree_holds_every_split_image_as_the_same_grayscale_png_in_its_class_folder(digits_tree):
    for split, (images, labels) in digits_splits(seed=0).items():
        files = sorted((digits_tree / split).glob("*/*.png"), key=lambda p: p.name)
        assert len(files) == len(labels)
        for i, path in enumerate(files):  # files are numbered by their index in the split
            assert path.name == f"{i:04d}.png" and path.parent.name == str(int(labels[i]))
            with Image.open(path) as image:
                assert image.mode == "L" and image.size == (8, 8)
                assert torch.equal(torch.from_numpy(np.array(image)), images[i])
    marker = json.loads((digits_tree / DIGITS_MARKER).read_text())
    assert marker["seed"] == 0 and sum(marker["counts"]["train"].values()) == len(
        digits_splits(0)["train"][1]
    )


def test_imagefolder_reads_the_tree_with_class_index_equal_to_the_digit(digits_tree):
    folder = load_imagefolder(digits_tree / "test", GRAY)
    assert folder.class_to_idx == {str(c): c for c in range(10)}
    labels = digits_splits(0)["test"][1]
    assert len(folder) == len(labels) and sorted(folder.targets) == sorted(labels.tolist())
    x, y = folder[0]
    assert x.shape == (1, 8, 8) and folder.classes[y] == Path(folder.samples[0][0]).parent.name


def test_second_call_reuses_a_complete_tree_and_returns_the_relative_root_as_given(
    digits_tree, tmp_path, monkeypatch
):
    shutil.copytree(digits_tree, tmp_path / "data" / "digits")
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in Path("data/digits").rglob("*")}

    def must_not_write(seed=0):
        raise AssertionError("a complete tree must be reused, not rewritten")

    monkeypatch.setattr(datasets, "digits_splits", must_not_write)
    assert digits_imagefolder("data/digits") == Path("data/digits")
    assert {p: p.stat().st_mtime_ns for p in Path("data/digits").rglob("*")} == before


def test_interrupted_write_leaves_neither_a_tree_nor_a_partial_folder(tiny, tmp_path, monkeypatch):
    calls = {"n": 0}
    save = Image.Image.save

    def save_then_fail(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        digits_imagefolder(tmp_path / "digits")
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.setattr(Image.Image, "save", save)
    assert digits_imagefolder(tmp_path / "digits") == tmp_path / "digits"
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 60


def test_stale_partial_folder_of_a_killed_call_is_deleted_and_never_trusted(tiny, tmp_path):
    stale = tmp_path / ".digits.partial"
    (stale / "train" / "3").mkdir(parents=True)
    (stale / DIGITS_MARKER).write_text("{}")
    root = digits_imagefolder(tmp_path / "digits")
    assert not stale.exists() and len(list(root.rglob("*.png"))) == 60


def test_empty_existing_folder_is_filled(tiny, tmp_path):
    (tmp_path / "digits").mkdir()
    assert len(list(digits_imagefolder(tmp_path / "digits").rglob("*.png"))) == 60


def test_folder_with_other_files_is_refused_naming_it_and_left_untouched(tiny, tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "notes.txt").write_text("mine")
    with pytest.raises(
        FileExistsError, match=r"digits exists and holds files that digits_imagefolder did not write"
    ):
        digits_imagefolder(tmp_path / "digits")
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["notes.txt"]


def test_root_that_is_a_file_is_refused(tiny, tmp_path):
    (tmp_path / "digits").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"digits is a file, not a folder"):
        digits_imagefolder(tmp_path / "digits")


def test_tree_of_another_seed_is_refused_naming_both_seeds(tiny, tmp_path):
    digits_imagefolder(tmp_path / "digits", seed=0)
    with pytest.raises(FileExistsError, match=r"holds the digits split with seed=0, not seed=1; pass seed=0"):
        digits_imagefolder(tmp_path / "digits", seed=1)


def test_tree_with_a_missing_image_is_refused_as_modified(tiny, tmp_path):
    root = digits_imagefolder(tmp_path / "digits")
    next(root.glob("val/7/*.png")).unlink()
    with pytest.raises(
        FileExistsError, match=r"val[/\\]7 holds 1 PNG files where digits_imagefolder wrote 2"
    ):
        digits_imagefolder(root)


def test_damaged_marker_is_refused(tiny, tmp_path):
    root = digits_imagefolder(tmp_path / "digits")
    (root / DIGITS_MARKER).write_text("{not json")
    with pytest.raises(
        FileExistsError, match=r"is damaged .*delete .*digits and call digits_imagefolder again"
    ):
        digits_imagefolder(root)


@pytest.mark.parametrize("root", [".", ""])
def test_root_without_a_folder_name_is_a_value_error(root):
    with pytest.raises(ValueError, match="pass e.g. 'data/digits'"):
        digits_imagefolder(root)


def test_non_int_seed_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="seed must be an int"):
        digits_imagefolder(tmp_path / "digits", seed=0.5)


# --- load_imagefolder -------------------------------------------------------------------------


def write_png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no image folder at .*nowhere: it does not exist"):
        load_imagefolder(tmp_path / "nowhere")


def test_root_that_is_a_file_names_the_path(tmp_path):
    (tmp_path / "train").write_text("")
    with pytest.raises(NotADirectoryError, match=r"train is a file; pass the folder"):
        load_imagefolder(tmp_path / "train")


def test_empty_root_says_it_has_no_class_folders(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"has no class folders; ImageFolder needs .*<class name>/<image files>"
    ):
        load_imagefolder(tmp_path)


def test_images_directly_in_root_are_counted_in_the_message(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    with pytest.raises(FileNotFoundError, match=r"has no class folders \(it holds 2 files directly\)"):
        load_imagefolder(tmp_path)


def test_hidden_folder_that_would_become_a_class_is_named(tmp_path):
    write_png(tmp_path / "cat" / "1.png")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    with pytest.raises(
        ValueError, match=r"\.ipynb_checkpoints is a hidden folder that ImageFolder would count as a class"
    ):
        load_imagefolder(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    write_png(tmp_path / "cat" / "1.png")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no pictures")
    message = (
        r"class folder .*dog holds no image file \(only readme\.txt\); ImageFolder reads only .png, .jpg"
    )
    with pytest.raises(FileNotFoundError, match=message):
        load_imagefolder(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10],
    ids=["empty", "text", "truncated"],
)
def test_unreadable_image_file_is_named(tmp_path, content):
    write_png(tmp_path / "cat" / "1.png")
    (tmp_path / "cat" / "2.png").write_bytes(content)
    with pytest.raises(
        ValueError, match=r"cat[/\\]2\.png is not a readable image \(\w+\); delete or replace it"
    ):
        load_imagefolder(tmp_path)


def write_noise(path: Path, format: str) -> None:
    """A 32x32 image of random pixels, which compresses badly: cutting the file loses pixel data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format)


def cut_in_half(path: Path) -> None:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


@pytest.mark.parametrize("name, format", [("2.png", "PNG"), ("2.jpg", "JPEG")])
def test_image_cut_off_halfway_is_refused_when_loading_not_at_the_first_epoch(tmp_path, name, format):
    write_png(tmp_path / "cat" / "1.png")
    write_noise(tmp_path / "cat" / name, format)
    cut_in_half(tmp_path / "cat" / name)
    plain = ImageFolder(
        tmp_path
    )  # what the check saves us from: ImageFolder fails only when it draws the file
    with pytest.raises(OSError, match="truncated"):
        plain[1]
    with pytest.raises(
        ValueError, match=rf"cat[/\\]{name} is not a readable image \(OSError\); delete or replace"
    ):
        load_imagefolder(tmp_path)


def test_jpeg_cut_in_half_passes_pils_verify_so_the_check_must_decode(tmp_path):
    write_noise(tmp_path / "half.jpg", "JPEG")
    cut_in_half(tmp_path / "half.jpg")
    with Image.open(tmp_path / "half.jpg") as image:
        image.verify()  # no error: a check built on verify() would let this file through


def test_cut_off_image_is_refused_even_where_pil_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    write_noise(tmp_path / "cat" / "1.jpg", "JPEG")
    cut_in_half(tmp_path / "cat" / "1.jpg")
    with pytest.raises(ValueError, match=r"1\.jpg is not a readable image"):
        load_imagefolder(tmp_path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the user's setting is restored after the check"


def test_valid_folder_gives_imagefolder_with_rgb_images_by_default(tmp_path):
    write_png(tmp_path / "cat" / "1.png", 10)
    write_png(tmp_path / "dog" / "sub" / "2.png", 200)
    folder = load_imagefolder(tmp_path, v2.Compose(TO_FLOAT))
    assert folder.classes == ["cat", "dog"] and len(folder) == 2
    x, y = folder[1]
    assert x.shape == (3, 8, 8) and y == 1 and torch.allclose(x, torch.full_like(x, 200 / 255))


# --- channel_stats ----------------------------------------------------------------------------


def test_channel_stats_equal_mean_and_population_std_over_all_pixels():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 2.0, 3.0])[:, None, None]  # three channels of different spread
    images = [torch.rand(3, h, w, generator=g) * scale for h, w in [(4, 5), (6, 2), (3, 3)]]
    mean, std = channel_stats(images)
    pixels = torch.cat([im.reshape(3, -1) for im in images], dim=1).double()
    torch.testing.assert_close(
        torch.tensor(mean, dtype=torch.float64), pixels.mean(dim=1), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        torch.tensor(std, dtype=torch.float64), pixels.std(dim=1, correction=0), rtol=1e-12, atol=0
    )


def test_channel_stats_of_batches_equal_those_of_single_images():
    x = torch.rand(50, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    dataset = TensorDataset(x, torch.zeros(50))
    per_image = channel_stats(dataset)
    per_batch = channel_stats(torch.utils.data.DataLoader(dataset, batch_size=16))
    np.testing.assert_allclose(per_batch, per_image, rtol=1e-12)


def test_channel_stats_stay_exact_for_a_large_offset_in_float32():
    # E[x^2] - E[x]^2 would lose the small spread under the large mean; the streaming merge does not
    x = (
        1000
        + torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1e-3
    )
    mean, std = channel_stats(x.float())
    exact = x.float().double()
    assert (
        abs(mean[0] - exact.mean().item()) < 1e-9 and abs(std[0] / exact.std(correction=0).item() - 1) < 1e-9
    )


def test_normalizing_with_channel_stats_gives_mean_0_and_std_1(digits_tree):
    mean, std = channel_stats(load_imagefolder(digits_tree / "train", GRAY))
    normalized = load_imagefolder(digits_tree / "train", v2.Compose([GRAY, v2.Normalize(mean, std)]))
    mean2, std2 = channel_stats(normalized)
    assert abs(mean2[0]) < 1e-6 and abs(std2[0] - 1) < 1e-6


def test_channel_stats_of_pil_images_ask_for_v2_to_image_and_to_dtype(digits_tree):
    message = r"got Image; end the dataset's transform with v2\.ToImage\(\), v2\.ToDtype\(torch\.float32, scale=True\)"
    with pytest.raises(TypeError, match=message):
        channel_stats(load_imagefolder(digits_tree / "val"))


def test_channel_stats_of_8_bit_tensors_ask_for_to_dtype_with_scale(digits_tree):
    # v2.ToImage() alone gives uint8 in 0..255: statistics on that scale would not fit float images
    with pytest.raises(TypeError, match=r"got torch\.uint8 .*v2\.ToDtype\(torch\.float32, scale=True\)"):
        channel_stats(load_imagefolder(digits_tree / "val", v2.Compose([v2.Grayscale(), v2.ToImage()])))


def test_channel_stats_of_2d_tensors_ask_for_a_channel_dimension():
    with pytest.raises(ValueError, match=r"got shape \(8, 8\); add the channel dimension"):
        channel_stats([torch.zeros(8, 8)])


def test_channel_stats_of_nothing_is_a_value_error():
    with pytest.raises(ValueError, match="empty dataset"):
        channel_stats([])


def test_channel_stats_reject_images_with_different_channel_counts():
    with pytest.raises(ValueError, match="every image must have 3 channels, got one with 1"):
        channel_stats([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)])


# --- CachedDataset ----------------------------------------------------------------------------


class CountingDataset(Dataset):
    """Counts how often each item is decoded; a random shift stands for a random augmentation."""

    def __init__(self, n: int = 6, random_shift: bool = False) -> None:
        self.n, self.random_shift, self.calls = n, random_shift, [0] * n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i >= self.n:
            raise IndexError(i)
        self.calls[i] += 1
        x = torch.full((1, 2, 2), float(i)) + (torch.rand(1) if self.random_shift else 0)
        return x, i % 3


def test_cache_decodes_each_item_once_and_serves_equal_items():
    source = CountingDataset()
    cached = CachedDataset(source)
    assert source.calls == [1] * 6
    for _ in range(3):
        for i in range(6):
            x, y = cached[i]
            assert torch.equal(x, torch.full((1, 2, 2), float(i))) and y == i % 3
    assert source.calls == [1] * 6 and len(cached) == 6


def test_cache_freezes_a_random_augmentation_of_the_dataset():
    cached = CachedDataset(CountingDataset(random_shift=True))
    assert torch.equal(cached[0][0], cached[0][0])


def test_cache_transform_runs_on_every_access():
    torch.manual_seed(0)
    cached = CachedDataset(CountingDataset(), transform=lambda x: x + torch.rand(1))
    assert not torch.equal(cached[0][0], cached[0][0])


def test_cache_batches_equal_the_source_batches():
    x, y = torch.randn(10, 3, 4, 4), torch.arange(10)
    source = TensorDataset(x, y)
    a = next(iter(make_loader(source, 10, shuffle=False)))
    b = next(iter(make_loader(CachedDataset(source), 10, shuffle=False)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cache_rejects_an_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1), 0

    with pytest.raises(TypeError, match="needs a map-style dataset .* got Stream"):
        CachedDataset(Stream())


def test_cache_rejects_items_that_are_not_tensor_target_pairs(digits_tree):
    with pytest.raises(TypeError, match=r"item 0 is tuple; end the dataset's transform with v2\.ToImage\(\)"):
        CachedDataset(load_imagefolder(digits_tree / "val"))


def test_cache_rejects_inputs_of_different_shapes():
    items = [(torch.zeros(1, 2, 2), 0), (torch.zeros(1, 3, 3), 1)]
    with pytest.raises(ValueError, match=r"item 1 has shape \(1, 3, 3\), item 0 has \(1, 2, 2\)"):
        CachedDataset(items)


def test_cache_rejects_an_empty_dataset():
    with pytest.raises(ValueError, match="empty dataset"):
        CachedDataset([])


# --- ImageStream, make_loader, seed_worker ----------------------------------------------------


def test_stream_yields_the_folder_in_file_order_without_workers(digits_tree):
    stream = ImageStream(digits_tree / "val", GRAY)
    folder = load_imagefolder(digits_tree / "val", GRAY)
    labels = [y for _, y in stream]
    assert labels == folder.targets and len(stream) == len(folder)


def test_stream_with_two_workers_yields_every_image_exactly_once(digits_tree):
    stream = ImageStream(digits_tree / "val", GRAY)
    batches = list(make_loader(stream, 16, shuffle=False, num_workers=2))
    images = torch.cat([x for x, _ in batches])
    expected = torch.stack([x for x, _ in load_imagefolder(digits_tree / "val", GRAY)])
    assert len(images) == len(expected)
    # same multiset of images: sort both by their pixel bytes
    key = lambda t: t.flatten().tolist()  # noqa: E731
    assert sorted(map(key, images)) == sorted(map(key, expected))


def test_same_seed_same_shuffled_order_whatever_the_global_rng_did():
    dataset = TensorDataset(torch.arange(100))
    first = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, seed=3)]
    torch.rand(1000)  # other code draws random numbers in between
    again = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, seed=3)]
    other = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, seed=4)]
    assert first == again and first != other
    assert sorted(sum(first, [])) == list(range(100))


class RandomDraws(Dataset):
    """Each item draws from Python's random, NumPy and torch, as a random augmentation would."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.tensor(
            [random.random(), float(np.random.rand()), torch.rand(1).item()], dtype=torch.float64
        )


def test_workers_draw_the_same_random_numbers_for_the_same_seed():
    def draws(seed):
        return torch.cat(list(make_loader(RandomDraws(), 2, shuffle=False, seed=seed, num_workers=2)))

    a, b, c = draws(0), draws(0), draws(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a[:, 1].tolist())) == 8, "the two workers must not repeat each other's NumPy numbers"


def test_seed_worker_seeds_random_and_numpy_from_torchs_worker_seed():
    torch.manual_seed(2**32 + 7)  # the worker's seed, base seed + worker id, may exceed 32 bits
    seed_worker(1)
    assert random.random() == random.Random(7).random()
    assert np.random.rand() == np.random.RandomState(7).rand()


def test_make_loader_passes_dataloader_options_through():
    loader = make_loader(TensorDataset(torch.arange(10)), 4, shuffle=False, drop_last=True, collate_fn=len)
    assert list(loader) == [4, 4]


def test_make_loader_requires_a_boolean_shuffle():
    with pytest.raises(TypeError, match="shuffle must be True or False, got None"):
        make_loader(TensorDataset(torch.arange(10)), 4, shuffle=None)


def test_companion_datasets_and_worker_function_survive_pickling_as_spawn_needs(digits_tree):
    # spawn pickles the dataset and the functions for each worker: they must be importable
    cached = CachedDataset(load_imagefolder(digits_tree / "val", GRAY))
    for obj in (cached, ImageStream(digits_tree / "val", GRAY), seed_worker):
        copy = pickle.loads(pickle.dumps(obj))
        assert type(copy) is type(obj)
    assert torch.equal(pickle.loads(pickle.dumps(cached))[5][0], cached[5][0])


# --- the notebook pitfall: classes and functions defined in __main__ -------------------------


def as_if_defined_in_a_notebook_cell(obj):
    obj.__module__ = "__main__"
    return obj


@as_if_defined_in_a_notebook_cell
class Squares(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(float(i * i))


@as_if_defined_in_a_notebook_cell
def flatten(batch):
    return torch.stack(batch).flatten()


def test_defined_in_main_names_cell_defined_classes_and_functions_however_deep():
    assert loading.defined_in_main(Squares()) == ["Squares"]
    assert loading.defined_in_main({"inner": [v2.Lambda(flatten)]}) == ["flatten"]


def test_defined_in_main_is_empty_for_importable_objects(digits_tree):
    dataset = CachedDataset(load_imagefolder(digits_tree / "val", GRAY))
    assert loading.defined_in_main(dataset) == [] and loading.defined_in_main(seed_worker) == []


@pytest.fixture
def in_a_notebook(monkeypatch):
    """pytest's own __main__ has a file; a notebook kernel's has none."""
    monkeypatch.setattr(loading, "_main_is_importable", lambda: False)


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_in_a_notebook_make_loader_refuses_main_definitions_for_spawned_workers_naming_them(
    in_a_notebook, context
):
    with pytest.raises(
        TypeError, match=rf"Squares is defined in __main__ .*'{context}' worker processes cannot import"
    ):
        make_loader(Squares(), 2, shuffle=False, num_workers=1, multiprocessing_context=context)
    with pytest.raises(TypeError, match=r"flatten is defined in __main__"):
        make_loader(
            TensorDataset(torch.zeros(4)),
            2,
            shuffle=False,
            num_workers=1,
            collate_fn=flatten,
            multiprocessing_context=torch.multiprocessing.get_context(context),
        )


def test_make_loader_accepts_main_definitions_without_workers_or_with_fork(in_a_notebook):
    assert list(make_loader(Squares(), 2, shuffle=False, collate_fn=flatten))[1].tolist() == [4.0, 9.0]
    if "fork" in torch.multiprocessing.get_all_start_methods():  # not on Windows
        make_loader(
            Squares(), 2, shuffle=False, num_workers=1, multiprocessing_context="fork"
        )  # fork copies __main__


def test_code_piped_to_python_counts_as_a_main_that_workers_cannot_import(monkeypatch):
    piped = types.ModuleType("__main__")
    piped.__file__ = "<stdin>"  # what `python - < file.py` sets; spawn would try to run that path
    monkeypatch.setitem(sys.modules, "__main__", piped)
    assert not loading._main_is_importable()
    with pytest.raises(TypeError, match=r"Squares is defined in __main__"):
        make_loader(Squares(), 2, shuffle=False, num_workers=1, multiprocessing_context="spawn")


def test_make_loader_accepts_main_definitions_when_main_is_a_script_that_workers_reimport():
    assert loading._main_is_importable()  # pytest runs from a file, as a script would
    make_loader(Squares(), 2, shuffle=False, num_workers=1, multiprocessing_context="spawn")


def test_damaged_marker_counts_are_refused_too(tiny, tmp_path):
    root = digits_imagefolder(tmp_path / "digits")
    (root / DIGITS_MARKER).write_text(json.dumps({"seed": 0, "counts": ["not", "a", "dict"]}))
    with pytest.raises(FileExistsError, match="is damaged"):
        digits_imagefolder(root)


# --- make_loader(generator=...) ---------------------------------------------------------------


def test_make_loader_draws_from_a_generator_given_instead_of_a_seed():
    dataset = TensorDataset(torch.arange(100))
    from_seed = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, seed=3)]
    given = torch.Generator().manual_seed(3)
    loader = make_loader(dataset, 10, shuffle=True, generator=given)
    assert loader.generator is given, "used as given, not replaced"
    assert [b[0].tolist() for b in loader] == from_seed


def test_make_loader_does_not_reseed_a_generator_given():
    dataset = TensorDataset(torch.arange(100))
    shared = torch.Generator().manual_seed(3)
    first = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, generator=shared)]
    second = [b[0].tolist() for b in make_loader(dataset, 10, shuffle=True, generator=shared)]
    assert first != second, "a second loader on the same generator goes on from where the first stopped"


def test_make_loader_refuses_a_seed_and_a_generator_together():
    with pytest.raises(TypeError, match=r"got both seed=1 and a generator; pass one"):
        make_loader(TensorDataset(torch.arange(10)), 4, shuffle=True, seed=1, generator=torch.Generator())


def test_make_loader_refuses_a_generator_that_is_not_a_torch_generator():
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator, got RandomState"):
        make_loader(TensorDataset(torch.arange(10)), 4, shuffle=True, generator=np.random.RandomState(0))


def test_make_loader_refuses_a_seed_that_is_not_an_int():
    with pytest.raises(TypeError, match=r"seed must be an int, got float; pass e\.g\. seed=0"):
        make_loader(TensorDataset(torch.arange(10)), 4, shuffle=True, seed=0.5)


# --- lambdas and local functions: pickle refuses them, from a module or not -------------------

HELPERS = """
import torch

double = lambda x: 2 * x  # noqa: E731


def make_scale(factor):
    def scale(x):
        return factor * x

    return scale


def halve(x):
    return x / 2


class Pairs(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.transform(torch.tensor(float(i)))
"""


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    """A real module, imported from a file as a reader's would be: not __main__."""
    (tmp_path / "spawn_helpers.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("spawn_helpers")
    sys.modules.pop("spawn_helpers", None)


def test_pickle_refuses_a_module_lambda_and_a_local_function_in_this_process(helpers):
    # why the check exists: spawn pickles in the main process, and this is where it would fail
    for function in (helpers.double, helpers.make_scale(3)):
        with pytest.raises((pickle.PicklingError, AttributeError)):  # which one depends on Python's version
            pickle.dumps(function)
    assert pickle.loads(pickle.dumps(helpers.halve)) is helpers.halve


def test_lambdas_and_locals_finds_them_however_deep_and_only_them(helpers):
    dataset = helpers.Pairs(v2.Compose([v2.Lambda(helpers.double), helpers.halve, helpers.make_scale(3)]))
    assert loading.lambdas_and_locals(dataset) == ["<lambda>", "make_scale.<locals>.scale"]
    assert loading.lambdas_and_locals(helpers.Pairs(helpers.halve)) == []
    assert loading.defined_in_main(dataset) == [], "a module's lambda is not in __main__"


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_make_loader_refuses_a_module_lambda_for_spawned_workers_even_from_a_script(helpers, context):
    assert loading._main_is_importable()  # pytest runs from a file, as a script would
    message = (
        rf"<lambda> is a lambda: pickle cannot send it to '{context}' worker processes, from a module or not.*"
        r"define it with def or class at the top level of a module"
    )
    with pytest.raises(TypeError, match=message):
        make_loader(
            helpers.Pairs(v2.Lambda(helpers.double)),
            2,
            shuffle=False,
            num_workers=1,
            multiprocessing_context=context,
        )


def test_make_loader_refuses_local_functions_in_collate_fn_and_worker_init_fn(helpers):
    def init(worker_id):
        pass

    message = r"make_scale\.<locals>\.scale, .*<locals>\.init are defined inside a function.*define them"
    with pytest.raises(TypeError, match=message):
        make_loader(
            TensorDataset(torch.zeros(4)),
            2,
            shuffle=False,
            num_workers=1,
            collate_fn=helpers.make_scale(2),
            worker_init_fn=init,
            multiprocessing_context="spawn",
        )


def test_make_loader_names_lambdas_and_notebook_definitions_together(in_a_notebook, helpers):
    message = r"<lambda> is a lambda: .*; Squares is defined in __main__ .*; define them with def or class"
    with pytest.raises(TypeError, match=message):
        make_loader(
            Squares(),
            2,
            shuffle=False,
            num_workers=1,
            collate_fn=helpers.double,
            multiprocessing_context="spawn",
        )


def test_make_loader_accepts_named_module_functions_for_spawned_workers(helpers):
    loader = make_loader(
        helpers.Pairs(v2.Compose([helpers.halve])),
        2,
        shuffle=False,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    assert loader.num_workers == 1


def test_make_loader_accepts_lambdas_without_workers_or_with_fork(helpers):
    dataset = helpers.Pairs(v2.Lambda(helpers.double))
    assert [b.tolist() for b in make_loader(dataset, 2, shuffle=False)] == [[0.0, 2.0], [4.0, 6.0]]
    if "fork" in torch.multiprocessing.get_all_start_methods():  # not on Windows
        make_loader(dataset, 2, shuffle=False, num_workers=1, multiprocessing_context="fork")
