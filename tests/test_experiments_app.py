"""The Experiments tab on the demo app: through gradio_client (build the arms from the Guidance
settings, run, read the table and the verdict; cancel mid-run, run again: it resumes to the same
results without recomputing a finished cell) and in a browser (what a person sees after a run;
``DIPSY_UPDATE_SCREENSHOTS=1`` writes ``assets/tab-experiments.png``)."""

import json
import os
import re
import time
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CLASSES = ["zero", "one", "two"]  # three digits keep every cell to seconds
# Two arms, one cell each: real only and the Guidance settings, 4 images per class, 1 epoch.
RUN = {"shots": "1", "seeds": "0", "images_per_class": "4", "epochs": "1", "test": "demo test set",
       "held_out": 2}  # fmt: skip
ARM = "my guidance"


def connect(url: str) -> Client:
    return Client(url, verbose=False, httpx_kwargs={"timeout": 300})


def new_session(client: Client, workspace: Path) -> Path:
    """Load three demo classes in a new session; its folder."""
    before = set((workspace / "sessions").glob("*")) if (workspace / "sessions").is_dir() else set()
    table, *_ = client.predict(api_name="/load_demo")
    for row in table["data"]:
        if row[0] not in CLASSES:
            client.predict(row[0], api_name="/remove_class")
    (root,) = set((workspace / "sessions").glob("*")) - before
    return root


def build_arms(client: Client) -> list:
    """Real only and the current Guidance settings (the demo preset's weights), named ARM."""
    arms, _, message = client.predict("text only", api_name="/experiment_remove_arm")
    assert message == "Removed the arm 'text only'."
    arms, _, message = client.predict(ARM, api_name="/experiment_add_guidance")
    assert "text 4, positive 6, negative 3, adapter scale 1, negatives similarity" in message
    return [row[0] for row in arms["data"]]


def run(client: Client, name: str):
    return client.predict(name, *RUN.values(), api_name="/experiment_run")


def records(root: Path, name: str) -> list[dict]:
    path = root / "experiments" / name / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(demo_app):
    url, workspace, _ = demo_app
    client = connect(url)
    root = new_session(client, workspace)
    assert build_arms(client) == ["real only", ARM]
    started = time.perf_counter()
    outputs = run(client, "whole")
    return root, outputs, time.perf_counter() - started


def test_an_experiment_of_the_guidance_settings_fills_the_table_and_the_verdict(uninterrupted):
    root, (status, _, cells, table, plot, verdict, summary), seconds = uninterrupted
    assert status == "Done: 2 / 2 cells finished.", status
    assert seconds < 60, f"the tiny experiment took {seconds:.0f} s"
    # One row per arm, with the top-1 in points (one seed: no interval) and the paired difference.
    assert table["headers"] == [
        "arm",
        "shots",
        "seeds",
        "top-1 %",
        "95% CI",
        "vs real only (points)",
        "95% CI",
    ]
    rows = {row[0]: row for row in table["data"]}
    assert list(rows) == ["real only", ARM]
    for row in rows.values():
        assert 0 <= float(row[3]) <= 100 and row[1:3] == [1, 1] and row[4] == "one seed"
    assert rows["real only"][5] == "reference"
    assert float(rows[ARM][5]) == pytest.approx(float(rows[ARM][3]) - float(rows["real only"][3]), abs=0.11)
    assert f"'{ARM}' compared with 'real only'" in verdict and "too few seeds to tell" in verdict
    assert "2 of 2 cells finished" in verdict
    assert [row[3] for row in cells["data"]] == [f"done: top-1 {float(row[3]):.1f}%" for row in rows.values()]
    assert Image.open(plot).size[0] > 200
    # The numbers are the experiment folder's: the spec and one record per cell.
    spec = json.loads((root / "experiments" / "whole" / "spec.json").read_text())
    assert [arm if isinstance(arm, str) else arm["name"] for arm in spec["arms"]] == ["real only", ARM]
    assert spec["generation"] == {"images_per_class": 4} and spec["train"] == {"epochs": 1}
    assert [(r["arm"], round(100 * r["top1"], 1)) for r in records(root, "whole")] == [
        (name, float(row[3])) for name, row in rows.items()
    ]
    assert summary["rows"] == table["data"]


