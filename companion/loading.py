"""Chapter 5, "Loading data": image folders checked before they are trusted, normalization
statistics, caching decoded images, and ``DataLoader`` set-ups that are seeded and safe to spawn;
and chapter 7's :class:`TensorLoader`, which slices batches from tensors already in memory."""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import random
import sys
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    TensorDataset,
    default_collate,
    get_worker_info,
)

from companion.checks import check_bool, check_device, check_int, is_int

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

_TO_FLOAT_TENSOR = "v2.ToImage(), v2.ToDtype(torch.float32, scale=True)"


def load_imagefolder(
    root: str | os.PathLike[str],
    transform: Callable | None = None,
    *,
    target_transform: Callable | None = None,
) -> ImageFolder:
    """``torchvision.datasets.ImageFolder(root, transform)``, after checking the folder first.

    ImageFolder expects ``root/<class>/<image file>`` and numbers the classes in sorted order of
    their folder names. Its own errors come late or say little: an unreadable file surfaces only
    when a batch draws it, mid-epoch and often inside a worker process; an empty class folder is
    reported by class name, and a hidden folder is taken for a class. This wrapper checks first,
    and names the path in its error:

    - ``root`` is missing (:class:`FileNotFoundError`) or a file (:class:`NotADirectoryError`);
    - ``root`` has no class folder (:class:`FileNotFoundError`), or a hidden one such as
      Jupyter's ``.ipynb_checkpoints``, which ImageFolder would take for a class (:class:`ValueError`);
    - a class folder holds no image file (:class:`FileNotFoundError`);
    - a file with an image extension that PIL cannot decode, e.g. an empty file, a PNG or JPEG cut
      off before its end, or one that is not an image at all (:class:`ValueError`).

    The last check opens and decodes every file once, as ImageFolder will when a batch draws it
    (``Image.open(path).load()``), with ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` off for the check
    even where it was turned on: a cut-off file is damage to report, not an image. PIL's
    ``verify()`` would be cheaper, but it really checks only PNG files (it passes a JPEG cut in
    half). For small images decoding costs a fraction of a millisecond each; on millions of
    files, check once and then use ImageFolder directly. Note that ImageFolder converts every
    image to RGB, so grayscale files come back with 3 identical channels unless the transform
    starts with ``v2.Grayscale()``.
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"no image folder at {root}: it does not exist; pass the folder that holds one subfolder per class "
            f"(companion.datasets.digits_imagefolder writes such folders)"
        )
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass the folder that holds one subfolder per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    hidden = [p for p in classes if p.name.startswith(".")]
    if hidden:
        raise ValueError(
            f"{hidden[0]} is a hidden folder that ImageFolder would count as a class; "
            f"delete it or move it out of {root}"
        )
    if not classes:
        loose = sum(1 for p in root.iterdir() if p.is_file())
        raise FileNotFoundError(
            f"{root} has no class folders"
            + (f" (it holds {loose} files directly)" if loose else "")
            + f"; ImageFolder needs {root}/<class name>/<image files>, one folder per class"
        )
    for folder in classes:
        files = sorted(Path(d, f) for d, _, names in os.walk(folder, followlinks=True) for f in names)
        images = [f for f in files if f.name.lower().endswith(IMG_EXTENSIONS)]
        if not images:
            others = (
                f" (only {', '.join(f.name for f in files[:3])}{', ...' if len(files) > 3 else ''})"
                if files
                else ""
            )
            raise FileNotFoundError(
                f"class folder {folder} holds no image file{others}; ImageFolder reads only .png, .jpg and the "
                f"other extensions in torchvision.datasets.folder.IMG_EXTENSIONS"
            )
        for path in images:
            _check_decodes(path)
    return ImageFolder(root, transform=transform, target_transform=target_transform)


def _check_decodes(path: Path) -> None:
    """Decode the image file at ``path`` in full, or raise a :class:`ValueError` naming it."""
    truncated_allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a cut-off file must fail here, not be padded with grey
    try:
        with Image.open(path) as image:
            image.load()  # decodes every pixel, as ImageFolder's loader will
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise ValueError(f"{path} is not a readable image ({type(e).__name__}); delete or replace it") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_allowed


def channel_stats(dataset: Iterable) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every pixel of every image, for ``Normalize``.

    For channel :math:`c`, over all :math:`N` pixels :math:`x_i` of that channel in the dataset:

    .. math:: \\mu_c = \\frac1N \\sum_i x_i, \\qquad
              \\sigma_c = \\sqrt{\\frac1N \\sum_i (x_i - \\mu_c)^2}

    computed in one streaming pass, in float64: each image (or batch) ``b`` with :math:`n_b`
    pixels, mean :math:`\\mu_b` and :math:`M_b = \\sum (x - \\mu_b)^2` is merged into the running
    :math:`(n, \\mu, M)` (Chan, Golub and LeVeque's update, exact and free of the cancellation in
    :math:`E[x^2] - \\mu^2`):

    .. math:: n' = n + n_b, \\quad \\delta = \\mu_b - \\mu, \\quad \\mu' = \\mu + \\delta \\frac{n_b}{n'},
              \\quad M' = M + M_b + \\delta^2 \\frac{n\\, n_b}{n'}, \\qquad \\sigma = \\sqrt{M / N}

    ``dataset`` yields images of shape ``(C, H, W)``, or batches ``(B, C, H, W)`` (a DataLoader),
    alone or as the first element of ``(image, label)``: a dataset whose transform ends with
    ``v2.ToImage(), v2.ToDtype(torch.float32, scale=True)`` (pixels in :math:`[0, 1]`, the scale
    ``Normalize`` then sees). Integer tensors are refused: their statistics would be on the
    0..255 scale. Memory use is one image or batch. Compute it on the training split only.

    Returns:
        ``(mean, std)``, two tuples of ``C`` floats: ``v2.Normalize(mean, std)``.
    """
    items = dataset if isinstance(dataset, Iterable) else (dataset[i] for i in range(len(dataset)))
    n = 0
    mean = m2 = None
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"channel_stats needs tensors, got {type(x).__name__}; end the dataset's transform with "
                f"{_TO_FLOAT_TENSOR}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"channel_stats needs float images in [0, 1], got {x.dtype} (0..255 for 8-bit images); "
                f"follow v2.ToImage() with v2.ToDtype(torch.float32, scale=True)"
            )
        if x.dim() not in (3, 4):
            raise ValueError(
                f"channel_stats needs images (C, H, W) or batches (B, C, H, W), got shape {tuple(x.shape)}; "
                f"add the channel dimension, e.g. x.unsqueeze(0) for one grayscale image"
            )
        x = x.detach().to(torch.float64).movedim(-3, 0).reshape(x.shape[-3], -1)  # (C, pixels)
        n_b = x.shape[1]
        mean_b = x.mean(dim=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(dim=1)
        if mean is None:
            n, mean, m2 = n_b, mean_b, m2_b
            continue
        if mean_b.shape != mean.shape:
            raise ValueError(f"every image must have {mean.numel()} channels, got one with {mean_b.numel()}")
        total = n + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (n * n_b / total)
        n = total
    if mean is None:
        raise ValueError(
            "channel_stats got an empty dataset; pass the training split, e.g. load_imagefolder(root / 'train', transform)"
        )
    std = (m2 / n).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class CachedDataset(Dataset):
    """Decode and transform every item of a map-style dataset once; serve them from memory.

    ``CachedDataset(dataset)[i]`` equals ``dataset[i]`` as it was when the cache was built, but
    costs an index into a tensor instead of opening, decoding and transforming a file. The
    inputs are stacked into one tensor of :math:`N \\times` (input shape) elements
    (``N * C * H * W * 4`` bytes for float32 images: check that it fits in memory), so every
    input must have the same shape; the targets are kept as the dataset returned them.

    **Caching freezes random augmentation.** A random transform inside ``dataset`` (a random
    crop, flip, ...) runs once, at construction, so every epoch sees the same augmented image.
    Keep the deterministic part of the transform in ``dataset`` and pass the random part as
    ``transform``: it runs on the cached tensor on every access (torchvision's ``v2`` transforms
    take tensors as well as PIL images).

    One tensor also travels cheaply to worker processes (shared memory, or inherited on fork).
    """

    def __init__(
        self, dataset: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        if isinstance(dataset, IterableDataset) or not (
            hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
        ):
            raise TypeError(
                f"CachedDataset needs a map-style dataset (with __len__ and __getitem__), got {type(dataset).__name__}; "
                f"an IterableDataset can be cached with list(...) if it fits in memory"
            )
        if len(dataset) == 0:
            raise ValueError("CachedDataset got an empty dataset; check the folder it reads")
        inputs, targets = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], torch.Tensor)):
                raise TypeError(
                    f"CachedDataset caches (tensor, target) pairs, item {i} is {type(item).__name__}; "
                    f"end the dataset's transform with {_TO_FLOAT_TENSOR}"
                )
            if inputs and item[0].shape != inputs[0].shape:
                raise ValueError(
                    f"item {i} has shape {tuple(item[0].shape)}, item 0 has {tuple(inputs[0].shape)}: CachedDataset "
                    f"stacks the inputs; add transforms.Resize to the dataset's transform"
                )
            inputs.append(item[0])
            targets.append(item[1])
        self.inputs = torch.stack(inputs)
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, object]:
        x = self.inputs[index]
        return (self.transform(x) if self.transform is not None else x), self.targets[index]


