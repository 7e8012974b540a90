"""What each guidance term of DIPSY does to one image: Eq. 9's ladder (arXiv 2509.22635).

Eq. 9 adds three weighted terms to the unconditional prediction: text ``w_text (eps_t - eps_u)``,
positive ``w_pos (eps_tp - eps_t)`` and negative ``- w_neg (eps_tpn - eps_tp)``. The ladder draws
one seed three times, each rung adding one term:

- ``text-only``: ``w_pos = w_neg = 0`` (plain text classifier-free guidance);
- ``with-positive``: ``w_neg = 0``;
- ``dipsy``: all three weights (no negative image: ``w_neg = 0``, as ``generate-one`` does).

The rungs are one batched pipeline call, one row per distinct weight set (so ``w_neg = 0`` makes
``dipsy`` the very row of ``with-positive``, and what the negative changed is exactly nothing).
Each rung is the image that a single call with its weights and seed draws, up to the last bits that
the batch composition changes. The ``dipsy`` row's trace (``DipsyPipeline(trace_every=1)``: no
extra U-Net call) gives the term strengths at every step and the four branches' clean-image
estimates at a few steps, decoded through the VAE.

:func:`explain` is long work in the project's ``run(on_event, cancel)`` form: bind the inputs
(``functools.partial(explain, pipe, ...)``) and drive it like a generation job.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageChops

from .config import GenerationConfig
from .errors import UsageError
from .events import CANCELLED, DONE, STEP, Event, OnEvent, protocol
from .generate import pipeline_call

RUNGS = ("text-only", "with-positive", "dipsy")
# difference image -> (rung before, rung after): what the term added between the two rungs
DIFFERENCES = {
    "positive-added": ("text-only", "with-positive"),
    "negative-changed": ("with-positive", "dipsy"),
}
BRANCH_STEPS = 4  # steps at which the branches are shown unless the caller picks them
DECODE_BATCH = 8  # branch estimates decoded per VAE call: SD1.5's VAE at 512 px needs ~1 GB per image
FULL_MARK = 64  # a change of this many 8-bit levels or more is marked in full red by overlay()


@dataclass(frozen=True)
class Explanation:
    """Eq. 9's ladder for one seed. Steps are counted from 1, as progress messages count them."""

    rungs: dict[str, Image.Image]  # RUNGS name -> the image
    weights: dict[str, dict[str, float]]  # RUNGS name -> the w_text, w_pos, w_neg that drew it
    # DIFFERENCES name -> |after - before| per pixel and channel, in 8-bit levels (black: unchanged)
    differences: dict[str, Image.Image]
    # step -> branch ("u", "t", "tp", "tpn") -> the dipsy rung's clean-image estimate of that branch
    # at that step, through the VAE; a branch no weight uses is not evaluated, so it is absent
    branches: dict[int, dict[str, Image.Image]]
    # one per denoising step of the dipsy rung: {"step", "text", "positive", "negative"}, each
    # term's strength (root mean square over the latent, GuidanceStep.strengths)
    terms: list[dict[str, float]]


def rung_weights(config: GenerationConfig, has_negative: bool) -> dict[str, dict[str, float]]:
    """The weights of each rung: each adds one term of Eq. 9 to the one before."""
    w_neg = config.w_neg if has_negative else 0.0
    return {
        "text-only": {"w_text": config.w_text, "w_pos": 0.0, "w_neg": 0.0},
        "with-positive": {"w_text": config.w_text, "w_pos": config.w_pos, "w_neg": 0.0},
        "dipsy": {"w_text": config.w_text, "w_pos": config.w_pos, "w_neg": w_neg},
    }


def spread_steps(steps: int, count: int = BRANCH_STEPS) -> tuple[int, ...]:
    """``count`` steps from 1 to ``steps``, evenly spread, first and last included."""
    return tuple(sorted({int(round(step)) for step in np.linspace(1, steps, min(count, steps))}))


def difference(before: Image.Image, after: Image.Image) -> Image.Image:
    """``|after - before|`` per pixel and channel: black where the images agree."""
    return ImageChops.difference(after.convert("RGB"), before.convert("RGB"))


