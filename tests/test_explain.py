"""Eq. 9's ladder on tiny models: each rung is the single call with its weights, one batched call,
the differences and term strengths say what each term did (nothing, for an unused term), progress
and cancel, and the ``explain`` command's files against ``generate-one``'s image."""

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from dipsy_ui.cli import main
from dipsy_ui.config import GenerationConfig
from dipsy_ui.errors import UsageError
from dipsy_ui.explain import DIFFERENCES, RUNGS, explain, spread_steps

STEPS = 4
PROMPT = "A photo of a cat"


def noise_image(seed: int, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images():
    return {"pos": noise_image(1), "neg": noise_image(2)}


def settings(**overrides) -> GenerationConfig:
    # PNDM is the tiny pipeline's own sampler: explain switches to it and leaves it so.
    fields = dict(w_text=5.0, w_pos=4.0, w_neg=3.0, ip_adapter_scale=0.7, steps=STEPS, scheduler="pndm")
    return GenerationConfig(height=64, width=64, **(fields | {"augment": False} | overrides))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def single(pipe, images, config: GenerationConfig, seed: int, **weights) -> Image.Image:
    """The image of one unbatched call, as generate-one (and a preview) makes it."""
    pipe.use_scheduler(config.scheduler)
    return pipe(
        PROMPT,
        positive_image=images["pos"],
        negative_image=images.get("neg"),
        ip_adapter_scale=config.ip_adapter_scale,
        num_inference_steps=config.steps,
        height=config.height,
        width=config.width,
        generator=torch.Generator().manual_seed(seed),
        augment=config.augment,
        **weights,
    ).images[0]


@pytest.mark.parametrize("augment", [False, True])
def test_each_rung_is_the_single_call_with_its_weights(tiny_pipe, images, augment):
    config = settings(augment=augment)
    result = explain(tiny_pipe, PROMPT, images["pos"], images["neg"], config, seed=7)
    assert result.weights == {
        "text-only": {"w_text": 5.0, "w_pos": 0.0, "w_neg": 0.0},
        "with-positive": {"w_text": 5.0, "w_pos": 4.0, "w_neg": 0.0},
        "dipsy": {"w_text": 5.0, "w_pos": 4.0, "w_neg": 3.0},
    }
    for rung in RUNGS:
        alone = single(tiny_pipe, images, config, 7, **result.weights[rung])
        # A batch of three vs a batch of one: the kernels may round the last bits differently,
        # which can move an 8-bit pixel by one level, never more.
        assert np.abs(pixels(result.rungs[rung]) - pixels(alone)).max() <= 1, rung
    # Each term changes the image (else the comparison above would prove little).
    for name, (before, after) in DIFFERENCES.items():
        change = np.abs(pixels(result.rungs[after]) - pixels(result.rungs[before]))
        assert change.max() > 1, name
        assert np.array_equal(pixels(result.differences[name]), change)


def test_the_ladder_is_one_batched_unet_call_per_step(tiny_pipe, images):
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        result = explain(tiny_pipe, PROMPT, images["pos"], images["neg"], settings(), seed=0)
    finally:
        hook.remove()
    # Three rungs, four branches each, in one call per step; the terms cover every step.
    assert calls == [3 * 4] * len(result.terms)
    assert [entry["step"] for entry in result.terms] == list(range(1, len(calls) + 1))
    assert all(set(entry) == {"step", "text", "positive", "negative"} for entry in result.terms)
    assert all(entry[name] > 0 for entry in result.terms for name in ("text", "positive", "negative"))


@pytest.mark.parametrize("without", ["w_neg = 0", "no negative image"])
def test_an_unused_negative_changes_nothing_and_weighs_nothing(tiny_pipe, images, without):
    if without == "w_neg = 0":
        config, negative = settings(w_neg=0.0), images["neg"]
    else:
        config, negative = settings(), None
    result = explain(tiny_pipe, PROMPT, images["pos"], negative, config, seed=3)
    assert result.weights["dipsy"]["w_neg"] == 0.0
    assert all(entry["negative"] == 0.0 for entry in result.terms)
    assert all(entry["positive"] > 0 for entry in result.terms)
    assert not pixels(result.differences["negative-changed"]).any()
    assert pixels(result.differences["positive-added"]).max() > 1
    # The negative branch was not evaluated, so it is not shown.
    assert all(set(branches) == {"u", "t", "tp"} for branches in result.branches.values())


def test_branches_are_shown_at_the_chosen_steps(tiny_pipe, images):
    default = explain(tiny_pipe, PROMPT, images["pos"], images["neg"], settings(), seed=1)
    assert tuple(default.branches) == spread_steps(STEPS)
    chosen = explain(tiny_pipe, PROMPT, images["pos"], images["neg"], settings(), seed=1, branch_steps=[2, 2])
    assert list(chosen.branches) == [2] and set(chosen.branches[2]) == {"u", "t", "tp", "tpn"}
    assert all(image.size == (64, 64) for image in chosen.branches[2].values())
    # Different conditions, different clean estimates; the same step, the same estimates (decoded
    # in a VAE batch of 16 vs 4: up to the last bits).
    estimates = {branch: pixels(image) for branch, image in chosen.branches[2].items()}
    assert np.abs(estimates["u"] - estimates["tpn"]).max() > 1
    assert all(np.abs(pixels(default.branches[2][b]) - estimates[b]).max() <= 1 for b in estimates)


@pytest.mark.parametrize("steps", [[0], [STEPS + 1], [], [1.5]])
def test_branch_steps_outside_the_run_are_refused(tiny_pipe, images, steps):
    with pytest.raises(UsageError, match="branch steps"):
        explain(tiny_pipe, PROMPT, images["pos"], images["neg"], settings(), seed=0, branch_steps=steps)


def test_spread_steps_includes_the_first_and_the_last():
    assert spread_steps(20) == (1, 7, 14, 20)
    assert spread_steps(50, 3) == (1, 26, 50)
    assert spread_steps(2) == (1, 2) and spread_steps(1) == (1,)


def test_progress_is_reported_and_cancel_stops_it(tiny_pipe, images):
    events, cancel = [], threading.Event()

    def on_event(event):
        events.append(event)
        if event.kind == "step" and event.step == 2:
            cancel.set()

    result = explain(tiny_pipe, PROMPT, images["pos"], images["neg"], settings(), 0, None, on_event, cancel)
    assert result is None
    assert [event.kind for event in events] == ["step", "step", "cancelled"]
    assert [event.step for event in events[:2]] == [1, 2]
    assert events[0].total == STEPS + 1  # the tiny models' PNDM, as SD1.5's, takes one step more
    assert events[0].payload["preview"].shape == (3, 8, 8, 3)
    # Already cancelled: nothing runs.
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    try:
        assert explain(tiny_pipe, PROMPT, images["pos"], None, settings(), 0, cancel=cancel) is None
    finally:
        hook.remove()
    assert calls == []
    done = []
    assert explain(tiny_pipe, PROMPT, images["pos"], None, settings(), 0, on_event=done.append) is not None
    assert done[-1].kind == "done" and done[-1].step == done[-1].total == STEPS + 1


# -- the command -----------------------------------------------------------------------------------


def command(name: str, tiny_models, folder, out, *extra: str) -> list[str]:
    return [
        name,
        "--models",
        str(tiny_models),
        "--prompt",
        PROMPT,
        "--positive",
        str(folder / "pos.png"),
        "--negative",
        str(folder / "neg.png"),
        "--steps",
        str(STEPS),
        "--seed",
        "5",
        "--w-text",
        "5",
        "--w-pos",
        "4",
        "--scale",
        "0.7",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture
def inputs(tmp_path, images):
    images["pos"].save(tmp_path / "pos.png")
    images["neg"].save(tmp_path / "neg.png")
    return tmp_path


def test_explain_writes_the_ladder_of_generate_ones_image(inputs, tiny_models, capsys):
    out = inputs / "ladder"
    assert main(command("explain", tiny_models, inputs, out, "--w-neg", "3")) == 0
    assert "terms.json" in capsys.readouterr().out
    for rung, weights in {"text-only": ("0", "0"), "with-positive": ("4", "0"), "dipsy": ("4", "3")}.items():
        one = inputs / f"{rung}-one.png"
        args = command("generate-one", tiny_models, inputs, one, "--w-neg", weights[1])
        args[args.index("--w-pos") + 1] = weights[0]
        assert main(args) == 0
        with Image.open(out / f"{rung}.png") as ours, Image.open(one) as theirs:
            assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1, rung  # batch of 3 vs 1
            assert json.loads(ours.text["dipsy"])["w_pos"] == float(weights[0])
    for name in DIFFERENCES:
        with Image.open(out / f"{name}.png") as image:
            assert pixels(image).max() > 1, name
    terms = json.loads((out / "terms.json").read_text())
    # dpm-solver (generate-one's default sampler) takes exactly the steps asked.
    assert [entry["step"] for entry in terms] == list(range(1, STEPS + 1))
    assert all(entry["negative"] > 0 for entry in terms)
    written = sorted(path.name for path in (out / "branches").iterdir())
    assert written == sorted(
        f"step-{s}-{b}.png" for s in spread_steps(STEPS) for b in ("u", "t", "tp", "tpn")
    )


def test_explain_without_negative_weight_has_an_empty_negative_change(inputs, tiny_models):
    out = inputs / "ladder"
    assert main(command("explain", tiny_models, inputs, out, "--w-neg", "0", "--branch-steps", "2", "4")) == 0
    terms = json.loads((out / "terms.json").read_text())
    assert len(terms) == STEPS and all(entry["negative"] == 0.0 for entry in terms)
    with Image.open(out / "negative-changed.png") as image:
        assert not pixels(image).any()
    assert sorted(path.name for path in (out / "branches").iterdir()) == sorted(
        f"step-{s}-{b}.png" for s in (2, 4) for b in ("u", "t", "tp")
    )


def test_explain_with_a_step_out_of_range_is_a_clear_error(inputs, tiny_models, capsys):
    code = main(command("explain", tiny_models, inputs, inputs / "x", "--branch-steps", "9"))
    assert code == 2
    assert "branch steps must be whole numbers between 1 and 4" in capsys.readouterr().err
