"""The batch job on tiny models: resume after cancel or a crash, regeneration (bit-exact in the recorded
batch, within tolerance elsewhere), sharding across processes, refusal to mix settings, bad inputs,
hostile class names."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dipsy_ui.config import GenerationConfig
from dipsy_ui.data import DatasetError, load_folder, load_mapping
from dipsy_ui.files import leftover_target
from dipsy_ui.generate import JOB_FILE, GenerationJob, JobConflictError, Shard, item_seed
from dipsy_ui.manifest import MANIFEST_NAME, read_manifest, set_status
from dipsy_ui.reproduce import TOLERANCE_PSNR_DB
from dipsy_ui.similarity import SimilarityResult, dissimilar_probabilities, negative_probabilities

CONFIG = GenerationConfig(
    template="A photo of a {c}",
    steps=2,
    height=64,
    width=64,
    images_per_class=3,
    batch_size=2,
    negatives="uniform",
)


def swatch(seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (48, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def dataset():
    return load_mapping(
        {"red fox": [swatch(1), swatch(2)], "grey wolf": [swatch(3)], "coyote": [swatch(4), swatch(5)]}
    )


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def listed(out: Path) -> set[str]:
    return set(read_manifest(out))


def on_disk(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*.png") if not p.name.startswith(".")}


def test_seeds_depend_only_on_seed_class_and_index():
    assert item_seed(0, "fox", 3) == item_seed(0, "fox", 3)
    assert (
        len({item_seed(0, "fox", 3), item_seed(1, "fox", 3), item_seed(0, "wolf", 3), item_seed(0, "fox", 4)})
        == 4
    )


def test_cancel_then_resume_ends_with_the_full_set(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    job = GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec)
    cancel, events = threading.Event(), []

    def on_event(event):
        events.append(event)
        if event.kind == "progress":
            cancel.set()  # cancel mid-run: the next batch is interrupted at its first step

    first = job.run(on_event, cancel)
    assert first.kind == "cancelled" and first.step == 2
    assert listed(out) == on_disk(out) and len(listed(out)) == 2
    assert any(event.kind == "step" and event.payload["preview"].shape == (2, 8, 8, 3) for event in events)

    final = GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run()
    assert final.kind == "done" and final.step == final.total == 9
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 9 and listed(out) == on_disk(out)
    assert not [p for p in out.rglob(".*partial")]


PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def crash_while_writing(path: Path) -> Path:
    """Kill a process inside ``write_atomic(path)`` after the temporary file is written and before
    it is renamed, as a power cut or ``kill -9`` would; returns the temporary file left behind."""
    before = set(path.parent.iterdir())
    script = (
        "import os, sys\nfrom dipsy_ui import files\n"
        "os.replace = lambda *args: os._exit(9)\nfiles.write_atomic(sys.argv[1], b'torn')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=os.environ | {"PYTHONPATH": PACKAGE_ROOT}
    )
    assert result.returncode == 9
    (leftover,) = set(path.parent.iterdir()) - before
    return leftover


def test_only_the_temporary_files_of_write_atomic_count_as_leftovers(tmp_path):
    leftover = crash_while_writing(tmp_path / "00002.png")
    assert leftover.name.startswith(".00002.png.") and leftover_target(leftover.name) == "00002.png"
    assert not (tmp_path / "00002.png").exists()
    for name in (".00002.png.notes.partial", "00002.png.abcd1234.partial", ".00002.png.abcd1234.partial.bak"):
        assert leftover_target(name) is None, name


def test_resume_removes_the_leftovers_of_its_own_crashed_writes_and_nothing_else(
    tiny_pipe, tiny_spec, dataset, tmp_path
):
    out = tmp_path / "run"
    cancel = threading.Event()
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run(
        lambda event: event.kind == "progress" and cancel.set(), cancel
    )
    fox = out / dataset.slug("red fox")
    assert listed(out) == {f"{fox.name}/00000.png", f"{fox.name}/00001.png"}
    earlier = {file: (out / file).read_bytes() for file in listed(out)}
    manifest = (out / MANIFEST_NAME).read_text()
    # The job's own writes cut short: an image of shard 1 of 2, one of shard 0, and job.json.
    shard_one, shard_zero, job = (
        crash_while_writing(path) for path in (fox / "00002.png", fox / "00000.png", out / JOB_FILE)
    )
    # The user's files: near misses of the pattern, and a write_atomic leftover of a file that is
    # not the job's.
    users = [fox / ".00002.png.notes.partial", fox / "00002.png.abcd1234.partial", out / ".job.json.partial"]
    for path in users:
        path.write_bytes(b"mine")
    users.append(crash_while_writing(fox / "holiday.jpg"))

    # A shard removes only its own images' leftovers: the others may be another shard's writes.
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec, shard=Shard(1, 2)).run()
    assert not shard_one.exists() and shard_zero.exists() and job.exists()
    final = GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run()
    assert not shard_zero.exists() and not job.exists()

    assert all(path.is_file() for path in users)
    assert {p for p in out.rglob("*") if leftover_target(p.name)} == set(users[-1:])
    assert final.kind == "done" and len(listed(out)) == 9 and listed(out) == on_disk(out)
    assert (out / MANIFEST_NAME).read_text().startswith(manifest)
    assert all((out / file).read_bytes() == data for file, data in earlier.items())


def test_rerun_of_a_finished_job_generates_nothing(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run()
    before = {file: (out / file).stat().st_mtime_ns for file in listed(out)}
    events = []
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run(events.append)
    assert [event.kind for event in events] == ["done"]
    assert before == {file: (out / file).stat().st_mtime_ns for file in listed(out)}


@pytest.mark.determinism
def test_regenerating_from_the_manifest_is_bit_exact(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    job = GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec)
    job.run()
    # Position 1 of a full batch, and the class's last image, alone in a shorter batch.
    for file in ("coyote/00001.png", "grey wolf".replace(" ", "_") + "/00002.png"):
        report = job.regenerate(file)
        assert report.verdict == "identical" and report.differing_env == {}
        assert np.array_equal(np.asarray(report.image), pixels(out / file))
    record = read_manifest(out)["coyote/00001.png"]
    assert record["negative_class"] in {"red fox", "grey wolf"} and record["seed"] == item_seed(
        0, "coyote", 1
    )
    assert (
        record["w_pos"] == CONFIG.w_pos
        and record["models"]["sd"] == tiny_spec.sd
        and "torch" in record["versions"]
    )


FOURS = dataclasses.replace(CONFIG, images_per_class=4, batch_size=4)
LAST_OF_FOUR = "coyote/00003.png"


@pytest.fixture(scope="module")
def run_of_fours(tiny_pipe, tiny_spec, dataset, tmp_path_factory) -> Path:
    """A finished run in batches of 4. Tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("fours") / "run"
    GenerationJob(tiny_pipe, dataset, FOURS, out, tiny_spec).run()
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def rewrite_records(out: Path, change) -> None:
    """Replace every manifest line by ``change(line as a dict)``."""
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    (out / MANIFEST_NAME).write_text("".join(json.dumps(change(line)) + "\n" for line in lines))


