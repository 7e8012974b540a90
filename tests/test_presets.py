"""Presets: every shipped preset loads; bad content is an error naming the key."""

import json

import pytest

from dipsy_ui.config import GenerationConfig, TrainConfig
from dipsy_ui.presets import Preset, list_presets, load_preset, save_preset

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
