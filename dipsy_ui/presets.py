"""Presets: named bundles of settings (``presets/<name>.json``) filling :mod:`dipsy_ui.config`.

A preset is a JSON object::

    {"description": "...", "generation": {...GenerationConfig fields...}, "train": {...TrainConfig fields...}}

Unknown keys and out-of-range values are errors that name the key. The ten paper datasets ship
with the authors' prompt templates and defaults (REFERENCE section 2); ``demo`` fits the tiny
models and the digits data.

The CLI reads and writes preset files by path (:func:`load_preset`, :func:`save_preset`). The app
keeps a user's presets in a folder and reaches them by name only (:func:`save_user_preset`,
:func:`list_user_presets`, ``load_preset(name, user_folder)``): a name is one plain word or phrase,
never a path, and the built-in names are reserved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import GenerationConfig, TrainConfig, settings_from_dict
from .errors import SettingsError, UsageError
from .files import write_atomic

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
MAX_PRESET_NAME_LENGTH = 64
# Besides letters and digits (any script): a name is also the file's stem, so no separators,
# no dots (no "..", no second suffix) and none of the characters Windows forbids in file names.
PRESET_NAME_PUNCTUATION = " -_"


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


def check_preset_name(name: str) -> str:
    """``name`` without surrounding spaces, if it can name a user preset; else :class:`UsageError`
    saying why: empty, a character other than letters, digits, spaces, '-' and '_', or too long."""
    name = name.strip()
    if not name:
        raise UsageError("a preset name cannot be empty; type a name such as 'my settings'")
    bad = sorted({ch for ch in name if not (ch.isalnum() or ch in PRESET_NAME_PUNCTUATION)})
    if bad:
        raise UsageError(
            f"the preset name {name!r} contains {', '.join(map(repr, bad))}; a preset is reached by "
            "name, never by path: use only letters, digits, spaces, '-' and '_'"
        )
    if len(name) > MAX_PRESET_NAME_LENGTH:
        raise UsageError(
            f"the preset name {name[:20] + '...'!r} has {len(name)} characters; "
            f"use at most {MAX_PRESET_NAME_LENGTH}"
        )
    return name


def list_user_presets(folder: str | Path) -> list[str]:
    """Names of the user presets saved in ``folder`` (none if it does not exist)."""
    folder = Path(folder)
    stems = (path.stem for path in folder.glob("*.json")) if folder.is_dir() else ()
    return sorted((stem for stem in stems if _is_preset_name(stem)), key=str.casefold)


def existing_user_preset(folder: str | Path, name: str) -> str | None:
    """The saved user preset that saving ``name`` in ``folder`` would replace (its name as stored:
    names differing only in case are one preset), or None. A UI asks before saving over it."""
    name = check_preset_name(name)
    return next((n for n in list_user_presets(folder) if n.casefold() == name.casefold()), None)


def save_user_preset(preset: Preset, folder: str | Path, name: str, overwrite: bool = False) -> Path:
    """Write ``preset``'s settings as the user preset ``name`` in ``folder``; returns its file.

    The name is checked (:func:`check_preset_name`); a built-in preset's name is refused, and
    an existing user preset of the same name (:func:`existing_user_preset`) is only replaced with
    ``overwrite=True``: both raise :class:`UsageError` saying what to do.
    """
    name = check_preset_name(name)
    builtin = {n.casefold(): n for n in list_presets()}
    if name.casefold() in builtin:
        raise UsageError(
            f"{builtin[name.casefold()]!r} is the name of a built-in preset, which cannot be replaced; "
            f"choose another name, such as {f'{name} mine'!r}"
        )
    folder = Path(folder)
    existing = existing_user_preset(folder, name)
    if existing is not None and not overwrite:
        raise UsageError(
            f"a preset named {existing!r} already exists; confirm to replace it, or choose another name"
        )
    if existing is not None and existing != name:
        # The same preset, now under the new spelling; removed first because on a
        # case-insensitive disk both spellings are one file.
        (folder / f"{existing}.json").unlink(missing_ok=True)
    return write_atomic(folder / f"{name}.json", preset.to_json() + "\n")


def load_preset(name_or_path: str | Path, user_folder: str | Path | None = None) -> Preset:
    """A preset by name (built-in, then the user presets in ``user_folder``) or, without
    ``user_folder``, a preset JSON file by path (the CLI's ``--preset file.json``).

    With ``user_folder`` the argument is only ever a name, whatever a client sends: a path is
    refused (:class:`UsageError`). An unknown name raises :class:`SettingsError` listing the
    presets there are; invalid content raises it naming the file and the key.
    """
    path = _preset_file(name_or_path, user_folder)
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
    """Write a preset JSON to ``path`` (the CLI's files); validated by reloading. The app saves
    by name with :func:`save_user_preset`."""
    path = Path(path)
    if path.suffix != ".json":
        raise SettingsError(f"a preset file must end in .json, got {path.name!r}")
    path.write_text(preset.to_json() + "\n", encoding="utf-8")
    load_preset(path)
    return path


def _preset_file(name_or_path: str | Path, user_folder: str | Path | None) -> Path:
    """The file :func:`load_preset` reads for its arguments."""
    if user_folder is None and Path(name_or_path).suffix == ".json":
        return Path(name_or_path)
    name = str(name_or_path)
    if name in list_presets():
        return PRESETS_DIR / f"{name}.json"
    known = f"built-in presets: {', '.join(list_presets())}"
    if user_folder is not None:
        name = check_preset_name(name)
        yours = list_user_presets(user_folder)
        if name in yours:
            return Path(user_folder) / f"{name}.json"
        known += f"; yours: {', '.join(yours) or 'none saved yet'}"
    raise SettingsError(f"unknown preset {name!r}; {known}")


def _is_preset_name(name: str) -> bool:
    try:
        return check_preset_name(name) == name
    except UsageError:
        return False
