"""The Guidance tab's Explain view and sweeps, engine side, on the tiny models: an explanation
(Eq. 9's ladder, GuidanceService.explain) goes through the preview's own setup, so its "dipsy"
rung is the preview's image and its "with-positive" rung the preview's at w_neg = 0 (bit for bit
where the batch is the same); it names the images and weights used and stops on Cancel. A sweep
draws several seeds per cell and marks what the negative term changed."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_studio_jobs import terminal

from dipsy_ui.digits import DIGIT_NAMES
from dipsy_ui.explain import RUNGS, difference, overlay
from dipsy_ui.studio import CANCELLED, DONE, PROGRESS, STEP, GuidanceSettings, Studio
from dipsy_ui.studio.guidance import MAX_SWEEP, branch_view_steps

CLASSES = DIGIT_NAMES[:3]
STEPS = 4


@pytest.fixture(scope="module")
def app(tiny_spec, tmp_path_factory):
    """A Studio on the tiny models with three classes of two demo digits each, negatives drawn
    uniformly (no class similarity to compute)."""
    studio = Studio(tiny_spec, tmp_path_factory.mktemp("workspace"))
    session = studio.core.session(None)
    train = studio.data.demo_data_dir() / "train"
    for name in CLASSES:
        studio.data.add_images(session, name, [str(p) for p in sorted((train / name).iterdir())[:2]])
    studio.guidance.set_negative(session, CLASSES[0], "uniform", "sample")
    return studio, session


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def finished(events):
    end = terminal(list(events))
    assert end.kind == DONE, end.message
    return end.result


CHOSEN = GuidanceSettings(CLASSES[0], 1, "sample", -1, w_text=5.0, w_pos=4.0, w_neg=3.0, ip_adapter_scale=0.7,
                          steps=STEPS, seed=11)  # fmt: skip


@pytest.mark.parametrize("preset", ["demo", "pets"])
def test_the_dipsy_rung_is_the_preview_and_with_positive_the_preview_at_w_neg_0(app, preset):
    """The paper preset ("pets") has adapter-input augmentation on and asks for SD1.5's 512 px:
    the explanation, like the preview, draws at the models' size with the same augmentation."""
    studio, session = app
    studio.settings.set_preset(session, preset)
    explained = finished(studio.guidance.explain(session, CHOSEN))
    preview = finished(studio.guidance.preview(session, CHOSEN))
    without = finished(studio.guidance.preview(session, replace(CHOSEN, w_neg=0.0)))
    assert explained.seed == preview.seed == 11
    # A batch of three rungs against a batch of one: the kernels may round the last bits
    # differently, which moves an 8-bit pixel by a level or two at most.
    assert np.abs(pixels(explained.rungs["dipsy"]) - pixels(preview.path)).max() <= 2
    assert np.abs(pixels(explained.rungs["with-positive"]) - pixels(without.path)).max() <= 2
    # The negative term changes the image, so the two comparisons above can tell the rungs apart.
    assert np.abs(pixels(preview.path) - pixels(without.path)).max() > 2
    # The same images: the positive chosen, the negative drawn from the seed by the rule.
    assert explained.used == preview.used
    roles = {used.role: used for used in explained.used}
    assert roles["positive"].class_name == CLASSES[0] and roles["positive"].index == 1
    assert roles["negative"].class_name in CLASSES[1:] and roles["negative"].drawn
    assert (
        roles["negative"].path
        == studio.data.image_paths(session, roles["negative"].class_name)[roles["negative"].index]
    )
    # Each rung names its weights; the branches at every step; a term strength per sampler step.
    assert explained.weights["text-only"] == {"w_text": 5.0, "w_pos": 0.0, "w_neg": 0.0}
    assert explained.weights["dipsy"] == {"w_text": 5.0, "w_pos": 4.0, "w_neg": 3.0}
    assert explained.settings == CHOSEN.weights()
    assert tuple(explained.branches) == branch_view_steps(STEPS) == (1, 2, 3, 4)
    assert all(set(row) == {"u", "t", "tp", "tpn"} for row in explained.branches.values())
    assert len(explained.terms) >= STEPS and all(term["negative"] > 0 for term in explained.terms)


def test_a_one_row_ladder_is_the_preview_bit_for_bit(app):
    """With both image weights 0 the three rungs are one row, a batch of one like the preview's."""
    studio, session = app
    studio.settings.set_preset(session, "demo")
    chosen = replace(CHOSEN, w_pos=0.0, w_neg=0.0)
    explained = finished(studio.guidance.explain(session, chosen))
    preview = finished(studio.guidance.preview(session, chosen))
    for rung in RUNGS:
        assert np.array_equal(pixels(explained.rungs[rung]), pixels(preview.path)), rung
    # Nothing was added or removed: no red on the marked images.
    for path in explained.marked.values():
        marked = pixels(path)
        assert np.array_equal(marked[..., 0], marked[..., 1]), path


