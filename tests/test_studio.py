"""The Studio facade driven directly (no browser): what the app records and where names go."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from dipsy_ui.presets import load_preset
from dipsy_ui.studio import DONE, Studio


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    return Studio(None, tmp_path_factory.mktemp("workspace"), demo=True)


def _digits(studio: Studio, split: str, digit: str, count: int) -> list[str]:
    return [str(p) for p in sorted((studio.data.demo_data_dir() / split / digit).iterdir())[:count]]


def _train(studio: Studio, session, settings: dict, **options):
    end = list(studio.training.train(session, settings, **options))[-1]
    assert end.kind == DONE, end
    return end.result


def test_an_app_run_with_untouched_settings_records_the_presets_config(studio):
    session = studio.core.session(None)
    studio.data.load_demo(session)
    result = _train(studio, session, {})
    recorded = json.loads((result.out_dir / "train_config.json").read_text())["config"]
    expected = load_preset("demo").train.to_dict()
    assert recorded == expected, {
        k: (recorded[k], expected[k]) for k in expected if recorded.get(k) != expected[k]
    }


def test_settings_the_user_changed_override_only_those_fields(studio):
    session = studio.core.session(None)
    studio.data.load_demo(session)
    result = _train(studio, session, {"epochs": 1, "lr": 0.01})
    recorded = json.loads((result.out_dir / "train_config.json").read_text())["config"]
    assert recorded == load_preset("demo").train.to_dict() | {"epochs": 1, "lr": 0.01}


def test_display_names_survive_from_upload_to_per_class_metrics_without_a_manifest(studio, tmp_path):
    session = studio.core.session(None)
    names = {"crème brûlée": "zero", "Cat": "one", "cat": "two", "a/b": "three"}
    for name, digit in names.items():
        studio.data.add_images(session, name, _digits(studio, "train", digit, 3))
    # The test zip names each class by its folder name where it can, else by the slug the
    # Studio gave it (what an export writes): "a/b" cannot be a folder name.
    test_zip = tmp_path / "test.zip"
    with zipfile.ZipFile(test_zip, "w") as archive:
        for name, digit in names.items():
            folder = name if "/" not in name else studio.data.slugs(session)[name]
            for file in _digits(studio, "test", digit, 2):
                archive.write(file, f"{folder}/{Path(file).name}")

    result = _train(studio, session, {"epochs": 1}, test_upload=str(test_zip))
    per_class = result.metrics["epochs"][-1]["test"]["per_class"]
    assert set(per_class) == set(names) and None not in per_class.values()
    assert sum(map(sum, result.metrics["epochs"][-1]["test"]["confusion"])) == 2 * len(names)
    assert json.loads((result.out_dir / "train_config.json").read_text())["class_names"] == sorted(names)
    assert not list(studio.core.workspace.rglob("manifest.jsonl"))  # no run was generated: none may exist