@pytest.mark.determinism
def test_the_manifest_records_the_batch_and_the_environment(run_of_fours):
    record = read_manifest(run_of_fours)[LAST_OF_FOUR]
    assert record["batch"] == [f"coyote/0000{i}.png" for i in range(4)] and record["batch_position"] == 3
    assert record["generator_device"] == "cpu" and record["dtype"] == "float32"
    assert record["device_name"] and record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["threads"] == torch.get_num_threads()
    assert {"torch", "diffusers", "transformers"} <= record["versions"].keys()


@pytest.mark.determinism
def test_regenerated_in_its_recorded_batch_an_image_is_identical(run_of_fours, tiny_pipe, tiny_spec, dataset):
    report = GenerationJob(tiny_pipe, dataset, FOURS, run_of_fours, tiny_spec).regenerate(LAST_OF_FOUR)
    assert report.verdict == "identical" and report.differing_env == {}
    assert report.max_abs_diff == 0 and report.psnr == math.inf
    assert np.array_equal(np.asarray(report.image), pixels(run_of_fours / LAST_OF_FOUR))
    assert report.summary() == "identical to the stored image"


@pytest.mark.determinism
def test_regenerated_in_another_batch_an_image_is_within_tolerance(
    run_of_fours, tiny_pipe, tiny_spec, dataset
):
    job = GenerationJob(tiny_pipe, dataset, FOURS, run_of_fours, tiny_spec)
    alone = job.regenerate(LAST_OF_FOUR, batch_size=1)
    assert alone.differing_env == {"batch_size": (4, 1)}
    assert alone.verdict != "different" and alone.psnr >= TOLERANCE_PSNR_DB
    # Whether another batch shape changes any 8-bit value depends on the CPU's kernels (AVX512
    # Xeons round differently with the batch shape, other CPUs may not): the verdict must say which.
    assert alone.verdict == ("within tolerance" if alone.max_abs_diff else "identical")
    assert job.regenerate(LAST_OF_FOUR, batch_size=3).differing_env == {"batch_size": (4, 3)}
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        job.regenerate(LAST_OF_FOUR, batch_size=0)


