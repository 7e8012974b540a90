"""The curation report: its measures against their definitions, its flags on planted defects (tiny
models and the digit world), that it changes no file of the run, and the ``curate-report`` command."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dipsy_ui.bench.curation import flag_scores, plant_defects
from dipsy_ui.cli import main
from dipsy_ui.config import CurationConfig, GenerationConfig
from dipsy_ui.curation import (
    CACHE_DIR,
    REPORT_FILE,
    CurationJob,
    build_report,
    copy_floor,
    density_coverage,
    earlier_duplicates,
    load_report,
    locate_positive,
    mean_distance,
)
from dipsy_ui.data import ImageRecord, load_dataset
from dipsy_ui.errors import SettingsError, UsageError
from dipsy_ui.generate import GenerationJob
from dipsy_ui.manifest import read_manifest, set_status

# 1. The measures against their definitions ------------------------------------------------------


def unit(rows) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(rows, dtype=torch.float32), dim=1)


def naeem_by_loops(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Density and coverage written out as Naeem et al. 2020 define them, one pair at a time."""
    distance = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))  # noqa: E731
    radii = [
        sorted(distance(r, other) for j, other in enumerate(real) if j != i)[k - 1]
        for i, r in enumerate(real)
    ]
    inside = [[distance(f, r) < radii[i] for i, r in enumerate(real)] for f in fake]
    density = sum(map(sum, inside)) / (k * len(fake))
    coverage = sum(any(row[i] for row in inside) for i in range(len(real))) / len(real)
    return density, coverage


def test_density_and_coverage_are_naeem_et_als_definitions():
    generator = torch.Generator().manual_seed(0)
    real = unit(torch.randn(16, 8, generator=generator))
    for fake in (unit(torch.randn(40, 8, generator=generator)), real[:5] + 0.01, unit(torch.randn(3, 8) + 5)):
        for k in (1, 3, 5):
            expected = naeem_by_loops(real.numpy(), unit(fake).numpy(), k)
            assert density_coverage(real, unit(fake), k) == pytest.approx(expected, abs=1e-6)


def test_coverage_is_full_when_the_fakes_are_the_real_images_and_none_when_far():
    axis = torch.eye(8)[:1]
    real = unit(axis * 3 + torch.randn(16, 8, generator=torch.Generator().manual_seed(1)))
    assert density_coverage(real, real.clone(), 3)[1] == 1.0
    assert density_coverage(real, -axis, 3) == (0.0, 0.0)  # the opposite pole
    assert density_coverage(real[:1], real, 3) is None  # one real image has no neighbour


def test_diversity_is_the_mean_pairwise_cosine_distance():
    rows = unit(torch.randn(7, 5, generator=torch.Generator().manual_seed(2)))
    pairs = [1 - float(rows[i] @ rows[j]) for i, j in itertools.permutations(range(7), 2)]
    assert mean_distance(rows) == pytest.approx(np.mean(pairs), abs=1e-6)
    assert mean_distance(rows[:1]) is None


def test_a_duplicate_points_at_the_closest_earlier_kept_image():
    rows = unit([[1, 0], [1, 0.01], [0, 1], [1, 0.02]])
    kept = torch.tensor([True, True, True, True])
    best, which = earlier_duplicates(rows, kept, chunk=2)  # chunks must not change the answer
    assert which.tolist() == [-1, 0, 1, 1] and best[0] == -torch.inf
    _, which = earlier_duplicates(rows, torch.tensor([False, True, True, True]))
    assert which.tolist() == [-1, -1, 1, 1]  # a rejected image is nobody's original


# 2. Flags on hand-made embeddings -----------------------------------------------------------------

# Two classes along two axes, each with 4 real images spread around its axis.
REAL = {
    "cat": unit([[1, 0.3, 0, 0], [1, -0.3, 0, 0], [1, 0, 0.3, 0], [1, 0, -0.3, 0]]),
    "dog": unit([[0, 0.3, 1, 0], [0, -0.3, 1, 0], [0.3, 0, 1, 0], [-0.3, 0, 1, 0]]),
}


def record(file, name, negative="dog", status="kept") -> dict:
    return {"file": file, "class_name": name, "negative_class": negative, "status": status}


