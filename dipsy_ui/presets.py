"""Presets: named bundles of settings (``presets/<name>.json``) filling :mod:`dipsy_ui.config`.

A preset is a JSON object::

    {"description": "...", "generation": {...GenerationConfig fields...}, "train": {...TrainConfig fields...}}

Unknown keys and out-of-range values are errors that name the key. The ten paper datasets ship
with the authors' prompt templates and defaults (REFERENCE section 2); ``demo`` fits the tiny
models and the digits data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import GenerationConfig, TrainConfig, settings_from_dict
from .errors import SettingsError

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


@dataclass(frozen=True)
class Preset:
    """A named bundle of generation settings and classifier-training settings."""

    name: str
    description: str = ""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> str:
        return json.dumps(
            {
                "description": self.description,
                "generation": self.generation.to_dict(),
                "train": self.train.to_dict(),
            },
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
            raise SettingsError(
                f"unknown preset {str(name_or_path)!r}; shipped presets: {', '.join(list_presets())}"
            )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise SettingsError("a preset must be a JSON object")
        unknown = sorted(set(data) - {"description", "generation", "train"})
        if unknown:
            raise SettingsError(f"unknown preset key(s) {unknown}; known: description, generation, train")
        generation = settings_from_dict(GenerationConfig, data.get("generation", {}), "generation")
        train = data.get("train", {})
        if not isinstance(train, dict):
            raise SettingsError("the 'train' section must be a JSON object")
        # The classifier's class prompts use the generation template unless the preset says otherwise.
        train = TrainConfig.from_dict({"template": generation.template} | train)
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as error:
        raise SettingsError(f"preset {path}: {error}") from error
    return Preset(
        name=path.stem, description=str(data.get("description", "")), generation=generation, train=train
    )


def save_preset(preset: Preset, path: str | Path) -> Path:
    """Write a preset JSON (e.g. the settings tuned in the app); validated by reloading."""
    path = Path(path)
    if path.suffix != ".json":
        raise SettingsError(f"a preset file must end in .json, got {path.name!r}")
    path.write_text(preset.to_json() + "\n", encoding="utf-8")
    load_preset(path)
    return path
