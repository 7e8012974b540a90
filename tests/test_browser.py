"""The app in a real browser: Chromium (Debian's, never downloaded) driven by Playwright through
the whole flow by clicking and uploading files as a person would.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``, which the README's test command
and ``.ci/run`` do); without it the test fails with that instruction. A failing
step leaves a screenshot in the test's tmp folder (its path is in the failure message). With
``DIPSY_UPDATE_SCREENSHOTS=1`` the screenshots of each tab are written to ``assets/``.
"""

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dipsy_ui.digits import DIGIT_NAMES
from dipsy_ui.world.report import digit_features, reference_classifier

CHROMIUM = "/usr/bin/chromium"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSES = ["zero", "one", "two"]
TIMEOUT = 120_000  # ms; generation and training on 2 CPU cores


@pytest.fixture
def page(tmp_path):
    from playwright import sync_api

    assert Path(CHROMIUM).exists(), (
        f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],  # fmt: skip
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        yield page
        browser.close()


def zip_classes(source: Path, out: Path, per_class: int | None = None) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for name in CLASSES:
            for file in sorted((source / name).iterdir())[:per_class]:
                archive.write(file, f"{out.stem}/{name}/{file.name}")
    return out


class Steps:
    """Runs named steps; on failure saves a screenshot and names it in the error."""

    def __init__(self, page, tmp_path: Path):
        self.page, self.tmp_path = page, tmp_path
        self.shots = ASSETS if os.environ.get("DIPSY_UPDATE_SCREENSHOTS") else tmp_path

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def run(self, name: str, action) -> None:
        try:
            action()
        except Exception as error:
            path = self.tmp_path / f"failed-{name}.png"
            self.page.screenshot(path=str(path), full_page=True)
            raise AssertionError(f"step {name!r} failed ({error}); screenshot: {path}") from error


def field(page, elem_id: str, kind: str = "input, textarea"):
    return page.locator(f"#{elem_id}").locator(kind).first


