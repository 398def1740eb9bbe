"""Chapter 5, "Loading data": image folders checked before they are trusted, normalization
statistics, caching decoded images, and ``DataLoader`` set-ups that are seeded and safe to spawn."""

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
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder


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
    - a file with an image extension that PIL cannot open, e.g. an empty or truncated file, or
      one that is not an image at all (:class:`ValueError`).

    The last check reads every file once (a fraction of a millisecond per small PNG); on millions of files,
    check once and then use ImageFolder directly. Note that ImageFolder converts every image to
    RGB, so grayscale files come back with 3 identical channels unless the transform starts
    with ``transforms.Grayscale()``.
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
                f"class folder {folder} holds no image file{others}; ImageFolder reads {', '.join(IMG_EXTENSIONS)}"
            )
        for path in images:
            try:
                with Image.open(path) as image:
                    image.verify()  # reads the whole file and checks it, without decoding pixels
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
                raise ValueError(
                    f"{path} is not a readable image ({type(e).__name__}); delete or replace it"
                ) from e
    return ImageFolder(root, transform=transform, target_transform=target_transform)


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
    ``ToTensor()``. Memory use is one image or batch. Compute it on the training split only.

    Returns:
        ``(mean, std)``, two tuples of ``C`` floats: ``transforms.Normalize(mean, std)``.
    """
    items = dataset if isinstance(dataset, Iterable) else (dataset[i] for i in range(len(dataset)))
    n = 0
    mean = m2 = None
    for item in items:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"channel_stats needs tensors, got {type(x).__name__}; end the dataset's transform with "
                f"transforms.ToTensor()"
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
    ``transform``: it runs on the cached tensor on every access (use the tensor versions of
    torchvision's transforms).

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
                    f"end the dataset's transform with transforms.ToTensor()"
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
    import: it has no file. The worker dies with ``AttributeError: Can't get attribute ...``.
    (A script's ``__main__`` has a file, which the worker re-imports, so classes defined at the
    top level of a script are found.) This walks ``obj`` as pickle would, skipping tensor data,
    and returns the qualified names of those references, e.g. ``['Squares', '<lambda>']``.
    """
    finder = _MainFinder()
    try:
        finder.dump(obj)
    except Exception:  # noqa: BLE001 - unpicklable for another reason: what was found so far still counts
        pass
    return list(dict.fromkeys(finder.found))


class _MainFinder(pickle.Pickler):
    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.found: list[str] = []

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            self.found.append(obj.__qualname__)
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
    seed: int = 0,
    num_workers: int = 0,
    **kwargs: object,
) -> DataLoader:
    """A seeded ``torch.utils.data.DataLoader``; everything else passes through unchanged::

        DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=num_workers,
                   generator=torch.Generator().manual_seed(seed), worker_init_fn=seed_worker, **kwargs)

    The loader's own generator decides the shuffled order and the workers' seeds, so the same
    ``seed`` gives the same batches in the same order every run, whatever else drew random
    numbers before. ``kwargs`` are DataLoader's: ``drop_last``, ``collate_fn``,
    ``persistent_workers``, ``pin_memory``, ``multiprocessing_context``, ...

    With workers started by ``spawn`` or ``forkserver`` (the default on macOS and Windows, and
    on Linux from Python 3.14) the dataset, its transform and ``collate_fn`` are pickled to
    each worker and must be importable from a module, like this package's classes. When they
    were defined in a notebook cell (see :func:`defined_in_main`), this raises a
    :class:`TypeError` at once, instead of the workers dying at the first batch.
    """
    if not isinstance(shuffle, bool):
        raise TypeError(
            f"shuffle must be True or False, got {shuffle!r}; pass shuffle=True for training data"
        )
    kwargs.setdefault("worker_init_fn", seed_worker)
    if isinstance(num_workers, int) and num_workers > 0:
        method = _start_method(kwargs.get("multiprocessing_context"))
        if method != "fork" and not _main_is_importable():
            needed = (dataset, kwargs.get("collate_fn"), kwargs["worker_init_fn"])
            names = [name for obj in needed for name in defined_in_main(obj)]
            if names:
                raise TypeError(
                    f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} defined in __main__ (here a notebook cell "
                    f"or an interactive session), which {method!r} worker processes cannot import; move "
                    f"{'it' if len(names) == 1 else 'them'} into a module (a .py file) and import from there, "
                    f"or pass num_workers=0"
                )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def _main_is_importable() -> bool:
    """Whether a spawned worker can import ``__main__``: a script or ``python -m``, not a notebook."""
    main = sys.modules.get("__main__")
    return getattr(getattr(main, "__spec__", None), "name", None) is not None or hasattr(main, "__file__")


def _start_method(context: object) -> str:
    """How DataLoader workers will start: the ``multiprocessing_context`` given, else the default."""
    if isinstance(context, str):
        return context
    if context is not None:
        return context.get_start_method()
    # without fixing the global default as get_start_method() would; the first listed is the default
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
