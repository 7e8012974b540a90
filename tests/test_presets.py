"""Presets: every shipped preset loads; bad content is an error naming the key and the allowed
range; user presets are reached by name only, never replace a built-in one, and replace each
other only when asked."""

import json
import math
import re
import typing
from dataclasses import fields

import pytest

from dipsy_ui.config import GenerationConfig, Settings, TrainConfig
from dipsy_ui.errors import SettingsError, UsageError
from dipsy_ui.presets import (
    MAX_PRESET_NAME_LENGTH,
    Preset,
    check_preset_name,
    existing_user_preset,
    list_presets,
    list_user_presets,
    load_preset,
    save_preset,
    save_user_preset,
)

PAPER_DATASETS = {
    "fgvc_aircraft",
    "eurosat",
    "flowers102",
    "dtd",
    "cars",
    "food101",
    "pets",
    "sun397",
    "imagenet",
    "caltech101",
}


def test_shipped_presets_cover_the_paper_datasets_and_the_demo():
    assert PAPER_DATASETS | {"demo"} <= set(list_presets())
    for name in list_presets():
        preset = load_preset(name)
        assert "{c}" in preset.generation.template and preset.train.template == preset.generation.template
    assert load_preset("pets").generation.prompt("Bombay") == "A photo of a Bombay pet"
    defaults = load_preset("eurosat").generation
    assert (defaults.w_text, defaults.w_pos, defaults.w_neg, defaults.ip_adapter_scale) == (
        7.5,
        6.0,
        6.0,
        0.6,
    )
    assert (defaults.steps, defaults.height, defaults.images_per_class, defaults.scheduler) == (
        50,
        512,
        200,
        "dpm-solver",
    )


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ({"generation": {"w_pozz": 1.0}}, "w_pozz"),
        ({"generation": {"w_neg": -1}}, "w_neg"),
        ({"generation": {"height": 500}}, "height"),
        ({"generation": {"steps": "many"}}, "steps"),
        ({"generation": {"augment": 1}}, "augment"),
        ({"generation": {"template": "no placeholder"}}, "template"),
        ({"generation": {"scheduler": "magic"}}, "scheduler"),
        ({"generation": {"negatives": "nearest"}}, "negatives"),
        ({"generation": {"temperature": 0}}, "temperature"),
        ({"extra": 1}, "extra"),
        ({"train": [1, 2]}, "train"),
    ],
)
def test_bad_preset_names_the_key(tmp_path, content, key):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=key):
        load_preset(path)


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="pets"):
        load_preset("no-such-preset")


def test_saved_preset_round_trips(tmp_path):
    preset = Preset("mine", "tuned", GenerationConfig(w_pos=3.5, seed=7), TrainConfig(epochs=2, lr=3e-3))
    loaded = load_preset(save_preset(preset, tmp_path / "mine.json"))
    assert (
        loaded.generation == preset.generation
        and loaded.train == preset.train
        and loaded.description == "tuned"
    )


CONFIGS = (GenerationConfig, TrainConfig)
RANGED = [(config, name) for config in CONFIGS for name in config.ranges()]


def _kinds(config: type[Settings], name: str) -> set[type]:
    hint = typing.get_type_hints(config)[name]
    return set(typing.get_args(hint) or (hint,))


@pytest.mark.parametrize(("config", "name"), RANGED, ids=[f"{c.__name__}.{n}" for c, n in RANGED])
def test_out_of_range_value_names_the_field_and_the_range_the_ui_reads(config: type[Settings], name):
    low, high = config.bounds(name)
    config(**{name: low}), config(**{name: high})  # both ends are allowed
    step = 1 if float not in _kinds(config, name) else (high - low) / 100
    expected = " and ".join(f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (low, high))
    for value in (low - step, high + step):
        with pytest.raises(SettingsError) as raised:
            config(**{name: value})
        assert f"{config.section} setting {name!r} must be between {expected}, got {value!r}" == str(
            raised.value
        )


def test_every_numeric_setting_declares_a_finite_range_around_its_default():
    for config in CONFIGS:
        numeric = [f.name for f in fields(config) if _kinds(config, f.name) & {int, float}]
        assert list(config.ranges()) == numeric
        for name in numeric:
            low, high = config.bounds(name)
            default = getattr(config(), name)
            assert math.isfinite(high) and (default is None or low <= default <= high), (config, name)
    with pytest.raises(SettingsError, match="'w_pos' must be between 0 and 50, got nan"):
        GenerationConfig(w_pos=math.nan)