def test_browser_flow(demo_app, page, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT)
    url, workspace, _ = demo_app
    steps = Steps(page, tmp_path)
    bad = tmp_path / "readme.png"
    bad.write_text("this is not an image")

    def data():
        page.goto(url)
        expect(page.get_by_text("Demo mode")).to_be_visible()
        page.get_by_role("button", name="Load the demo digits").click()
        expect(page.locator("#data-table")).to_contain_text("seven")
        expect(field(page, "data-report", "textarea")).to_have_value(
            re.compile("Loaded 80 images in 10 classes")
        )
        steps.shot("tab-data")
        # The real data: a zip of three class folders, uploaded as a person would.
        archive = zip_classes(workspace / "demo-data" / "train", tmp_path / "three-digits.zip")
        page.locator("#dataset-zip input[type=file]").set_input_files(str(archive))
        page.get_by_role("button", name="Load the zip").click()
        expect(field(page, "data-report", "textarea")).to_have_value(
            re.compile("Loaded 24 images in 3 classes")
        )

    def similarity():
        page.get_by_role("tab", name="2. Similarity").click()
        page.get_by_role("button", name="Compute similarity").click()
        expect(page.locator("#similarity-status")).to_contain_text("Similarity of 3 classes")
        expect(page.locator("#heatmap img")).to_be_visible()
        # The header's model line follows the job that loaded the models, without a tab change.
        expect(page.get_by_text("Models loaded (demo models)")).to_be_visible()
        steps.shot("tab-similarity")

    def shown_preview() -> bytes:
        return page.request.get(page.locator("#preview img").get_attribute("src")).body()

    def guidance():
        page.get_by_role("tab", name="3. Guidance").click()
        steps_box = field(page, "steps", "input[type=number]")
        expect(steps_box).to_have_value("20")  # the demo preset's steps, set when the tab opened
        page.get_by_role("button", name="Preview", exact=True).click()
        expect(page.locator("#guidance-status")).to_contain_text("Done", timeout=TIMEOUT)
        # What the page shows is a digit, and the right one: a reference digit classifier that
        # never saw a generated image reads the displayed preview as the chosen class's digit.
        chosen = field(page, "guidance-class").input_value()
        shown = shown_preview()
        read = reference_classifier().predict(digit_features([Image.open(io.BytesIO(shown))]))
        assert read.tolist() == [DIGIT_NAMES.index(chosen)], (
            f"the preview of {chosen!r} reads as {read.tolist()}"
        )
        # The 32-pixel image fills its frame's height (enlarged, pixels kept sharp).
        frame = page.locator("#preview").bounding_box()
        image = page.locator("#preview img").bounding_box()
        assert image["height"] > 0.7 * frame["height"], (image, frame)
        steps.shot("tab-guidance")

    def cancel_preview():
        page.get_by_role("tab", name="3. Guidance").click()
        # A number typed into a slider's box starts one preview when the box is left; Cancel
        # stops it, says so, and puts the earlier result back (no error anywhere).
        before = shown_preview()
        steps_box = field(page, "steps", "input[type=number]")
        steps_box.fill("100")
        steps_box.blur()
        status = page.locator("#guidance-status")
        expect(status).to_contain_text("Step")
        page.locator("#guidance-cancel").click()
        expect(status).to_contain_text(re.compile(r"Cancelled at step \d+/100"))
        expect(page.locator("#preview img")).to_be_visible()
        assert shown_preview() == before, "the cancelled preview did not put the previous result back"
        outputs = page.locator("#preview, #previous, #guidance-status")
        expect(outputs.get_by_text("Error", exact=True)).to_have_count(0)

    def quick_edits():
        # Five edits in a row while a long preview renders: the first renders, the newest
        # supersedes the ones waiting, so at most two previews are written, the last one the
        # newest's settings. 300 steps (several seconds) keep the first preview running while
        # the five edits arrive, even on a loaded machine.
        def previews() -> set:  # the page's session's previews (other sessions hold none)
            return set((workspace / "sessions").glob("*/previews/*.png"))

        def records(paths) -> list[dict]:
            return [json.loads(Image.open(path).text.get("dipsy", "{}")) for path in paths]

        start = previews()
        steps_box = field(page, "steps", "input[type=number]")
        steps_box.fill("300")
        steps_box.blur()  # itself one preview: wait for it before the edits
        deadline = time.monotonic() + TIMEOUT / 1000
        while (
            not any(r.get("steps") == 300 for r in records(previews() - start))
            and time.monotonic() < deadline
        ):
            page.wait_for_timeout(200)
        before = previews()
        text_box = field(page, "guidance-w-text", "input[type=number]")
        values = ["4.5", "5", "5.5", "6", "6.5"]
        for value in values:
            text_box.fill(value)
            text_box.blur()
        deadline = time.monotonic() + TIMEOUT / 1000

        def newest_written() -> bool:
            return any(r.get("w_text") == float(values[-1]) for r in records(previews() - before))

        while not newest_written() and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert newest_written(), "the newest edit never rendered"
        rendered = previews() - before
        assert 1 <= len(rendered) <= 2, f"five quick edits rendered {len(rendered)} previews"
        expect(page.locator("#guidance-status")).to_contain_text("Done")

    def generate():
        page.get_by_role("tab", name="4. Generate").click()
        field(page, "per-class", "input").fill("2")
        field(page, "batch-size", "input").fill("2")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#generate-progress")).to_contain_text("Done: 6 / 6")
        expect(page.locator("#generate-gallery img")).to_have_count(6)
        # Every thumbnail inside the gallery's width: none clipped at the right edge.
        grid = page.locator("#generate-gallery .grid-container")
        assert grid.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "the gallery clips its last column"
        steps.shot("tab-generate")

    def curate():
        page.get_by_role("tab", name="5. Curate").click()
        expect(page.locator("#curate-gallery img")).to_have_count(6)
        page.locator("#curate-gallery img").first.click()
        expect(page.locator("#curate-status")).to_contain_text("rejected")
        steps.shot("tab-curate")

    def train():
        page.get_by_role("tab", name="6. Train").click()
        field(page, "epochs").fill("3")  # three steps: the curves have lines to draw
        test_zip = zip_classes(workspace / "demo-data" / "test", tmp_path / "test.zip", per_class=4)
        page.locator("#test-zip input[type=file]").set_input_files(str(test_zip))
        page.get_by_role("checkbox", name="Use the demo test set").uncheck()
        page.get_by_role("button", name="Train", exact=True).click()
        expect(page.locator("#train-status")).to_contain_text("Done: 3 epoch(s), test top-1")
        # The loss curve is drawn: the plot holds line-coloured pixels (vega's default blue),
        # not only grey axes and grid, and its SVG a line path through the three steps.
        plot = Image.open(io.BytesIO(page.locator("#loss-plot").screenshot())).convert("RGB")
        pixels = np.asarray(plot).astype(int)
        blue = (pixels[..., 2] > pixels[..., 0] + 40) & (pixels[..., 2] > 120)
        assert blue.sum() > 100, f"the loss plot shows no line ({blue.sum()} line pixels)"
        line = page.locator("#loss-plot svg .mark-line path").first
        path, stroke = line.evaluate("p => [p.getAttribute('d') || '', getComputedStyle(p).stroke]")
        assert len(re.findall(r"[ML]", path)) >= 3, f"the loss line's path is {path!r}"
        assert stroke not in ("", "none", "transparent", "rgba(0, 0, 0, 0)"), (
            f"the loss line's stroke is {stroke!r}"
        )
        steps.shot("tab-train")

    def refresh():
        # A refresh keeps the session: the data, the run Curate and Train name, the classifier.
        page.reload()
        expect(page.locator("#data-table")).to_contain_text("two")
        page.get_by_role("tab", name="5. Curate").click()
        expect(page.locator("#curate-run-line")).to_contain_text("Run: run-1 (5 images kept)")
        expect(page.locator("#curate-gallery img")).to_have_count(6)
        page.get_by_role("tab", name="6. Train").click()
        expect(page.locator("#train-run")).to_contain_text("Run: run-1 (5 images kept)")
        expect(field(page, "classifier-pick")).not_to_have_value("")
        # No server path on any tab: neither the workspace nor a temporary folder.
        for tab in ("1. Data", "2. Similarity", "3. Guidance", "4. Generate", "5. Curate", "6. Train"):
            page.get_by_role("tab", name=tab).click()
            text = page.locator("body").inner_text()
            values = " ".join(
                page.locator("textarea, input[type=text]").evaluate_all("els => els.map(e => e.value)")
            )
            for where in (str(workspace), "/tmp"):
                assert where not in text and where not in values, f"{tab} shows {where!r}"

    def bad_input():
        page.get_by_role("tab", name="1. Data").click()
        # Bad input: an empty class, a non-image, then a hostile name with a real image.
        page.get_by_role("button", name="Add class / add images").click()
        # The refusal reaches the report with the event's outputs (the toast may come first):
        # wait for it, or that event's outputs could land after the next fill and undo it.
        expect(field(page, "data-report", "textarea")).to_have_value(re.compile("the class name is empty"))
        field(page, "class-name").fill("<b>evil</b> ../../x")
        page.locator("#class-files input[type=file]").set_input_files(str(bad))
        page.get_by_role("button", name="Add class / add images").click()
        expect(page.get_by_text("not a readable image").first).to_be_visible()
        expect(page.get_by_text("<b>evil</b>").first).to_be_visible()  # shown as text, never as HTML
        # The refusal is written into the report; the inputs keep their values, the upload box empties.
        expect(field(page, "data-report", "textarea")).to_have_value(re.compile("not a readable image"))
        expect(field(page, "class-name")).to_have_value("<b>evil</b> ../../x")
        expect(page.locator("#data-table")).to_contain_text("two")
        expect(page.locator("#class-files")).not_to_contain_text("readme.png")

    def reopen():
        # Start into run-1 with other settings is refused, says what differs and offers a new
        # folder; the new run becomes Curate's, and the picker reopens the older run-1.
        page.get_by_role("tab", name="3. Guidance").click()
        steps_box = field(page, "steps", "input[type=number]")
        steps_box.fill("2")
        steps_box.blur()
        page.get_by_role("tab", name="4. Generate").click()
        field(page, "per-class", "input").fill("1")
        field(page, "generate-folder").fill("run-1")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#generate-progress")).to_contain_text("steps: recorded 20, now 2")
        expect(page.locator("#use-recorded")).to_be_visible()
        page.locator("#new-folder").click()
        expect(field(page, "generate-folder")).not_to_have_value("run-1")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#generate-progress")).to_contain_text("Done: 3 / 3")
        page.get_by_role("tab", name="5. Curate").click()
        expect(page.locator("#curate-run-line")).not_to_contain_text("run-1 (")
        field(page, "curate-run").click()
        page.get_by_role("option", name="run-1", exact=True).click()
        expect(page.locator("#curate-run-line")).to_contain_text("Run: run-1 (5 images kept)")
        expect(page.locator("#curate-gallery img")).to_have_count(6)

    # Cancel and quick edits come last: their 100-step settings would slow generation down.
    for name, action in [("data", data), ("similarity", similarity), ("guidance", guidance), ("generate", generate),
                         ("curate", curate), ("train", train), ("bad-input", bad_input),
                         ("cancel-preview", cancel_preview), ("quick-edits", quick_edits), ("refresh", refresh),
                         ("reopen", reopen)]:  # fmt: skip
        steps.run(name, action)

    manifests = list((workspace / "sessions").glob("*/runs/run-1/manifest.jsonl"))
    assert len(manifests) == 1
    from dipsy_ui.manifest import read_manifest

    statuses = [r["status"] for r in read_manifest(manifests[0].parent).values()]
    assert statuses.count("rejected") == 1 and len(statuses) == 6


