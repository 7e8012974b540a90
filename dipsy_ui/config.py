"""Every setting and its default, in one place: generation (:class:`GenerationConfig`) and
classifier training (:class:`TrainConfig`), and the limits on imported images.

The engine, the CLI (flags, help texts) and the app (widget initial values and limits) all read
their defaults from these dataclasses; a preset (``presets/<name>.json``, :mod:`dipsy_ui.presets`)
overrides fields. Defaults are the authors' (REFERENCE section 2) and the DataDream / DISEF
classifier recipe the DIPSY paper (arXiv 2509.22635) reports with (REFERENCE section 4).
Each numeric field declares its inclusive range in its annotation (``Annotated[int, Between(1,
256)]``); :meth:`Settings.bounds` reads it back for a UI, and the check enforces the same range.
Unknown keys and invalid values raise :class:`SettingsError` naming the key and what is allowed.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from typing import Annotated, ClassVar

from .errors import SettingsError

# Samplers the pipeline can switch to (dipsy_ui.diffusion.pipeline.SCHEDULERS maps them to classes).
SCHEDULER_NAMES = ("dpm-solver", "ddim", "pndm", "euler", "euler-ancestral", "unipc")
# How a negative class is drawn for each positive image: "similarity" (softmax of CLIP similarity
# / T, the paper's rule), "uniform" (any other class), "none" (no negative image).
NEGATIVE_MODES = ("similarity", "uniform", "dissimilar", "none")  # dissimilar: softmax of -S / T

# Imported images (dipsy_ui.images). An image with more pixels than this is refused without being
# decoded: a few KB of PNG can declare 12000x12000 pixels (432 MB once decoded to RGB), a
# decompression bomb. 64 MP still admits the largest full-frame camera photos (61 MP); it is below
# PIL's own warning threshold (Image.MAX_IMAGE_PIXELS, about 89 MP), and decoding an image at the
# limit costs about 200 MB.
MAX_IMAGE_PIXELS = 64_000_000
# Larger images are downscaled to this longest side on import. The generator works at 512 px and
# CLIP at 224 px, so 2048 leaves 4x headroom for crops; every image of a few-shot set stays in
# memory, and a 2048 x 2048 RGB image takes 12 MB. Generated images are at most this size too, so
# an image DIPSY wrote re-imports unchanged.
MAX_IMAGE_SIDE = 2048
# Seeds fit a JSON number in any language (a browser rounds integers beyond 2^53), so a seed
# shown on the page or read from a manifest can be typed back to redraw its image.
SEED_MAX = 2**53 - 1


@dataclass(frozen=True)
class Between:
    """The inclusive range of a numeric setting, declared in its annotation."""

    low: int | float
    high: int | float

    def admits(self, value: int | float) -> bool:
        return self.low <= value <= self.high  # NaN is admitted by no range

    def __str__(self) -> str:
        return f"between {_number(self.low)} and {_number(self.high)}"


def _number(value: int | float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_field_types(instance, section: str) -> None:
    """Type-check a settings dataclass against its annotations (ints accepted for floats)."""
    hints = typing.get_type_hints(type(instance))
    for f in fields(instance):
        value, hint = getattr(instance, f.name), hints[f.name]
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(instance, f.name, value := float(value))
        kinds = tuple(kind for kind in allowed if isinstance(kind, type))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise SettingsError(f"{section} setting {f.name!r} must be {hint}, got {value!r}")


def check_rules(instance, section: str, rules: dict[str, tuple[bool, str]]) -> None:
    """Raise for the first broken rule ``key: (holds, what is required)``, naming key and value."""
    for key, (holds, requirement) in rules.items():
        if not holds:
            raise SettingsError(f"{section} setting {key!r} {requirement}, got {getattr(instance, key)!r}")


def settings_from_dict(cls, settings: dict, section: str):
    """Build a settings dataclass from a dict; unknown keys raise ValueError naming them."""
    if not isinstance(settings, dict):
        raise SettingsError(f"the {section!r} section must be a JSON object, got {type(settings).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"unknown {section} setting(s) {unknown}; known settings: {sorted(known)}")
    return cls(**settings)


class Settings:
    """Per-field ranges for a settings dataclass: declared once, read by the check and the UI."""

    section: ClassVar[str]  # the preset section and the word in error messages

    @classmethod
    def ranges(cls) -> dict[str, Between]:
        """Every numeric field's :class:`Between`, in field order."""
        hints = typing.get_type_hints(cls, include_extras=True)
        return {
            f.name: bound
            for f in fields(cls)
            for bound in getattr(hints[f.name], "__metadata__", ())
            if isinstance(bound, Between)
        }

    @classmethod
    def bounds(cls, name: str) -> tuple[int | float, int | float]:
        """The inclusive ``(minimum, maximum)`` of numeric setting ``name``, e.g. a widget's limits."""
        ranges = cls.ranges()
        if name not in ranges:
            raise KeyError(
                f"{cls.__name__} has no numeric setting {name!r}; numeric settings: {list(ranges)}"
            )
        return ranges[name].low, ranges[name].high

    def check(self, rules: dict[str, tuple[bool, str]]) -> None:
        """Check types, then each declared range (None passes where allowed), then ``rules``."""
        check_field_types(self, self.section)
        ranges = {
            name: (getattr(self, name) is None or bound.admits(getattr(self, name)), f"must be {bound}")
            for name, bound in self.ranges().items()
        }
        check_rules(self, self.section, ranges)
        check_rules(self, self.section, rules)