def test_cancel_mid_run_then_run_again_resumes_to_the_same_results(demo_app, uninterrupted):
    url, workspace, _ = demo_app
    client = connect(url)
    root = new_session(client, workspace)
    build_arms(client)
    job = client.submit("resumed", *RUN.values(), api_name="/experiment_run")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
        f"{ARM}, 1 shot, seed 0: " in out[0] for out in job.outputs()
    ):
        time.sleep(0.05)  # the second cell has started: real only is finished
    assert client.predict(api_name="/cancel_experiment") != "Nothing to cancel."
    status, _, cells, table, *_ = job.result()
    assert status.startswith("Cancelled: 1/2 cells finished"), status
    assert [row[3] for row in cells["data"]][1] == "not run (cancelled)"
    assert [row[0] for row in table["data"]] == ["real only"]
    first = (root / "experiments" / "resumed" / "results.jsonl").read_bytes()

    status, _, cells, table, _, verdict, _ = run(client, "resumed")
    assert status == "Done: 2 / 2 cells finished."
    assert cells["data"][0][3].startswith(
        "done earlier: top-1"
    )  # not recomputed: its record is the same bytes
    assert (root / "experiments" / "resumed" / "results.jsonl").read_bytes().startswith(first)

    def comparable(session: Path, name: str) -> list[dict]:
        """The records without their wall times (the only field allowed to differ)."""
        return [{key: value for key, value in r.items() if key != "wall_s"} for r in records(session, name)]

    whole_root, (_, _, _, whole_table, *_), _ = uninterrupted
    assert table["data"] == whole_table["data"]
    assert comparable(root, "resumed") == comparable(whole_root, "whole")


def test_missing_data_bad_numbers_and_unknown_arms_are_refused_with_a_message(demo_app, uninterrupted):
    url, _, _ = demo_app
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="no data yet"):
        run(client, "whole")
    client.predict(api_name="/load_demo")
    with pytest.raises(AppError, match="Shots per class must be"):
        client.predict("x", "1, one", "0", "", "", "held out", 2, api_name="/experiment_run")
    with pytest.raises(AppError, match=re.escape("there is no arm 'nope'")):
        client.predict("nope", api_name="/experiment_remove_arm")


def test_the_tab_in_a_browser_shows_the_table_the_plot_and_the_verdict(demo_app, chromium_page, tmp_path):
    from playwright.sync_api import expect

    page, (url, workspace, _) = chromium_page, demo_app
    expect.set_options(timeout=180_000)
    page.goto(url)
    page.locator("#load-demo").click()
    expect(page.locator("#data-table")).to_contain_text("seven")
    page.get_by_role("tab", name="7. Experiments").click()
    page.get_by_role("button", name="Add the Guidance settings as an arm").click()
    arm = "guidance 4/6/3, scale 1, similarity"
    expect(page.locator("#experiment-arms")).to_contain_text(arm)
    for elem_id, value in [("experiment-shots", "1, 2"), ("experiment-seeds", "0, 1"),
                           ("experiment-per-class", "2"), ("experiment-epochs", "1")]:  # fmt: skip
        page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(value)
    page.locator("#experiment-run").click()
    try:
        expect(page.locator("#experiment-status")).to_contain_text("Done: 12 / 12 cells finished.")
        # What a person reads: a row per arm and shots with its top-1 and the paired difference,
        # every cell done, the plot, and the verdict in words; no server path anywhere.
        table = page.locator("#experiment-results")
        for name in ("real only", "text only", arm):
            expect(table).to_contain_text(name)
        # The grid's visible text lists each cell on its own line: each arm at 1 and 2 shots.
        text = "\n" + table.inner_text() + "\n"
        assert [text.count(f"\n{name}\n") for name in ("real only", "text only", arm)] == [2, 2, 2], text
        assert len(re.findall(r"\n\d+\.\d\n", text)) >= 6, text  # a top-1 per row
        expect(page.locator("#experiment-cells")).not_to_contain_text("waiting")
        expect(page.locator("#experiment-plot img")).to_be_visible()
        verdict = page.locator("#experiment-verdict")
        expect(verdict).to_contain_text(f"'{arm}' compared with 'real only'")
        expect(verdict).to_contain_text("12 of 12 cells finished")
        assert str(workspace) not in page.locator("body").inner_text()
    except Exception as error:
        failed = tmp_path / "failed-experiments.png"
        page.screenshot(path=str(failed), full_page=True)
        raise AssertionError(f"{error}; screenshot: {failed}") from error
    shots = ASSETS if os.environ.get("DIPSY_UPDATE_SCREENSHOTS") else tmp_path
    page.locator("#experiment-status").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "tab-experiments.png"), full_page=True)
