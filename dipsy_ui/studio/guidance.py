"""The Studio's Similarity and Guidance tabs: class similarity, live previews, weight sweeps."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from ..config import GenerationConfig
from ..errors import UsageError
from ..images import save_png
from .session import Session, in_thread

WEIGHTS = ("w_text", "w_pos", "w_neg", "ip_adapter_scale")
SAMPLE = "sample"
MAX_SWEEP = 36  # images in one sweep call: a bigger grid would hold the GPU queue for minutes


@dataclass
class GuidanceSettings:
    """One preview: which images and which weights (the Guidance tab's controls)."""

    class_name: str
    positive_index: int = 0  # index into the class's images
    negative_class: str = SAMPLE  # a class name, or "sample" (drawn from the similarity)
    negative_index: int = -1  # index into the negative class's images; -1 draws one
    w_text: float = GenerationConfig.w_text
    w_pos: float = GenerationConfig.w_pos
    w_neg: float = GenerationConfig.w_neg
    ip_adapter_scale: float = GenerationConfig.ip_adapter_scale
    steps: int = 10
    seed: int = 0


class GuidanceMixin:
    """CLIP class similarity with its overrides; previews and sweeps of one image."""

    def compute_similarity(self, session: Session, temperature: float | None = None,
                           progress: Callable[[float, str], None] = lambda f, m: None):  # fmt: skip
        from ..similarity import compute_similarity, save_heatmap

        session = self.session(session)
        dataset = self.dataset(session)
        dataset.require_classes(2, purpose="class similarity")
        _, clip = self.load_models(progress)
        progress(0.5, f"Embedding {len(dataset)} images with CLIP")
        temperature = temperature or session.generation.temperature
        with self.gpu:
            result = compute_similarity(
                clip, {c.name: [r.image for r in c.images] for c in dataset.classes}, temperature,
                allowed=session.allowed, excluded=session.excluded, cache_dir=self.workspace / "cache",
            )  # fmt: skip
        session.similarity = result
        session.generation = replace(session.generation, temperature=float(temperature))
        progress(0.9, "Drawing the heatmap")
        save_heatmap(session.root / "similarity.png", result.names, result.similarity)
        result.save(session.root)
        return result

    def heatmap_path(self, session: Session) -> str | None:
        path = self.session(session).root / "similarity.png"
        return str(path) if path.is_file() and session.similarity is not None else None

    def _require_similarity(self, session: Session):
        if session.similarity is None:
            raise UsageError("compute the class similarity first (Similarity tab)")
        return session.similarity

    def set_temperature(self, session: Session, temperature: float) -> None:
        from ..similarity import apply_override, negative_probabilities

        session = self.session(session)
        result = self._require_similarity(session)
        base = negative_probabilities(result.similarity, temperature)
        probabilities = apply_override(base, result.names, session.allowed, session.excluded)
        session.similarity = replace(result, probabilities=probabilities, temperature=float(temperature),
                                     allowed=dict(session.allowed), excluded=dict(session.excluded))  # fmt: skip
        session.generation = replace(session.generation, temperature=float(temperature))

    def set_override(self, session: Session, name: str, pinned: list[str], excluded: list[str]) -> str:
        session = self.session(session)
        result = self._require_similarity(session)
        if name not in result.names:
            raise UsageError(f"choose a class to override (got {name!r})")
        allowed, blocked = dict(session.allowed), dict(session.excluded)
        allowed.pop(name, None), blocked.pop(name, None)
        if pinned:
            allowed[name] = list(pinned)
        if excluded:
            blocked[name] = list(excluded)
        old = session.allowed, session.excluded
        session.allowed, session.excluded = allowed, blocked
        try:
            self.set_temperature(session, result.temperature)
        except ValueError:
            session.allowed, session.excluded = old
            raise
        return f"Override for {name!r}: pinned {pinned or 'none'}, excluded {excluded or 'none'}."

    def probability_rows(self, session: Session, top: int = 3) -> list[list]:
        """Per class: its most likely negative classes with their probabilities."""
        result = self._require_similarity(self.session(session))
        rows = []
        for i, name in enumerate(result.names):
            row = result.probabilities[i].tolist()
            best = sorted(range(len(row)), key=lambda j: -row[j])[:top]
            pins = "pinned " + ", ".join(session.allowed[name]) if name in session.allowed else ""
            rows.append([name, ", ".join(f"{result.names[j]} {row[j]:.2f}" for j in best if row[j] > 0),
                         "; ".join(filter(None, [pins, ", ".join(session.excluded.get(name, []))
                                                 and "excluded " + ", ".join(session.excluded[name])]))])  # fmt: skip
        return rows

    # -- guidance -------------------------------------------------------------------------------

    @staticmethod
    def resolve_seed(seed: int | float | None, locked: bool) -> int:
        return int(seed or 0) if locked else random.randrange(2**31)

    def _images_for(self, session: Session, settings: GuidanceSettings):
        """(prompt, positive image, negative image or None) of a preview, with draws seeded."""
        import torch

        dataset = self.dataset(session)
        if settings.class_name not in dataset.class_names:
            raise UsageError(
                f"choose a class (got {settings.class_name!r}); classes: {list(dataset.class_names)}"
            )
        positives = dataset.images(settings.class_name)
        if not 0 <= settings.positive_index < len(positives):
            raise UsageError(
                f"positive image {settings.positive_index} does not exist; the class has {len(positives)}"
            )
        generator = torch.Generator().manual_seed(int(settings.seed))
        negative_class = settings.negative_class or SAMPLE
        if negative_class == SAMPLE:
            if len(dataset.class_names) < 2:
                negative_class = None
            else:
                from ..similarity import NegativeSampler, uniform_probabilities

                sampler = (session.similarity.sampler() if session.similarity is not None
                           else NegativeSampler(list(dataset.class_names), uniform_probabilities(len(dataset.class_names))))  # fmt: skip
                negative_class = sampler.sample(settings.class_name, generator)
        negative = None
        if negative_class is not None and negative_class != "none":
            negatives = dataset.images(negative_class)
            index = settings.negative_index
            if index < 0:
                index = int(torch.randint(len(negatives), (), generator=generator))
            negative = negatives[min(index, len(negatives) - 1)].image
        prompt = session.generation.prompt(settings.class_name)
        return prompt, positives[settings.positive_index].image, negative, negative_class

    def remember_guidance(self, session: Session, settings: GuidanceSettings) -> None:
        """Keep the weights and steps tried in Guidance as the session's generation settings
        (validated by GenerationConfig, so bad values raise here)."""
        session.generation = replace(
            session.generation, w_text=float(settings.w_text), w_pos=float(settings.w_pos),
            w_neg=float(settings.w_neg), ip_adapter_scale=float(settings.ip_adapter_scale), steps=int(settings.steps),
        )  # fmt: skip

    def _denoise(self, session: Session, call: dict) -> Iterator[tuple[str, object]]:
        """One pipeline call in a worker thread under the GPU lock, cancellable with the session's
        Cancel: yields ("step", (k, n, previews)) while denoising, then ("result", images), or
        raises ValueError when cancelled."""
        pipe, _ = self.load_models()
        cancel = self._start(session)
        steps = call["num_inference_steps"]

        def work(emit):
            def on_step(p, step, timestep, kwargs):
                if cancel.is_set():
                    p.request_interrupt()
                emit(("step", (step + 1, steps, kwargs["preview"])))
                return {}

            with self.gpu:
                pipe.use_scheduler(session.generation.scheduler)
                return pipe(**call, callback_on_step_end=on_step).images

        for kind, value in in_thread(work, cancel):
            if kind == "result" and value is None:
                raise UsageError("Cancelled.")
            yield kind, value

    def _call(
        self, session: Session, settings: GuidanceSettings, rows: int, **weights
    ) -> tuple[dict, str | None]:
        """Pipeline arguments for ``rows`` images of the chosen class/images, one seed for all,
        and the negative class used."""
        import torch

        prompt, positive, negative, negative_class = self._images_for(session, settings)
        pipe, _ = self.load_models()
        config = session.generation
        base = {name: getattr(settings, name) for name in WEIGHTS}
        call = dict(
            prompt=[prompt] * rows, positive_image=[positive] * rows, negative_image=[negative] * rows,
            num_inference_steps=config.steps, height=config.height, width=config.width,
            generator=[torch.Generator(pipe._execution_device).manual_seed(int(settings.seed)) for _ in range(rows)],
            **(base | weights),
        )  # fmt: skip
        return call, negative_class

    def preview(self, session: Session, settings: GuidanceSettings) -> Iterator[tuple[str, object]]:
        """Yields ("step", (k, n, RGB uint8 array)) while denoising, then ("result", image path)."""
        session = self.session(session)
        self.remember_guidance(session, settings)  # validates the weights too
        call, negative_class = self._call(session, settings, 1)
        for kind, value in self._denoise(session, call):
            if kind == "step":
                step, total, previews = value
                yield "step", (step, total, previews[0])
                continue
            folder = session.root / "previews"
            folder.mkdir(exist_ok=True)
            path = folder / f"{int(time.time() * 1000)}-{settings.seed}.png"
            save_png(
                value[0], path, {"dipsy": json.dumps(settings.__dict__ | {"negative_class": negative_class})}
            )
            yield "result", str(path)

    def sweep(self, session: Session, settings: GuidanceSettings, x_name: str, x_values: list[float],
              y_name: str, y_values: list[float]) -> Iterator[tuple[str, object]]:  # fmt: skip
        """A labelled grid over two weights for one seed, as one batched pipeline call: yields
        ("step", (k, n)) while denoising, then ("result", grid image path)."""
        session = self.session(session)
        for name in (x_name, y_name):
            if name not in WEIGHTS:
                raise UsageError(f"sweep weights must be among {WEIGHTS}, got {name!r}")
        if x_name == y_name:
            raise UsageError("choose two different weights for the sweep")
        if not x_values or not y_values:
            raise UsageError("give at least one value for each sweep axis")
        if len(x_values) * len(y_values) > MAX_SWEEP:
            raise UsageError(f"the sweep grid has {len(x_values) * len(y_values)} cells; at most {MAX_SWEEP}")
        self.remember_guidance(session, settings)
        cells = [(x, y) for y in y_values for x in x_values]
        axes = {x_name: [x for x, _ in cells], y_name: [y for _, y in cells]}
        call, _ = self._call(session, settings, len(cells), **axes)
        for kind, value in self._denoise(session, call):
            if kind == "step":
                yield "step", value[:2]
                continue
            grid = labelled_grid(value, x_name, x_values, y_name, y_values)
            folder = session.root / "sweeps"
            folder.mkdir(exist_ok=True)
            path = folder / f"{int(time.time() * 1000)}-{x_name}-{y_name}.png"
            save_png(grid, path)
            yield "result", str(path)


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