class ImageStream(IterableDataset):
    """The images of an ImageFolder tree as a stream: an :class:`IterableDataset`.

    Yields ``(transform(image), class index)`` for every image under ``root``, in file order,
    once per pass. A stream has no index, so a DataLoader cannot shuffle it (pass
    ``shuffle=False``), and each worker process runs its own copy of ``__iter__``: without
    care every one of ``K`` workers would yield the whole stream, each image ``K`` times. Here
    worker :math:`k` of :math:`K` (from ``torch.utils.data.get_worker_info()``) yields the
    files :math:`k, k + K, k + 2K, \\dots`, so each image comes once. Real streams read shards
    (tar files, database pages) the same way: one disjoint part per worker.
    """

    def __init__(self, root: str | os.PathLike[str], transform: Callable | None = None) -> None:
        self.folder = load_imagefolder(root, transform)

    def __len__(self) -> int:
        return len(self.folder)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        first, step = (0, 1) if info is None else (info.id, info.num_workers)
        for index in range(first, len(self.folder), step):
            yield self.folder[index]


# --- batches sliced from memory (chapter 7) ------------------------------------------------------------------------


class TensorLoader:
    """Batches sliced from tensors in memory: ``for x, y in TensorLoader(X, Y, batch_size=64): ...``.

    A ``DataLoader`` fetches a batch one sample at a time (``dataset[i]`` for each index, each a
    Python call) and then stacks the samples (``collate_fn``). For data already in memory as
    tensors that per-sample work is most of the cost; here each batch is one indexing operation
    per tensor, :math:`X[\\pi_{kb:(k+1)b}]` for the permutation :math:`\\pi` of the epoch.

    **A drop-in replacement.** It draws from the random number generators exactly what
    ``DataLoader(TensorDataset(*tensors), batch_size, shuffle, generator=generator,
    drop_last=drop_last)`` draws, in the same order (a base seed for worker processes per epoch,
    then ``RandomSampler``'s permutation, and the second permutation the sampler draws when it is
    exhausted). So with generators in the same state it yields the same batches, epoch after
    epoch, and leaves the global RNG (dropout's) in the same state: switching loaders changes the
    speed of a training run, not its result. It has ``len()``, ``batch_size`` and ``generator`` as
    a DataLoader does, so :func:`companion.fit` trains and resumes with it.

    It has no workers and no per-sample transforms (random augmentation): for those, use a
    DataLoader. ``device`` moves the tensors once, at construction: on a GPU, a dataset that fits
    in its memory then never crosses the bus again (each batch is sliced where it lives).
    """

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int = 1,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        if not tensors:
            raise TypeError(
                "TensorLoader needs at least one tensor, e.g. TensorLoader(inputs, targets, batch_size=64)"
            )
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                what = type(t).__name__ if not isinstance(t, torch.Tensor) else "a 0-dimensional tensor"
                raise TypeError(
                    f"TensorLoader's argument {i} is {what}: pass tensors whose first dimension counts samples"
                    + (
                        "; for a dataset, use TensorLoader.from_dataset(dataset, batch_size=...)"
                        if not isinstance(t, torch.Tensor)
                        else ""
                    )
                )
        lengths = [len(t) for t in tensors]
        if len(set(lengths)) > 1:
            raise ValueError(
                f"the tensors hold different numbers of samples, {lengths}: their first dimensions must agree"
            )
        if lengths[0] == 0:
            raise ValueError("the tensors hold no samples; pass at least one")
        self.batch_size = check_int(batch_size, "batch_size", least=1, example="batch_size=64")
        check_bool(shuffle, "shuffle")
        check_bool(drop_last, "drop_last")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}; "
                "pass e.g. generator=torch.Generator().manual_seed(0)"
            )
        if device is not None:
            device = check_device(device)
            tensors = tuple(t.to(device) for t in tensors)
        self.tensors = tensors
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator

    @classmethod
    def from_dataset(cls, dataset: TensorDataset | CachedDataset, **options: Any) -> TensorLoader:
        """A TensorLoader over the tensors of a ``TensorDataset`` or a ``CachedDataset``.

        A CachedDataset's targets are batched as the DataLoader's ``default_collate`` would
        batch them (ints become an ``int64`` tensor). One with a ``transform`` is refused: that
        transform runs on each sample at every access, which only a DataLoader does.
        """
        if isinstance(dataset, TensorDataset):
            return cls(*dataset.tensors, **options)
        if isinstance(dataset, CachedDataset):
            if dataset.transform is not None:
                raise ValueError(
                    "this CachedDataset has a transform, which must run on each sample at every access "
                    "(random augmentation): serve it with a DataLoader, or build the CachedDataset "
                    "without one and apply a batch transform in the training step"
                )
            return cls(dataset.inputs, default_collate(list(dataset.targets)), **options)
        raise TypeError(
            f"from_dataset takes a TensorDataset or a CachedDataset, got {type(dataset).__name__}; "
            "for other datasets, use a DataLoader or CachedDataset(dataset) first"
        )

    def __len__(self) -> int:
        n = len(self.tensors[0])
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # what DataLoader's iterator draws when it starts: a base seed for its workers
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)
        return self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        tensors, size = self.tensors, self.batch_size
        stop = len(self) * size
        if not self.shuffle:
            for start in range(0, stop, size):
                yield tuple([t[start : start + size] for t in tensors])
            return
        n = len(tensors[0])
        generator = self.generator
        if generator is None:  # RandomSampler without a generator seeds a new one from the global RNG
            generator = torch.Generator().manual_seed(
                int(torch.empty((), dtype=torch.int64).random_().item())
            )
        order = torch.randperm(n, generator=generator)
        if order.device != tensors[0].device:
            order = order.to(tensors[0].device)
        for start in range(0, stop, size):
            index = order[start : start + size]
            yield tuple([t.index_select(0, index) for t in tensors])  # t[index], with less overhead
        if self.generator is not None:
            # RandomSampler, exhausted, draws one more permutation (its empty "n % n" tail)
            torch.randperm(n, generator=self.generator)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return (
            f"TensorLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last})"
        )


