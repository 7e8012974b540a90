"""Labelled image lists: what the classifier trains on and is measured on.

A labelled list is a sequence of ``(image, class name)`` pairs: the image a file path or a PIL
image, the class name the display name, any string ("crème brûlée", "Cat" and "cat", "a/b").
Folders are one way to build one (:func:`labelled_images`: an ImageFolder tree, or a DIPSY
synthetic set read through its manifest); the trainer, the evaluator and the comparison take a
folder or a list alike (:func:`as_labelled`), so nothing has to write a folder or a manifest to
carry names that are not valid folder names.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from ..config import TrainConfig
from ..data import IMAGE_SUFFIXES, class_name
from ..errors import ImageReadError, TrainDataError
from ..images import open_image, to_rgb
from ..manifest import kept_images, manifest_path
from ..models import ClipBundle

ImageSource = Path | Image.Image
Labelled = list[tuple[ImageSource, str]]
# What the trainer and the evaluator accept: a folder, or (image path | PIL image, class name) pairs.
LabelledSource = str | os.PathLike | Sequence[tuple[str | os.PathLike | Image.Image, str]]


def labelled_images(folder: str | Path, role: str = "image") -> list[tuple[Path, str]]:
    """(path, class name) of every image in ``folder``, sorted by class then file.

    A folder with ``manifest.jsonl`` is a synthetic set: only its *kept* records are listed
    (rejected images never reach a loader), with the manifest's display class names. Any other
    folder is an ImageFolder tree: one subfolder per class, named by :func:`~dipsy_ui.data.class_name`
    of the subfolder (as the few-shot loader names it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainDataError(f"the {role} folder {folder} does not exist or is not a folder")
    if manifest_path(folder).is_file():
        items = kept_images(folder)
    else:
        items = [
            (path, class_name(sub.name))
            for sub in folder.iterdir()
            if sub.is_dir() and not sub.name.startswith(".")
            for path in sub.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        ]
    if not items:
        raise TrainDataError(
            f"the {role} folder {folder} holds no images: expected one subfolder of images per class"
            " (or a DIPSY synthetic set with manifest.jsonl and kept images)"
        )
    return sorted(items, key=lambda item: (item[1], str(item[0])))


def as_labelled(source: LabelledSource, role: str) -> Labelled:
    """A folder (see :func:`labelled_images`) or a list of (path | PIL image, class name) pairs,
    checked, as a labelled list; class names go through :func:`~dipsy_ui.data.class_name`."""
    if isinstance(source, str | os.PathLike):
        return labelled_images(source, role)
    items: Labelled = []
    for entry in source:
        if not (isinstance(entry, tuple | list) and len(entry) == 2):
            raise TrainDataError(f"the {role} list must hold (image, class name) pairs, got {entry!r}")
        image, name = entry
        if isinstance(image, str | os.PathLike):
            image = Path(image)
        elif not isinstance(image, Image.Image):
            raise TrainDataError(
                f"the {role} list holds a {type(image).__name__}; expected a path or a PIL image"
            )
        if not isinstance(name, str) or not class_name(name):
            raise TrainDataError(f"the {role} list has an empty or non-text class name: {name!r}")
        items.append((image, class_name(name)))
    if not items:
        raise TrainDataError(f"the {role} list is empty: give at least one image per class")
    return items


def describe(source: LabelledSource) -> str:
    """How a source is recorded in a run's metrics: the folder, or the list's size."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"a list of {len(source)} labelled images"


def readable_only(items: Labelled, role: str, where: str) -> tuple[Labelled, list[str]]:
    """Drop files that do not decode; return the rest and one warning per dropped file.

    Used on the few-shot set (small, and every image counts); raises when nothing is left.
    """
    kept, warnings = [], []
    for image, name in items:
        try:
            if isinstance(image, Path):
                open_image(image)
        except ImageReadError as error:
            warnings.append(f"skipped {error}")
        else:
            kept.append((image, name))
    if not kept:
        raise TrainDataError(f"the {role} set {where} has no readable images ({len(items)} files tried)")
    return kept, warnings


def check_classes(class_names: Sequence[str], other: Sequence[str], role: str) -> None:
    """Raise unless ``other`` (the classes of the ``role`` set) are exactly ``class_names``."""
    missing_there = sorted(set(class_names) - set(other))
    missing_here = sorted(set(other) - set(class_names))
    if missing_there or missing_here:
        raise TrainDataError(
            f"the real and {role} sets must have the same classes; "
            f"missing in the {role} set: {missing_there or 'none'}; "
            f"missing in the real set: {missing_here or 'none'}. "
            "Rename or remove classes so both sides match."
        )


def indexed(items: Labelled, class_names: Sequence[str], role: str) -> list[tuple[ImageSource, int]]:
    """(image, label index) pairs; every class of ``items`` must be one of ``class_names``."""
    unknown = sorted({name for _, name in items} - set(class_names))
    if unknown:
        raise TrainDataError(
            f"the {role} set has classes the classifier was not trained on: {unknown}; "
            f"known classes: {list(class_names)}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return [(image, index[name]) for image, name in items]


class LabelledImages(Dataset):
    """(transformed image, label index) pairs; files are decoded on access."""

    def __init__(self, items: Sequence[tuple[ImageSource, int]], transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.items[index]
        return self.transform(open_image(image) if isinstance(image, Path) else to_rgb(image)), label


# The training inputs ---------------------------------------------------------------------


@dataclass
class TrainData:
    class_names: tuple[str, ...]
    real: list[tuple[ImageSource, int]]
    synthetic: list[tuple[ImageSource, int]] | None
    test: list[tuple[ImageSource, int]] | None
    warnings: list[str]


def prepare_data(
    real: LabelledSource, synthetic: LabelledSource | None = None, test: LabelledSource | None = None
) -> TrainData:
    """List and check the inputs (folders or labelled lists, see :func:`~.data.as_labelled`):
    >= 2 classes, readable real images, the same classes on the real and synthetic sides, test
    classes among them."""
    real_items, warnings = readable_only(as_labelled(real, "real"), "real", describe(real))
    class_names = tuple(sorted({name for _, name in real_items}))
    if len(class_names) < 2:
        raise TrainDataError(
            f"the real set {describe(real)} has a single class {list(class_names)}; a classifier needs at "
            "least 2 (one subfolder of images per class)"
        )
    synthetic_items = None
    if synthetic is not None:
        listed = as_labelled(synthetic, "synthetic")
        check_classes(class_names, sorted({name for _, name in listed}), "synthetic")
        synthetic_items = indexed(listed, class_names, "synthetic")
    test_items = indexed(as_labelled(test, "test"), class_names, "test") if test is not None else None
    return TrainData(
        class_names, indexed(real_items, class_names, "real"), synthetic_items, test_items, warnings
    )


def train_transform(clip: ClipBundle, config: TrainConfig):
    """RandomResizedCrop + flip + RandAugment, normalised with the CLIP model's mean and std."""
    ops = [
        transforms.RandomResizedCrop(
            clip.image_size,
            scale=(config.crop_scale_min, 1.0),
            interpolation=transforms.InterpolationMode.BICUBIC,
        ),
        transforms.RandomHorizontalFlip(),
    ]
    if config.randaugment_ops:
        ops.append(transforms.RandAugment(config.randaugment_ops, config.randaugment_magnitude))
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(clip.mean, clip.std)])


class CyclingSampler(Sampler[int]):
    """``total`` indices from consecutive random permutations of ``range(n)``: a small set is
    repeated, reshuffled each pass, to keep pace with a larger one."""

    def __init__(self, n: int, total: int, seed: int):
        self.n, self.total, self.seed = n, total, seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.total, self.n):
            yield from torch.randperm(self.n, generator=generator)[: self.total - start].tolist()


def train_stream(items, transform, config: TrainConfig, total_steps: int, seed: int, cuda: bool) -> Iterator:
    """``total_steps`` batches of ``config.batch_size`` augmented images, the set cycled as needed."""
    sampler = CyclingSampler(len(items), total_steps * config.batch_size, seed)
    # The loader's generator seeds the workers' augmentation RNG: runs repeat with workers too.
    workers = dict(num_workers=config.workers(cuda), generator=torch.Generator().manual_seed(seed + 1))
    return iter(
        DataLoader(
            LabelledImages(items, transform), config.batch_size, sampler=sampler, pin_memory=cuda, **workers
        )
    )