def test_each_flag_marks_its_defect_and_nothing_else():
    records = [
        record("cat/0.png", "cat"),  # an ordinary cat
        record("cat/1.png", "cat"),  # its own positive image, copied
        record("cat/2.png", "cat"),  # a copy of cat/0
        record("cat/3.png", "cat"),  # a dog filed as a cat whose negative was dog
        record("dog/0.png", "dog", negative="cat"),
    ]
    ordinary, dog = [1, 0, 0, 0.4], [0, -0.3, 1, -0.3]
    synthetic = unit([ordinary, REAL["cat"][1].tolist(), ordinary, [0, 0.1, 1, 0.2], dog])
    report = build_report(records, synthetic, REAL, [0, 1, 2, 3, 0], CurationConfig())
    flags = {entry["file"]: entry["flags"] for entry in report["images"]}
    assert flags == {
        "cat/0.png": [],
        "cat/1.png": ["near_copy"],
        "cat/2.png": ["duplicate"],
        "cat/3.png": ["off_class"],
        "dog/0.png": [],
    }
    entries = {entry["file"]: entry for entry in report["images"]}
    assert entries["cat/2.png"]["duplicate_of"] == "cat/0.png"
    assert entries["cat/3.png"]["off_class"] == {"class": "dog", "is_negative": True}
    assert report["classes"]["cat"]["flagged"] == 0.75
    assert report["classes"]["cat"]["flag_counts"] == {"near_copy": 1, "duplicate": 1, "off_class": 1}
    assert report["classes"]["dog"]["flagged"] == 0.0


def test_a_copy_lies_within_a_share_of_the_usual_gap_between_real_images():
    real = unit(torch.randn(9, 6, generator=torch.Generator().manual_seed(3)))
    gaps = [min(float((a - b).norm()) for j, b in enumerate(real) if j != i) for i, a in enumerate(real)]
    floor = copy_floor(real, 0.25)
    assert 1 - floor == pytest.approx((0.25 * np.median(gaps)) ** 2 / 2, rel=1e-5)
    assert copy_floor(real[:1], 0.25) is None


def test_in_a_class_whose_real_images_lie_this_close_a_copy_must_be_closer():
    # Two real cats at cosine 0.9998: an image at 0.999 to its positive is not a near copy here.
    real = {"cat": unit([[1, 0.02, 0], [1, 0.0, 0]]), "dog": unit([[0, 0, 1], [0, 0.1, 1]])}
    close = unit([[1, 0.02, 0]]) + unit([[0, 0, 1]]) * 0.05
    report = build_report([record("cat/0.png", "cat")], close, real, [0], CurationConfig(near_copy=0.9))
    assert report["images"][0]["scores"]["positive"] > 0.99
    assert report["images"][0]["flags"] == []
    exact = build_report(
        [record("cat/0.png", "cat")], real["cat"][:1], real, [0], CurationConfig(near_copy=0.9)
    )
    assert exact["images"][0]["flags"] == ["near_copy"]


def test_off_class_needs_more_than_the_class_s_own_real_images_lean():
    # A "dog" real image sits nearer the cats than the dogs: leaning that far is normal for dogs.
    real = {"cat": REAL["cat"], "dog": unit([[0, 0, 1, 0], [0, 0.2, 1, 0], [1, 0.2, 0.5, 0]])}
    leaning = unit([[1, 0, 0.6, 0]])
    report = build_report([record("dog/0.png", "dog", negative="cat")], leaning, real, [0], CurationConfig())
    scores = report["images"][0]["scores"]
    assert scores["nearest_other"] > scores["fidelity"] and report["images"][0]["flags"] == []
    strays = build_report([record("dog/0.png", "dog")], REAL["cat"][:1] * 1.0, real, [0], CurationConfig())
    assert strays["images"][0]["flags"] == ["off_class"]


def test_thresholds_are_checked_by_their_declared_ranges():
    with pytest.raises(SettingsError, match="near_copy.*between 0 and 1"):
        CurationConfig(near_copy=1.5)
    with pytest.raises(SettingsError, match="nearest_k"):
        CurationConfig(nearest_k=0)
    assert CurationConfig.bounds("off_class_margin") == (0, 2)


def test_a_positive_is_found_however_the_real_folder_was_spelled():
    images = tuple(
        ImageRecord(source, str(i), None) for i, source in enumerate(["/data/cat/1.png", "/data/cat/2.png"])
    )
    assert locate_positive("/data/cat/2.png", images) == 1
    assert locate_positive("../moved/cat/2.png", images) == 1
    assert locate_positive("archive.zip:cat/1.png", images) == 0
    assert locate_positive("/data/cat/3.png", images) is None  # only the folder in common: no guess
    assert locate_positive("", images) is None


