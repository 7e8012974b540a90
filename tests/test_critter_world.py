"""The critter world: its drawn data, the training command (shortened) on it, and the shipped
weights holding the hypotheses of BENCHMARKS.md ("The critter world")."""

import hashlib
import json

import numpy as np
import pytest
import torch

from dipsy_ui.cli import main
from dipsy_ui.critters import (
    CRITTER_FAMILIES,
    CRITTER_NAMES,
    CRITTER_POOL_PER_CLASS,
    FAMILIES,
    MARKINGS,
    critter_images,
    critter_judge,
)
from dipsy_ui.models import ModelSpec, load_stock_pipeline
from dipsy_ui.presets import load_preset
from dipsy_ui.world.build import RECORD_NAME
from dipsy_ui.world.training import CaptionStates
from dipsy_ui.world.worlds import get_world

WORLD = get_world("critters")


@pytest.fixture(scope="module")
def quick_world(tmp_path_factory):
    """``train-world --world critters --quick``: every stage for a few steps, through the CLI."""
    out = tmp_path_factory.mktemp("world") / "critters"
    assert main(["train-world", str(out), "--world", "critters", "--quick", "--threads", "1"]) == 0
    return out


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_critters_are_families_of_look_alikes():
    assert len(CRITTER_FAMILIES) >= 3 and all(len(members) >= 3 for members in CRITTER_FAMILIES.values())
    assert sorted(name for members in CRITTER_FAMILIES.values() for name in members) == sorted(CRITTER_NAMES)


def test_a_critter_is_a_pure_function_of_split_class_and_index():
    first, again = critter_images("pool", 4, 3), critter_images("pool", 4, 3)
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]
    assert first[0].size == (32, 32) and first[0].mode == "RGB"
    assert len({image.tobytes() for image in first}) == 3  # poses differ


def test_no_held_out_critter_is_in_the_pool():
    pool = {
        image.tobytes() for label in range(len(CRITTER_NAMES)) for image in critter_images("pool", label, 40)
    }
    test = {
        image.tobytes() for label in range(len(CRITTER_NAMES)) for image in critter_images("test", label, 40)
    }
    assert len(pool) == len(test) == 40 * len(CRITTER_NAMES) and not pool & test


def test_the_generator_is_never_told_the_marking():
    """Every caption the generator's text encoder, U-Net and adapters train on names the family
    only: the species' marking is a word it never saw (as fine-grained names are for SD1.5)."""
    captions = [
        WORLD.caption(label, t) for label in range(len(WORLD.classes)) for t in range(len(WORLD.templates))
    ]
    assert not any(marking in caption for caption in captions for marking in MARKINGS)
    assert {family for family in FAMILIES if any(family in caption for caption in captions)} == set(FAMILIES)
    groups, of_label = WORLD.caption_groups(WORLD.classes)
    assert len(groups) == len(FAMILIES)  # one contrastive target per family, not per species
    assert of_label.tolist() == [n for n in range(len(FAMILIES)) for _ in MARKINGS]


def test_the_judge_reads_held_out_critters():
    """The report's judge is itself good on critters it never saw."""
    images = [image for label in range(len(CRITTER_NAMES)) for image in critter_images("test", label, 40)]
    expected = np.repeat(np.arange(len(CRITTER_NAMES)), 40)
    assert np.mean(critter_judge().predict(images) == expected) >= 0.95


def test_make_demo_data_writes_the_critters(tmp_path):
    out = tmp_path / "critters"
    assert (
        main(["make-demo-data", str(out), "--world", "critters", "--shots", "2", "--test-per-class", "5"])
        == 0
    )
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CRITTER_NAMES)
    assert all(len(list((out / "train" / name).iterdir())) == 2 for name in CRITTER_NAMES)
    assert all(len(list((out / "test" / name).iterdir())) == 5 for name in CRITTER_NAMES)


def test_make_demo_data_refuses_more_held_out_critters_than_exist(tmp_path, capsys):
    assert (
        main(["make-demo-data", str(tmp_path / "c"), "--world", "critters", "--test-per-class", "201"]) == 2
    )
    assert "test_per_class must be in 1..200" in capsys.readouterr().err


def test_an_unknown_world_is_refused_with_the_known_ones(tmp_path, capsys):
    assert main(["train-world", str(tmp_path / "w"), "--world", "birds", "--quick"]) == 2
    assert "unknown world 'birds'" in capsys.readouterr().err and not (tmp_path / "w").exists()


def test_the_quick_critter_world_is_recorded_and_loads_in_stock_diffusers(quick_world):
    record = json.loads((quick_world / RECORD_NAME).read_text())
    assert record["name"] == "critters" and record["families"] == CRITTER_FAMILIES
    assert record["preset"] == "critters" and load_preset(record["preset"]).generation.height == 32
    assert record["data"]["pool_images"] == CRITTER_POOL_PER_CLASS * len(CRITTER_NAMES)
    files = {str(p.relative_to(quick_world)) for p in quick_world.rglob("*") if p.is_file()} - {RECORD_NAME}
    assert set(record["files"]) == files and all(record["files"][f] == sha256(quick_world / f) for f in files)
    pipe = load_stock_pipeline(ModelSpec.from_models_dir(quick_world))
    out = pipe(
        "A photo of a beetle",
        ip_adapter_image=critter_images("pool", 0, 1)[0],
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_caption_states_hold_one_state_per_caption_and_the_empty_prompt(quick_world):
    pipe = load_stock_pipeline(ModelSpec.from_models_dir(quick_world), adapter_copies=0)
    states = CaptionStates(pipe, WORLD)
    assert states.texts[0] == "" and len(states.texts) == 1 + len(WORLD.classes) * len(WORLD.templates)
    labels = torch.tensor([0, 4, 8])
    drawn = states.sample(labels, 0.0, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, *states.states.shape[1:])
