"""The app driven through its API with gradio_client, launched in demo mode in this process.

One long flow (data -> similarity -> preview -> generate -> curate -> train -> metrics) asserts on
what each step produced, then bad input: non-images, empty and hostile class names, cancel and
resume of a generation run.
"""

import io
import json
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from dipsy_ui.manifest import read_manifest
from dipsy_ui.presets import load_preset

CLASSES = ["zero", "one", "two"]  # a subset of the demo digits keeps generation and training short


def connect(url: str) -> Client:
    """A client (one app session) with generous timeouts: a busy 2-core machine answers slowly."""
    return Client(url, verbose=False, httpx_kwargs={"timeout": 300})


def session_dir(workspace: Path, client_sessions_before: set) -> Path:
    created = set((workspace / "sessions").iterdir()) - client_sessions_before
    assert len(created) == 1, created
    return created.pop()


def sessions(workspace: Path) -> set:
    folder = workspace / "sessions"
    return set(folder.iterdir()) if folder.is_dir() else set()


def load_three_classes(client: Client) -> list:
    table, *_ = client.predict(api_name="/load_demo")
    assert sorted(table_names(table)) == sorted(["zero", "one", "two", "three", "four", "five", "six",
                                                 "seven", "eight", "nine"])  # fmt: skip
    assert all(row[1] == 8 for row in table["data"])
    for name in table_names(table):
        if name not in CLASSES:
            table, *_ = client.predict(name, api_name="/remove_class")
    assert sorted(table_names(table)) == sorted(CLASSES)
    return table


def three_class_test_zip(workspace: Path, tmp_path: Path) -> Path:
    """Four demo test images of each of CLASSES, zipped as class folders."""
    test_zip = tmp_path / "test.zip"
    demo_test = workspace / "demo-data" / "test"
    with zipfile.ZipFile(test_zip, "w") as archive:
        for name in CLASSES:
            for file in sorted((demo_test / name).iterdir())[:4]:
                archive.write(file, f"test/{name}/{file.name}")
    return test_zip