# 3. A run on the tiny models ------------------------------------------------------------------

CONFIG = GenerationConfig(steps=2, height=64, width=64, images_per_class=4, batch_size=2, negatives="uniform")


def swatch(colour, seed: int) -> Image.Image:
    noise = np.random.RandomState(seed).randint(-40, 40, (48, 48, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real")
    for name, colour in (
        ("red fox", (200, 60, 40)),
        ("grey wolf", (120, 120, 120)),
        ("arctic fox", (230, 230, 240)),
    ):
        (root / name).mkdir()
        for seed in range(3):
            swatch(colour, seed + len(name)).save(root / name / f"{seed}.png")
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_pipe, tiny_spec, real_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert GenerationJob(tiny_pipe, load_dataset(real_folder), CONFIG, out, tiny_spec).run().kind == "done"
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file()
    }


def test_the_report_changes_no_file_of_the_run(tiny_run, tiny_clip, real_folder, tmp_path):
    run = copy_run(tiny_run, tmp_path)
    set_status(run, [next(iter(read_manifest(run)))], "rejected")
    before, statuses = hashes(run), {f: r["status"] for f, r in read_manifest(run).items()}
    events = []
    report = CurationJob(run, load_dataset(real_folder), tiny_clip, batch_size=5).run(events.append)
    after = hashes(run)
    assert report is not None and (run / REPORT_FILE).is_file()
    assert {name: after[name] for name in before} == before
    assert all(
        name == REPORT_FILE or name.startswith(f"{CACHE_DIR}/") for name in after.keys() - before.keys()
    )
    assert {f: r["status"] for f, r in read_manifest(run).items()} == statuses
    assert [(event.kind, event.step, event.total) for event in events] == [
        ("progress", 5, 12),
        ("progress", 10, 12),
        ("progress", 12, 12),
        ("done", 12, 12),
    ]
    # The report lists every image by its manifest name, with its status, and every class.
    saved = load_report(run)
    assert [entry["file"] for entry in saved["images"]] == list(statuses)
    assert [entry["status"] for entry in saved["images"]] == list(statuses.values())
    assert saved["classes"].keys() == {"red fox", "grey wolf", "arctic fox"}
    rejected = saved["images"][0]["class_name"]
    assert saved["classes"][rejected]["kept"] == saved["classes"][rejected]["images"] - 1 == 3
    assert saved["unmatched_positives"] == 0


def test_planted_copies_of_positives_and_of_other_images_are_flagged(
    tiny_run, tiny_clip, real_folder, tmp_path
):
    run, dataset = copy_run(tiny_run, tmp_path), load_dataset(real_folder)
    planted = plant_defects(run, dataset, per_kind=2, seed=1)
    report = CurationJob(run, dataset, tiny_clip).run()
    scores = flag_scores(report, planted)
    assert scores["near_copy"]["planted"] == 2 and scores["duplicate"]["planted"] == 2
    assert scores["near_copy"]["recall"] == 1.0 and scores["duplicate"]["recall"] == 1.0
    assert scores["near_copy"]["precision"] == 1.0


def test_a_second_report_reads_every_embedding_from_the_run_s_cache(
    tiny_run, tiny_clip, real_folder, tmp_path
):
    run, dataset = copy_run(tiny_run, tmp_path), load_dataset(real_folder)
    first = CurationJob(run, dataset, tiny_clip).run()
    calls = []
    model = dataclasses.replace(tiny_clip, model=CountingModel(tiny_clip.model, calls))
    assert CurationJob(run, dataset, model).run() == first and calls == []


class CountingModel(torch.nn.Module):
    """A CLIP model that records each encode_image call."""

    def __init__(self, model, calls):
        super().__init__()
        self.model, self.calls = model, calls

    def encode_image(self, pixels):
        self.calls.append(len(pixels))
        return self.model.encode_image(pixels)


def test_cancel_writes_nothing(tiny_run, tiny_clip, real_folder, tmp_path):
    run, cancel = copy_run(tiny_run, tmp_path), threading.Event()
    events = []
    job = CurationJob(run, load_dataset(real_folder), tiny_clip, batch_size=4)
    assert job.run(lambda event: events.append(event) or cancel.set(), cancel) is None
    assert [(event.kind, event.step) for event in events] == [("progress", 4), ("cancelled", 4)]
    assert not (run / REPORT_FILE).exists()


def test_a_run_with_a_class_the_data_lacks_is_refused(tiny_run, tiny_clip, real_folder, tmp_path):
    data = Path(shutil.copytree(real_folder, tmp_path / "data"))
    shutil.rmtree(data / "grey wolf")
    with pytest.raises(UsageError, match=r"lacks: \['grey wolf'\]"):
        CurationJob(tiny_run, load_dataset(data), tiny_clip)
    with pytest.raises(UsageError, match="has no curation report yet"):
        load_report(tmp_path)
    with pytest.raises(UsageError, match="lists no images"):
        CurationJob(tmp_path, load_dataset(real_folder), tiny_clip)


# 4. The command ---------------------------------------------------------------------------------


def test_curate_report_writes_the_report_with_the_run_s_own_clip(tiny_run, real_folder, tmp_path, capsys):
    run = copy_run(tiny_run, tmp_path)  # no model flags: the CLIP the run recorded in job.json
    code = main(["curate-report", str(run), "--data", str(real_folder), "--near-copy", "0.99"])
    out = capsys.readouterr().out
    assert code == 0 and "red fox" in out and "flagged images: near_copy" in out
    assert json.loads((run / REPORT_FILE).read_text())["thresholds"]["near_copy"] == 0.99


def test_with_a_trained_classifier_its_features_are_used_and_cached_apart(
    tiny_run, tiny_models, real_folder, tmp_path, capsys
):
    run, models = copy_run(tiny_run, tmp_path), ["--models", str(tiny_models)]
    train = [
        "train",
        "--real",
        str(real_folder),
        "--preset",
        "demo",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "clf"),
    ]
    assert main([*train, *models]) == 0
    assert main(["curate-report", str(run), "--data", str(real_folder), *models]) == 0
    clip_report = json.loads((run / REPORT_FILE).read_text())
    assert (
        main(["curate-report", str(run), "--data", str(real_folder), "--adapter", str(tmp_path / "clf")]) == 0
    )
    report = json.loads((run / REPORT_FILE).read_text())
    assert clip_report["features"] == "clip" and report["features"] == "classifier"
    assert len(list((run / CACHE_DIR).glob("clip-embeddings-*"))) == 2  # one folder per encoder
    fidelity = [[e["scores"]["fidelity"] for e in r["images"]] for r in (clip_report, report)]
    assert fidelity[0] != fidelity[1]


