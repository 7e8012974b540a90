"""The guidance service: live previews of one image and labelled weight sweeps (one batched
pipeline call each), drawn through the batch job's own setup (:meth:`GenerationService.job`), so
that a preview is the image Generate writes for the same class, images, seed and settings."""

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
from .generation import GenerationService
from .jobs import Cancelled, Job, Progress, enlarge
from .session import Session
from .settings import SettingsService
from .similarity import SimilarityService

WEIGHTS = ("w_text", "w_pos", "w_neg", "ip_adapter_scale")
SAMPLE = "sample"  # the negative class is drawn by the negative rule in force
MAX_SWEEP = 36  # images in one sweep call: a bigger grid would hold the model for minutes
LONG_PREVIEW = 15.0  # seconds: a preview estimated to take longer says so before it starts


@dataclass(frozen=True)
class GuidanceSettings:
    """One preview: which images and which weights (the Guidance tab's controls)."""

    class_name: str
    positive_index: int = 0  # index into the class's images
    negative_class: str = SAMPLE  # a class name, or "sample" (drawn by the negative rule)
    negative_index: int = -1  # index into the negative class's images; -1 draws one
    w_text: float = GenerationConfig.w_text
    w_pos: float = GenerationConfig.w_pos
    w_neg: float = GenerationConfig.w_neg
    ip_adapter_scale: float = GenerationConfig.ip_adapter_scale
    steps: int = GenerationConfig.steps
    seed: int | None = 0  # None: a new random seed for each preview

    def weights(self) -> dict:
        """The generation settings this preview tries (the weights and steps)."""
        return {name: float(getattr(self, name)) for name in WEIGHTS} | {"steps": int(self.steps)}


@dataclass(frozen=True)
class Rendered:
    """A finished preview or sweep: the image written, the seed and the images it used."""

    path: str
    seed: int
    negative_class: str | None = None  # None: no negative image
    negative_index: int | None = None


