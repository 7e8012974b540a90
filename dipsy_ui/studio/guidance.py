"""The guidance service: live previews of one image, labelled weight sweeps (one batched pipeline
call each) and explanations (Eq. 9's ladder of one preview, :mod:`dipsy_ui.explain`), all drawn
through the batch job's own setup (:meth:`GenerationService.job`, ``pick_images``, ``render``), so
that a preview is the image Generate writes for the same class, images, seed and settings, and an
explanation's rungs are previews."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..config import SEED_MAX, GenerationConfig
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
WORDS = {  # each weight as the Guidance tab names it
    "w_text": "text weight",
    "w_pos": "positive image weight",
    "w_neg": "negative image weight",
    "ip_adapter_scale": "adapter scale",
}
SAMPLE = "sample"  # the negative class is drawn by the negative rule in force
MAX_SWEEP = 36  # images in one sweep call: a bigger grid would hold the model for minutes
MAX_SEEDS = 8  # seeds per sweep cell
LONG_PREVIEW = 15.0  # seconds: a preview estimated to take longer says so before it starts
EXPLAIN_STEPS = 20  # at most this many steps' branches are decoded for the Explain view
KINDS = ("preview", "sweep", "explain")  # the jobs the Guidance tab's Cancel stops


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
class Used:
    """An image a result was drawn with."""

    role: str  # "positive" or "negative"
    class_name: str
    index: int  # into the class's images, from 0
    path: str  # the class's image file
    seeds: tuple[int, ...]  # the seeds of the result's images that used it
    drawn: bool  # drawn from the seed by the negative rule (not chosen by the user)


@dataclass(frozen=True)
class Rendered:
    """A finished preview or sweep: the image written, the seed and the images it used."""

    path: str
    seed: int
    negative_class: str | None = None  # None: no negative image
    negative_index: int | None = None
    # the weights and steps that made it (GuidanceSettings.weights)
    weights: dict = field(default_factory=dict)
    used: tuple[Used, ...] = ()  # the positive and negative images, each once


@dataclass(frozen=True)
class Explained:
    """A finished explanation: :class:`dipsy_ui.explain.Explanation` of one preview, as files."""

    seed: int
    rungs: dict[str, str]  # RUNGS name -> the image (the "dipsy" rung is the preview's image)
    weights: dict[str, dict[str, float]]  # RUNGS name -> the w_text, w_pos, w_neg that drew it
    # DIFFERENCES name -> the change between its two rungs marked in red on the later one (overlay)
    marked: dict[str, str]
    branches: dict[int, dict[str, str]]  # step (from 1) -> branch -> the dipsy rung's clean estimate
    terms: list[dict[str, float]]  # per sampler step: {"step", "text", "positive", "negative"}
    settings: dict  # the weights and steps of the preview it explains (GuidanceSettings.weights)
    used: tuple[Used, ...] = ()


def branch_view_steps(steps: int, most: int = EXPLAIN_STEPS) -> tuple[int, ...]:
    """The steps whose branches the Explain view shows: every step when there are at most
    ``most``, else every k-th from the first, so that a slider over them moves in even strides."""
    stride = max(1, -(-(steps - 1) // (most - 1)))
    return tuple(range(1, steps + 1, stride))


class GuidanceService:
    """Previews, sweeps and explanations of the session's classes with the session's settings."""

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

    def shown(self, session: Session) -> tuple[Rendered | None, Rendered | None]:
        """The last finished preview and the one before it."""
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
        """Stop the running preview, sweep or explanation and drop the waiting ones."""
        return self.core.cancel(session, KINDS)

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
            run, picks = self._setup(job, session, config, settings, [seed])
            (image,) = self._render(job, run, settings.class_name, picks, [seed])
            pick = picks[0]
            record = asdict(settings) | {"seed": seed, "negative_class": pick.negative_class,
                                         "negative_index": pick.negative_index}  # fmt: skip
            path = self._folder(session, "previews") / f"{time.time_ns()}-{seed}.png"
            save_png(image, path, {"dipsy": json.dumps(record)})
            rendered = Rendered(str(path), seed, pick.negative_class, pick.negative_index, settings.weights(),
                                self._used(session, settings, picks, [seed]))  # fmt: skip
            state = session.guidance
            state.latest, state.previous = rendered, state.latest
            return rendered

        key = (settings, config)  # the same controls under other settings are another image
        return self.core.run_job(session, "preview", work, key=key, changed_only=edit)

    def sweep(self, session: Session, settings: GuidanceSettings, x_name: str, x_values: list[float],
              y_name: str, y_values: list[float], seeds: int = 1, difference: bool = False) -> Iterator[Progress]:  # fmt: skip
        """A labelled grid over two weights (``x`` columns, ``y`` rows), as one batched pipeline
        call in a job whose "done" carries a :class:`Rendered` grid.

        Each cell holds ``seeds`` images side by side: the preview's seed and the next ones, each
        with its own picks (a sampled negative is drawn per seed, as Generate draws it). With
        ``difference``, each image shows what the negative term changed (Eq. 9's
        ``- w_neg (eps_tpn - eps_tp)``): it is marked in red against the same weights and seed at
        w_neg = 0, the cell of its row or column when the grid holds it, else drawn alongside."""
        session = self.core.session(session)
        for name in (x_name, y_name):
            if name not in WEIGHTS:
                raise UsageError(f"sweep weights must be among {WEIGHTS}, got {name!r}")
        if x_name == y_name:
            raise UsageError("choose two different weights for the sweep")
        if not x_values or not y_values:
            raise UsageError("give at least one value for each sweep axis")
        if not (isinstance(seeds, int) and 1 <= seeds <= MAX_SEEDS):
            raise UsageError(f"seeds per cell must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
        config = self._config(session, settings)
        fixed = {name: float(getattr(settings, name)) for name in WEIGHTS}
        cells = [fixed | {x_name: x, y_name: y} for y in y_values for x in x_values]
        references = [cell | {"w_neg": 0.0} for cell in cells] if difference else []
        drawn = list({weights_key(w): w for w in cells + references}.values())  # each setting once
        if len(drawn) * seeds > MAX_SWEEP:
            raise UsageError(
                f"the sweep draws {len(drawn) * seeds} images ({len(drawn)} weight settings x {seeds} seeds); "
                f"at most {MAX_SWEEP}: fewer values or seeds"
            )

        def work(job: Job) -> Rendered:
            from ..explain import difference as change
            from ..explain import overlay

            first = self._seed(settings)
            seed_list = [(first + k) & SEED_MAX for k in range(seeds)]
            run, picks = self._setup(job, session, config, settings, seed_list)
            rows = [(weights, k) for weights in drawn for k in range(seeds)]
            swept = {x_name, y_name} | ({"w_neg"} if difference else set())
            per_row = {name: [weights[name] for weights, _ in rows] for name in swept}
            images = self._render(
                job,
                run,
                settings.class_name,
                [picks[k] for _, k in rows],
                [seed_list[k] for _, k in rows],
                **per_row,
            )
            image = {(weights_key(weights), k): im for (weights, k), im in zip(rows, images, strict=True)}

            def shown(cell: dict, k: int) -> Image.Image:
                made = image[weights_key(cell), k]
                return (
                    overlay(made, change(image[weights_key(cell | {"w_neg": 0.0}), k], made))
                    if difference
                    else made
                )

            used = self._used(session, settings, picks, seed_list)
            title = ", ".join(f"{WORDS[n]} {fixed[n]:g}" for n in WEIGHTS if n not in (x_name, y_name))
            title += f"; {run.config.steps} steps; seeds " + ", ".join(map(str, seed_list))
            if difference:
                title += "; red: what the negative image changed (against negative image weight 0)"
            grid = labelled_grid([[shown(cell, k) for k in range(seeds)] for cell in cells], x_name, x_values,
                                 y_name, y_values, title, [(Image.open(u.path), used_caption(u, seeds > 1)) for u in used])  # fmt: skip
            path = self._folder(session, "sweeps") / f"{time.time_ns()}-{x_name}-{y_name}.png"
            save_png(grid, path)
            return Rendered(
                str(path), first, picks[0].negative_class, picks[0].negative_index, settings.weights(), used
            )

        return self.core.run_job(session, "sweep", work)

    def explain(self, session: Session, settings: GuidanceSettings) -> Iterator[Progress]:
        """What each term of Eq. 9 does to the preview these settings draw, as a job whose "done"
        carries an :class:`Explained`: the ladder of :func:`dipsy_ui.explain.explain` (text only,
        + positive, DIPSY), each term's change marked on its rung, the four branches' clean
        estimates at :func:`branch_view_steps` and the terms' strengths at every step.

        It goes through :meth:`preview`'s setup (the session's settings with these weights at the
        models' size, the negative rule, the picks from the seed, the adapter-input
        augmentation), so the "dipsy" rung is the preview's image and the "with-positive" rung
        the preview's at w_neg = 0, up to the last bits the batch composition changes (identical
        where the ladder is one row: both image weights 0). "step" events carry the rungs' latent
        previews side by side; the newest request wins, as for previews."""
        session = self.core.session(session)
        config = self._config(session, settings)

        def work(job: Job) -> Explained:
            from ..explain import DIFFERENCES, explain, overlay

            seed = self._seed(settings)
            run, picks = self._setup(job, session, config, settings, [seed])
            pick = picks[0]
            result = explain(run.pipe, run.config.prompt(settings.class_name), pick.positive.image,
                             pick.negative.image if pick.negative else None, run.config, seed,
                             branch_view_steps(run.config.steps), on_event=job.relay, cancel=job.cancel)  # fmt: skip
            if result is None:
                raise Cancelled()
            folder = self._folder(session, "previews") / f"explain-{time.time_ns()}-{seed}"
            folder.mkdir()
            record = asdict(settings) | {"seed": seed, "negative_class": pick.negative_class,
                                         "negative_index": pick.negative_index}  # fmt: skip

            def save(image: Image.Image, name: str, weights: dict | None = None) -> str:
                meta = {"dipsy": json.dumps(record | weights)} if weights is not None else None
                save_png(image, folder / f"{name}.png", meta)
                return str(folder / f"{name}.png")

            rungs = {name: save(image, name, result.weights[name]) for name, image in result.rungs.items()}
            marked = {name: save(overlay(result.rungs[after], result.differences[name]), name)
                      for name, (_, after) in DIFFERENCES.items()}  # fmt: skip
            branches = {step: {branch: save(image, f"step-{step}-{branch}") for branch, image in row.items()}
                        for step, row in result.branches.items()}  # fmt: skip
            return Explained(seed, rungs, result.weights, marked, branches, result.terms, settings.weights(),
                             self._used(session, settings, picks, [seed]))  # fmt: skip

        return self.core.run_job(session, "explain", work, key=(settings, config))

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _seed(settings: GuidanceSettings) -> int:
        return random.randrange(2**31) if settings.seed is None else int(settings.seed)

    @staticmethod
    def _folder(session: Session, name: str) -> Path:
        folder = session.root / name
        folder.mkdir(exist_ok=True)
        return folder

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

    def _setup(self, job: Job, session: Session, config: GenerationConfig, settings: GuidanceSettings,
               seeds: list[int]):  # fmt: skip
        """The batch job's setup for these settings (:meth:`GenerationService.job`: the models'
        size, the negative rule) and each seed's picks (:func:`~dipsy_ui.generate.pick_images`,
        the user's choices kept, the rest drawn from the seed as Generate draws them)."""
        from ..generate import pick_images

        run = self.generation.job(job, session, config, None)
        if run.note:
            job.progress(0, run.config.steps, f"Note: {run.note}.")
        sampled = settings.negative_class == SAMPLE
        picks = [
            pick_images(run.dataset, run.sampler, settings.class_name, seed, positive_index=settings.positive_index,
                        negative_class=None if sampled else settings.negative_class,
                        negative_index=None if settings.negative_index < 0 else settings.negative_index)
            for seed in seeds
        ]  # fmt: skip
        return run, picks

    def _render(
        self, job: Job, run, class_name: str, picks: list, seeds: list[int], **per_row
    ) -> list[Image.Image]:
        """Images of ``class_name``, one per (pick, seed) row, through :func:`~dipsy_ui.generate.render`
        (``per_row``: weights with one value per row), the denoising steps reported as previews."""
        from ..generate import render

        config = run.config  # the size the loaded models draw
        steps, pixels = config.steps, config.height * config.width * len(seeds)
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
        images = render(
            run.pipe, config, [config.prompt(class_name)] * len(seeds), picks, seeds, on_step, **per_row
        )
        if images is None:  # interrupted
            raise Cancelled()
        self._seconds_per_step_pixel = (time.perf_counter() - started) / (steps * pixels)
        return images

    def _used(
        self, session: Session, settings: GuidanceSettings, picks: list, seeds: list[int]
    ) -> tuple[Used, ...]:
        """The positive and negative images of the picks, each once, with the seeds that used it."""
        drawn = settings.negative_class == SAMPLE or settings.negative_index < 0
        found: dict[tuple, tuple[Used, list[int]]] = {}
        for pick, seed in zip(picks, seeds, strict=True):
            roles = [("positive", settings.class_name, pick.positive_index, False)]
            if pick.negative_class is not None:
                roles.append(("negative", pick.negative_class, pick.negative_index, drawn))
            for role, name, index, was_drawn in roles:
                key = (role, name, index)
                if key not in found:
                    path = self.image_paths(session, name)[index]
                    found[key] = (Used(role, name, index, path, (), was_drawn), [])
                found[key][1].append(seed)
        return tuple(replace(used, seeds=tuple(seeds)) for used, seeds in found.values())