@dataclass(frozen=True)
class GenerationConfig(Settings):
    """How synthetic images are generated; defaults are the authors' (REFERENCE section 2)."""

    section: ClassVar[str] = "generation"

    template: str = "A photo of a {c}"  # class prompt; {c} is replaced by the class display name
    w_text: Annotated[float, Between(0, 50)] = 7.5  # text guidance weight
    w_pos: Annotated[float, Between(0, 50)] = 6.0  # positive-image guidance weight
    w_neg: Annotated[float, Between(0, 50)] = 6.0  # negative-image guidance weight (subtracted)
    ip_adapter_scale: Annotated[float, Between(0, 2)] = 0.6  # IP-Adapter scale s for both images
    steps: Annotated[int, Between(1, 1000)] = 50  # denoising steps
    scheduler: str = "dpm-solver"  # sampler, one of SCHEDULER_NAMES
    height: Annotated[int, Between(8, MAX_IMAGE_SIDE)] = 512  # image height in pixels (multiple of 8)
    width: Annotated[int, Between(8, MAX_IMAGE_SIDE)] = 512  # image width in pixels (multiple of 8)
    images_per_class: Annotated[int, Between(1, 100_000)] = 200  # synthetic images per class
    negatives: str = "similarity"  # how negative classes are drawn, one of NEGATIVE_MODES
    # softmax temperature of the similarity sampling; cosines lie in [-1, 1], so at T = 10 every
    # probability is already within about 20% of uniform: a higher T only shrinks the app's slider
    temperature: Annotated[float, Between(0.01, 10)] = 0.4
    augment: bool = True  # adapter-input augmentation of positive and negative images
    batch_size: Annotated[int, Between(1, 256)] = 4  # images per U-Net call
    # base seed; each image's seed derives from (seed, class, index)
    seed: Annotated[int, Between(0, SEED_MAX)] = 0

    def __post_init__(self):
        self.check(
            {
                "template": ("{c}" in self.template, "must contain the class placeholder {c}"),
                "scheduler": (
                    self.scheduler in SCHEDULER_NAMES,
                    f"must be one of {', '.join(SCHEDULER_NAMES)}",
                ),
                "height": (self.height % 8 == 0, "must be a multiple of 8"),
                "width": (self.width % 8 == 0, "must be a multiple of 8"),
                "negatives": (
                    self.negatives in NEGATIVE_MODES,
                    f"must be one of {', '.join(NEGATIVE_MODES)}",
                ),
            }
        )

    def prompt(self, class_name: str) -> str:
        return self.template.replace("{c}", class_name)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Training settings; defaults are the paper's recipe. Loadable from a preset's "train" section."""

    section: ClassVar[str] = "train"

    # passes over the synthetic set (over the real set when there is none)
    epochs: Annotated[int, Between(1, 1000)] = 10
    # None: ceil(epoch set size / batch_size); set to match two runs
    steps_per_epoch: Annotated[int | None, Between(1, 100_000)] = None
    # images per batch; with a synthetic set each step takes one batch of each
    batch_size: Annotated[int, Between(1, 1024)] = 64
    lr: Annotated[float, Between(1e-7, 1)] = 1e-4  # AdamW peak learning rate
    weight_decay: Annotated[float, Between(0, 1)] = 1e-4  # AdamW weight decay
    # share of all steps spent in the linear warm-up before cosine decay
    warmup_fraction: Annotated[float, Between(0, 0.9)] = 0.1
    lora_rank: Annotated[int, Between(1, 256)] = 16  # LoRA rank r
    lora_alpha: Annotated[int, Between(1, 1024)] = 32  # LoRA alpha (scaling alpha / r)
    lora_dropout: Annotated[float, Between(0, 0.9)] = 0.1  # dropout on the LoRA branch input
    # loss = lambda * CE(real) + (1 - lambda) * CE(synthetic)
    lambda_real: Annotated[float, Between(0, 1)] = 0.8
    template: str = "A photo of a {c}"  # class prompt; {c} is replaced by the class name
    # RandomResizedCrop keeps (crop_scale_min .. 1) of the image area
    crop_scale_min: Annotated[float, Between(0.01, 1)] = 0.25
    # RandAugment operations per image (0: off); torchvision's RandAugment has 14 kinds
    randaugment_ops: Annotated[int, Between(0, 14)] = 2
    randaugment_magnitude: Annotated[int, Between(0, 30)] = 9  # RandAugment magnitude (torchvision's 31 bins)
    # LoRA init, data order and augmentation; same seed + data + config = same run
    seed: Annotated[int, Between(0, SEED_MAX)] = 0
    # DataLoader workers; None: 4 with CUDA, 0 (decode in-process) on the CPU
    num_workers: Annotated[int | None, Between(0, 64)] = None
    eval_batch_size: Annotated[int, Between(1, 4096)] = 128  # batch size for test-set evaluation
    amp: bool = True  # mixed precision (bf16, else fp16) on CUDA; ignored on the CPU

    def __post_init__(self):
        self.check({"template": ("{c}" in self.template, "must contain the class placeholder {c}")})

    @classmethod
    def from_dict(cls, settings: dict) -> TrainConfig:
        """Build from a preset's "train" section; unknown keys and bad values raise ValueError."""
        return settings_from_dict(cls, settings, "train")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_budget_of(self, synthetic_images: int) -> TrainConfig:
        """These settings with the epoch length of training on ``synthetic_images`` images (unless
        one is set): a real-only run then takes as many steps as a run with that synthetic set,
        so the two differ in their data, not in their training budget."""
        if self.steps_per_epoch is not None:
            return self
        return replace(self, steps_per_epoch=max(1, -(-synthetic_images // self.batch_size)))

    def with_rank(self, rank: int) -> TrainConfig:
        """These settings with LoRA rank ``rank`` and the recipe's alpha for it: alpha = 2 x rank,
        so the LoRA scaling alpha / r stays 2 (REFERENCE section 4: rank 16, alpha 32)."""
        return replace(self, lora_rank=rank, lora_alpha=2 * rank)

    def workers(self, cuda: bool) -> int:
        """DataLoader worker processes: the setting, or 4 with CUDA (decoding must keep up with
        the GPU) and 0 on the CPU (where workers would compete with the model for the cores)."""
        return (
            self.num_workers if self.num_workers is not None else (min(4, os.cpu_count() or 1) if cuda else 0)
        )


@dataclass(frozen=True)
class CurationConfig(Settings):
    """The thresholds of the curation report (:mod:`dipsy_ui.curation`); similarities are cosines
    of image embeddings (CLIP, or a trained classifier's image features)."""

    section: ClassVar[str] = "curation"

    # near_copy: at least this close to its own positive image (and within copy_gap_share)
    near_copy: Annotated[float, Between(0, 1)] = 0.95
    # duplicate: at least this close to an earlier kept image of the run (and within copy_gap_share)
    duplicate: Annotated[float, Between(0, 1)] = 0.95
    # near_copy and duplicate also need a distance below this share of the usual gap between a
    # real image of the class and its nearest real neighbour: how close different images of a
    # class come depends on the encoder and the data, so a cosine alone cannot say "a copy"
    copy_gap_share: Annotated[float, Between(0, 1)] = 0.25
    # off_class: another class's real images are closer than the image's own by more than this
    off_class_margin: Annotated[float, Between(0, 2)] = 0.0
    # neighbours: an image's closeness to a class is its mean cosine to that class's k closest
    # real images, and a real image's ball (coverage, density) reaches its k-th nearest real
    # neighbour (Naeem et al. 2020); small, since few-shot classes have about 16 real images
    nearest_k: Annotated[int, Between(1, 64)] = 3

    def __post_init__(self):
        self.check({})

    def to_dict(self) -> dict:
        return asdict(self)


# The app's limits for a shared demo (app.py's --max-upload-mb, --session-quota-mb, --queue-size).
# One upload request (a zip of a few-shot set, a handful of photos): 200 MB holds a 16-shot set
# of 100 classes at 100 KB an image with room to spare.
MAX_UPLOAD_MB = 200
# A session's folder (its data, runs, classifiers, experiments): 2000 images of 512 px PNG
# (about 400 KB each) per run, a few runs and their classifiers fit in 5 GB.
SESSION_QUOTA_MB = 5000
# Requests waiting in the app's queue, beyond those already started (a long job waits for the model
# in the Studio's own lock, not in this queue); one more is answered "the server is busy".
QUEUE_SIZE = 64
