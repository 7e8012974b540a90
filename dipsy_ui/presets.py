"""Settings dataclasses and the presets that fill them (``presets/<name>.json``).

A preset is a JSON object::

    {"description": "...", "generation": {...GenerationConfig fields...}, "train": {...TrainConfig fields...}}

Unknown keys and out-of-range values are errors that name the key. The ten paper datasets ship
with the authors' prompt templates and defaults (REFERENCE section 2); ``demo`` fits the tiny
models and the digits data.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
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
            raise ValueError(f"{section} setting {f.name!r} must be {hint}, got {value!r}")


def check_ranges(instance, section: str, checks: dict[str, bool]) -> None:
    """Raise for the first failed range check, naming the key and its value."""
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{section} setting {key!r} is out of range: {getattr(instance, key)!r}")


def settings_from_dict(cls, settings: dict, section: str):
    """Build a settings dataclass from a dict; unknown keys raise ValueError naming them."""
    if not isinstance(settings, dict):
        raise ValueError(f"the {section!r} section must be a JSON object, got {type(settings).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; known settings: {sorted(known)}")
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
    scheduler: str = "dpm-solver"  # sampler; see dipsy_ui.pipeline.SCHEDULERS
    height: int = 512  # image height in pixels (multiple of 8)
    width: int = 512  # image width in pixels (multiple of 8)
    images_per_class: int = 200  # synthetic images per class
    negatives: str = "similarity"  # negative class: "similarity" (softmax, T), "uniform", "none"
    temperature: float = 0.4  # softmax temperature of the similarity sampling
    augment: bool = True  # adapter-input augmentation of positive and negative images
    batch_size: int = 4  # images per U-Net call
    seed: int = 0  # base seed; each image's seed derives from (seed, class, index)

    def __post_init__(self):
        from .pipeline import SCHEDULERS

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
                "scheduler": self.scheduler in SCHEDULERS,
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
class Preset:
    """A named bundle of generation settings and classifier-training settings."""

    name: str
    description: str = ""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: dict = field(default_factory=dict)  # TrainConfig fields (validated by dipsy_ui.train)

    def to_json(self) -> str:
        return json.dumps(
            {"description": self.description, "generation": self.generation.to_dict(), "train": self.train},
            indent=2,
        )


def list_presets() -> list[str]:
    """Names of the shipped presets."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name, or a preset JSON file by path; invalid content raises
    ValueError naming the file and the key."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = PRESETS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(
                f"unknown preset {str(name_or_path)!r}; shipped presets: {', '.join(list_presets())}"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("a preset must be a JSON object")
        unknown = sorted(set(data) - {"description", "generation", "train"})
        if unknown:
            raise ValueError(f"unknown preset key(s) {unknown}; known: description, generation, train")
        generation = settings_from_dict(GenerationConfig, data.get("generation", {}), "generation")
        train = data.get("train", {})
        if not isinstance(train, dict):
            raise ValueError("the 'train' section must be a JSON object")
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"preset {path}: {error}") from error
    # The classifier's class prompts use the generation template unless the preset says otherwise.
    return Preset(
        name=path.stem,
        description=str(data.get("description", "")),
        generation=generation,
        train={"template": generation.template} | train,
    )


def save_preset(preset: Preset, path: str | Path) -> Path:
    """Write a preset JSON (e.g. the settings tuned in the app); validated by reloading."""
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"a preset file must end in .json, got {path.name!r}")
    path.write_text(preset.to_json() + "\n", encoding="utf-8")
    load_preset(path)
    return path
