"""The shipped worlds and what each is made of (:class:`World`): its classes, the captions its
generator is trained on, the images it trains on and the held-out ones it never sees, its
settings and the judge that reads generated images back.

- ``digits`` (:data:`DIGITS`): scikit-learn's handwritten digits; captions name the digit, so
  the text alone pins the class.
- ``critters`` (:data:`CRITTERS`): procedurally drawn beetles, fish and butterflies in three
  markings each (:mod:`dipsy_ui.critters`); captions name the family only ("a photo of a
  beetle"), never the marking, so, as with Stable Diffusion and fine-grained class names
  (arXiv 2509.22635, section 1), only an image prompt can carry the species.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UsageError
from .config import WorldConfig

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"


@dataclass(frozen=True)
class World:
    """One world: everything :mod:`.build` trains from and :mod:`.report` measures with."""

    name: str  # what ``--world`` takes
    folder: str  # the shipped world's folder under assets/
    classes: tuple[str, ...]  # class names, the label order
    templates: tuple[str, ...]  # caption templates of the generator's training ({c}, {n} fields)
    fields: tuple[dict, ...]  # per class, what its captions fill the templates with
    config: WorldConfig  # the settings that made the shipped world
    preset: str  # the preset the world's demo uses (presets/<preset>.json)
    source: str  # where the images come from, for world.json
    families: dict[str, list[str]] | None  # family -> its classes (look-alikes), if any
    load_pool: Callable[[], tuple[list[Image.Image], np.ndarray]]  # training images and labels
    held_out: Callable[[], dict[str, list]]  # class -> ids of its held-out images, for world.json
    fewshot: Callable[[int, int], dict[str, list[Image.Image]]]  # (shots, seed) -> few-shot images
    write_demo_data: Callable[..., Path]  # (out_dir, shots=, test_per_class=, seed=) -> out_dir
    test_per_class: int  # held-out images per class available
    judge: Callable[[], Callable[[list[Image.Image]], np.ndarray]]  # -> images -> labels
    judge_source: str  # what the judge is, in words, for the report
    demo_text: str  # what the app's demo header says the world is, in plain words

    @property
    def directory(self) -> Path:
        """Where the shipped world lies."""
        return ASSETS / self.folder

    def caption(self, label: int, template: int) -> str:
        return self.templates[template].format(**self.fields[label])

    def caption_groups(self, classes: tuple[str, ...]) -> tuple[list[dict], np.ndarray]:
        """The distinct caption fields of ``classes`` (one contrastive target each: classes whose
        captions are the same text are one target) and each label's group (-1: not in ``classes``)."""
        groups: list[dict] = []
        of_label = np.full(len(self.classes), -1)
        for name in classes:
            label = self.classes.index(name)
            if self.fields[label] not in groups:
                groups.append(self.fields[label])
            of_label[label] = groups.index(self.fields[label])
        return groups, of_label

    def quick_config(self) -> WorldConfig:
        """A few steps per stage with this world's class settings (tests, CI)."""
        return replace(WorldConfig.quick(), clip_classes=self.config.clip_classes)


# -- digits ------------------------------------------------------------------------------------------


def _digit_pool() -> tuple[list[Image.Image], np.ndarray]:
    from ..digits import digit_image, digits_split, load_digits

    digits, labels = load_digits()
    pool, _ = digits_split()
    indices = np.sort(np.concatenate(list(pool.values())))
    return [digit_image(digits[i], 32) for i in indices], labels[indices]


def _digit_held_out() -> dict[str, list]:
    from ..digits import DIGIT_NAMES, digits_split

    _, test = digits_split()
    return {DIGIT_NAMES[label]: indices.tolist() for label, indices in test.items()}


def _digit_fewshot(shots: int, seed: int) -> dict[str, list[Image.Image]]:
    from ..digits import DIGIT_NAMES, digit_image, fewshot_indices, load_digits

    images, _ = load_digits()
    return {
        DIGIT_NAMES[label]: [digit_image(images[i], 32) for i in indices]
        for label, indices in fewshot_indices(shots, seed).items()
    }


def _digit_judge() -> Callable[[list[Image.Image]], np.ndarray]:
    from .report import digit_features, reference_classifier

    classifier = reference_classifier()
    return lambda images: classifier.predict(digit_features(images))


