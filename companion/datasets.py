"""The data every chapter uses: generated problems (a linear regression with known weights) and
real images that ship with scikit-learn (the handwritten digits), split once, the same way everywhere,
and written as image files for chapter 5."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from PIL import Image

from companion.checks import is_int


def make_linear_regression(
    n: int, d: int, noise: float = 0.1, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear regression problem with known answer.

    Draws ``X ~ N(0, 1)`` of shape ``(n, d)``, true weights ``w ~ N(0, 1)`` of shape ``(d,)``
    and targets

    .. math:: y = X w + \\varepsilon, \\qquad \\varepsilon \\sim \\mathcal N(0, \\text{noise}^2)

    of shape ``(n, 1)``, so that ``nn.Linear(d, 1)`` and ``nn.MSELoss`` fit them without a
    reshape. The generator is local: the call does not touch the global RNG.

    Returns:
        ``(X, y, w)``: features ``(n, d)``, targets ``(n, 1)`` and the true weights ``(d,)``,
        all of ``dtype`` (``float32`` unless you ask for another, whatever the default dtype).
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}; pass e.g. torch.float64")
    for name, value in (("n", n), ("d", d)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(
                f"{name} must be a positive number of {'samples' if name == 'n' else 'features'}, got {value}"
            )
    if not noise >= 0:  # also catches NaN
        raise ValueError(
            f"noise is a standard deviation and must be >= 0, got {noise}; pass 0 for exact targets"
        )
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(d, generator=g, dtype=dtype)
    y = X @ w + noise * torch.randn(n, generator=g, dtype=dtype)
    return X, y.unsqueeze(1), w


SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


def digits_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled handwritten digits, split into train, val and test.

    The 1,797 images are 8x8 pixels of 16 grey levels (0..16), scaled here to 8-bit grey
    ``round(v * 255 / 16)`` as an image file would hold them. The split is stratified by class
    (every digit in the same proportion in each part) with fractions 70/15/15, and
    deterministic for a given ``seed``.

    Returns:
        ``{"train": (images, labels), "val": ..., "test": ...}``: images ``uint8`` of shape
        ``(n, 8, 8)``, labels ``int64`` of shape ``(n,)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images).mul(255 / 16).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    index = torch.arange(len(labels)).numpy()
    rest_frac = SPLIT_FRACTIONS[1] + SPLIT_FRACTIONS[2]
    train_idx, rest_idx = train_test_split(
        index, test_size=rest_frac, stratify=labels.numpy(), random_state=seed
    )
    val_idx, test_idx = train_test_split(
        rest_idx,
        test_size=SPLIT_FRACTIONS[2] / rest_frac,
        stratify=labels[rest_idx].numpy(),
        random_state=seed,
    )
    return {
        name: (images[torch.from_numpy(idx)], labels[torch.from_numpy(idx)])
        for name, idx in zip(SPLITS, (train_idx, val_idx, test_idx))
    }


# ---------------------------------------------------------------------------------------------
# The digits as image files, for chapter 5, "Loading data" (companion.loading reads them)
# ---------------------------------------------------------------------------------------------

DIGITS_MARKER = "companion_digits.json"
"""The file :func:`digits_imagefolder` writes last into a tree; a tree without it is not trusted."""


def digits_imagefolder(root: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the bundled digits as PNG files in an ImageFolder tree, once; return ``Path(root)``.

    The layout is the one :class:`torchvision.datasets.ImageFolder` reads, one folder per split
    and per class::

        root/train/0/0000.png ... root/train/9/...   (70 %, from digits_splits(seed))
        root/val/<class>/*.png                        (15 %)
        root/test/<class>/*.png                       (15 %)
        root/companion_digits.json                    (the seed and the counts, written last)

    Each image is an 8x8 8-bit grayscale PNG (PIL mode ``"L"``) of :func:`digits_splits`.

    - **Idempotent.** When ``root`` already holds a complete tree for this ``seed`` (the marker
      file names the seed and the number of images per split and class, and the folders hold
      exactly that many PNG files) nothing is written and the call returns at once.
    - **Atomic.** The tree is written into ``.<name>.partial`` beside ``root`` and renamed to
      ``root`` only when complete, so an interrupted call never leaves a tree a later call
      trusts. A ``.partial`` folder left by an interrupted call is deleted by the next one (so
      two processes must not build the same root at the same moment).
    - **Never overwrites.** If ``root`` exists and is not a complete tree for ``seed``: an empty
      folder is replaced; anything else (a file, a folder with other files, a tree of another
      seed, a tree of ours with files missing) raises :class:`FileExistsError` (or
      :class:`NotADirectoryError`) naming ``root`` and saying what to do. The data stays.

    Returns ``Path(root)`` as given (a relative path stays relative, so it prints portably).
    """
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}; pass e.g. seed=0")
    seed = int(seed)  # a NumPy integer too, as a plain int (it is written into the tree's manifest)
    root = Path(root)
    if root.name in ("", ".", ".."):
        raise ValueError(f"root must name a folder of its own, got {str(root)!r}; pass e.g. 'data/digits'")
    partial = root.parent / f".{root.name}.partial"
    if partial.exists():  # left by an interrupted call: never trusted, never reused
        shutil.rmtree(partial)
    if _digits_tree_is_complete(root, seed):
        return root
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()  # an empty folder holds nothing to lose

    splits = digits_splits(seed)
    counts = {
        name: {str(c): int((labels == c).sum()) for c in range(10)} for name, (_, labels) in splits.items()
    }
    partial.mkdir(parents=True)
    try:
        for name, (images, labels) in splits.items():
            for c in range(10):
                (partial / name / str(c)).mkdir(parents=True)
            for i, (image, label) in enumerate(zip(images, labels)):
                Image.fromarray(image.numpy()).save(partial / name / str(int(label)) / f"{i:04d}.png")
        marker = {"dataset": "sklearn.datasets.load_digits", "seed": seed, "counts": counts}
        (partial / DIGITS_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    except BaseException:  # interrupted or failed: leave nothing behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    try:
        partial.rename(root)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if _digits_tree_is_complete(root, seed):  # another process wrote the same tree first
            return root
        raise
    return root


def _digits_tree_is_complete(root: Path, seed: int) -> bool:
    """True for a complete tree of ``seed``, False for no tree (absent or empty folder); raises otherwise."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root} is a file, not a folder; pass a folder path for the digits, e.g. 'data/digits'"
        )
    marker = root / DIGITS_MARKER
    if not marker.is_file():
        raise FileExistsError(
            f"{root} exists and holds files that digits_imagefolder did not write (no {DIGITS_MARKER} in it); "
            f"pass a new or empty folder as root, or delete {root} if it holds nothing you need"
        )
    try:
        written = json.loads(marker.read_text())
        written_seed = written["seed"]
        expected = {(split, c): int(written["counts"][split][str(c)]) for split in SPLITS for c in range(10)}
    except (ValueError, KeyError, TypeError) as e:
        raise FileExistsError(
            f"{marker} is damaged ({e!r}); delete {root} and call digits_imagefolder again"
        ) from e
    if written_seed != seed:
        raise FileExistsError(
            f"{root} holds the digits split with seed={written_seed}, not seed={seed}; "
            f"pass seed={written_seed}, or another root for seed={seed}"
        )
    for split in SPLITS:
        for c in range(10):
            folder = root / split / str(c)
            found = len(list(folder.glob("*.png"))) if folder.is_dir() else 0
            if found != expected[split, c]:
                raise FileExistsError(
                    f"{folder} holds {found} PNG files where digits_imagefolder wrote {expected[split, c]}: "
                    f"the tree at {root} was modified; delete {root} and call digits_imagefolder again"
                )
    return True


# ---------------------------------------------------------------------------------------------
# Larger images of the same digits, for chapter 7, "Making training fast": how loading costs grow
# ---------------------------------------------------------------------------------------------

RESIZED_MARKER = "companion_resized_digits.json"
"""The file :func:`resized_digits_imagefolder` writes last into a tree; a tree without it is not trusted."""


def resized_digits_imagefolder(
    root: str | os.PathLike[str], size: int, count: int | None = None, seed: int = 0
) -> Path:
    """Write the first ``count`` training digits, resized to ``size`` x ``size`` pixels, as PNG files.

    The layout is ImageFolder's, ``root/<class>/<index>.png`` (one folder per digit among the
    images), plus a marker file written last. The images are :func:`digits_splits`'s training split, in its
    (shuffled) order, upscaled from 8x8 with bilinear interpolation: the same digits, with
    :math:`(size/8)^2` times the pixels to decode, for measuring how loading costs grow with the
    image size. ``count=None`` writes all 1,257.

    Like :func:`digits_imagefolder` it is idempotent (a complete tree written with the same
    ``size``, ``count`` and ``seed`` is returned at once), atomic (written beside ``root`` and
    renamed when complete) and never overwrites: a ``root`` that holds anything else raises
    :class:`FileExistsError`. Returns ``Path(root)``.
    """
    for name, value in (("size", size), ("seed", seed)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}; pass e.g. {name}=32")
    if not 1 <= size <= 1024:
        raise ValueError(f"size must be between 1 and 1024 pixels, got {size}; pass e.g. size=32")
    size, seed = int(size), int(seed)
    images, labels = digits_splits(seed)["train"]
    if count is not None:
        if not is_int(count):
            raise TypeError(f"count must be an int or None, got {type(count).__name__}; pass e.g. count=256")
        if not 1 <= count <= len(labels):
            raise ValueError(
                f"count must be between 1 and {len(labels)} (the training digits), got {count}; "
                "pass e.g. count=256, or None for all"
            )
        count = int(count)
        images, labels = images[:count], labels[:count]
    root = Path(root)
    if root.name in ("", ".", ".."):
        raise ValueError(f"root must name a folder of its own, got {str(root)!r}; pass e.g. 'data/digits_32'")
    wanted = {"size": size, "count": len(labels), "seed": seed}
    marker = root / RESIZED_MARKER
    if root.is_dir() and marker.is_file():
        try:
            written = json.loads(marker.read_text())
        except ValueError:
            written = None
        if written == wanted and len(list(root.glob("*/*.png"))) == len(labels):
            return root
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists and is not a complete tree of {len(labels)} digits of {size}x{size} pixels "
            f"(seed {seed}) written by resized_digits_imagefolder; pass a new or empty folder as root, "
            f"or delete {root} if it holds nothing you need"
        )
    if root.is_dir():
        root.rmdir()  # an empty folder holds nothing to lose
    partial = root.parent / f".{root.name}.partial"
    if partial.exists():  # left by an interrupted call: never trusted
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = partial / str(int(label))  # only the classes present: ImageFolder refuses empty ones
            folder.mkdir(exist_ok=True)
            resized = Image.fromarray(image.numpy()).resize((size, size), Image.Resampling.BILINEAR)
            resized.save(folder / f"{i:04d}.png")
        (partial / RESIZED_MARKER).write_text(json.dumps(wanted) + "\n")
        partial.rename(root)
    except BaseException:  # interrupted or failed: leave nothing behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root