def test_curate_report_errors_are_one_line(tiny_run, tiny_models, real_folder, tmp_path, capsys):
    models = ["--models", str(tiny_models)]
    assert main(["curate-report", str(tmp_path / "nowhere"), "--data", str(real_folder), *models]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert (
        main(["curate-report", str(tiny_run), "--data", str(real_folder), "--duplicate", "2", *models]) == 2
    )
    assert "'duplicate' must be between 0 and 1" in capsys.readouterr().err


# 5. Planted defects on the digit world -------------------------------------------------------------


def test_on_the_digit_world_the_report_flags_planted_defects_and_few_others(tmp_path):
    from dipsy_ui.digits import write_demo_data
    from dipsy_ui.models import WORLD_DIR, ModelSpec, load_clip, load_pipeline
    from dipsy_ui.presets import load_preset
    from dipsy_ui.similarity import compute_similarity

    spec = ModelSpec.from_models_dir(WORLD_DIR)
    dataset = load_dataset(write_demo_data(tmp_path / "data", shots=16) / "train")
    clip = load_clip(spec)
    config = dataclasses.replace(load_preset("demo").generation, images_per_class=6)
    similarity = compute_similarity(clip, dataset.image_lists(), temperature=config.temperature)
    run = tmp_path / "run"
    GenerationJob(load_pipeline(spec), dataset, config, run, spec, similarity).run()
    planted = plant_defects(run, dataset, per_kind=3, seed=0)
    scores = flag_scores(CurationJob(run, dataset, clip).run(), planted)
    assert scores["near_copy"]["recall"] == 1.0 and scores["duplicate"]["recall"] == 1.0
    assert scores["off_class"]["recall"] >= 0.5
    assert scores["near_copy"]["precision"] == 1.0
    # Few others: the world's generator does draw some near-identical digits and some that lean
    # to another class, which the flags rightly catch, so not none.
    assert scores["others"]["flagged"] <= 0.25 * scores["others"]["images"]