def test_an_explanation_streams_steps_and_stops_on_cancel(app):
    studio, session = app
    studio.settings.set_preset(session, "demo")
    events, cancelled = [], False
    for event in studio.guidance.explain(session, replace(CHOSEN, steps=100)):
        events.append(event)
        if event.kind == STEP and not cancelled:
            cancelled = studio.guidance.cancel(session)  # the Guidance tab's Cancel reaches it
            assert cancelled
    end = terminal(events)
    assert end.kind == CANCELLED and end.message.startswith("Cancelled at step"), end.message
    assert not studio.core.model_lock.held
    # The step events show the rungs' latent previews side by side (three rows: three tiles).
    step = next(event for event in events if event.kind == STEP)
    assert step.preview.shape[1] == 3 * step.preview.shape[0]


def test_overlay_marks_a_change_in_red_and_nothing_else():
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8, 3), dtype=np.uint8))
    changed = np.asarray(image).copy()
    changed[2, 3] = 255 - changed[2, 3]
    unchanged = np.asarray(overlay(image, difference(image, image)), dtype=np.int16)
    assert np.array_equal(unchanged[..., 0], unchanged[..., 1]) and np.array_equal(
        unchanged[..., 1], unchanged[..., 2]
    )
    marked = np.asarray(overlay(image, difference(image, Image.fromarray(changed))), dtype=np.int16)
    red = marked[..., 0] - marked[..., 1]
    assert red[2, 3] > 100 and np.count_nonzero(red) == 1


def test_a_sweep_draws_several_seeds_per_cell_and_marks_the_negative_terms_change(app):
    studio, session = app
    studio.settings.set_preset(session, "demo")
    chosen = replace(CHOSEN, steps=2)
    one = finished(studio.guidance.sweep(session, chosen, "w_neg", [0.0, 3.0], "w_pos", [4.0]))
    two = finished(studio.guidance.sweep(session, chosen, "w_neg", [0.0, 3.0], "w_pos", [4.0], seeds=2))
    # Two seeds per cell: two cells of two 128-pixel images side by side; each seed's negative
    # drawn from that seed.
    assert (
        Image.open(two.path).width > 2 * 2 * 128
        and Image.open(two.path).height == Image.open(one.path).height
    )
    negatives = [used for used in two.used if used.role == "negative"]
    assert sorted(seed for used in negatives for seed in used.seeds) == [11, 12]
    assert two.weights == chosen.weights()
    # With w_neg not on an axis, the cells' w_neg = 0 twins are drawn alongside; the grid differs.
    plain = finished(studio.guidance.sweep(session, chosen, "w_pos", [0.0, 4.0], "w_text", [5.0]))
    marked = finished(
        studio.guidance.sweep(session, chosen, "w_pos", [0.0, 4.0], "w_text", [5.0], difference=True)
    )
    # Marked, every cell is the image in grey (R = G = B) with the change in red (G = B still),
    # where unmarked the tiny models draw in colour.
    plain, marked = pixels(plain.path), pixels(marked.path)
    assert not np.array_equal(plain[..., 1], plain[..., 2])
    assert np.array_equal(marked[..., 1], marked[..., 2]) and (marked[..., 0] - marked[..., 1] > 60).any()
    # The limit counts every image drawn: cells x seeds, and the twins.
    with pytest.raises(Exception, match=f"at most {MAX_SWEEP}"):
        studio.guidance.sweep(
            session, chosen, "w_pos", [0.0, 1, 2], "w_text", [1.0, 2, 3], seeds=3, difference=True
        )
    with pytest.raises(Exception, match="seeds per cell"):
        studio.guidance.sweep(session, chosen, "w_pos", [0.0], "w_text", [1.0], seeds=0)


def test_a_newer_explanation_supersedes_one_still_waiting(app):
    """While one explanation runs, a second waits for the models; a third, newer request
    supersedes the second (it ends cancelled without running), as previews do."""
    studio, session = app
    studio.settings.set_preset(session, "demo")
    running = studio.guidance.explain(session, replace(CHOSEN, steps=1000))  # runs until cancelled
    assert next(event for event in running if event.kind == STEP)
    ends, waiting = {}, {}

    def follow(name: str, seed: int) -> None:
        events = []
        for event in studio.guidance.explain(session, replace(CHOSEN, seed=seed)):
            events.append(event)
            if event.kind == PROGRESS and "Waiting" in event.message:
                waiting[name].set()
        ends[name] = terminal(events)

    threads = {}
    for name, seed in (("second", 1), ("third", 2)):
        waiting[name] = threading.Event()
        threads[name] = threading.Thread(target=follow, args=(name, seed))
        threads[name].start()
        assert waiting[name].wait(60), f"the {name} request never waited for the model"
    assert studio.guidance.cancel(session)  # the running one and the newest
    assert terminal(list(running)).kind == CANCELLED
    for thread in threads.values():
        thread.join(60)
    assert ends["second"].kind == CANCELLED and ends["second"].superseded
    assert ends["third"].kind == CANCELLED and not ends["third"].superseded
    assert not studio.core.model_lock.held
