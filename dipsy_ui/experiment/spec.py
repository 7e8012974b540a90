"""The experiment spec: which arms to compare, at how many shots, over which seeds, on which test set.

A spec is a JSON file (``presets/experiments/*.json`` ship with the project)::

    {
      "description": "what the experiment asks",
      "preset": "demo",                      # the settings every arm starts from (name or .json)
      "models": "digit-world",               # a models folder, "digit-world", "critter-world", or absent: the paper's
      "data": "my-pets/",                    # the images to draw few-shot subsets from, "demo-digits" or "demo-critters"
      "test": "my-pets-test/",               # a folder or zip, or {"held_out_per_class": 10}
      "shots": [1, 2, 4, 8],
      "seeds": [0, 1, 2],
      "reference": "positive only",          # the arm every other arm is compared with
      "generation": {"images_per_class": 50},  # overrides for every arm
      "train": {"epochs": 5},
      "arms": [
        "real only",
        "text only",
        {"name": "positive only", "generation": {"w_neg": 0, "negatives": "none"}},
        {"name": "DIPSY", "generation": {"negatives": "similarity"}, "train": {"lambda_real": 0.5}}
      ]
    }

An arm overrides any generation or training setting of :mod:`dipsy_ui.config`; the built-in arms
are ``"real only"`` (no synthetic images), ``"text only"`` (``w_pos = w_neg = 0``: plain text
guidance, no negative class) and ``"oracle"`` (extra real images of the data, never in any of the
seed's subsets, in place of the synthetic ones: as many as ``images_per_class``, with the
synthetic loss weight; the best any generator could give). Seeds come from ``seeds`` only: each seed redraws the few-shot
subset and seeds generation and training. Relative paths are read from the spec file's folder.
Every mistake is a :class:`~dipsy_ui.errors.SettingsError` naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import GenerationConfig, TrainConfig, settings_from_dict
from ..errors import SettingsError
from ..models import ModelSpec
from ..presets import load_preset
from ..world.worlds import worlds

REAL_ONLY = "real only"
TEXT_ONLY = "text only"
# What makes the text-only arm: no image guidance at all, so no negative class is drawn either.
TEXT_ONLY_SETTINGS = {"w_pos": 0.0, "w_neg": 0.0, "negatives": "none"}
ORACLE = "oracle"
# "data": a world's demo data (its write_demo_data) and its held-out test set, by world name
DEMO_DATA = {f"demo-{name}": name for name in worlds()}
# "models": a world shipped in assets/, by its folder name
WORLD_MODELS = {world.folder: world for world in worlds().values()}
DIGIT_WORLD = "digit-world"  # the key of WORLD_MODELS the app's experiments use in demo mode
KEYS = ("description", "preset", "models", "data", "test", "shots", "seeds", "reference", "generation",
        "train", "arms")  # fmt: skip
ARM_KEYS = ("name", "generation", "train")


@dataclass(frozen=True)
class Arm:
    """One way of making the training set, applied to every (shots, seed) subset."""

    name: str
    generation: GenerationConfig | None  # None: no synthetic images ("real only", "oracle")
    train: TrainConfig
    oracle: bool = False  # extra real images in place of synthetic ones

    def to_dict(self) -> dict:
        generation = None if self.generation is None else self.generation.to_dict()
        # "oracle" only when set, so that the records of experiments without it stay as they were.
        oracle = {"oracle": True} if self.oracle else {}
        return {"name": self.name, "generation": generation, "train": self.train.to_dict()} | oracle


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment: every arm's full settings, the shots, the seeds, the data."""

    arms: tuple[Arm, ...]
    shots: tuple[int, ...]  # few-shot images per class, ascending
    seeds: tuple[int, ...]
    reference: str  # the arm the others are compared with, on the same seeds and subsets
    data: str  # folder or zip of the user's images, or a key of DEMO_DATA
    test: str | None  # folder or zip; None: held out of the data (or the demo digits' test set)
    held_out_per_class: int | None  # test images per class held out of the data
    models: str | None  # a models folder (--models layout); None: the paper's models
    generation: GenerationConfig  # the settings before any arm's overrides
    description: str = ""

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_models_dir(self.models) if self.models else ModelSpec()

    def to_dict(self) -> dict:
        """The resolved spec as plain data: what an experiment folder records and checks."""
        return {
            "arms": [arm.to_dict() for arm in self.arms],
            "shots": list(self.shots),
            "seeds": list(self.seeds),
            "reference": self.reference,
            "data": self.data,
            "test": self.test,
            "held_out_per_class": self.held_out_per_class,
        }

    @classmethod
    def load(cls, path: str | Path) -> ExperimentSpec:
        """Read and validate a spec file; errors name the file and the key."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise SettingsError(f"experiment spec {path}: {error}") from error
        try:
            return cls.from_dict(data, path.resolve().parent)
        except SettingsError as error:
            raise SettingsError(f"experiment spec {path}: {error}") from error

    @classmethod
    def from_dict(cls, data: dict, folder: str | Path = ".") -> ExperimentSpec:
        """Validate a spec given as a dict; relative paths are read from ``folder``."""
        if not isinstance(data, dict):
            raise SettingsError("an experiment spec must be a JSON object")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise SettingsError(f"unknown key(s) {unknown}; known keys: {list(KEYS)}")
        folder = Path(folder)
        if not isinstance(data.get("preset"), str):
            raise SettingsError(
                'name the preset the arms start from, e.g. "preset": "pets" (or a .json file)'
            )
        preset = data["preset"]
        preset = load_preset(folder / preset if preset.endswith(".json") else preset)
        generation = _merged(GenerationConfig, preset.generation, data.get("generation", {}), "generation")
        train = _merged(TrainConfig, preset.train, data.get("train", {}), "train")
        arms = data.get("arms")
        if not isinstance(arms, list) or not arms:
            raise SettingsError('"arms" must be a non-empty list, e.g. ["real only", "text only"]')
        arms = tuple(_arm(entry, index, generation, train) for index, entry in enumerate(arms))
        names = [arm.name for arm in arms]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SettingsError(f"arm names must be unique; repeated: {repeated}")
        reference = data.get("reference", REAL_ONLY if REAL_ONLY in names else names[0])
        if reference not in names:
            raise SettingsError(f'"reference" must name one of the arms {names}, got {reference!r}')
        shots = tuple(sorted(_integers(data.get("shots"), "shots", 1)))
        seeds = _integers(data.get("seeds"), "seeds", 0)
        source, test, held_out = _data_and_test(data.get("data"), data.get("test"), folder)
        return cls(
            arms=arms,
            shots=shots,
            seeds=seeds,
            reference=reference,
            data=source,
            test=test,
            held_out_per_class=held_out,
            models=_models(data.get("models"), folder),
            generation=generation,
            description=str(data.get("description", "")),
        )


def _merged(cls, base, overrides, section: str):
    """``base`` with ``overrides`` applied, validated; seeds come from the spec's seeds only."""
    if not isinstance(overrides, dict):
        raise SettingsError(f"the {section} section must be a JSON object, got {type(overrides).__name__}")
    if "seed" in overrides:
        raise SettingsError(f"the {section} section sets 'seed'; the experiment's \"seeds\" list sets it")
    return settings_from_dict(cls, base.to_dict() | overrides, section)