def test_an_image_generated_on_another_cpu_is_within_tolerance(
    run_of_fours, tiny_pipe, tiny_spec, dataset, tmp_path
):
    out = copy_of(run_of_fours, tmp_path)
    # Emulate a run made elsewhere: its records name another CPU, and its image differs by one
    # level in a few channels, as an image rounded by other kernels does.
    rewrite_records(out, lambda line: line | {"device_name": "a CPU elsewhere", "cpu_capability": "other"})
    stored = pixels(out / LAST_OF_FOUR).copy()
    flat, changed = stored.reshape(-1), np.arange(0, 5000, 1000)
    flat[changed] = np.where(flat[changed] < 255, flat[changed] + 1, flat[changed] - 1)
    Image.fromarray(stored).save(out / LAST_OF_FOUR)
    report = GenerationJob(tiny_pipe, dataset, FOURS, out, tiny_spec).regenerate(LAST_OF_FOUR)
    assert report.verdict == "within tolerance" and report.max_abs_diff == 1
    assert report.psnr == pytest.approx(10 * math.log10(255**2 * stored.size / len(changed)))
    assert report.differing_env == {
        "device_name": ("a CPU elsewhere", read_manifest(run_of_fours)[LAST_OF_FOUR]["device_name"]),
        "cpu_capability": ("other", torch.backends.cpu.get_cpu_capability()),
    }
    assert "cpu_capability other -> " in report.summary()


def test_a_manifest_without_the_environment_still_regenerates(
    run_of_fours, tiny_pipe, tiny_spec, dataset, tmp_path
):
    out = copy_of(run_of_fours, tmp_path)
    added = ("device_name", "cpu_capability", "threads", "batch_position")  # what older manifests lack
    rewrite_records(out, lambda line: {key: value for key, value in line.items() if key not in added})
    report = GenerationJob(tiny_pipe, dataset, FOURS, out, tiny_spec).regenerate(LAST_OF_FOUR)
    assert report.verdict == "identical"
    assert {field: then for field, (then, now) in report.differing_env.items()} == {
        "device_name": None,
        "cpu_capability": None,
        "threads": None,
    }


def test_a_changed_stored_image_is_different_and_the_cause_is_named(
    run_of_fours, tiny_pipe, tiny_spec, dataset, tmp_path
):
    out = copy_of(run_of_fours, tmp_path)
    shutil.copyfile(out / "coyote/00002.png", out / LAST_OF_FOUR)  # another seed's image
    report = GenerationJob(tiny_pipe, dataset, FOURS, out, tiny_spec).regenerate(LAST_OF_FOUR)
    assert report.verdict == "different" and report.psnr < TOLERANCE_PSNR_DB
    assert report.differing_env == {} and "the stored file was changed" in report.summary()
    (out / LAST_OF_FOUR).unlink()
    with pytest.raises(ValueError, match="image is missing"):
        GenerationJob(tiny_pipe, dataset, FOURS, out, tiny_spec).regenerate(LAST_OF_FOUR)


