"""The critters: a fine-grained world rendered procedurally (nothing downloaded).

Three families of look-alikes, beetles, fish and butterflies, each in three species that differ
only in their marking: *spotted* (dark dots), *striped* (thin lines along the body) or *banded*
(one thick band across it). The family is the coarse kind (silhouette and colour, what a caption
names); the species is a detail a few pixels wide, the regime of fine-grained datasets
(aircraft variants, flower species) that DIPSY's negative image is for (arXiv 2509.22635).

Every image is a pure function of (class, split, index): the pool the critter world trains on
and the held-out test set are drawn from disjoint seed streams, so no model ever sees a test
critter. Pose (angle, offset, size), colours and the markings' placement vary per image.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .digits import check_demo_target, write_demo_folders
from .errors import UsageError

FAMILIES = ("beetle", "fish", "butterfly")
MARKINGS = ("spotted", "striped", "banded")
CRITTER_NAMES = tuple(f"{marking} {family}" for family in FAMILIES for marking in MARKINGS)
CRITTER_FAMILIES = {family: [f"{marking} {family}" for marking in MARKINGS] for family in FAMILIES}
CRITTER_POOL_PER_CLASS = 300  # images per class the critter world trains on
CRITTER_TEST_PER_CLASS = 200  # held-out images per class available to the demo data and the report
IMAGE_SIZE = 32
_SCALE = 4  # drawn at 4x and downsampled: anti-aliased edges and sub-pixel markings
_CANVAS = IMAGE_SIZE * _SCALE
_SPLITS = {"pool": 0, "test": 1}
_INK = (25, 20, 30)  # the markings' colour, the same in every family

# family -> (body colour, background colour): the coarse look a caption's family word names
_COLOURS = {
    "beetle": ((205, 45, 35), (190, 220, 160)),
    "fish": ((40, 125, 205), (200, 225, 240)),
    "butterfly": ((240, 160, 30), (235, 215, 230)),
}


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _silhouette(family: str, draw: ImageDraw.ImageDraw, body: tuple[int, ...]) -> None:
    """The family's body, drawn axis-aligned around the canvas centre (long axis horizontal for
    the fish, vertical for the beetle, across the wings for the butterfly)."""
    c = _CANVAS // 2
    if family == "beetle":
        for dy in (-14, 0, 14):  # legs, under the shell
            draw.line([(c - 44, c + dy), (c + 44, c + dy)], fill=_INK, width=5)
        draw.ellipse([c - 14, c - 50, c + 14, c - 24], fill=_INK)  # head
        draw.ellipse([c - 32, c - 36, c + 32, c + 46], fill=body)
    elif family == "fish":
        draw.polygon([(c + 28, c), (c + 56, c - 24), (c + 56, c + 24)], fill=body)  # tail
        draw.ellipse([c - 50, c - 26, c + 38, c + 26], fill=body)
    else:
        draw.ellipse([c - 56, c - 44, c - 2, c + 6], fill=body)  # upper wings
        draw.ellipse([c + 2, c - 44, c + 56, c + 6], fill=body)
        draw.ellipse([c - 44, c - 2, c - 4, c + 40], fill=body)  # lower wings
        draw.ellipse([c + 4, c - 2, c + 44, c + 40], fill=body)
        draw.ellipse([c - 6, c - 40, c + 6, c + 36], fill=_INK)  # body


def _marking(marking: str, family: str, rng: np.random.Generator) -> Image.Image:
    """The species' marking as a mask over the whole canvas (clipped to the body later)."""
    mask = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    c = _CANVAS // 2
    along_x = family != "beetle"  # the fish and the butterfly are wider than tall
    if marking == "spotted":
        for _ in range(int(rng.integers(6, 10))):
            x, y = c + rng.uniform(-48, 48), c + rng.uniform(-40, 40)
            r = rng.uniform(5.5, 7.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif marking == "striped":
        offset, gap = rng.uniform(-4, 4), rng.uniform(13, 16)
        for k in (-1, 0, 1):
            at = c + offset + k * gap
            line = [(0, at), (_CANVAS, at)] if along_x else [(at, 0), (at, _CANVAS)]
            draw.line(line, fill=255, width=7)
    else:
        at, width = c + rng.uniform(-6, 6), rng.uniform(18, 22)
        # across the body: upright on the fish, level on the beetle and the butterfly's wings
        across_x = family == "fish"
        box = (
            [at - width / 2, 0, at + width / 2, _CANVAS]
            if across_x
            else [0, at - width / 2, _CANVAS, at + width / 2]
        )
        draw.rectangle(box, fill=255)
    return mask


def render_critter(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One critter of class ``CRITTER_NAMES[label]`` in a pose drawn from ``rng``, RGB, ``size`` px."""
    family, marking = FAMILIES[label // len(MARKINGS)], MARKINGS[label % len(MARKINGS)]
    body_colour, background = _COLOURS[family]
    layer = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    body = _jitter(rng, body_colour, 25)
    _silhouette(family, ImageDraw.Draw(layer), body + (255,))
    # The marking is ink only where the body is (not on the legs or head, which are ink already).
    body_mask = Image.fromarray((np.asarray(layer)[..., :3] == body).all(-1).astype(np.uint8) * 255)
    ink = Image.new("RGBA", layer.size, _INK + (255,))
    layer.paste(
        ink,
        mask=Image.fromarray(np.minimum(np.asarray(body_mask), np.asarray(_marking(marking, family, rng)))),
    )
    scale = rng.uniform(0.8, 1.0)
    layer = layer.resize((round(_CANVAS * scale),) * 2, Image.Resampling.BICUBIC)
    layer = layer.rotate(rng.uniform(-35, 35), resample=Image.Resampling.BICUBIC, expand=False)
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), _jitter(rng, background, 15) + (255,))
    room = _CANVAS - layer.size[0]
    dx, dy = (int(room / 2 + rng.uniform(-10, 10)) for _ in range(2))
    canvas.alpha_composite(layer, (dx, dy))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def critter_image(split: str, label: int, index: int, size: int = IMAGE_SIZE) -> Image.Image:
    """Critter ``index`` of a class in ``split`` ("pool" or "test"): always the same picture,
    drawn from the seed (split, class, index)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return render_critter(label, np.random.default_rng((_SPLITS[split], label, index)), size)


def critter_images(split: str, label: int, count: int, size: int = IMAGE_SIZE) -> list[Image.Image]:
    """The first ``count`` critters of a class in ``split``."""
    return [critter_image(split, label, i, size) for i in range(count)]


def critter_fewshot(shots: int, seed: int, size: int = IMAGE_SIZE) -> dict[str, list[Image.Image]]:
    """``shots`` pool critters per class, drawn by ``seed``: the demo data's few-shot images."""
    if not 1 <= shots <= CRITTER_POOL_PER_CLASS:
        raise UsageError(f"shots must be in 1..{CRITTER_POOL_PER_CLASS}, got {shots}")
    rng = np.random.default_rng(seed)
    return {
        name: [
            critter_image("pool", label, int(i), size)
            for i in rng.permutation(CRITTER_POOL_PER_CLASS)[:shots]
        ]
        for label, name in enumerate(CRITTER_NAMES)
    }


def write_critter_data(
    out_dir: str | Path,
    shots: int = 8,
    test_per_class: int = 100,
    size: int = IMAGE_SIZE,
    seed: int = 0,
) -> Path:
    """Write the nine-species few-shot set: ``out_dir/train/<species>/`` holds ``shots`` pool
    critters per class drawn by ``seed``, ``out_dir/test/<species>/`` the first ``test_per_class``
    held-out ones (never seen by the critter world). The same seed gives the same bytes."""
    check_demo_target(out_dir)
    if not 1 <= test_per_class <= CRITTER_TEST_PER_CLASS:
        raise UsageError(f"test_per_class must be in 1..{CRITTER_TEST_PER_CLASS}, got {test_per_class}")
    splits = {
        "train": critter_fewshot(shots, seed, size),
        "test": {
            name: critter_images("test", label, test_per_class, size)
            for label, name in enumerate(CRITTER_NAMES)
        },
    }
    return write_demo_folders(out_dir, splits, "dipsy_ui.critters.write_critter_data")


def _judge_features(images: list[Image.Image]) -> np.ndarray:
    return np.stack(
        [
            np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE)), dtype=np.float32).ravel() / 255
            for image in images
        ]
    )


class CritterJudge:
    """The critter world's reference judge: an SVC on the pixels of drawn pool critters, each
    also blurred (Gaussian, radius 0.8), since generated images are softer than drawn ones. It
    never sees a generated image nor a held-out critter."""

    def __init__(self, per_class: int = 200):
        from PIL import ImageFilter
        from sklearn.svm import SVC

        images, labels = [], []
        for label in range(len(CRITTER_NAMES)):
            drawn = critter_images("pool", label, per_class)
            images += drawn + [image.filter(ImageFilter.GaussianBlur(0.8)) for image in drawn]
            labels += [label] * (2 * per_class)
        self.svc = SVC(C=10.0).fit(_judge_features(images), np.array(labels))

    def predict(self, images: list[Image.Image]) -> np.ndarray:
        """Class index of each image."""
        return self.svc.predict(_judge_features(images))


@functools.cache  # fitted once per process: the report, the tests and the app read with one judge
def critter_judge() -> CritterJudge:
    return CritterJudge()
