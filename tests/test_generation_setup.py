"""What you preview is what you get: the app's previews, its runs and the command line share one
generation setup (GenerationJob), on the tiny models. For each negative rule and with the demo
preset and a paper preset (augmentation on, SD1.5's 512 px), a run made in the app finishes with
the rule chosen in the Guidance tab, regenerates bit-exactly from its own folder with
``python -m dipsy_ui regenerate``, and "Open in Guidance" + Preview redraws its images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_studio_jobs import terminal

from dipsy_ui.cli import main
from dipsy_ui.config import NEGATIVE_MODES
from dipsy_ui.digits import DIGIT_NAMES
from dipsy_ui.manifest import read_manifest
from dipsy_ui.studio import DONE, Studio

CLASSES = DIGIT_NAMES[:3]


@pytest.fixture(scope="module")
def app(tiny_spec, tmp_path_factory):
    """A Studio on the tiny models with three classes of two demo digits each."""
    studio = Studio(tiny_spec, tmp_path_factory.mktemp("workspace"))
    session = studio.core.session(None)
    train = studio.data.demo_data_dir() / "train"
    for name in CLASSES:
        studio.data.add_images(session, name, [str(p) for p in sorted((train / name).iterdir())[:2]])
    return studio, session


def generate(studio, session, folder: str, per_class: int = 2, batch_size: int = 2):
    end = terminal(list(studio.generation.generate(session, per_class, batch_size, folder)))
    assert end.kind == DONE, end.message
    return session.root / "runs" / folder


def redraw(studio, session, file: str) -> np.ndarray:
    """The image "Open in Guidance" + Preview draws for a generated image."""
    chosen, _ = studio.guidance.open_image(session, file)
    end = terminal(list(studio.guidance.preview(session, chosen)))
    assert end.kind == DONE, end.message
    return np.asarray(Image.open(end.result.path).convert("RGB"), dtype=np.int16)


@pytest.mark.determinism
@pytest.mark.parametrize("preset", ["demo", "pets"])
@pytest.mark.parametrize("rule", NEGATIVE_MODES)
def test_a_run_uses_the_guidance_rule_regenerates_and_previews_redraw_it(app, preset, rule, capsys):
    studio, session = app
    studio.settings.set_preset(session, preset)
    studio.settings.update_generation(session, steps=4)
    studio.guidance.set_negative(session, CLASSES[0], rule, "sample")
    run = generate(studio, session, f"{preset}-{rule}")
    records = read_manifest(run)
    config = studio.settings.generation(session)
    assert preset == "demo" or config.augment, "the paper preset has augmentation on"

    # The rule chosen in Guidance is the one the run used, and Generate's status names it.
    negatives = {r["negative_class"] for r in records.values()}
    assert (negatives == {None}) if rule == "none" else (None not in negatives)
    assert f"**Negatives**: {rule}, " in studio.generation.describe(session)
    # A paper preset on small models draws at the models' own size, not 512 px.
    side = Image.open(run / next(iter(records))).size
    assert side[0] < 512 and side[0] == side[1]

    # The run regenerates bit-exactly from its own folder (job.json + similarity.json).
    file = sorted(records)[1]  # the second of its batch of two
    data = session.root / "data"
    assert main(["regenerate", str(run), file, "--data", str(data)]) == 0
    assert "identical" in capsys.readouterr().out

    # Open in Guidance + Preview redraws it: alone in its batch instead of in a batch of two,
    # which only the last bits of the kernels may tell apart.
    stored = np.asarray(Image.open(run / file).convert("RGB"), dtype=np.int16)
    assert np.abs(redraw(studio, session, file) - stored).max() <= 2


def test_a_negative_pinned_in_guidance_is_the_one_generate_uses(app):
    studio, session = app
    studio.settings.set_preset(session, "demo")
    studio.settings.update_generation(session, steps=2)
    studio.guidance.set_negative(session, CLASSES[0], "uniform", CLASSES[2])
    assert f"{CLASSES[0]} -> {CLASSES[2]}" in studio.generation.describe(session)
    run = generate(studio, session, "pinned", per_class=4)
    by_class = {}
    for record in read_manifest(run).values():
        by_class.setdefault(record["class_name"], set()).add(record["negative_class"])
    assert by_class[CLASSES[0]] == {CLASSES[2]}
    assert len(by_class[CLASSES[1]] - {CLASSES[1]}) >= 1 and CLASSES[1] not in by_class[CLASSES[1]]
    # "sample" unpins: the class's negatives follow the rule again.
    studio.guidance.set_negative(session, CLASSES[0], "uniform", "sample")
    assert "pinned" not in studio.generation.describe(session)
    # A pin under the rule "none" would do nothing: refused, saying why.
    with pytest.raises(Exception, match="rule is 'none'"):
        studio.guidance.set_negative(session, CLASSES[0], "none", CLASSES[1])


def test_a_seed_typed_from_the_manifest_redraws_the_image(app):
    """Per-image seeds stay below 2^53 (a browser keeps them exact); typed into the preview's seed
    with the recorded images, they draw the stored image."""
    studio, session = app
    studio.settings.set_preset(session, "demo")
    studio.settings.update_generation(session, steps=3)
    studio.guidance.set_negative(session, CLASSES[0], "uniform", "sample")
    run = generate(studio, session, "seeds", per_class=1, batch_size=1)
    record = read_manifest(run)[f"{CLASSES[1]}/00000.png"]
    assert 0 <= record["seed"] < 2**53
    chosen, _ = studio.guidance.open_image(session, record["file"])
    assert chosen.seed == record["seed"] and chosen.negative_class == record["negative_class"]
    assert float(chosen.seed) == record["seed"]  # exact as a JavaScript number
    stored = np.asarray(Image.open(run / record["file"]).convert("RGB"), dtype=np.int16)
    assert np.array_equal(redraw(studio, session, record["file"]), stored)  # alone in its batch: same bits