@pytest.mark.determinism
def test_two_processes_share_the_work_exactly_once(tiny_models, tiny_pipe, tiny_spec, dataset, tmp_path):
    data = tmp_path / "data"
    for c in dataset.classes:
        (data / c.name).mkdir(parents=True)
        for i, record in enumerate(c.images):
            record.image.save(data / c.name / f"{i}.png")
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"generation": CONFIG.to_dict() | {"batch_size": 1}}))
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "dipsy_ui", "generate", str(data), "--preset", str(preset)]
    args += ["--models", str(tiny_models), "--out", str(out)]
    env = {**os.environ, "WORLD_SIZE": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [
        subprocess.Popen(args, env=env | {"RANK": str(rank)}, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    errors = [process.communicate(timeout=600)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    assert len(lines) == 9 and len(listed(out)) == 9 and listed(out) == on_disk(out)
    # Any sharding gives the same images: shard 1 of 2 again, in this process, into a new folder.
    again = tmp_path / "again"
    config = dataclasses.replace(CONFIG, batch_size=1)
    GenerationJob(tiny_pipe, load_folder(data), config, again, tiny_spec, shard=Shard(1, 2)).run()
    assert len(listed(again)) == 4 and listed(again) < listed(out)
    for file in listed(again):
        assert np.array_equal(pixels(again / file), pixels(out / file))


def test_different_settings_are_refused_and_nothing_is_touched(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run()
    before = {file: pixels(out / file) for file in listed(out)}
    changed = dataclasses.replace(CONFIG, w_pos=2.0)
    with pytest.raises(JobConflictError, match="other settings") as refused:
        GenerationJob(tiny_pipe, dataset, changed, out, tiny_spec).run()
    # The message names the folder and the differing setting with both values, never the server path.
    assert "'run'" in str(refused.value) and "w_pos: recorded 6.0, now 2.0" in str(refused.value)
    assert str(tmp_path) not in str(refused.value) and "/" not in str(refused.value)
    assert all(np.array_equal(pixels(out / file), image) for file, image in before.items())
    # More images per class is not a different run: it extends this one.
    bigger = dataclasses.replace(CONFIG, images_per_class=4)
    assert GenerationJob(tiny_pipe, dataset, bigger, out, tiny_spec).run().step == 12


def test_torn_manifest_line_is_skipped_and_resume_continues(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    GenerationJob(tiny_pipe, dataset, dataclasses.replace(CONFIG, images_per_class=1), out, tiny_spec).run()
    with open(out / MANIFEST_NAME, "a") as handle:
        handle.write('{"file": "coyote/00001.png", "class_na')  # a crash in the middle of a write
    assert len(listed(out)) == 3
    GenerationJob(tiny_pipe, dataset, CONFIG, out, tiny_spec).run()
    assert len(listed(out)) == 9 and listed(out) == on_disk(out)


def test_curation_status_is_kept_in_the_manifest(tiny_pipe, tiny_spec, dataset, tmp_path):
    out = tmp_path / "run"
    GenerationJob(tiny_pipe, dataset, dataclasses.replace(CONFIG, images_per_class=1), out, tiny_spec).run()
    set_status(out, ["coyote/00000.png"], "rejected")
    assert read_manifest(out)["coyote/00000.png"]["status"] == "rejected"
    set_status(out, ["coyote/00000.png"], "kept")
    assert read_manifest(out)["coyote/00000.png"]["status"] == "kept"
    with pytest.raises(ValueError, match="not in the manifest"):
        set_status(out, ["elsewhere.png"], "rejected")


def test_single_class_needs_negatives_off(tiny_pipe, tiny_spec, tmp_path):
    lonely = load_mapping({"only": [swatch(1)]})
    with pytest.raises(DatasetError, match="at least 2 classes"):
        GenerationJob(tiny_pipe, lonely, CONFIG, tmp_path / "a", tiny_spec)
    assert not (tmp_path / "a").exists()
    config = dataclasses.replace(CONFIG, negatives="none", images_per_class=2)
    assert GenerationJob(tiny_pipe, lonely, config, tmp_path / "b", tiny_spec).run().kind == "done"
    assert all(record["negative"] is None for record in read_manifest(tmp_path / "b").values())


@pytest.mark.parametrize("mode", ["similarity", "dissimilar"])
def test_similarity_negatives_need_a_similarity_for_the_same_classes(
    tiny_pipe, tiny_spec, dataset, tmp_path, mode
):
    config = dataclasses.replace(CONFIG, negatives=mode)
    with pytest.raises(ValueError, match="similarity"):
        GenerationJob(tiny_pipe, dataset, config, tmp_path / "a", tiny_spec)


def test_dissimilar_negatives_draw_from_minus_s_over_t_of_the_same_similarity(
    tiny_pipe, tiny_spec, dataset, tmp_path
):
    names = list(dataset.class_names)
    similarity = torch.tensor([[1.0, 0.9, -0.2], [0.9, 1.0, 0.1], [-0.2, 0.1, 1.0]], dtype=torch.float64)
    result = SimilarityResult(names, similarity, negative_probabilities(similarity, 0.4), 0.4)
    jobs = {
        mode: GenerationJob(
            tiny_pipe,
            dataset,
            dataclasses.replace(CONFIG, negatives=mode),
            tmp_path / mode,
            tiny_spec,
            result,
        )
        for mode in ("similarity", "dissimilar")
    }
    assert torch.equal(jobs["similarity"].sampler.probabilities, result.probabilities)
    assert torch.equal(jobs["dissimilar"].sampler.probabilities, dissimilar_probabilities(similarity, 0.4))
    # Each class's likeliest negative is its least similar class, and the runs are told apart.
    assert jobs["dissimilar"].sampler.probabilities.argmax(dim=1).tolist() == [2, 2, 0]
    fingerprints = {mode: job.fingerprint()["negative_probabilities"] for mode, job in jobs.items()}
    assert fingerprints["similarity"] != fingerprints["dissimilar"]


def test_hostile_class_names_stay_inside_the_output_folder(tiny_pipe, tiny_spec, tmp_path):
    hostile = load_mapping({"../../escape": [swatch(1)], "/etc/passwd": [swatch(2)], "CON": [swatch(3)]})
    out = tmp_path / "nested" / "out"
    config = dataclasses.replace(CONFIG, images_per_class=1)
    GenerationJob(tiny_pipe, hostile, config, out, tiny_spec).run()
    everything = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(out.resolve() in path.parents for path in everything)
    assert {record["class_name"] for record in read_manifest(out).values()} == {
        "../../escape",
        "/etc/passwd",
        "CON",
    }
