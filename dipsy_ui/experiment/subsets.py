"""The images of an experiment: the pool few-shot subsets are drawn from, the test set, the subsets.

Draws are reproducible and independent of file names and folder order: a class's images are
ordered by their pixel digest, then shuffled by a random stream keyed on (seed, class name).
The subset of ``k`` shots for a seed is the first ``k`` of that shuffle, so the subsets of one
seed are nested (the 1-shot image is among the 2 shots, which are among the 4) and a larger
subset only adds images; another seed is another shuffle. A held-out test set is drawn the same
way from its own stream, the same for every seed, and the subsets come from what remains.

Subsets and a held-out test set are written as ImageFolder trees of PNGs (lossless: the images
reload with the same digests), so a cell's data can be opened in the Studio as it is.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data import ImageRecord, load_dataset, resolve_inside
from ..errors import DatasetError
from ..images import save_png

Pool = dict[str, list[ImageRecord]]  # class name -> images, in the dataset's class order


def _shuffled(records: Sequence[ImageRecord], stream: str, class_name: str) -> list[ImageRecord]:
    """``records`` in digest order, shuffled by the stream named (``stream``, class name)."""
    key = hashlib.sha256(f"{stream}\x00{class_name}".encode("utf-8", "surrogatepass")).digest()
    ordered = sorted(records, key=lambda record: record.digest)
    order = np.random.default_rng(int.from_bytes(key[:8], "little")).permutation(len(ordered))
    return [ordered[i] for i in order]


def hold_out(pool: Pool, per_class: int) -> tuple[Pool, Pool]:
    """Split ``pool`` into (what remains, ``per_class`` test images per class), the same split for
    every seed; each class must keep at least one image."""
    short = {name: len(records) for name, records in pool.items() if len(records) <= per_class}
    if short:
        raise DatasetError(
            f"holding out {per_class} test images per class leaves nothing to train on in {short} "
            "(images per class); lower held_out_per_class or give a separate test set"
        )
    remaining, test = {}, {}
    for name, records in pool.items():
        shuffled = _shuffled(records, "held-out", name)
        test[name], remaining[name] = shuffled[:per_class], shuffled[per_class:]
    return remaining, test


def check_shots(pool: Pool, shots: int) -> None:
    """Raise unless every class of ``pool`` has at least ``shots`` images."""
    short = {name: len(records) for name, records in pool.items() if len(records) < shots}
    if short:
        raise DatasetError(
            f"{shots} shots per class need {shots} images per class; these classes have fewer "
            f"(after any held-out test images): {short}. Add images or lower the largest shots"
        )


def draw_subset(pool: Pool, shots: int, seed: int) -> Pool:
    """``shots`` images per class for ``seed``: nested in ``shots`` (see the module docstring)."""
    check_shots(pool, shots)
    return {name: _shuffled(records, f"seed {seed}", name)[:shots] for name, records in pool.items()}


def draw_extra(pool: Pool, seed: int, skip: int, count: int) -> Pool:
    """``count`` images per class that no subset of ``seed`` with up to ``skip`` shots holds (the
    next ones in the seed's order): the oracle arm's real images in place of synthetic ones."""
    short = {name: len(records) for name, records in pool.items() if len(records) < skip + count}
    if short:
        raise DatasetError(
            f"the oracle arm needs {skip} shots + {count} extra images per class; these classes have "
            f"fewer: {short}. Add images, or lower images_per_class or the largest shots"
        )
    return {
        name: _shuffled(records, f"seed {seed}", name)[skip : skip + count] for name, records in pool.items()
    }


def write_once(folder: str | Path, fill: Callable[[Path], object]) -> Path:
    """Make ``folder`` by ``fill(empty folder)`` unless it exists. ``fill`` writes into a hidden
    sibling that is then renamed into place, so ``folder`` exists only complete; what an
    interrupted write left behind is removed the next time."""
    folder = Path(folder)
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
        fill(partial)
        partial.rename(folder)
        for leftover in folder.parent.glob(f".{folder.name}.*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
    return folder


def write_image_folder(folder: str | Path, classes: Mapping[str, Sequence[ImageRecord]]) -> Path:
    """Write ``folder/<class name>/<n>.png`` once (:func:`write_once`) and check that it reads
    back as the same classes."""

    def fill(partial: Path) -> None:
        for name, records in classes.items():
            for n, record in enumerate(records):
                save_png(record.image, resolve_inside(partial, name, f"{n:03d}.png"))

    folder = write_once(folder, fill)
    names = set(load_dataset(folder).class_names)
    if names != set(classes):
        raise DatasetError(
            f"class names {sorted(set(classes) - names)} do not survive as folder names in {folder}; "
            "rename those classes (one plain folder name each)"
        )
    return folder
