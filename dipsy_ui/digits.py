"""The digits: scikit-learn's bundled handwritten digits (no download), split once into a pool
and a held-out test set. The digit world (:mod:`dipsy_ui.world`) trains on the pool only; the
demo data (:func:`write_demo_data`) draws its few-shot images from the pool and its test images
from the held-out digits, so demo and benchmark accuracies are measured on digits no model saw.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from .data import resolve_inside
from .errors import UsageError

_DEMO_MARKER = ".dipsy-demo"  # marks a folder write_demo_data made, so it may rewrite it

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEST_PER_CLASS = 30  # held-out digits per class: no model of the digit world ever sees them
DIGIT_SPLIT_SEED = 0


@functools.cache  # read once per process: the split, the demo data and the world all use it
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (no download): (N, 8, 8) ink in 0..16, labels."""
    from sklearn.datasets import load_digits as sklearn_digits  # only the digits need scikit-learn

    digits = sklearn_digits()
    return digits.images, digits.target


def digits_split() -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """The fixed split of the digits into a pool and a held-out test set, per label.

    The digit world (:mod:`dipsy_ui.world.build`) trains every model on the pool only; the demo data
    draws its few-shot images from the pool and its test images from the held-out set, so demo
    and benchmark test accuracies are measured on digits no model has seen.
    """
    _, labels = load_digits()
    rng = np.random.default_rng(DIGIT_SPLIT_SEED)
    pool, test = {}, {}
    for label in range(len(DIGIT_NAMES)):
        indices = rng.permutation(np.flatnonzero(labels == label))
        test[label], pool[label] = indices[:DIGIT_TEST_PER_CLASS], indices[DIGIT_TEST_PER_CLASS:]
    return pool, test


def fewshot_indices(shots: int, seed: int) -> dict[int, np.ndarray]:
    """``shots`` pool digits per label, drawn by ``seed``: the demo data's few-shot images."""
    pool, _ = digits_split()
    smallest = min(len(indices) for indices in pool.values())
    if not 1 <= shots <= smallest:
        raise UsageError(f"shots must be in 1..{smallest}, got {shots}")
    rng = np.random.default_rng(seed)
    return {label: rng.permutation(indices)[:shots] for label, indices in pool.items()}


def digit_image(ink: np.ndarray, size: int) -> Image.Image:
    """One 8x8 digit as an RGB image of ``size`` pixels: dark ink on white (the data is white on
    black), closer to the photos the real diffusion model has seen; bicubic upscaling."""
    pixels = (255 - ink * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def write_demo_data(
    out_dir: str | Path,
    shots: int = 8,
    test_per_class: int = DIGIT_TEST_PER_CLASS,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a ten-class few-shot set from scikit-learn's bundled digits (no download).

    ``out_dir/train/<zero..nine>/<n>.png`` holds ``shots`` images per class drawn (by ``seed``)
    from the pool of :func:`digits_split`, and ``out_dir/test`` the first ``test_per_class`` of
    its held-out digits, at ``size`` pixels (32: the digit world's native size). The same seed
    gives the same bytes. A non-empty ``out_dir`` is only rewritten if an earlier call made it.
    """
    check_demo_target(out_dir)
    if not 1 <= test_per_class <= DIGIT_TEST_PER_CLASS:
        raise UsageError(f"test_per_class must be in 1..{DIGIT_TEST_PER_CLASS}, got {test_per_class}")
    images, _ = load_digits()
    train, (_, test) = fewshot_indices(shots, seed), digits_split()  # raises before anything is removed
    splits = {
        split: {
            name: [digit_image(images[i], size) for i in chosen[label]]
            for label, name in enumerate(DIGIT_NAMES)
        }
        for split, chosen in (("train", train), ("test", {k: v[:test_per_class] for k, v in test.items()}))
    }
    return write_demo_folders(out_dir, splits, "dipsy_ui.digits.write_demo_data")


def check_demo_target(out_dir: str | Path) -> None:
    """Refuse a folder that is neither empty nor a demo dataset written earlier."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / _DEMO_MARKER).is_file())
    ):
        raise UsageError(
            f"{out_dir} exists and is not an empty folder or a DIPSY demo dataset; choose another folder"
        )


def write_demo_folders(
    out_dir: str | Path, splits: dict[str, dict[str, list[Image.Image]]], writer: str
) -> Path:
    """Write ``splits`` (split -> class -> images) as ``out_dir/<split>/<class>/<n>.png``, replacing
    the splits of an earlier demo dataset there; every world's demo data is written by it."""
    out_dir = Path(out_dir)
    check_demo_target(out_dir)
    for split in splits:
        shutil.rmtree(resolve_inside(out_dir, split), ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _DEMO_MARKER).write_text(f"written by {writer}\n")
    for split, classes in splits.items():
        for class_name, images in classes.items():
            folder = out_dir / split / class_name
            folder.mkdir(parents=True)
            for n, image in enumerate(images):
                image.save(folder / f"{n:03d}.png")
    return out_dir