def test_reported_examples_and_rules_beyond_ranges():
    with pytest.raises(
        SettingsError, match="train setting 'lora_rank' must be between 1 and 256, got 100000"
    ):
        TrainConfig(lora_rank=100000)
    with pytest.raises(SettingsError, match="'height' must be a multiple of 8, got 500"):
        GenerationConfig(height=500)
    with pytest.raises(SettingsError, match="'template' must contain the class placeholder"):
        TrainConfig(template="a photo")
    assert GenerationConfig.bounds("w_text") == (0, 50)
    assert TrainConfig(steps_per_epoch=None, num_workers=None).steps_per_epoch is None
    with pytest.raises(KeyError, match="numeric settings"):
        GenerationConfig.bounds("scheduler")


TUNED = Preset("tuned", "tuned", GenerationConfig(w_pos=3.5, seed=7), TrainConfig(epochs=2, lr=3e-3))


def test_user_presets_are_saved_listed_and_loaded_by_name(tmp_path):
    folder = tmp_path / "presets"
    assert list_user_presets(folder) == []  # no folder yet

    path = save_user_preset(TUNED, folder, "  My pets 2  ")
    save_user_preset(Preset("other"), folder, "änderung_1")
    (folder / "not.a.name.json").write_text(TUNED.to_json())  # put there by hand: not listed

    assert path == folder / "My pets 2.json"
    assert list_user_presets(folder) == ["My pets 2", "änderung_1"]
    loaded = load_preset("My pets 2", user_folder=folder)
    assert (loaded.name, loaded.generation, loaded.train) == ("My pets 2", TUNED.generation, TUNED.train)
    assert load_preset("pets", user_folder=folder) == load_preset("pets")  # built-ins stay reachable
    with pytest.raises(
        SettingsError, match="unknown preset 'mine'; built-in presets: .*pets.*; yours: My pets 2, änderung_1"
    ):
        load_preset("mine", user_folder=folder)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("a/b", "contains '/'"),
        ("..\\evil", "contains '.', " + repr("\\")),
        ("my.preset", "contains '.'"),
        ("tab\tname", "contains " + repr("\t")),
        ("x" * (MAX_PRESET_NAME_LENGTH + 1), f"has {MAX_PRESET_NAME_LENGTH + 1} characters; use at most"),
    ],
)
def test_preset_names_are_plain_words_never_paths(tmp_path, name, message):
    folder = tmp_path / "presets"
    for attempt in (
        lambda: check_preset_name(name),
        lambda: save_user_preset(TUNED, folder, name),
        lambda: load_preset(name, user_folder=folder),
    ):
        with pytest.raises(UsageError, match=re.escape(message)):
            attempt()
    assert not folder.exists()  # nothing was written anywhere
    assert check_preset_name("x" * MAX_PRESET_NAME_LENGTH) == "x" * MAX_PRESET_NAME_LENGTH


def test_a_path_is_refused_where_a_name_is_expected(tmp_path):
    outside = save_preset(TUNED, tmp_path / "outside.json")
    with pytest.raises(UsageError, match="contains '.', '/'"):
        load_preset(str(outside), user_folder=tmp_path / "presets")
    assert load_preset(outside).generation == TUNED.generation  # the CLI's path form still works


@pytest.mark.parametrize("name", ["pets", "PETS", " demo "])
def test_built_in_preset_names_are_reserved(tmp_path, name):
    with pytest.raises(UsageError, match=r"is the name of a built-in preset.*choose another name, such as"):
        save_user_preset(TUNED, tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_user_preset_is_replaced_only_with_overwrite(tmp_path):
    save_user_preset(TUNED, tmp_path, "mine")
    changed = Preset("x", "changed", GenerationConfig(w_pos=1.0), TrainConfig())

    assert existing_user_preset(tmp_path, "other") is None
    for spelling in ("mine", "MINE"):
        assert existing_user_preset(tmp_path, spelling) == "mine"  # what the UI asks about
        with pytest.raises(UsageError, match="a preset named 'mine' already exists; confirm to replace it"):
            save_user_preset(changed, tmp_path, spelling)
        assert load_preset("mine", user_folder=tmp_path).generation == TUNED.generation  # untouched

    save_user_preset(changed, tmp_path, "mine", overwrite=True)
    assert load_preset("mine", user_folder=tmp_path).generation == changed.generation
    save_user_preset(TUNED, tmp_path, "Mine", overwrite=True)  # another case: the same preset, renamed
    assert list_user_presets(tmp_path) == ["Mine"]
    assert load_preset("Mine", user_folder=tmp_path).generation == TUNED.generation
