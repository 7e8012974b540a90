"""The guidance service: live previews of one image and labelled weight sweeps (one batched
pipeline call each), with the weights tried kept as the session's generation settings."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

from PIL import Image, ImageDraw

from ..config import GenerationConfig
from ..errors import UsageError
from ..images import save_png
from .core import Core
from .data import DataService
from .jobs import Cancelled, Job, Progress, enlarge
from .session import Session
from .similarity import SimilarityService

WEIGHTS = ("w_text", "w_pos", "w_neg", "ip_adapter_scale")
SAMPLE = "sample"
MAX_SWEEP = 36  # images in one sweep call: a bigger grid would hold the model for minutes


@dataclass(frozen=True)
class GuidanceSettings:
    """One preview: which images and which weights (the Guidance tab's controls)."""

    class_name: str
    positive_index: int = 0  # index into the class's images
    negative_class: str = SAMPLE  # a class name, "sample" (drawn from the similarity) or "none"
    negative_index: int = -1  # index into the negative class's images; -1 draws one
    w_text: float = GenerationConfig.w_text
    w_pos: float = GenerationConfig.w_pos
    w_neg: float = GenerationConfig.w_neg
    ip_adapter_scale: float = GenerationConfig.ip_adapter_scale
    steps: int = GenerationConfig.steps
    seed: int | None = 0  # None: a new random seed for each preview


@dataclass(frozen=True)
class Rendered:
    """A finished preview or sweep: the image written and the seed it used."""

    path: str
    seed: int


class GuidanceService:
    """Previews and sweeps of the session's classes with the session's generation settings."""

    def __init__(self, core: Core, data: DataService, similarity: SimilarityService):
        self.core, self.data, self.similarity = core, data, similarity

    # -- what the tab shows ---------------------------------------------------------------------

    def class_names(self, session: Session) -> list[str]:
        return self.data.class_names(session)

    def image_paths(self, session: Session, name: str | None) -> list[str]:
        return self.data.image_paths(session, name)

    def settings(self, session: Session) -> GenerationConfig:
        return self.core.session(session).generation

    def shown(self, session: Session) -> tuple[str | None, str | None]:
        """The last finished preview and the one before it (image paths)."""
        state = self.core.session(session).guidance
        return state.latest, state.previous

    def remember(self, session: Session, settings: GuidanceSettings) -> None:
        """Keep the weights and steps tried as the session's generation settings (validated by
        GenerationConfig, so bad values raise here)."""
        session = self.core.session(session)
        session.generation = replace(
            session.generation, w_text=float(settings.w_text), w_pos=float(settings.w_pos),
            w_neg=float(settings.w_neg), ip_adapter_scale=float(settings.ip_adapter_scale), steps=int(settings.steps),
        )  # fmt: skip

    def existing_preset(self, session: Session, name: str) -> str | None:
        """The user's preset that saving ``name`` would replace, or None."""
        return self.data.existing_preset(session, name)

    def save_preset(
        self, session: Session, name: str, settings: GuidanceSettings, overwrite: bool = False
    ) -> str:
        """Save these settings (with the rest of the session's) as the user's preset; its name."""
        self.remember(session, settings)
        return self.data.save_preset(session, name, overwrite=overwrite)

    def cancel(self, session: Session) -> bool:
        """Stop the running preview or sweep and drop the waiting ones."""
        return self.core.cancel(session, ("preview", "sweep"))

    # -- long actions ---------------------------------------------------------------------------

    def preview(self, session: Session, settings: GuidanceSettings, edit: bool = False) -> Iterator[Progress]:
        """One image, as a job: "step" events carry the denoising preview, "done" a
        :class:`Rendered`. The newest request wins: it supersedes the previews still waiting,
        one asking what a preview in flight asks is answered by it, and an ``edit`` (a slider
        released, a number typed) asking what the last request asked is no request."""
        session = self.core.session(session)
        self.remember(session, settings)  # validates the weights too
        self._images(session, settings)  # refuses an unknown class or image now, not in the job

        def work(job: Job) -> Rendered:
            seed = self._seed(settings)
            images, negative_class = self._render(job, session, settings, seed, 1)
            folder = session.root / "previews"
            folder.mkdir(exist_ok=True)
            path = folder / f"{time.time_ns()}-{seed}.png"
            record = asdict(settings) | {"seed": seed, "negative_class": negative_class}
            save_png(images[0], path, {"dipsy": json.dumps(record)})
            state = session.guidance
            state.latest, state.previous = str(path), state.latest
            return Rendered(str(path), seed)

        return self.core.run_job(session, "preview", work, key=settings, changed_only=edit)

    def sweep(self, session: Session, settings: GuidanceSettings, x_name: str, x_values: list[float],
              y_name: str, y_values: list[float]) -> Iterator[Progress]:  # fmt: skip
        """A labelled grid over two weights for one seed, as one batched pipeline call in a
        job whose "done" carries a :class:`Rendered` grid."""
        session = self.core.session(session)
        for name in (x_name, y_name):
            if name not in WEIGHTS:
                raise UsageError(f"sweep weights must be among {WEIGHTS}, got {name!r}")
        if x_name == y_name:
            raise UsageError("choose two different weights for the sweep")
        if not x_values or not y_values:
            raise UsageError("give at least one value for each sweep axis")
        if len(x_values) * len(y_values) > MAX_SWEEP:
            raise UsageError(f"the sweep grid has {len(x_values) * len(y_values)} cells; at most {MAX_SWEEP}")
        self.remember(session, settings)
        self._images(session, settings)
        cells = [(x, y) for y in y_values for x in x_values]
        axes = {x_name: [x for x, _ in cells], y_name: [y for _, y in cells]}

        def work(job: Job) -> Rendered:
            seed = self._seed(settings)
            images, _ = self._render(job, session, settings, seed, len(cells), **axes)
            grid = labelled_grid(images, x_name, x_values, y_name, y_values)
            folder = session.root / "sweeps"
            folder.mkdir(exist_ok=True)
            path = folder / f"{time.time_ns()}-{x_name}-{y_name}.png"
            save_png(grid, path)
            return Rendered(str(path), seed)

        return self.core.run_job(session, "sweep", work)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _seed(settings: GuidanceSettings) -> int:
        return random.randrange(2**31) if settings.seed is None else int(settings.seed)

    def _images(self, session: Session, settings: GuidanceSettings):
        """(the session's dataset, the positive image) of a preview; refuses unknown choices."""
        dataset = self.data.dataset(session)
        if settings.class_name not in dataset.class_names:
            raise UsageError(
                f"choose a class (got {settings.class_name!r}); classes: {list(dataset.class_names)}"
            )
        positives = dataset.images(settings.class_name)
        if not 0 <= settings.positive_index < len(positives):
            raise UsageError(
                f"positive image {settings.positive_index} does not exist; the class has {len(positives)}"
            )
        negative = settings.negative_class or SAMPLE
        if negative not in (SAMPLE, "none") and negative not in dataset.class_names:
            raise UsageError(
                f"choose a negative class (got {negative!r}); classes: {list(dataset.class_names)}"
            )
        return dataset, positives[settings.positive_index].image

    def _render(self, job: Job, session: Session, settings: GuidanceSettings, seed: int, rows: int,
                **weights) -> tuple[list[Image.Image], str | None]:  # fmt: skip
        """``rows`` images of one seed (``weights``: per-row values), the denoising steps
        reported as previews; and the negative class used."""
        import torch

        dataset, positive = self._images(session, settings)
        pipe, _ = self.core.models(job)
        generator = torch.Generator().manual_seed(seed)
        negative_class = settings.negative_class or SAMPLE
        if negative_class == SAMPLE:
            names = list(dataset.class_names)
            sampler = self.similarity.sampler(session, names) if len(names) > 1 else None
            # One class has no other class to steer away from.
            negative_class = sampler.sample(settings.class_name, generator) if sampler else None
        negative = None
        if negative_class not in (None, "none"):
            negatives = dataset.images(negative_class)
            index = settings.negative_index
            if index < 0:
                index = int(torch.randint(len(negatives), (), generator=generator))
            negative = negatives[min(index, len(negatives) - 1)].image
        config = session.generation
        base = {name: getattr(settings, name) for name in WEIGHTS}
        steps = config.steps

        def on_step(p, step, timestep, kwargs):
            if job.cancelled:
                p.request_interrupt()
            job.step(step + 1, steps, f"Step {step + 1}/{steps}...", enlarge(kwargs["preview"][0]))
            return {}

        pipe.use_scheduler(config.scheduler)
        images = pipe(
            prompt=[config.prompt(settings.class_name)] * rows, positive_image=[positive] * rows,
            negative_image=[negative] * rows, num_inference_steps=steps, height=config.height, width=config.width,
            generator=[torch.Generator(pipe._execution_device).manual_seed(seed) for _ in range(rows)],
            callback_on_step_end=on_step, **(base | weights),
        ).images  # fmt: skip
        if images is None:  # interrupted
            raise Cancelled()
        return images, negative_class


def labelled_grid(images: list[Image.Image], x_name: str, x_values: list[float], y_name: str,
                  y_values: list[float], cell: int = 128) -> Image.Image:  # fmt: skip
    """Images (row-major, ``y`` rows by ``x`` columns) in a grid with axis labels."""
    margin_left, margin_top = 90, 40
    grid = Image.new("RGB", (margin_left + cell * len(x_values), margin_top + cell * len(y_values)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 4), f"x: {x_name}   y: {y_name}", fill="black")
    for i, x in enumerate(x_values):
        draw.text((margin_left + i * cell + 4, 22), f"{x_name}={x:g}", fill="black")
    for j, y in enumerate(y_values):
        draw.text((4, margin_top + j * cell + cell // 2), f"{y_name}={y:g}", fill="black")
        for i in range(len(x_values)):
            image = (
                images[j * len(x_values) + i].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            )
            grid.paste(image, (margin_left + i * cell, margin_top + j * cell))
    return grid


def parse_values(text: str) -> list[float]:
    """``"2, 4, 6"`` -> ``[2.0, 4.0, 6.0]``; a readable error for anything else."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"sweep values must be numbers separated by commas, got {text!r}") from error
    if not values:
        raise UsageError("give at least one sweep value")
    return values