def test_explain_view(demo_app, page, tmp_path):
    """The Guidance tab's Explain view in the browser: every panel shows an image (not a blank
    one), the step slider changes the branch panels, the plot draws a line per term, and the
    images used are named. With ``DIPSY_UPDATE_SCREENSHOTS=1`` the view is written to
    ``assets/guidance-explain.png``."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT)
    url, _, _ = demo_app
    steps = Steps(page, tmp_path)

    def shown(elem_id: str) -> np.ndarray:
        image = page.locator(f"#{elem_id} img")
        expect(image).to_be_visible()
        body = page.request.get(image.get_attribute("src")).body()
        return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=int)

    panels = ["rung-text-only", "rung-with-positive", "rung-dipsy", "mark-positive-added", "mark-negative-changed",
              "branch-u", "branch-t", "branch-tp", "branch-tpn"]  # fmt: skip

    def explain():
        page.goto(url)
        # The page has opened its session and shown its (empty) data before the demo data go into
        # it: a click before that would fill a session the page then replaces.
        expect(field(page, "data-report", "textarea")).to_have_value(re.compile("0 classes, 0 images"))
        page.get_by_role("button", name=re.compile("Load the demo")).click()
        expect(field(page, "data-report", "textarea")).to_have_value(
            re.compile("Loaded 80 images in 10 classes")
        )
        page.get_by_role("tab", name="3. Guidance").click()
        expect(field(page, "guidance-class")).not_to_have_value("")  # the tab has shown the classes
        field(page, "guidance-class").click()
        page.get_by_role("option", name="one", exact=True).click()
        expect(field(page, "guidance-class")).to_have_value("one")
        page.get_by_text("Explain: what each weight does to this image").click()
        page.locator("#explain").click()
        expect(page.locator("#explain-status")).to_contain_text("Explained (seed", timeout=TIMEOUT)
        for panel in panels:
            pixels = shown(panel)
            assert pixels.std() > 1, f"{panel} shows a blank image"
        expect(page.locator("#explain-used")).to_contain_text("positive: one, image 1")
        expect(page.locator("#explain-used")).to_contain_text("negative: ")
        # Each picture names the weights that made it.
        expect(page.locator("#rung-dipsy")).to_contain_text(
            re.compile(r"text [\d.]+, positive [\d.]+, negative [\d.]+")
        )

    def slider():
        before = {panel: shown(panel) for panel in panels[-4:]}
        expect(page.locator("#branch-u")).to_contain_text("Step 10")  # the middle of the 20 steps
        box = field(page, "branch-step", "input[type=number]")
        box.fill("2")
        box.blur()
        expect(page.locator("#branch-u")).to_contain_text("Step 2")
        changed = [panel for panel in before if not np.array_equal(shown(panel), before[panel])]
        assert changed == panels[-4:], f"only {changed} changed with the step"

    def plot():
        lines = page.locator("#terms-plot svg .mark-line path")
        expect(lines).to_have_count(3)  # one per term
        for path, stroke in lines.evaluate_all(
            "ps => ps.map(p => [p.getAttribute('d') || '', getComputedStyle(p).stroke])"
        ):
            assert len(re.findall(r"[ML]", path)) >= 10, f"a term's line is {path!r}"
            assert stroke not in ("", "none", "transparent", "rgba(0, 0, 0, 0)"), stroke
        page.locator("#explain-view").screenshot(path=str(steps.shots / "guidance-explain.png"))

    for name, action in [("explain", explain), ("slider", slider), ("plot", plot)]:
        steps.run(name, action)


def test_a_generation_survives_a_refresh(demo_app, page, tmp_path):
    """Jobs belong to the session, not to the page: a refresh during a generation leaves it
    running; the reloaded page shows its progress and form again, its Cancel stops it, and
    Resume continues the same run."""
    from playwright.sync_api import expect

    from dipsy_ui.manifest import read_manifest

    expect.set_options(timeout=TIMEOUT)
    url, workspace, _ = demo_app
    steps = Steps(page, tmp_path)
    before = set((workspace / "sessions").glob("*"))

    def start():
        page.goto(url)
        page.locator("#load-demo").click()
        expect(page.locator("#data-table")).to_contain_text("seven")
        page.get_by_role("tab", name="4. Generate").click()
        field(page, "per-class", "input").fill("6")
        field(page, "batch-size", "input").fill("1")
        field(page, "generate-folder").fill("long-run")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#generate-progress")).to_contain_text(re.compile(r"[1-9]\d* / 60 images"))

    def refresh():
        ((session),) = {run.parent.parent for run in (workspace / "sessions").glob("*/runs/long-run")} - {
            folder for folder in before
        }
        run = session / "runs" / "long-run"
        written = len(read_manifest(run))
        page.reload()
        page.get_by_role("tab", name="4. Generate").click()
        # The form and the progress come back, and the run goes on from where it was.
        expect(field(page, "generate-folder")).to_have_value("long-run")
        expect(field(page, "per-class", "input")).to_have_value("6")
        expect(page.locator("#generate-progress")).to_contain_text(" / 60 images")
        deadline = time.monotonic() + 120
        while len(read_manifest(run)) <= written + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(read_manifest(run)) > written + 1, "the generation stopped with the page"
        # Cancel on the reloaded page reaches the job; Resume continues the same run.
        page.get_by_role("button", name="Cancel").first.click()
        expect(page.locator("#generate-progress")).to_contain_text(
            re.compile(r"Cancelled: \d+ / 60 images in long-run")
        )
        stopped = len(read_manifest(run))
        assert stopped < 60
        page.get_by_role("button", name="Resume").click()
        expect(page.locator("#generate-progress")).to_contain_text("Done: 60 / 60 images in long-run")
        assert len(read_manifest(run)) == 60 and not list((session / "runs").glob("run-*"))

    for name, action in [("start", start), ("refresh", refresh)]:
        steps.run(name, action)