def seed_worker(worker_id: int) -> None:
    """A ``worker_init_fn``: seed Python's ``random`` and NumPy in a DataLoader worker.

    In worker :math:`k`, PyTorch has already set ``torch.initial_seed()`` to
    :math:`s_0 + k`, where the base seed :math:`s_0` is drawn from the DataLoader's
    ``generator``; this seeds ``random`` and ``numpy.random`` with
    :math:`(s_0 + k) \\bmod 2^{32}` (the recipe of PyTorch's reproducibility notes). Since
    PyTorch 1.9 the worker seeds those two itself as well (NumPy with a hash of :math:`s_0` and
    :math:`k`), so on current versions this changes which numbers are drawn, not whether they
    repeat: what makes workers reproducible is the seeded ``generator``. Keep it as the one
    place to seed any other library your transforms draw random numbers from.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def defined_in_main(obj: object) -> list[str]:
    """The classes and functions that ``obj`` needs and that live in ``__main__``.

    A worker process started with ``spawn`` (or ``forkserver``) receives the dataset and
    ``collate_fn`` pickled, and pickle stores a class or function as a reference,
    ``module.name``, not as code; the worker imports ``module`` to find ``name``. A class defined
    in a notebook cell (or an interactive session) lives in ``__main__``, which the worker cannot
    import: it has no file. Pickling succeeds, and the worker dies at its first batch with an
    ``AttributeError``. (A script's ``__main__`` has a file, which the worker re-imports, so
    classes defined at the top level of a script are found.) This walks ``obj`` as pickle would,
    skipping tensor data, and returns the qualified names of those references, e.g.
    ``['Squares', 'flatten_collate']``.
    """
    return list(dict.fromkeys(name for name, module in _hard_to_send(obj) if module == "__main__"))


def lambdas_and_locals(obj: object) -> list[str]:
    """The lambdas, and the functions and classes defined inside a function, that ``obj`` needs.

    pickle stores a function or class by reference, ``module.qualname``, and checks in the
    process that pickles that the reference leads back to it. A lambda has no name to look up
    (its qualified name is ``<lambda>``), and a function or class defined inside another
    function exists only in that call (its qualified name holds ``<locals>``), so pickle refuses
    both, in the main process, wherever they were written: in a module as much as in a notebook.
    ``spawn`` and ``forkserver`` workers can only be sent named functions and classes defined at
    the top level of a module. This walks ``obj`` as pickle would, skipping tensor data, and
    returns the qualified names it found, e.g. ``['<lambda>', 'make_scale.<locals>.scale']``.
    """
    return list(dict.fromkeys(name for name, _ in _hard_to_send(obj) if _is_local(name)))


def _is_local(qualname: str) -> bool:
    return "<lambda>" in qualname or "<locals>" in qualname


def _hard_to_send(obj: object) -> list[tuple[str, str | None]]:
    """``(qualname, module)`` of every class and function in ``obj`` that lives in ``__main__`` or is local."""
    finder = _ReferenceFinder()
    try:
        finder.dump(obj)
    except Exception:  # noqa: BLE001 - unpicklable for another reason: what was found so far still counts
        pass
    return finder.found


class _ReferenceFinder(pickle.Pickler):
    """Pickles into nothing, recording the references a spawned worker could not resolve.

    Each one found is pickled as its name instead, so that the walk goes on past it and finds
    them all; tensor data is skipped."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.found: list[tuple[str, str | None]] = []

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, (type, types.FunctionType)):
            name, module = getattr(obj, "__qualname__", "?"), getattr(obj, "__module__", None)
            if module == "__main__" or _is_local(name):
                self.found.append((name, module))
                return str, (name,)
        return NotImplemented  # let pickle go on as usual

    def persistent_id(self, obj: object) -> str | None:
        return (
            "tensor" if isinstance(obj, (torch.Tensor, torch.UntypedStorage)) else None
        )  # don't copy tensor data


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    **kwargs: object,
) -> DataLoader:
    """A seeded ``torch.utils.data.DataLoader``; everything else passes through unchanged::

        DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=num_workers,
                   generator=torch.Generator().manual_seed(seed), worker_init_fn=seed_worker, **kwargs)

    The loader's own generator decides the shuffled order and the workers' seeds, so the same
    ``seed`` (0 unless given) gives the same batches in the same order every run, whatever else
    drew random numbers before. Pass a ``generator`` instead of a ``seed`` to draw from your own
    (one you seed, save or share): it is used as given, not reseeded. ``kwargs`` are
    DataLoader's: ``drop_last``, ``collate_fn``, ``persistent_workers``, ``pin_memory``,
    ``multiprocessing_context``, ...

    With workers started by ``spawn`` or ``forkserver`` (the default on macOS and Windows, and
    on Linux from Python 3.14) the dataset, its transforms, ``collate_fn`` and
    ``worker_init_fn`` are pickled to each worker, and must be named functions and classes
    defined at the top level of a module, like this package's. Before any worker starts, this
    raises a :class:`TypeError` naming what could not reach them: lambdas and local functions
    or classes (see :func:`lambdas_and_locals`), which pickle refuses, and in a notebook the
    classes and functions defined in a cell (see :func:`defined_in_main`), which would kill
    the workers at the first batch.
    """
    if not isinstance(shuffle, bool):
        raise TypeError(
            f"shuffle must be True or False, got {shuffle!r}; pass shuffle=True for training data"
        )
    generator = _generator(seed, generator)
    kwargs.setdefault("worker_init_fn", seed_worker)
    if isinstance(num_workers, int) and num_workers > 0:
        method = _start_method(kwargs.get("multiprocessing_context"))
        if method != "fork":  # fork copies the process; the others pickle what the workers need
            _refuse_what_workers_cannot_receive(
                (dataset, kwargs.get("collate_fn"), kwargs["worker_init_fn"]), method
            )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        **kwargs,
    )