def _digits() -> World:
    from ..digits import DIGIT_NAMES, DIGIT_TEST_PER_CLASS, write_demo_data
    from .config import CAPTION_TEMPLATES

    return World(
        name="digits",
        folder="digit-world",
        classes=DIGIT_NAMES,
        templates=CAPTION_TEMPLATES,
        fields=tuple({"c": name, "n": digit} for digit, name in enumerate(DIGIT_NAMES)),
        config=WorldConfig(),
        preset="demo",
        source="sklearn.datasets.load_digits",
        families=None,
        load_pool=_digit_pool,
        held_out=_digit_held_out,
        fewshot=_digit_fewshot,
        write_demo_data=write_demo_data,
        test_per_class=DIGIT_TEST_PER_CLASS,
        judge=_digit_judge,
        judge_source="an SVC on the pool digits' 8x8 pixels",
        demo_text="the digit world, a small model trained on handwritten digits (32x32 pixels, not Stable "
        "Diffusion), with its own image adapter and CLIP, and a few-shot digits dataset (ten classes, "
        "zero to nine)",
    )


# -- critters ----------------------------------------------------------------------------------------

CRITTER_TEMPLATES = (  # {c}: the family, never the marking
    "A photo of a {c}",
    "a {c}",
    "a small {c}",
    "a picture of a {c}",
    "{c}",
    "a {c} on a plain background",
    "a colourful {c}",
)


def _critter_pool() -> tuple[list[Image.Image], np.ndarray]:
    from ..critters import CRITTER_NAMES, CRITTER_POOL_PER_CLASS, critter_images

    images = [critter_images("pool", label, CRITTER_POOL_PER_CLASS) for label in range(len(CRITTER_NAMES))]
    return [image for row in images for image in row], np.repeat(
        np.arange(len(CRITTER_NAMES)), CRITTER_POOL_PER_CLASS
    )


def _critter_held_out() -> dict[str, list]:
    from ..critters import CRITTER_NAMES, CRITTER_TEST_PER_CLASS

    # Drawn from the "test" seed stream, disjoint from the pool's: (split 1, class, 0..n-1).
    return {name: [f"test seed (1, {label}, 0..{CRITTER_TEST_PER_CLASS - 1})"]
            for label, name in enumerate(CRITTER_NAMES)}  # fmt: skip


def _critter_judge() -> Callable[[list[Image.Image]], np.ndarray]:
    from ..critters import critter_judge

    return critter_judge().predict


def _critters() -> World:
    from ..critters import (
        CRITTER_FAMILIES,
        CRITTER_NAMES,
        CRITTER_TEST_PER_CLASS,
        FAMILIES,
        MARKINGS,
        critter_fewshot,
        write_critter_data,
    )

    return World(
        name="critters",
        folder="critter-world",
        classes=CRITTER_NAMES,
        templates=CRITTER_TEMPLATES,
        fields=tuple({"c": family} for family in FAMILIES for _ in MARKINGS),
        # The classifier's CLIP sees every critter, captioned by family only: like real CLIP on
        # fine-grained classes, it knows the kind and not the species.
        # Fewer U-Net steps than the digits (its loss flattens after about 1000 there) leave the
        # adapter, which alone carries the species, most of its steps within the time budget.
        config=WorldConfig(
            clip_classes=CRITTER_NAMES,
            unet_steps=1000,
            adapter_steps=700,
            plain_adapter_steps=150,
            clip_steps=400,
        ),
        preset="critters",
        source="dipsy_ui.critters (drawn procedurally)",
        families=CRITTER_FAMILIES,
        load_pool=_critter_pool,
        held_out=_critter_held_out,
        fewshot=critter_fewshot,
        write_demo_data=write_critter_data,
        test_per_class=CRITTER_TEST_PER_CLASS,
        judge=_critter_judge,
        judge_source="an SVC on the pixels of drawn critters (sharp and blurred)",
        demo_text="the critter world, a small model trained on drawn beetles, fish and butterflies (32x32 "
        "pixels, not Stable Diffusion), with its own image adapter and CLIP. Its nine classes are three "
        "species of each: spotted, striped or banded. The model was only ever told the family "
        '("a beetle"), never the marking, so the example images must show the species, and a negative '
        "image of a look-alike keeps its marking out",
    )


@functools.cache
def worlds() -> dict[str, World]:
    return {"digits": _digits(), "critters": _critters()}


def demo_world(demo: bool | str) -> World:
    """The world a demo runs: a world's name, or ``True`` for the digits (what ``demo=True``
    meant before there were two worlds)."""
    return get_world("digits" if demo is True else demo)


def get_world(name: str) -> World:
    """The world called ``name``; a clear error for any other name."""
    if name not in worlds():
        raise UsageError(f"unknown world {name!r}; the worlds are {sorted(worlds())}")
    return worlds()[name]