def two_step_session(demo_app) -> tuple[Client, Path]:
    """A new client with three demo classes, previewed once at 2 steps (the steps its runs use),
    and its session folder."""
    url, workspace, _ = demo_app
    before = sessions(workspace)
    client = connect(url)
    load_three_classes(client)
    root = session_dir(workspace, before)
    client.predict("zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 2, 0, True, api_name="/preview")
    return client, root


def table_names(table) -> list:
    return [row[0] for row in table["data"]]


def test_full_flow(demo_app, tmp_path):
    url, workspace, studio = demo_app
    before = sessions(workspace)
    client = connect(url)

    # 1. Data: the demo digits, reduced to three classes.
    load_three_classes(client)
    root = session_dir(workspace, before)
    assert sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) == sorted(CLASSES)

    # 2. Similarity: heatmap and probabilities; the temperature changes them live.
    heatmap, rows, *_, status = client.predict(0.4, api_name="/compute_similarity")
    assert Image.open(heatmap).size[0] > 100
    assert sorted(row[0] for row in rows["data"]) == sorted(CLASSES)
    assert "3 classes" in status
    sharp, _ = client.predict(0.05, api_name="/set_temperature")
    assert sharp["data"] != rows["data"]
    pinned, message = client.predict("zero", ["two"], [], api_name="/set_override")
    zero = next(row for row in pinned["data"] if row[0] == "zero")
    assert zero[1] == "two 1.00" and "pinned" in zero[2]

    # 3. Guidance: a preview (streamed; the client sees the final image), reproducible by seed.
    controls = ["one", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 2, 5, True]
    first, previous, seed, status = client.predict(*controls, api_name="/preview")
    assert seed == 5 and "Done" in status and previous is None
    again, previous, _, _ = client.predict(*controls, api_name="/preview")
    assert Image.open(first).size == (32, 32)  # the digit world's native size
    assert Image.open(first).tobytes() == Image.open(again).tobytes()  # same call, same machine: same bits
    assert previous is not None  # the earlier result is shown beside the new one
    grid, _, sweep_status = client.predict(*controls, "w_pos", "0, 6", "w_neg", "0, 6", api_name="/sweep")
    assert sweep_status.startswith("Sweep done")
    assert min(Image.open(grid).size) > 2 * 128  # two by two cells of 128 pixels, and their labels
    saved = client.predict("My tuned settings", *controls, api_name="/save_preset")
    preset = json.loads((root / "presets" / "My tuned settings.json").read_text())
    assert preset["generation"]["steps"] == 2 and saved.startswith("Saved as preset **My tuned settings**")
    # A preset is named, never a path; an existing name asks before it is replaced.
    asked = client.predict("my tuned settings", *controls, api_name="/save_preset")
    assert "exists" in asked and "Replace it" in asked
    refused = client.predict("../evil", *controls, api_name="/save_preset")
    assert refused.startswith("Not done:") and not (root.parent / "evil.json").exists()
    assert client.predict("../evil", api_name="/set_preset").startswith("Not done:")

    # 4. Generate: two images per class (one batch each); the manifest is the source of truth.
    bar, gallery, _ = client.predict(2, 2, "run-1", api_name="/generate")
    assert "Done: 6 / 6" in bar
    records = read_manifest(root / "runs" / "run-1")
    assert sorted(r["class_name"] for r in records.values()) == sorted(CLASSES * 2)
    assert len(gallery) == 6 and all(r["steps"] == 2 for r in records.values())
    # Open in Guidance gives /preview's inputs, and /preview redraws the image (alone instead of
    # in its batch of two: the last bits of the kernels may differ, no more).
    for file in sorted(records)[:2]:
        opened = client.predict(file, api_name="/open_in_guidance")
        values = opened[:11]  # /preview's inputs, then the negative rule and the status
        assert values[9] == records[file]["seed"] and values[2] == records[file]["negative_class"]
        redrawn, *_ = client.predict(*values, api_name="/preview")
        difference = np.abs(np.asarray(Image.open(redrawn).convert("RGB"), dtype=int)
                            - np.asarray(Image.open(root / "runs" / "run-1" / file).convert("RGB"), dtype=int))  # fmt: skip
        assert difference.max() <= 2, (file, difference.max())

    # 5. Curate: reject one image (by API and visibly in the page), rank, export the kept set.
    thumbs, info, counts, *_ = client.predict("", 1, api_name="/curate_page")
    assert info == "page 1 of 1" and len(thumbs) == 6
    rejected = next(iter(records))
    _, _, counts, status, _ = client.predict(rejected, "", 1, api_name="/curate_toggle")
    assert "rejected" in status
    assert read_manifest(root / "runs" / "run-1")[rejected]["status"] == "rejected"
    assert sum(row[2] for row in counts["data"]) == 1 and sum(row[1] for row in counts["data"]) == 5
    *_, status, _ = client.predict("", 1, api_name="/curate_rank")
    assert "CLIP similarity" in status
    exported = client.predict(api_name="/export_kept")
    with zipfile.ZipFile(exported) as archive:
        assert len(archive.namelist()) == 5 and f"run-1/{rejected}" not in archive.namelist()

    # 6. Train with the settings fields left blank (the preset's recipe: 10 epochs of one step
    # over the 5 kept images) and a three-class test set uploaded as a zip; check the metrics.
    test_zip = three_class_test_zip(workspace, tmp_path)
    # A bad number is refused in the status with the field and its allowed range; nothing trains.
    for typed, reason in [((0, None, None, None), "'epochs' must be between 1 and 1000, got 0"),
                          (("abc", None, None, None), "Epochs must be a whole number"),
                          ((None, None, 100000, None), "'lora_rank' must be between 1 and 256, got 100000")]:  # fmt: skip
        status, *_ = client.predict(*typed, handle_file(str(test_zip)), False, api_name="/train")
        assert status.startswith("Not done:") and reason in status, status
    status, _, _, per_class, confusion, metrics = client.predict(
        None, None, None, None, handle_file(str(test_zip)), False, api_name="/train"
    )
    assert status.startswith("Done: 10 epoch(s)"), status
    recorded = json.loads((Path(metrics["out_dir"]) / "train_config.json").read_text())["config"]
    assert recorded == load_preset("demo").train.to_dict()  # what `train --preset demo` uses
    assert metrics["epochs"] == 10 and 0.0 <= metrics["test_top1"] <= 1.0
    assert sorted(metrics["per_class"]) == sorted(CLASSES)
    assert sum(map(sum, metrics["confusion"])) == 12  # every test image counted once
    assert [row[0] for row in per_class["data"]] == sorted(CLASSES) and Path(confusion).is_file()
    (adapter,) = client.predict(api_name="/download_adapter")
    with zipfile.ZipFile(adapter) as archive:
        assert "classifier/adapter/adapter_model.safetensors" in archive.namelist()
    # With a classifier, curation ranks by its confidence.
    *_, status, _ = client.predict("", 1, api_name="/curate_rank")
    assert "classifier confidence" in status