def _generator(seed: object, generator: object) -> torch.Generator:
    """The loader's generator: the one given, else a new one seeded with ``seed`` (0 by default)."""
    if generator is None:
        seed = 0 if seed is None else seed
        if not is_int(seed):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}; pass e.g. seed=0")
        return torch.Generator().manual_seed(int(seed))
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            f"pass e.g. generator=torch.Generator().manual_seed(0), or seed=0"
        )
    if seed is not None:
        raise TypeError(
            f"got both seed={seed!r} and a generator; pass one: the generator is used as given, not reseeded"
        )
    return generator


def _refuse_what_workers_cannot_receive(needed: object, method: str) -> None:
    """Raise a :class:`TypeError` naming the lambdas, local and ``__main__`` definitions in ``needed``."""
    local = lambdas_and_locals(needed)
    in_main = [] if _main_is_importable() else [n for n in defined_in_main(needed) if n not in local]
    if not (local or in_main):
        return
    lambdas = [n for n in local if n.endswith("<lambda>")]
    nested = [n for n in local if n not in lambdas]
    what = (
        [f"{', '.join(lambdas)} {'is a lambda' if len(lambdas) == 1 else 'are lambdas'}"] if lambdas else []
    )
    what += [f"{', '.join(nested)} {_is(nested)} defined inside a function"] if nested else []
    problems = []
    if local:
        problems.append(
            " and ".join(what) + f": pickle cannot send {'it' if len(local) == 1 else 'them'} to {method!r} "
            f"worker processes, from a module or not, since it sends functions and classes by importable name"
        )
    if in_main:
        problems.append(
            f"{', '.join(in_main)} {_is(in_main)} defined in __main__ (here a notebook cell or an interactive "
            f"session), which {method!r} worker processes cannot import"
        )
    it = "it" if len(local) + len(in_main) == 1 else "them"
    raise TypeError(
        "; ".join(problems) + f"; define {it} with def or class at the top level of a module (a .py file) "
        f"and import {it} from there, or pass num_workers=0"
    )


def _is(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"


def _main_is_importable() -> bool:
    """Whether a spawned worker can import ``__main__``: a script or ``python -m``, not a notebook.

    A spawned worker imports ``__main__`` by its module name, else runs its ``__file__`` again;
    a notebook kernel's has neither, and code piped to ``python -`` has ``__file__ == "<stdin>"``,
    which is no file."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) is not None:
        return True
    file = getattr(main, "__file__", None)
    return isinstance(file, str) and os.path.isfile(file)


def _start_method(context: object) -> str:
    """How DataLoader workers will start: the ``multiprocessing_context`` given, else the default."""
    if isinstance(context, str):
        return context
    if context is not None:
        return context.get_start_method()
    # without fixing the global default as get_start_method() would; the first listed is the default
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