class GuidanceService:
    """Previews and sweeps of the session's classes with the session's generation settings."""

    def __init__(self, core: Core, data: DataService, settings: SettingsService,
                 similarity: SimilarityService, generation: GenerationService):  # fmt: skip
        self.core, self.data, self.settings = core, data, settings
        self.similarity, self.generation = similarity, generation
        self._seconds_per_step_pixel: float | None = None  # measured on the last preview

    # -- what the tab shows ---------------------------------------------------------------------

    def class_names(self, session: Session) -> list[str]:
        return self.data.class_names(session)

    def image_paths(self, session: Session, name: str | None) -> list[str]:
        return self.data.image_paths(session, name)

    def shown(self, session: Session) -> tuple[str | None, str | None]:
        """The last finished preview and the one before it (image paths)."""
        state = self.core.session(session).guidance
        return state.latest, state.previous

    def use(self, session: Session, settings: GuidanceSettings) -> GenerationConfig:
        """Make the weights and steps tried the session's generation settings, which Generate
        uses (validated, so bad values raise before anything changes)."""
        return self.settings.update_generation(session, **settings.weights())

    def set_negative(self, session: Session, class_name: str | None, rule: str, negative: str) -> str:
        """The Guidance tab's negative choice, for Generate too: the rule in force (similarity,
        uniform, dissimilar, none) and, for ``class_name``, a pinned negative class (or "sample":
        drawn by the rule). Returns the rule in words."""
        session = self.core.session(session)
        if negative not in (SAMPLE, None, "") and rule == "none":
            raise UsageError(
                "the negative rule is 'none' (no negative image): choose another rule to pin a negative class"
            )
        self.settings.update_generation(session, negatives=rule)
        if class_name in self.class_names(session):
            pinned = None if negative in (SAMPLE, None, "") else negative
            if pinned is not None or class_name in self.similarity.pinned(session):
                self.similarity.pin(session, class_name, pinned)
        return self.generation.negative_rule(session)

    def open_image(self, session: Session, file: str) -> tuple[GuidanceSettings, GenerationConfig]:
        """A generated image of the current run back in the Guidance tab: the preview settings
        that redraw it (its class, positive and negative image, seed and the run's weights), and
        the run's settings, which become the session's (:meth:`GenerationService.open_in_guidance`)."""
        made = self.generation.open_in_guidance(session, file)
        config = self.settings.generation(session)
        weights = {name: getattr(config, name) for name in WEIGHTS}
        chosen = GuidanceSettings(made["class_name"], made["positive_index"], made["negative_class"],
                                  made["negative_index"], steps=config.steps, seed=made["seed"], **weights)  # fmt: skip
        return chosen, config

    def cancel(self, session: Session) -> bool:
        """Stop the running preview or sweep and drop the waiting ones."""
        return self.core.cancel(session, ("preview", "sweep"))

    # -- long actions ---------------------------------------------------------------------------

    def preview(self, session: Session, settings: GuidanceSettings, edit: bool = False) -> Iterator[Progress]:
        """One image, as a job: "step" events carry the denoising preview, "done" a
        :class:`Rendered`. It is the image the batch job writes for this class, positive and
        negative image and seed with the session's settings and these weights (alone in its
        batch). The newest request wins: it supersedes the previews still waiting, one asking
        what a preview in flight asks is answered by it, and an ``edit`` (a slider released, a
        number typed) asking what the last request asked is no request."""
        session = self.core.session(session)
        config = self._config(session, settings)

        def work(job: Job) -> Rendered:
            seed = self._seed(settings)
            images, pick = self._render(job, session, config, settings, seed, 1)
            folder = session.root / "previews"
            folder.mkdir(exist_ok=True)
            path = folder / f"{time.time_ns()}-{seed}.png"
            record = asdict(settings) | {"seed": seed, "negative_class": pick.negative_class,
                                         "negative_index": pick.negative_index}  # fmt: skip
            save_png(images[0], path, {"dipsy": json.dumps(record)})
            state = session.guidance
            state.latest, state.previous = str(path), state.latest
            return Rendered(str(path), seed, pick.negative_class, pick.negative_index)

        key = (settings, config)  # the same controls under other settings are another image
        return self.core.run_job(session, "preview", work, key=key, changed_only=edit)

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
        config = self._config(session, settings)
        cells = [(x, y) for y in y_values for x in x_values]
        axes = {x_name: [x for x, _ in cells], y_name: [y for _, y in cells]}

        def work(job: Job) -> Rendered:
            seed = self._seed(settings)
            images, pick = self._render(job, session, config, settings, seed, len(cells), **axes)
            grid = labelled_grid(images, x_name, x_values, y_name, y_values)
            folder = session.root / "sweeps"
            folder.mkdir(exist_ok=True)
            path = folder / f"{time.time_ns()}-{x_name}-{y_name}.png"
            save_png(grid, path)
            return Rendered(str(path), seed, pick.negative_class, pick.negative_index)

        return self.core.run_job(session, "sweep", work)

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _seed(settings: GuidanceSettings) -> int:
        return random.randrange(2**31) if settings.seed is None else int(settings.seed)

    def _config(self, session: Session, settings: GuidanceSettings) -> GenerationConfig:
        """The session's generation settings with these weights (validated); refuses an unknown
        class, image or negative class now, not in the job."""
        config = replace(self.settings.generation(session), **settings.weights())
        dataset = self.data.dataset(session)
        names = list(dataset.class_names)
        if settings.class_name not in names:
            raise UsageError(f"choose a class (got {settings.class_name!r}); classes: {names}")
        count = len(dataset.images(settings.class_name))
        if not 0 <= settings.positive_index < count:
            raise UsageError(
                f"positive image {settings.positive_index} does not exist; the class has {count}"
            )
        if settings.negative_class not in (SAMPLE, *names):
            raise UsageError(f"choose a negative class (got {settings.negative_class!r}); classes: {names}")
        return config

    def _render(self, job: Job, session: Session, config: GenerationConfig, settings: GuidanceSettings,
                seed: int, rows: int, **per_row):  # fmt: skip
        """``rows`` images of one seed (``per_row``: weights with one value per row) through the
        batch job's setup, the denoising steps reported as previews; and the images' picks."""
        from ..generate import pick_images, render

        run = self.generation.job(job, session, config, None)
        config = run.config  # the size the loaded models draw
        sampled = settings.negative_class == SAMPLE
        pick = pick_images(
            run.dataset, run.sampler, settings.class_name, seed, positive_index=settings.positive_index,
            negative_class=None if sampled else settings.negative_class,
            negative_index=None if settings.negative_index < 0 else settings.negative_index,
        )  # fmt: skip
        steps, pixels = config.steps, config.height * config.width * rows
        if run.note:
            job.progress(0, steps, f"Note: {run.note}.")
        if self._seconds_per_step_pixel is not None:
            estimate = self._seconds_per_step_pixel * steps * pixels
            if estimate > LONG_PREVIEW:
                job.progress(0, steps, f"This will take about {estimate:.0f} s ({steps} steps at "
                                       f"{config.width}x{config.height}); Cancel stops it.")  # fmt: skip

        def on_step(p, step, timestep, kwargs):
            if job.cancelled:
                p.request_interrupt()
            job.step(step + 1, steps, f"Step {step + 1}/{steps}...", enlarge(kwargs["preview"][0]))
            return {}

        started = time.perf_counter()
        images = render(run.pipe, config, [config.prompt(settings.class_name)] * rows, [pick] * rows,
                        [seed] * rows, on_step, **per_row)  # fmt: skip
        if images is None:  # interrupted
            raise Cancelled()
        self._seconds_per_step_pixel = (time.perf_counter() - started) / (steps * pixels)
        return images, pick


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