def weights_key(weights: dict) -> tuple[float, ...]:
    """A weight setting as a hashable key (its :data:`WEIGHTS` in order)."""
    return tuple(weights[name] for name in WEIGHTS)


def used_caption(used: Used, with_seeds: bool = False) -> str:
    """An image a result used, in words: "negative: two, image 3 (drawn by the rule)", and
    ``with_seeds``, the seeds that used it."""
    how = " (drawn by the rule)" if used.drawn else ""
    seeds = f", seed {', '.join(map(str, used.seeds))}" if with_seeds else ""
    return f"{used.role}: {used.class_name}, image {used.index + 1}{how}{seeds}"


def weights_caption(weights: dict) -> str:
    """The weights and steps that made a result, in words (the tab's names)."""
    shown = ", ".join(f"{WORDS[name]} {weights[name]:g}" for name in WEIGHTS if name in weights)
    return shown + (f", {weights['steps']} steps" if "steps" in weights else "")


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def labelled_grid(cells: list[list[Image.Image]], x_name: str, x_values: list[float], y_name: str,
                  y_values: list[float], title: str = "", used: list[tuple[Image.Image, str]] = (),
                  cell: int = 128) -> Image.Image:  # fmt: skip
    """A sweep's grid: ``cells`` (row-major, ``y`` rows by ``x`` columns, each a list of images
    shown side by side, one per seed) under the axes named in words ("negative image weight") in
    a type sized to the cells, a title line, and the images it used as captioned thumbnails."""
    text, small = font(max(14, cell // 8)), font(max(12, cell // 10))
    line, pad, gap, thumb = text.size + 8, 8, 6, cell // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    # The rows' label, turned to run up the left side.
    y_label = Image.new("RGB", (int(measure(f"rows: {WORDS[y_name]}", font=text)) + 4, line), "white")
    ImageDraw.Draw(y_label).text((2, 2), f"rows: {WORDS[y_name]}", fill="black", font=text)
    y_label = y_label.rotate(90, expand=True)
    left = int(pad + line + max(measure(f"{y:g}", font=text) for y in y_values) + 2 * pad)
    step_x, step_y = len(cells[0]) * cell + gap, cell + gap  # a cell and the gap after it
    used_widths = [int(max(thumb, measure(caption, font=small))) + 2 * pad for _, caption in used]
    used_height = thumb + small.size + 12 if used else 0
    top = pad + line + used_height + 2 * line  # the title, the images used, the columns' label and values
    width = max(
        left + step_x * len(x_values), int(measure(title, font=text)) + 2 * pad, sum(used_widths) + pad
    )
    height = top + max(step_y * len(y_values), y_label.height) + pad
    grid = Image.new("RGB", (width + pad, height), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((pad, pad), title, fill="black", font=text)
    x = pad
    for (image, caption), used_width in zip(used, used_widths, strict=True):
        grid.paste(image.convert("RGB").resize((thumb, thumb), Image.Resampling.NEAREST), (x, pad + line))
        draw.text((x, pad + line + thumb + 4), caption, fill="black", font=small)
        x += used_width
    axis = pad + line + used_height
    draw.text((left, axis), f"columns: {WORDS[x_name]}", fill="black", font=text)
    grid.paste(y_label, (pad, top))
    for i, value in enumerate(x_values):
        draw.text((left + i * step_x + 4, axis + line), f"{value:g}", fill="black", font=text)
    for j, value in enumerate(y_values):
        draw.text((pad + line + pad, top + j * step_y + cell // 2 - text.size // 2), f"{value:g}", fill="black",
                  font=text)  # fmt: skip
        for i in range(len(x_values)):
            for k, image in enumerate(cells[j * len(x_values) + i]):
                shown = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
                grid.paste(shown, (left + i * step_x + k * cell, top + j * step_y))
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
