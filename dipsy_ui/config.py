"""Every setting and its default, in one place: generation (:class:`GenerationConfig`) and
classifier training (:class:`TrainConfig`).

The engine, the CLI (flags, help texts) and the app (widget initial values) all read their
defaults from these dataclasses; a preset (``presets/<name>.json``, :mod:`dipsy_ui.presets`)
overrides fields. Defaults are the authors' (REFERENCE section 2) and the DataDream / DISEF
classifier recipe the DIPSY paper (arXiv 2509.22635) reports with (REFERENCE section 4).
Unknown keys and out-of-range values raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import asdict, dataclass, fields

from .errors import SettingsError

# Samplers the pipeline can switch to (dipsy_ui.diffusion.pipeline.SCHEDULERS maps them to classes).
SCHEDULER_NAMES = ("dpm-solver", "ddim", "pndm", "euler", "euler-ancestral", "unipc")
# How a negative class is drawn for each positive image: "similarity" (softmax of CLIP similarity
# / T, the paper's rule), "uniform" (any other class), "none" (no negative image).
NEGATIVE_MODES = ("similarity", "uniform", "none")


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


def check_ranges(instance, section: str, checks: dict[str, bool]) -> None:
    """Raise for the first failed range check, naming the key and its value."""
    for key, ok in checks.items():
        if not ok:
            raise SettingsError(f"{section} setting {key!r} is out of range: {getattr(instance, key)!r}")


def settings_from_dict(cls, settings: dict, section: str):
    """Build a settings dataclass from a dict; unknown keys raise ValueError naming them."""
    if not isinstance(settings, dict):
        raise SettingsError(f"the {section!r} section must be a JSON object, got {type(settings).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"unknown {section} setting(s) {unknown}; known settings: {sorted(known)}")
    return cls(**settings)


@dataclass(frozen=True)
class GenerationConfig:
    """How synthetic images are generated; defaults are the authors' (REFERENCE section 2)."""

    template: str = "A photo of a {c}"  # class prompt; {c} is replaced by the class display name
    w_text: float = 7.5  # text guidance weight
    w_pos: float = 6.0  # positive-image guidance weight
    w_neg: float = 6.0  # negative-image guidance weight (subtracted)
    ip_adapter_scale: float = 0.6  # IP-Adapter scale s for both images
    steps: int = 50  # denoising steps
    scheduler: str = "dpm-solver"  # sampler, one of SCHEDULER_NAMES
    height: int = 512  # image height in pixels (multiple of 8)
    width: int = 512  # image width in pixels (multiple of 8)
    images_per_class: int = 200  # synthetic images per class
    negatives: str = "similarity"  # how negative classes are drawn, one of NEGATIVE_MODES
    temperature: float = 0.4  # softmax temperature of the similarity sampling
    augment: bool = True  # adapter-input augmentation of positive and negative images
    batch_size: int = 4  # images per U-Net call
    seed: int = 0  # base seed; each image's seed derives from (seed, class, index)

    def __post_init__(self):
        check_field_types(self, "generation")
        check_ranges(
            self,
            "generation",
            {
                "template": "{c}" in self.template,
                "w_text": 0 <= self.w_text <= 50,
                "w_pos": 0 <= self.w_pos <= 50,
                "w_neg": 0 <= self.w_neg <= 50,
                "ip_adapter_scale": 0 <= self.ip_adapter_scale <= 2,
                "steps": 1 <= self.steps <= 1000,
                "scheduler": self.scheduler in SCHEDULER_NAMES,
                "height": self.height >= 8 and self.height % 8 == 0,
                "width": self.width >= 8 and self.width % 8 == 0,
                "images_per_class": 1 <= self.images_per_class <= 100_000,
                "negatives": self.negatives in NEGATIVE_MODES,
                "temperature": 0 < self.temperature <= 100,
                "batch_size": 1 <= self.batch_size <= 256,
                "seed": 0 <= self.seed < 2**63,
            },
        )

    def prompt(self, class_name: str) -> str:
        return self.template.replace("{c}", class_name)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are the paper's recipe. Loadable from a preset's "train" section."""

    epochs: int = 10  # passes over the synthetic set (over the real set when there is none)
    steps_per_epoch: int | None = None  # None: ceil(epoch set size / batch_size); set to match two runs
    batch_size: int = 64  # images per batch; with a synthetic set each step takes one batch of each
    lr: float = 1e-4  # AdamW peak learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_fraction: float = 0.1  # share of all steps spent in the linear warm-up before cosine decay
    lora_rank: int = 16  # LoRA rank r
    lora_alpha: int = 32  # LoRA alpha (scaling alpha / r)
    lora_dropout: float = 0.1  # dropout on the LoRA branch input
    lambda_real: float = 0.8  # loss = lambda * CE(real) + (1 - lambda) * CE(synthetic)
    template: str = "A photo of a {c}"  # class prompt; {c} is replaced by the class name
    crop_scale_min: float = 0.25  # RandomResizedCrop keeps (crop_scale_min .. 1) of the image area
    randaugment_ops: int = 2  # RandAugment operations per image (0: off)
    randaugment_magnitude: int = 9  # RandAugment magnitude, 0..30
    seed: int = 0  # LoRA init, data order and augmentation; same seed + data + config = same run
    num_workers: int | None = None  # DataLoader workers; None: 4 with CUDA, 0 (decode in-process) on the CPU
    eval_batch_size: int = 128  # batch size for test-set evaluation
    amp: bool = True  # mixed precision (bf16, else fp16) on CUDA; ignored on the CPU

    def __post_init__(self):
        check_field_types(self, "train")
        check_ranges(
            self,
            "train",
            {
                "epochs": self.epochs >= 1,
                "steps_per_epoch": self.steps_per_epoch is None or self.steps_per_epoch >= 1,
                "batch_size": self.batch_size >= 1,
                "lr": 0 < self.lr <= 1,
                "weight_decay": 0 <= self.weight_decay <= 1,
                "warmup_fraction": 0 <= self.warmup_fraction < 1,
                "lora_rank": self.lora_rank >= 1,
                "lora_alpha": self.lora_alpha >= 1,
                "lora_dropout": 0 <= self.lora_dropout < 1,
                "lambda_real": 0 <= self.lambda_real <= 1,
                "template": "{c}" in self.template,
                "crop_scale_min": 0 < self.crop_scale_min <= 1,
                "randaugment_ops": self.randaugment_ops >= 0,
                "randaugment_magnitude": 0 <= self.randaugment_magnitude <= 30,
                "seed": 0 <= self.seed < 2**63,
                "num_workers": self.num_workers is None or self.num_workers >= 0,
                "eval_batch_size": self.eval_batch_size >= 1,
            },
        )

    @classmethod
    def from_dict(cls, settings: dict) -> TrainConfig:
        """Build from a preset's "train" section; unknown keys and bad values raise ValueError."""
        return settings_from_dict(cls, settings, "train")

    def to_dict(self) -> dict:
        return asdict(self)

    def workers(self, cuda: bool) -> int:
        """DataLoader worker processes: the setting, or 4 with CUDA (decoding must keep up with
        the GPU) and 0 on the CPU (where workers would compete with the model for the cores)."""
        return (
            self.num_workers if self.num_workers is not None else (min(4, os.cpu_count() or 1) if cuda else 0)
        )