def test_bad_input(demo_app, tmp_path):
    url, workspace, _ = demo_app
    before = sessions(workspace)
    client = connect(url)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(good)

    # A refused upload writes the reason into the report (the tab's status) and changes nothing
    # else: the class name stays, the upload box is emptied, no server path is shown.
    table, gallery, report, _, _, files, name = client.predict(
        "cat", [handle_file(str(text))], api_name="/add_class"
    )
    assert (
        report.startswith("Not done: class 'cat' was not added")
        and "notes.png: not a readable image" in report
    )
    assert name == "cat" and files is None
    assert str(tmp_path) not in report and "/tmp" not in report and "object at 0x" not in report
    *_, report, _, _, _, name = client.predict("cat", [], api_name="/add_class")
    assert "no images given" in report and name == "cat"
    *_, report, _, _, _, _ = client.predict("   ", [handle_file(str(good))], api_name="/add_class")
    assert "class name is empty" in report
    with pytest.raises(AppError, match="compute the class similarity first|no data yet"):
        client.predict("cat", [], [], api_name="/set_override")

    # A hostile name is kept as the display name, and its files stay inside the session folder.
    hostile = "../../etc/passwd\u202e<script>"
    big = tmp_path / "big.png"
    Image.new("RGB", (3000, 1500), (10, 20, 200)).save(big)
    table, _, report, *_ = client.predict(hostile, [handle_file(str(good)), handle_file(str(text)),
                                                    handle_file(str(big))], api_name="/add_class")  # fmt: skip
    assert table_names(table) == [hostile]
    assert "skipped notes.png: not a readable image" in report
    assert "big.png: 3000x1500 downscaled to 2048x1024" in report and "1 class, 2 images." in report
    root = session_dir(workspace, before)
    stored = list((root / "data").rglob("*.png"))
    assert len(stored) == 2 and stored[0].resolve().is_relative_to(root.resolve())

    # A zip holding a decompression bomb (a 12000x12000 PNG, small on disk) and a non-image: both
    # are refused with a line each in the report, named by their place in the zip, the rest loads.
    bomb, pixels = io.BytesIO(), io.BytesIO()
    Image.new("L", (12000, 12000)).save(bomb, "PNG")
    Image.new("RGB", (32, 32), (200, 0, 0)).save(pixels, "PNG")
    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("mixed/red/a.png", pixels.getvalue())
        zipped.writestr("mixed/red/huge.png", bomb.getvalue())
        zipped.writestr("mixed/blue/b.png", good.read_bytes())
        zipped.writestr("mixed/blue/notes.png", b"not an image")
    table, _, report, _, _, upload = client.predict(handle_file(str(archive)), api_name="/upload_dataset")
    assert sorted(table_names(table)) == ["blue", "red"] and upload is None
    assert re.search(
        r"skipped mixed\.zip:mixed/red/huge\.png: 12000x12000 pixels \(144 MP\) is over the \d+ MP limit",
        report,
    ), report
    assert "skipped mixed.zip:mixed/blue/notes.png: not a readable image" in report
    assert "/tmp" not in report and str(workspace) not in report and "object at 0x" not in report
    # A single class cannot have negatives.
    client.predict("blue", api_name="/remove_class")
    with pytest.raises(AppError, match="at least 2 classes"):
        client.predict(0.4, api_name="/compute_similarity")