def overlay(image: Image.Image, change: Image.Image) -> Image.Image:
    """A :func:`difference` marked on ``image``: the image in dimmed grey, red where it changed, in
    proportion to the largest channel's change (full red at :data:`FULL_MARK` levels or more), so
    an unchanged image shows no red at all and equal changes show equally in any two overlays."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None] * 0.6 + 40
    amount = np.asarray(change.convert("RGB"), dtype=np.float32).max(axis=2, keepdims=True)
    alpha = np.clip(amount / FULL_MARK, 0.0, 1.0)
    red = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    return Image.fromarray(np.round(grey * (1 - alpha) + red * alpha).astype(np.uint8), "RGB")


def explain(
    pipe,
    prompt: str,
    positive: Image.Image,
    negative: Image.Image | None,
    config: GenerationConfig,
    seed: int,
    branch_steps: Sequence[int] | None = None,
    on_event: OnEvent | None = None,
    cancel: threading.Event | None = None,
) -> Explanation | None:
    """Eq. 9's ladder of one image (module docstring) with the loaded ``DipsyPipeline``.

    ``config`` supplies what a preview takes besides the prompt, images and seed: the weights,
    adapter scale, steps, sampler, size and adapter-input augmentation (its other fields are not
    used). ``branch_steps``: the steps (from 1) at which the branches are decoded; default
    :data:`BRANCH_STEPS` steps spread from the first to the last.

    ``on_event`` receives a "step" :class:`~dipsy_ui.events.Event` per denoising step (``step``
    of ``total``, the sampler's own count; payload ``preview``: one row per distinct rung), then
    "done" (or "cancelled"). Setting ``cancel`` stops at the next step; then the result is None.
    """
    on_event, cancel = protocol(on_event, cancel)
    branch_steps = spread_steps(config.steps) if branch_steps is None else tuple(sorted(set(branch_steps)))
    if not branch_steps or not all(
        isinstance(step, int) and 1 <= step <= config.steps for step in branch_steps
    ):
        raise UsageError(
            f"branch steps must be whole numbers between 1 and {config.steps} (the steps), "
            f"got {list(branch_steps)}"
        )
    weights = rung_weights(config, negative is not None)
    rows = list(dict.fromkeys(tuple(w.values()) for w in weights.values()))  # distinct, in ladder order
    row_of = {rung: rows.index(tuple(w.values())) for rung, w in weights.items()}
    if cancel.is_set():
        on_event(Event(CANCELLED, 0, config.steps, "Cancelled before it started."))
        return None

    def on_step(p, step, timestep, kwargs):
        # The sampler's own count: SD1.5's PNDM takes one step more than asked.
        steps = len(p.scheduler.timesteps)
        on_event(Event(STEP, step + 1, steps, f"step {step + 1}/{steps}", {"preview": kwargs["preview"]}))
        if cancel.is_set():  # after the event, so that a cancel made while handling it counts now
            p.request_interrupt()
        return {}

    # 1. The rungs: one batched call, every row with the same seed, so they share their noise.
    count = len(rows)
    output = pipeline_call(
        pipe, config, [prompt] * count, [positive] * count, [negative] * count, [seed] * count, on_step,
        w_text=[row[0] for row in rows], w_pos=[row[1] for row in rows], w_neg=[row[2] for row in rows],
        trace_every=1,
    )  # fmt: skip
    if output.images is None:
        on_event(Event(CANCELLED, message="Cancelled."))
        return None
    rungs = {rung: output.images[row] for rung, row in row_of.items()}

    # 2. The dipsy rung's part of the trace: every term's strength at every step, and the
    # branches' clean estimates at the chosen steps, decoded a few at a time (many steps' worth at
    # 512 px in one VAE call would not fit a GPU's memory).
    row = row_of["dipsy"]
    terms = [
        {"step": record.step + 1} | {name: float(value[row]) for name, value in record.strengths().items()}
        for record in output.trace
    ]
    chosen = [
        (step, branch, x0[row : row + 1])
        for step in branch_steps
        for branch, x0 in output.trace[step - 1].x0.items()
    ]
    latents = torch.cat([x0 for _, _, x0 in chosen])
    decoded = [
        image
        for start in range(0, len(latents), DECODE_BATCH)
        for image in pipe.latents_to_images(latents[start : start + DECODE_BATCH])
    ]
    branches: dict[int, dict[str, Image.Image]] = {}
    for (step, branch, _), image in zip(chosen, decoded, strict=True):
        branches.setdefault(step, {})[branch] = image

    result = Explanation(
        rungs=rungs,
        weights=weights,
        differences={name: difference(rungs[a], rungs[b]) for name, (a, b) in DIFFERENCES.items()},
        branches=branches,
        terms=terms,
    )
    steps = len(pipe.scheduler.timesteps)
    on_event(Event(DONE, steps, steps, "Done."))
    return result
