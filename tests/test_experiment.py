"""Experiments: the spec's validation, reproducible nested subsets, t intervals and paired
differences with known answers, a verdict that never claims what its interval does not show, and
the CI experiment on the digit world end to end: from the command line, interrupted and resumed
to the same results, never recomputing a finished cell."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dipsy_ui.cli import main
from dipsy_ui.data import load_dataset, load_mapping
from dipsy_ui.digits import DIGIT_NAMES
from dipsy_ui.errors import DatasetError, JobConflictError, SettingsError
from dipsy_ui.experiment.runner import RESULTS_FILE, Experiment, generation_key, plan, read_results
from dipsy_ui.experiment.spec import REAL_ONLY, TEXT_ONLY, ExperimentSpec
from dipsy_ui.experiment.stats import (
    Interval,
    mean_interval,
    paired_difference,
    summarize,
    t_quantile,
    verdict,
)
from dipsy_ui.experiment.subsets import draw_subset, hold_out, write_image_folder
from dipsy_ui.models import resolve_runtime
from dipsy_ui.presets import PRESETS_DIR

CI_SPEC = PRESETS_DIR / "experiments" / "digits-ci.json"
FULL_SPEC = PRESETS_DIR / "experiments" / "digits.json"
MINIMAL = {
    "preset": "demo",
    "data": "demo-digits",
    "shots": [1],
    "seeds": [0],
    "arms": ["real only", "text only"],
}


# -- statistics ----------------------------------------------------------------------------------


def test_t_quantiles_are_the_tables():
    table = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 30: 2.042}
    for df, value in table.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.975, 0)


def test_mean_interval_of_known_values():
    interval = mean_interval([0.5, 0.6, 0.7])  # mean 0.6, sd 0.1, n 3
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert interval.mean == pytest.approx(0.6)
    assert (interval.low, interval.high) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-6)
    one = mean_interval([0.4])
    assert (one.mean, one.low, one.high, one.n) == (0.4, None, None, 1) and not one.excludes_zero


def test_the_paired_interval_comes_from_the_paired_cells():
    # Subsets differ a lot (the reference swings by 20 points between seeds); the arm is the
    # reference + 2, 3 and 4 points on the same seeds: the paired interval is 3 +- 2.48 points.
    reference = {0: 0.40, 1: 0.60, 2: 0.50}
    arm = {2: 0.54, 0: 0.42, 1: 0.63}  # order does not matter, seeds do
    difference = paired_difference(arm, reference)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert difference.mean == pytest.approx(0.03)
    assert (difference.low, difference.high) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-6)
    assert difference.excludes_zero
    # Unpaired, the subsets' spread drowns the same 3 points: the two arms' intervals overlap.
    assert mean_interval(arm.values()).low < mean_interval(reference.values()).high
    # Only the seeds both arms have are paired.
    assert paired_difference({0: 0.42, 5: 0.9}, reference) == Interval(pytest.approx(0.02), None, None, 1)
    assert paired_difference({7: 0.5}, reference) is None


def _records(values: dict[tuple[str, int], list[float]]) -> list[dict]:
    return [
        {"arm": arm, "shots": shots, "seed": seed, "top1": top1}
        for (arm, shots), row in values.items()
        for seed, top1 in enumerate(row)
    ]


def test_the_summary_pairs_by_shots_and_seed_and_the_verdict_says_it_in_words():
    records = _records(
        {
            ("positive only", 2): [0.40, 0.60, 0.50],
            ("DIPSY", 2): [0.42, 0.63, 0.54],
            ("positive only", 4): [0.70, 0.71, 0.69],
            ("DIPSY", 4): [0.60, 0.80, 0.72],
        }
    )
    rows = summarize(records, ["positive only", "DIPSY"], [2, 4], "positive only")
    assert [(row["arm"], row["shots"]) for row in rows] == [
        ("positive only", 2),
        ("DIPSY", 2),
        ("positive only", 4),
        ("DIPSY", 4),
    ]
    assert rows[0]["difference"] is None and rows[1]["difference"].mean == pytest.approx(0.03)
    text = verdict(rows, "positive only")
    assert "'DIPSY' compared with 'positive only': adds +3.0 points (95% CI +0.5..+5.5) at 2 shots" in text
    assert "makes no clear difference at 4 shots (+0.7 points, 95% CI" in text and "contains 0" in text


def test_the_verdict_never_claims_a_difference_whose_interval_contains_zero():
    generator = random.Random(0)
    for trial in range(300):
        seeds = generator.randint(1, 5)
        shift = generator.choice([0.0, 0.01, 0.05])
        values = {}
        for shots in (1, 2):
            reference = [generator.uniform(0.3, 0.7) for _ in range(seeds)]
            values[("ref", shots)] = reference
            values[("arm", shots)] = [r + shift + generator.gauss(0, 0.03) for r in reference]
        rows = summarize(_records(values), ["ref", "arm"], [1, 2], "ref")
        text = verdict(rows, "ref")
        clauses = text.split(": ", 2)[2].rstrip(".").split("; ")
        for row, clause in zip([row for row in rows if row["arm"] == "arm"], clauses, strict=True):
            difference = row["difference"]
            claims = clause.startswith(("adds", "loses"))
            assert claims == difference.excludes_zero, (trial, clause, difference)
            if claims:
                assert (difference.low > 0) == clause.startswith("adds")


# -- the spec ----------------------------------------------------------------------------------


def test_the_shipped_specs_load_with_their_built_in_arms():
    full = ExperimentSpec.load(FULL_SPEC)
    assert [arm.name for arm in full.arms][:3] == [REAL_ONLY, TEXT_ONLY, "positive only"]
    assert full.shots == (1, 2, 4) and len(full.seeds) >= 3 and full.reference == "positive only"
    assert full.arm(REAL_ONLY).generation is None
    text = full.arm(TEXT_ONLY).generation
    assert (text.w_pos, text.w_neg, text.negatives) == (0, 0, "none")
    assert {arm.generation.negatives for arm in full.arms[3:]} == {"similarity", "uniform", "dissimilar"}
    ci = ExperimentSpec.load(CI_SPEC)
    assert len(ci.arms) == 2 and ci.shots == (1,) and ci.seeds == (0,)


def test_arms_that_generate_alike_share_one_generation_run():
    spec = ExperimentSpec.from_dict(
        MINIMAL
        | {
            "shots": [1, 2],
            "seeds": [0, 1],
            "arms": [
                "real only",
                {"name": "lambda 0.8", "generation": {"negatives": "uniform"}},
                {"name": "lambda 0.5", "generation": {"negatives": "uniform"}, "train": {"lambda_real": 0.5}},
            ],
        }
    )
    models = spec.model_spec()
    runs = {}
    for cell in plan(spec):
        if cell.arm.generation is not None:
            config = dataclasses.replace(cell.arm.generation, seed=cell.seed)
            runs.setdefault((cell.shots, cell.seed, generation_key(config, models)), []).append(cell.arm.name)
    assert len(plan(spec)) == 12 and len(runs) == 4  # one run per (shots, seed), shared by two arms
    assert all(names == ["lambda 0.8", "lambda 0.5"] for names in runs.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key"),
        ({"preset": None}, "preset"),
        ({"arms": []}, "non-empty list"),
        ({"arms": ["real only", "real only"]}, "unique"),
        ({"arms": [{"name": "x", "generation": {"w_poss": 1}}]}, "w_poss"),
        ({"arms": [{"name": "x", "generation": {"w_pos": -1}}]}, "w_pos"),
        ({"arms": [{"name": "x", "train": {"seed": 3}}]}, "seeds"),
        ({"arms": [{"name": "real only", "generation": {"w_pos": 1}}]}, "generates nothing"),
        ({"arms": [{"name": "text only", "generation": {"w_neg": 1}}]}, "fixes"),
        ({"arms": [{"name": "x", "colour": 1}]}, "unknown key"),
        ({"reference": "nobody"}, "reference"),
        ({"shots": [0]}, "shots"),
        ({"shots": [2, 2]}, "repeats"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [True]}, "seeds"),
        ({"data": "mine/"}, '"test" is missing'),
        ({"test": {"held_out_per_class": 0}}, "held_out_per_class"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_key(change, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        ExperimentSpec.from_dict(MINIMAL | change)


def test_paths_are_read_from_the_spec_files_folder(tmp_path):
    path = tmp_path / "specs" / "mine.json"
    path.parent.mkdir()
    path.write_text(json.dumps(MINIMAL | {"data": "../data", "test": "../test.zip", "models": "../models"}))
    spec = ExperimentSpec.load(path)
    assert (
        Path(spec.data).resolve() == tmp_path / "data" and Path(spec.test).resolve() == tmp_path / "test.zip"
    )
    assert Path(spec.models).resolve() == tmp_path / "models"
    path.write_text("{")
    with pytest.raises(SettingsError, match="mine.json"):
        ExperimentSpec.load(path)


# -- subsets -------------------------------------------------------------------------------------


def _swatches(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture
def pool():
    dataset = load_mapping({"cat": _swatches(9, 1), "dog": _swatches(8, 2)})
    return {c.name: list(c.images) for c in dataset.classes}


def digests(subset) -> dict[str, list[str]]:
    return {name: [record.digest for record in records] for name, records in subset.items()}


def test_subsets_are_nested_reproducible_and_independent_of_file_order(pool):
    subsets = {shots: digests(draw_subset(pool, shots, seed=3)) for shots in (1, 2, 4, 8)}
    for smaller, larger in ((1, 2), (2, 4), (4, 8)):
        assert all(subsets[larger][name][:smaller] == subsets[smaller][name] for name in pool)
    reversed_pool = {name: records[::-1] for name, records in pool.items()}
    assert digests(draw_subset(reversed_pool, 4, seed=3)) == subsets[4]
    others = [digests(draw_subset(pool, 4, seed)) for seed in range(4)]
    assert len({json.dumps(subset) for subset in others}) == 4  # each seed its own subset
    with pytest.raises(DatasetError, match="9 shots"):
        draw_subset(pool, 9, seed=0)


def test_the_held_out_test_set_is_the_same_for_every_seed_and_never_trained_on(pool):
    remaining, test = hold_out(pool, 3)
    assert {name: len(records) for name, records in test.items()} == {"cat": 3, "dog": 3}
    assert digests(hold_out(pool, 3)[1]) == digests(test)
    held = {record.digest for records in test.values() for record in records}
    for seed in range(5):
        drawn = draw_subset(remaining, 5, seed)
        assert not held & {record.digest for records in drawn.values() for record in records}
    with pytest.raises(DatasetError, match="leaves nothing"):
        hold_out(pool, 8)


def test_an_image_folder_is_written_whole_and_reads_back_as_the_same_images(pool, tmp_path):
    folder = write_image_folder(tmp_path / "subset", pool)
    reloaded = {c.name: sorted(record.digest for record in c.images) for c in load_dataset(folder).classes}
    assert reloaded == {name: sorted(values) for name, values in digests(pool).items()}
    assert [p.name for p in tmp_path.iterdir()] == ["subset"]  # no partial folder left
    with pytest.raises(DatasetError, match="folder names"):
        write_image_folder(tmp_path / "odd", {"a/b": pool["cat"][:1]})


def test_a_user_folder_with_a_held_out_test_set_warns_about_its_size(pool, tmp_path):
    data = write_image_folder(tmp_path / "mine", pool)
    spec = ExperimentSpec.from_dict(
        MINIMAL | {"data": str(data), "test": {"held_out_per_class": 2}, "shots": [1, 6]}
    )
    experiment = Experiment(spec, tmp_path / "out", runtime=resolve_runtime("cpu", "fp32"))
    remaining, test = experiment._prepare()
    assert {name: len(records) for name, records in remaining.items()} == {"cat": 7, "dog": 6}
    assert sorted(p.name for p in (test / "cat").iterdir()) == ["000.png", "001.png"]
    assert "held out" in experiment.warnings[0] and "+-49 points" in experiment.warnings[0]
    too_many = ExperimentSpec.from_dict(
        MINIMAL | {"data": str(data), "test": {"held_out_per_class": 2}, "shots": [7]}
    )
    with pytest.raises(DatasetError, match="7 shots"):
        Experiment(too_many, tmp_path / "other")._prepare()
    assert not (tmp_path / "other" / "experiment.json").exists()  # refused before the folder was claimed


# -- the CI experiment on the digit world ----------------------------------------------------------


def comparable(out: Path) -> list[dict]:
    """The records without their wall times (the only field allowed to differ between runs)."""
    return [{key: value for key, value in record.items() if key != "wall_s"} for record in read_results(out)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment") / "ci"
    assert main(["experiment", str(CI_SPEC), "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_the_ci_experiment_runs_from_the_command_line(uninterrupted, capsys):
    records = read_results(uninterrupted)
    assert [(r["arm"], r["shots"], r["seed"]) for r in records] == [
        ("real only", 1, 0),
        ("DIPSY (similarity negatives)", 1, 0),
    ]
    real, dipsy = records
    assert real["generation"] is None and real["images"] == {"real": 10, "synthetic": 0}
    assert dipsy["images"] == {"real": 10, "synthetic": 40} and 0 <= dipsy["top1"] <= 1
    assert set(dipsy["per_class"]) == set(DIGIT_NAMES)
    assert set(dipsy["wall_s"]) == {"generation", "training"}
    # Every cell is a normal run: the subset, the generation run and the classifier are there.
    assert len(list((uninterrupted / dipsy["subset"]).rglob("*.png"))) == 10
    run = uninterrupted / dipsy["generation"]
    assert (
        (run / "manifest.jsonl").is_file()
        and (run / "job.json").is_file()
        and (run / "similarity.json").is_file()
    )
    assert (uninterrupted / dipsy["classifier"] / "adapter").is_dir()
    summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["cells"] == {"finished": 2, "planned": 2} and "one seed" in summary["verdict"]
    for name in ("summary.md", "accuracy_by_arm.png", "accuracy_by_shots.png"):
        assert (uninterrupted / name).is_file()


def test_rerunning_a_finished_experiment_computes_nothing(uninterrupted):
    before = (uninterrupted / RESULTS_FILE).read_bytes()
    events = []
    final = Experiment(
        ExperimentSpec.load(CI_SPEC), uninterrupted, runtime=resolve_runtime("cpu", "fp32")
    ).run(events.append)
    assert final.kind == "done" and [event.kind for event in events] == ["done"]
    assert (uninterrupted / RESULTS_FILE).read_bytes() == before


def test_a_folder_holding_another_experiment_is_refused(uninterrupted):
    data = json.loads(CI_SPEC.read_text()) | {"seeds": [1]}
    other = ExperimentSpec.from_dict(data, CI_SPEC.parent)
    before = sorted(str(p) for p in uninterrupted.rglob("*"))
    with pytest.raises(JobConflictError, match="spec"):
        Experiment(other, uninterrupted, runtime=resolve_runtime("cpu", "fp32")).run()
    assert sorted(str(p) for p in uninterrupted.rglob("*")) == before


@pytest.mark.determinism
def test_an_interrupted_experiment_resumes_to_the_same_results(uninterrupted, tmp_path):
    out, spec, runtime = tmp_path / "ci", ExperimentSpec.load(CI_SPEC), resolve_runtime("cpu", "fp32")
    generating = ("DIPSY (similarity negatives)", 1, 0)

    def kill_after_the_first_batch(event):
        if stage(event, "generation") is not None and stage(event, "generation").kind == "progress":
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the second cell's generation

    with pytest.raises(KeyboardInterrupt):
        Experiment(spec, out, runtime=runtime).run(kill_after_the_first_batch)
    assert len(read_results(out)) == 1

    cancel, batches = threading.Event(), []

    def cancel_during_training(event):
        generation, training = stage(event, "generation"), stage(event, "training")
        if generation is not None and generation.kind == "progress":
            batches.append(generation.payload["files"])
        if training is not None and training.step == 1:
            cancel.set()

    assert Experiment(spec, out, runtime=runtime).run(cancel_during_training, cancel).kind == "cancelled"
    assert len(batches) == 9  # the tenth class's batch was already written: not generated again
    assert len(read_results(out)) == 1 and (out / "cells").is_dir()

    events = []
    assert Experiment(spec, out, runtime=runtime).run(events.append).kind == "done"
    started = {
        event.payload["cell"] for event in events if event.payload and event.payload["stage"] == "cell"
    }
    assert started == {generating}  # real only is not redone
    written = [stage(event, "generation") for event in events if stage(event, "generation") is not None]
    assert written and not [event for event in written if event.kind == "progress"]  # no batch again
    assert comparable(out) == comparable(uninterrupted)


def stage(event, name: str):
    """The event of a cell's ``name`` stage ("generation", "training") an experiment relays, or None."""
    payload = event.payload or {}
    return payload.get("event") if payload.get("stage") == name else None
