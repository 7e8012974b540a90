"""The Studio facade driven directly (no browser): what the app records and where names go."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from test_studio_jobs import terminal

from dipsy_ui.errors import UsageError
from dipsy_ui.presets import load_preset
from dipsy_ui.studio import DONE, FAILED, Studio


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


def test_a_session_reopens_from_its_folder_with_data_run_classifier_and_preset(studio):
    """What a browser finds after a refresh or a server restart: the same classes (display
    names included), the run and classifier it worked on, the preset it chose, all by name."""
    session = studio.core.session(None)
    for name, digit in {"Cat & dog": "zero", "a/b": "one"}.items():
        studio.data.add_images(session, name, _digits(studio, "train", digit, 3))
    run = session.root / "runs" / "run-2"
    run.mkdir(parents=True)
    (run / "manifest.jsonl").write_text("")
    (session.root / "runs" / "run-1").mkdir()
    (session.root / "runs" / "run-1" / "manifest.jsonl").write_text("")
    # The picker lists runs oldest first: run-1 is made the older one, whatever the clock's grain.
    os.utime(session.root / "runs" / "run-1", (1_000_000_000, 1_000_000_000))
    studio.curation.open_run(session, "run-2")
    studio.settings.set_preset(session, "pets")
    result = _train(studio, session, {"epochs": 1})

    again = studio.open_session(session.id)
    assert again is not session and again.root == session.root
    assert studio.data.class_names(again) == ["Cat & dog", "a/b"]
    assert studio.data.image_paths(again, "a/b") == studio.data.image_paths(session, "a/b")  # same order
    assert studio.curation.runs(again) == ["run-1", "run-2"] and studio.curation.run_name(again) == "run-2"
    assert studio.curation.run_line(again) == "Run: run-2 (0 images kept)"
    assert studio.training.classifier_name(again) == result.out_dir.name
    assert again.preset == "pets" and again.generation == load_preset("pets").generation
    # Only an id of an existing session folder is reopened, never a path: anything else is new.
    for sent in ("../" + session.id, str(session.root), session.id.upper(), "0" * 12, None, 7):
        fresh = studio.open_session(sent)
        assert fresh.id != session.id and studio.data.class_names(fresh) == []


def test_a_refused_start_changes_nothing_and_names_the_differing_settings(studio):
    """A folder holding another run's settings: Start is refused before the current run changes
    or any file is written, the message lists each differing setting, and the recorded settings
    can be taken over, after which the folder resumes."""
    from dipsy_ui.errors import JobConflictError

    session = studio.core.session(None)
    studio.data.add_images(session, "zero", _digits(studio, "train", "zero", 2))
    studio.data.add_images(session, "one", _digits(studio, "train", "one", 2))
    studio.settings.update_generation(session, steps=3, w_text=1.5)
    assert terminal(list(studio.generation.generate(session, 1, 1, "old"))).kind == DONE
    studio.settings.update_generation(session, steps=2, w_text=4.0)
    assert terminal(list(studio.generation.generate(session, 1, 1, "current"))).kind == DONE
    old = session.root / "runs" / "old"
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}

    end = terminal(list(studio.generation.generate(session, 2, 1, "old")))
    assert end.kind == FAILED and isinstance(end.error, JobConflictError)
    message = str(end.error)
    assert "steps: recorded 3, now 2" in message and "w_text: recorded 1.5, now 4.0" in message
    assert str(session.root) not in message and studio.curation.run_name(session) == "current"
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before
    assert studio.generation.free_folder(session, "old") == "old-1"
    (session.root / "runs" / "old-1").mkdir()
    assert studio.generation.free_folder(session, "old-1") == "old-2"
    studio.generation.use_recorded(session, "old")
    assert session.generation.steps == 3 and session.generation.w_text == 1.5
    assert terminal(list(studio.generation.generate(session, 2, 1, "old"))).result.done == 4


def test_a_reopened_session_resumes_its_run_with_the_images_in_their_order(studio):
    # A run's positive picks index into each class's images, so a reopened session must list
    # them in the order they were added (not, say, sorted by file name), or its run is refused.
    session = studio.core.session(None)
    for name, digit in (("zero", "zero"), ("seven", "seven")):
        files = sorted((studio.data.demo_data_dir() / "train" / digit).iterdir())[:4]
        studio.data.add_images(session, name, [str(path) for path in reversed(files)])
    first = list(studio.generation.generate(session, 1, 1, "run-1"))[-1]
    assert first.kind == DONE, first.message
    reopened = studio.open_session(session.id)
    assert reopened.data.classes == session.data.classes
    resumed = list(studio.generation.generate(reopened, 2, 1, "run-1"))[-1]
    assert resumed.kind == DONE, resumed.message


def test_an_experiments_cells_open_like_runs_by_their_path_in_the_session(studio):
    session = studio.core.session(None)
    cell = session.root / "experiments" / "e1" / "runs" / "seed-0" / "shots-1" / "gen-abc"
    cell.mkdir(parents=True)
    (cell / "manifest.jsonl").write_text("")
    name = "experiments/e1/runs/seed-0/shots-1/gen-abc"
    assert name in studio.curation.runs(session)
    assert studio.curation.open_run(session, name) == f"Run: {name} (0 images kept)"
    assert studio.open_session(session.id).run.run_dir == cell  # a reopen finds the cell again
    for bad in ("experiments/../../x", "experiments/e1/runs", str(cell)):
        with pytest.raises(UsageError, match="there is no run"):
            studio.curation.open_run(session, bad)