def test_cancel_then_resume(demo_app):
    _, workspace, _ = demo_app
    client, root = two_step_session(demo_app)
    run = root / "runs" / "run-c"

    assert client.predict(api_name="/cancel_generation") == "Nothing to cancel."
    job = client.submit(3, 1, "run-c", api_name="/generate")
    deadline = time.monotonic() + 120
    while len(read_manifest(run)) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    client.predict(api_name="/cancel_generation")
    bar, gallery, _ = job.result(timeout=120)  # the job itself says how it ended
    stopped = len(read_manifest(run))
    assert f"Cancelled: {stopped} / 9 images in run-c" in bar and 1 <= stopped < 9
    assert len(gallery) == stopped

    bar, gallery, _ = client.predict(3, 1, "run-c", api_name="/resume")
    assert "Done: 9 / 9" in bar
    records = read_manifest(run)
    assert len(records) == 9 and len({r["seed"] for r in records.values()}) == 9

    # Other settings (3 steps instead of 2): Start is refused in the status, listing what differs;
    # "New folder" names a free folder, "Resume with the recorded settings" finishes run-c as it began.
    client.predict("zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 3, 0, True, api_name="/preview")
    bar, gallery, _ = client.predict(3, 1, "run-c", api_name="/generate")
    assert "Not done:" in bar and "steps: recorded 2, now 3" in bar, bar
    assert str(workspace) not in bar and "/tmp" not in bar
    folder, bar = client.predict("run-c", api_name="/new_folder")
    assert folder == "run-c-1" and "Not done" not in bar
    bar, gallery, _ = client.predict(3, 1, "run-c", api_name="/resume_recorded")
    assert "Done: 9 / 9 images in run-c" in bar and len(gallery) == 9
    assert "Not done" in client.predict(3, 1, "nowhere", api_name="/resume_recorded")[0]


def test_compare(demo_app, tmp_path):
    """Real-only vs real+synthetic on a tiny budget: both runs and the zero-shot baseline."""
    url, workspace, _ = demo_app
    before = sessions(workspace)
    client = connect(url)
    load_three_classes(client)
    client.predict(1, 1, "run-compare", api_name="/generate")
    test_zip = handle_file(str(three_class_test_zip(workspace, tmp_path)))
    status, _, _, text, metrics, per_class, confusion, adapters = client.predict(
        1, 0.8, 2, 1e-3, test_zip, False, api_name="/compare"
    )
    assert status == "Comparison done.", status
    # The engine's verdict on its own line above the aligned table; per-class results of both
    # runs; both runs' adapters to download, and no earlier Train run's confusion matrix.
    verdict, blank, header = text.splitlines()[:3]
    assert (
        verdict and not blank and all(run in header for run in ("zero-shot", "real only", "real+synthetic"))
    )
    assert per_class["headers"] == ["class", "zero-shot", "real only", "real+synthetic"]
    assert sorted(row[0] for row in per_class["data"]) == sorted(CLASSES)
    assert Image.open(confusion).size[0] > 100  # the comparison's own confusion matrix (real+synthetic)
    tops = sorted(zipfile.ZipFile(a).namelist()[0].split("/")[0] for a in adapters)
    assert tops == ["real_only", "real_synthetic"]
    assert not metrics["cancelled"] and metrics["steps"] >= 1
    for run in ("zero_shot", "real_only", "real_synthetic"):
        assert 0.0 <= metrics[run]["top1"] <= 1.0 and sorted(metrics[run]["per_class"]) == sorted(CLASSES)
    # Reopened, the comparison shows what it showed: both runs' curves and its confusion matrix.
    status, per_class, confusion, _, text, loss, accuracy = client.predict(
        "run-compare", api_name="/open_comparison"
    )
    assert status == "Comparison of run-compare." and Image.open(confusion).size[0] > 100
    by_run = {}
    for step, _, run in plot_rows(loss):
        by_run.setdefault(run, []).append(step)
    every_step = list(range(1, metrics["steps"] + 1))
    assert by_run == {"real only": every_step, "real+synthetic": every_step}, loss
    assert {row[2] for row in plot_rows(accuracy)} == {f"{run} {curve}" for run in ("real only", "real+synthetic")
                                                  for curve in ("(training batches)", "test")}  # fmt: skip

    # Cancel stops a longer comparison while it streams its curves.
    job = client.submit(50, 0.8, 2, 1e-3, test_zip, False, api_name="/compare")
    deadline = time.monotonic() + 120
    while not any("step" in output[0] for output in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/cancel_training")
    status, _, _, _, metrics, *_ = job.result(timeout=120)
    assert status == "Comparison cancelled." and metrics["cancelled"]
    assert not any(output[0] == "Comparison done." for output in job.outputs())
    report = session_dir(workspace, before) / "comparisons" / "run-compare" / "comparison.json"
    assert json.loads(report.read_text())["cancelled"]  # written before the job ended


def plot_rows(output: dict) -> list:
    """The rows a line plot output draws (it comes as an update: its data with its series' colours)."""
    assert sorted(output["color_map"]) == sorted({row[2] for row in output["value"]["data"]}), output
    return output["value"]["data"]


def streamed_step(job) -> None:
    """Wait for a streaming job's first denoising step."""
    deadline = time.monotonic() + 120
    while not any("tep " in str(output[-1]) for output in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("tep " in str(output[-1]) for output in job.outputs()), "the job never streamed a step"


def test_cancel_preview_and_sweep(demo_app):
    """Cancelling a streaming preview ends it "Cancelled at step k/n" with the earlier result back
    in place, the next preview works, and a sweep stops on the same Cancel."""
    url, _, _ = demo_app
    client = connect(url)
    load_three_classes(client)
    assert client.predict(api_name="/cancel_preview") == "Nothing to cancel."
    done, _, _, _ = client.predict(
        "zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 2, 0, True, api_name="/preview"
    )
    job = client.submit("zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 100, 0, True, api_name="/preview")
    streamed_step(job)
    client.predict(api_name="/cancel_preview")
    image, previous, _, status = job.result(timeout=120)
    assert re.fullmatch(r"Cancelled at step (\d+)/100\. The previous result is kept\.", status), status
    assert int(re.search(r"step (\d+)/", status).group(1)) < 100
    assert Image.open(image).tobytes() == Image.open(done).tobytes() and previous is None

    image, _, seed, status = client.predict("zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 2, 3, True,
                                            api_name="/preview")  # fmt: skip
    # The status names the negative image the preview was pushed away from, drawn by the rule here.
    assert re.fullmatch(r"Done \(seed 3; negative: (one|two) image \d \(drawn by the rule\)\)\.", status), (
        status
    )
    assert Path(image).is_file()

    # A sweep streams its progress and stops on the same Cancel.
    controls = ("zero", 0, "sample", -1, 7.5, 6.0, 6.0, 0.6, 100, 0, True)
    job = client.submit(*controls, "w_pos", "0, 6", "w_neg", "0, 6", api_name="/sweep")
    streamed_step(job)
    assert any(output[2].startswith("Sweep: step") for output in job.outputs())
    client.predict(api_name="/cancel_preview")
    _, _, status = job.result(timeout=120)
    assert status.startswith("Sweep: cancelled at step"), status


def test_end_session(demo_app, tmp_path):
    """An ended session's folder goes unless it holds the user's data or results (its browser
    reopens it on the next visit); those stay, minus the scratch. A folder still open in another
    tab is left alone."""
    _, _, studio = demo_app
    image = tmp_path / "red.png"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(image)
    core = studio.core
    empty, data, kept = core.session(None), core.session(None), core.session(None)
    for session in (data, kept):
        studio.data.add_images(session, "red", [str(image)])
    for session in (empty, data, kept):
        (session.root / "previews").mkdir()
        (session.root / "previews" / "1.png").write_bytes(image.read_bytes())
    (kept.root / "runs" / "run-1").mkdir(parents=True)
    running = empty.jobs.open("generate")  # a job still in flight for the closed tab

    reopened, _ = core.reopen(kept.id)  # the same browser, refreshed: two tabs on one folder
    core.end_session(kept)
    assert (kept.root / "previews").is_dir()  # still in use by the refreshed page
    for session in (empty, data, reopened):
        core.end_session(session)
    assert not empty.root.exists() and running.cancel.is_set()
    assert (data.root / "data").is_dir() and not (data.root / "previews").exists()
    assert (kept.root / "runs" / "run-1").is_dir() and (kept.root / "data").is_dir()
    assert not (kept.root / "previews").exists()
    core.end_session(type(kept)())  # a session never used has no folder: nothing to do


def test_the_negative_rule_picked_in_guidance_is_the_one_generate_uses(demo_app):
    """Each negative rule is reachable on the page and runs (the dissimilar rule used to end in an
    internal error); Generate's settings line names it, and the manifest shows it at work."""
    client, root = two_step_session(demo_app)
    for rule in ("dissimilar", "uniform", "none"):
        status = client.predict("zero", rule, "sample", api_name="/set_negative_rule")
        assert status.startswith(f"Negatives: {rule}, "), status
        bar, _, _ = client.predict(1, 1, f"rule-{rule}", api_name="/generate")
        assert "Done: 3 / 3" in bar, bar
        negatives = {r["negative_class"] for r in read_manifest(root / "runs" / f"rule-{rule}").values()}
        assert (negatives == {None}) if rule == "none" else (None not in negatives and len(negatives) >= 2)
    # A class pinned in Guidance is the only negative of that class's images.
    client.predict("zero", "uniform", "two", api_name="/set_negative_class")
    client.predict(2, 1, "pinned", api_name="/generate")
    pinned = read_manifest(root / "runs" / "pinned").values()
    assert {r["negative_class"] for r in pinned if r["class_name"] == "zero"} == {"two"}


def test_explain_is_the_ladder_of_the_preview(demo_app):
    """/explain takes /preview's inputs and draws Eq. 9's ladder of the very preview: its DIPSY
    rung is /preview's image and its "+ the positive image" rung /preview's at w_neg = 0 (a batch
    of three against one: the last bits may differ, a level or two at most). It names the images
    used (the negative drawn by the rule too), streams its steps, and the Guidance Cancel stops it."""
    url, _, _ = demo_app
    client = connect(url)
    load_three_classes(client)
    controls = ["one", 1, "sample", -1, 7.5, 6.0, 6.0, 0.6, 4, 5, True]
    text_only, with_positive, dipsy, used, added, removed, plot, *branches, seed, status = client.predict(
        *controls, api_name="/explain"
    )
    preview, _, _, preview_status = client.predict(*controls, api_name="/preview")
    without, *_ = client.predict(*controls[:6], 0.0, *controls[7:], api_name="/preview")

    def levels(a, b) -> int:
        return int(np.abs(np.asarray(Image.open(a).convert("RGB"), dtype=int)
                          - np.asarray(Image.open(b).convert("RGB"), dtype=int)).max())  # fmt: skip

    assert levels(dipsy, preview) <= 2 and levels(with_positive, without) <= 2
    assert levels(preview, without) > 2  # the negative term shows, so the rungs are told apart
    assert seed == 5 and status.startswith("Explained (seed 5;"), status
    # The images used: the positive chosen, the negative the preview's status names.
    negative = re.search(r"negative: (\w+) image (\d+)", preview_status).groups()
    assert [item["caption"] for item in used] == [
        "positive: one, image 2",
        f"negative: {negative[0]}, image {negative[1]} (drawn by the rule)",
    ]
    # The marked changes, the four branches at one step, one strength per step and term.
    assert all(Image.open(path).size == (32, 32) for path in (added, removed, text_only, *branches))
    assert len(plot["data"]) == 3 * 4  # the three terms at each of the 4 steps

    job = client.submit(*controls[:8], 200, 5, True, api_name="/explain")
    streamed_step(job)
    client.predict(api_name="/cancel_preview")
    *_, status = job.result(timeout=120)
    assert re.fullmatch(r"Explain: cancelled at step \d+/\d+\. The previous explanation is kept\.", status), (
        status
    )