def _arm(entry, index: int, generation: GenerationConfig, train: TrainConfig) -> Arm:
    entry = {"name": entry} if isinstance(entry, str) else entry
    if not isinstance(entry, dict):
        raise SettingsError(f"arms[{index}] must be a name or an object with {list(ARM_KEYS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(ARM_KEYS))
    if unknown:
        raise SettingsError(f"arms[{index}] has unknown key(s) {unknown}; known keys: {list(ARM_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(f'arms[{index}] needs a non-empty "name"')
    overrides = entry.get("generation", {})
    if name in (REAL_ONLY, ORACLE):
        if overrides:
            raise SettingsError(f"arm {name!r} generates nothing: remove its 'generation' section")
        arm_generation = None
    else:
        if name == TEXT_ONLY and isinstance(overrides, dict):
            clash = sorted(set(overrides) & set(TEXT_ONLY_SETTINGS))
            if clash:
                raise SettingsError(
                    f"arm {TEXT_ONLY!r} fixes {clash}; give another name to an arm that sets them"
                )
            overrides = overrides | TEXT_ONLY_SETTINGS
        arm_generation = _merged(GenerationConfig, generation, overrides, f"arm {name!r} generation")
    return Arm(
        name,
        arm_generation,
        _merged(TrainConfig, train, entry.get("train", {}), f"arm {name!r} train"),
        oracle=name == ORACLE,
    )


def _integers(values, key: str, minimum: int) -> tuple[int, ...]:
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and minimum <= v < 2**63 for v in values)
    ):
        raise SettingsError(f'"{key}" must be a non-empty list of whole numbers >= {minimum}, got {values!r}')
    if len(set(values)) < len(values):
        raise SettingsError(f'"{key}" repeats a value: {values}')
    return tuple(values)


def _path(value, key: str, folder: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(f'"{key}" must be a path, got {value!r}')
    return str(folder / Path(value).expanduser())


def _data_and_test(data, test, folder: Path) -> tuple[str, str | None, int | None]:
    """Where the images and the test set come from: (data, test path, held-out images per class)."""
    if data is None:
        raise SettingsError(
            f'"data" is missing: a folder or zip of your images, or one of {sorted(DEMO_DATA)}'
        )
    source = data if data in DEMO_DATA else _path(data, "data", folder)
    if isinstance(test, dict):
        count = test.get("held_out_per_class")
        if set(test) != {"held_out_per_class"} or not (isinstance(count, int) and count >= 1):
            raise SettingsError(
                f'"test" as an object is {{"held_out_per_class": N}} with N >= 1, got {test!r}'
            )
        return source, None, count
    if test is None:
        if source not in DEMO_DATA:
            raise SettingsError(
                '"test" is missing: a folder or zip of test images (one subfolder per class), '
                'or {"held_out_per_class": N} to hold N of your images per class out for testing'
            )
        return source, None, None
    return source, _path(test, "test", folder), None


def _models(value, folder: Path) -> str | None:
    if value is None:
        return None
    return str(WORLD_MODELS[value].directory) if value in WORLD_MODELS else _path(value, "models", folder)
