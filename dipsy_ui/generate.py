"""The batch generation job: about 200 DIPSY images per class, resumable and shardable.

Every image is a pure function of (settings, few-shot set, base seed, class, index): its seed
derives from the last three, and that seed drives every random choice for it (positive image,
negative class, negative image, adapter-input augmentation, initial noise). So the same settings
give the same images in any order, after any interruption, and on any split across processes.

Output: ``OUT/<class-slug>/<index>.png`` (ImageFolder layout) plus ``OUT/manifest.jsonl`` (one
record per image with everything needed to regenerate it; see :mod:`dipsy_ui.manifest`) and
``OUT/job.json`` (the settings; a re-run with different settings is refused, never mixed in).
Images are written atomically before their manifest lines, so a killed job loses nothing and
lists nothing half-written; re-running skips what the manifest lists.
How a regenerated image compares with the stored one: :mod:`dipsy_ui.reproduce`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import SEED_MAX, GenerationConfig
from .data import FewShotDataset, ImageRecord, resolve_inside
from .errors import JobConflictError, UsageError
from .events import CANCELLED, DONE, PROGRESS, STEP, Event, OnEvent, protocol
from .files import leftover_target, write_atomic
from .images import save_png
from .manifest import append_lines, environment_differences, read_manifest
from .models import ModelSpec, dtype_name
from .reproduce import RegenerationReport, generation_environment
from .similarity import (
    SIMILARITY_FILE,
    SIMILARITY_MODES,
    NegativeSampler,
    SimilarityResult,
    uniform_probabilities,
)

JOB_FILE = "job.json"
# A requested side this many times the models' own size or more is a preset made for other models
# (SD1.5's 512 px on a 32 px world): the models' size is used instead, and the job says so.
FOREIGN_SIZE_RATIO = 4


def item_seed(base_seed: int, class_name: str, index: int) -> int:
    """The seed of one image: a hash of (base seed, class name, index), independent of order.
    53 bits, so that a seed survives a JSON number in any language (a browser rounds beyond 2^53)
    and can be typed back into the app to redraw the image."""
    digest = hashlib.sha256(f"{base_seed}\x00{class_name}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & SEED_MAX


def needs_similarity(mode: str) -> bool:
    """Whether negative mode ``mode`` draws from the class similarity (paper section 3): the
    one rule every caller asks before it computes or loads a similarity."""
    return mode in SIMILARITY_MODES


def negative_sampler(
    dataset: FewShotDataset, mode: str, similarity: SimilarityResult | None
) -> NegativeSampler | None:
    """The negative-class sampler of ``mode`` for the dataset's classes (None for "none").

    "uniform" draws any other class, unless a similarity holding the user's pinned or excluded
    negatives is given (its overrides then apply); "similarity" and "dissimilar" need the
    similarity of exactly these classes (a result computed for one of them serves the other)."""
    if mode == "none":
        return None
    names = list(dataset.class_names)
    dataset.require_classes(2, purpose="negative-class sampling (or choose the negative rule 'none')")
    if similarity is None:
        if needs_similarity(mode):
            raise UsageError(
                f"the negative rule {mode!r} needs the class similarity: compute it first "
                "(or choose 'uniform' or 'none')"
            )
        return NegativeSampler(names, uniform_probabilities(len(names)))
    if list(similarity.names) != names:
        raise UsageError(
            f"the similarity was computed for classes {similarity.names}, the dataset has {names}: "
            "compute it again"
        )
    return similarity.with_mode(mode).sampler()


def native_size(pipe) -> int:
    """The side, in pixels, the loaded models were trained at (512 for SD1.5)."""
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def fit_to_models(config: GenerationConfig, pipe) -> tuple[GenerationConfig, str | None]:
    """``config`` with a size the loaded models can draw, and why it changed (None if it did not).

    A preset holds a size for the models it was made for: the paper's presets ask for SD1.5's
    512 px, which on a 32 px world costs 256 times the work of its native size and draws nothing
    better. A side :data:`FOREIGN_SIZE_RATIO` times the models' own or more becomes theirs."""
    side = native_size(pipe)
    if max(config.height, config.width) < FOREIGN_SIZE_RATIO * side:
        return config, None
    note = (
        f"the loaded models draw {side}x{side} px; the settings' {config.width}x{config.height} "
        f"is for other models (e.g. SD1.5), so {side}x{side} is used"
    )
    return replace(config, height=side, width=side), note


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: batch ``k`` belongs to process ``k % count``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in [0, {self.count}), got {self.index}")

    @classmethod
    def from_env(cls) -> Shard:
        """Read ``RANK``/``WORLD_SIZE`` as set by ``accelerate launch`` and ``torchrun``."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


@dataclass(frozen=True)
class JobItem:
    class_name: str
    index: int
    file: str  # relative to the output folder: "<class-slug>/<index>.png"
    seed: int


@dataclass(frozen=True)
class Pick:
    """The images of one generated image, drawn from its seed (or chosen by the user)."""

    positive_index: int  # into the class's few-shot images
    positive: ImageRecord
    negative_class: str | None  # None: no negative image
    negative_index: int | None
    negative: ImageRecord | None


def pick_images(
    dataset: FewShotDataset,
    sampler: NegativeSampler | None,
    class_name: str,
    seed: int,
    positive_index: int | None = None,
    negative_class: str | None = None,
    negative_index: int | None = None,
) -> Pick:
    """Positive image, negative class and negative image of one image, from its own seed
    (REFERENCE section 3: a uniform positive, a negative class from the sampler's row, a uniform
    negative image). A choice given by the caller replaces the draw, but every draw is still made,
    so the choices left free are the ones the batch job draws for this seed."""
    generator = torch.Generator().manual_seed(seed)
    positives = dataset.images(class_name)
    drawn = int(torch.randint(len(positives), (), generator=generator))
    positive_index = drawn if positive_index is None else positive_index
    if not 0 <= positive_index < len(positives):
        raise UsageError(
            f"positive image {positive_index} does not exist; {class_name!r} has {len(positives)}"
        )
    drawn_class = sampler.sample(class_name, generator) if sampler is not None else None
    negative_class = drawn_class if negative_class is None else negative_class
    if negative_class is None:
        return Pick(positive_index, positives[positive_index], None, None, None)
    if negative_class == class_name:
        raise UsageError(f"a class cannot be its own negative: {class_name!r}")
    negatives = dataset.images(negative_class)
    drawn = int(torch.randint(len(negatives), (), generator=generator))
    negative_index = drawn if negative_index is None else negative_index
    if not 0 <= negative_index < len(negatives):
        raise UsageError(
            f"negative image {negative_index} does not exist; {negative_class!r} has {len(negatives)}"
        )
    return Pick(
        positive_index, positives[positive_index], negative_class, negative_index, negatives[negative_index]
    )


def render(
    pipe,
    config: GenerationConfig,
    prompts: list[str],
    picks: list[Pick],
    seeds: list[int],
    on_step: Callable | None = None,
    **per_row,
) -> list[Image.Image] | None:
    """The images of ``picks`` (batch job, preview, sweep) through :func:`pipeline_call`;
    None when interrupted."""
    positives = [pick.positive.image for pick in picks]
    negatives = [pick.negative.image if pick.negative else None for pick in picks]
    return pipeline_call(pipe, config, prompts, positives, negatives, seeds, on_step, **per_row).images


def pipeline_call(pipe, config: GenerationConfig, prompts: list[str], positives: list, negatives: list,
                  seeds: list[int], on_step: Callable | None = None, **options):  # fmt: skip
    """The one pipeline call every image goes through (batch job, preview, sweep, explain): the
    settings' weights, scale, steps, sampler, size and adapter-input augmentation, each row
    seeded by its own generator. ``options`` override a weight with one value per row (a sweep,
    Eq. 9's ladder) or pass the pipeline's own options (``trace_every``). Returns the
    pipeline's output (its images None when interrupted)."""
    pipe.use_scheduler(config.scheduler)
    weights = {name: getattr(config, name) for name in ("w_text", "w_pos", "w_neg", "ip_adapter_scale")}
    return pipe(
        prompts,
        positives,
        negatives,
        num_inference_steps=config.steps,
        height=config.height,
        width=config.width,
        generator=[torch.Generator(pipe._execution_device).manual_seed(seed) for seed in seeds],
        augment=config.augment,
        callback_on_step_end=on_step,
        **(weights | options),
    )


def recorded_run(out_dir: str | Path) -> tuple[GenerationConfig, ModelSpec]:
    """The generation settings and model sources a run recorded in ``OUT/job.json``
    (images per class and batch size are not part of a run's identity: defaults stand in)."""
    path = Path(out_dir) / JOB_FILE
    if not path.is_file():
        raise UsageError(f"{out_dir} holds no generation run ({JOB_FILE} is missing)")
    job = json.loads(path.read_text(encoding="utf-8"))
    return GenerationConfig(**job["generation"]), ModelSpec(**job["models"])


def describe_differences(recorded: dict, mine: dict) -> list[str]:
    """The differing fingerprint fields as a person reads them: a generation setting with both
    values ("steps: recorded 20, now 2"), anything else by name ("classes")."""
    words = {
        "classes": "different classes (or other images in them)",
        "models": "other model sources",
        "dtype": f"another dtype (recorded {recorded.get('dtype')}, now {mine.get('dtype')})",
        "negative_probabilities": "other negative-class probabilities (similarity, temperature or pins)",
    }
    lines = []
    for name in differing_fields(recorded, mine):
        section, _, key = name.partition(".")
        if section == "generation" and key:
            lines.append(f"{key}: recorded {recorded[section].get(key)!r}, now {mine[section].get(key)!r}")
        else:
            lines.append(words.get(name, name))
    return lines


def differing_fields(recorded: dict, mine: dict, prefix: str = "") -> list[str]:
    """The fingerprint fields that differ, nested settings named to the leaf
    ("generation.steps", "classes")."""
    fields = []
    for key in sorted(recorded.keys() | mine.keys()):
        theirs, ours = recorded.get(key), mine.get(key)
        if theirs == ours:
            continue
        if key == "generation" and isinstance(theirs, dict) and isinstance(ours, dict):
            fields += differing_fields(theirs, ours, f"{prefix}{key}.")
        else:
            fields.append(f"{prefix}{key}")
    return fields


class GenerationJob:
    """The one generation setup: a few-shot set, settings and (where the negative rule needs it)
    the class similarity, made into a ready job bound to its run folder.

    It owns every rule of a run: the size the loaded models draw (:func:`fit_to_models`), the
    negative sampler (:func:`negative_sampler`), each image's picks (:func:`pick_images`) and
    pipeline call (:func:`render`), and the folder's record: ``job.json`` (what must match for a
    resume, which fields may change) and ``similarity.json`` (the similarity sampled from, kept in
    the run folder so that the run regenerates from its own folder). The CLI, the app, the
    experiment runner and the preview all go through it."""

    def __init__(
        self,
        pipe,
        dataset: FewShotDataset,
        config: GenerationConfig,
        out_dir: str | Path | None,
        spec: ModelSpec,
        similarity: SimilarityResult | None = None,
        shard: Shard | None = None,
    ):
        self.pipe, self.dataset, self.spec = pipe, dataset, spec
        self.config, self.note = fit_to_models(config, pipe)
        self.out_dir = Path(out_dir) if out_dir is not None else None  # None: a preview, no folder
        self.shard = shard or Shard()
        self.sampler = negative_sampler(dataset, self.config.negatives, similarity)
        # The similarity the sampler follows; a plain uniform rule follows none.
        self.similarity = similarity if self.sampler is not None else None

    @classmethod
    def from_folder(
        cls, pipe, dataset: FewShotDataset, out_dir: str | Path, spec: ModelSpec | None = None
    ) -> GenerationJob:
        """The job of an existing run, from what its folder recorded (settings, model sources,
        similarity); ``spec`` stands in for the recorded sources (the same weights elsewhere)."""
        config, recorded = recorded_run(out_dir)
        similarity = None
        if (Path(out_dir) / SIMILARITY_FILE).is_file():
            similarity = SimilarityResult.load(out_dir)
        elif needs_similarity(config.negatives):
            raise UsageError(
                f"the run {Path(out_dir).name!r} drew its negatives from a class similarity that its "
                f"folder does not hold ({SIMILARITY_FILE} is missing): copy the similarity.json it was "
                "made with into the run folder"
            )
        return cls(pipe, dataset, config, out_dir, spec or recorded, similarity)

    # -- plan ------------------------------------------------------------------------------

    def batches(self) -> list[list[JobItem]]:
        """This shard's batches, in a fixed order. A batch holds consecutive indices of one
        class, so its composition (which affects the last bits of a batched computation) does
        not depend on the shard or on other classes."""
        size, per_class = self.config.batch_size, self.config.images_per_class
        everything = []
        for name in self.dataset.class_names:
            items = [self._item(name, i) for i in range(per_class)]
            everything += [items[start : start + size] for start in range(0, per_class, size)]
        return everything[self.shard.index :: self.shard.count]

    def _item(self, class_name: str, index: int) -> JobItem:
        digits = max(5, len(str(self.config.images_per_class - 1)))
        file = f"{self.dataset.slug(class_name)}/{index:0{digits}d}.png"
        return JobItem(class_name, index, file, item_seed(self.config.seed, class_name, index))

    def fingerprint(self) -> dict:
        """What must match for images in one folder to belong to one run (``job.json``)."""
        settings = self.config.to_dict()
        for free in ("images_per_class", "batch_size"):  # may change between runs
            settings.pop(free)
        return {
            "generation": settings,
            "models": self.spec.to_dict(),
            "dtype": dtype_name(self.pipe.unet.dtype),
            "classes": {c.name: [record.digest for record in c.images] for c in self.dataset.classes},
            "negative_probabilities": None
            if self.sampler is None
            else np.round(self.sampler.probabilities.numpy(), 6).tolist(),
        }

    def _check_folder(self) -> bool:
        """Whether the folder already holds this run; raises if it holds a different one."""
        path = self.out_dir / JOB_FILE
        if not path.exists():
            return False
        mine, theirs = self.fingerprint(), json.loads(path.read_text(encoding="utf-8"))
        if theirs != mine:
            # The folder by its name only: the message reaches the page, server paths must not.
            raise JobConflictError(
                f"the folder {self.out_dir.name!r} holds images generated with other settings: "
                + "; ".join(describe_differences(theirs, mine))
                + ". Resume with the recorded settings, or choose another output folder (nothing was changed)."
            )
        return True

    def claim(self) -> None:
        """Make the folder this run's (``job.json``, and the similarity sampled from), or check
        that it already is; raises :class:`JobConflictError` (touching nothing) when it holds
        another run."""
        if not self._check_folder():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.similarity is not None:
                from .heatmap import save_similarity

                save_similarity(self.similarity, self.out_dir)
            write_atomic(self.out_dir / JOB_FILE, json.dumps(self.fingerprint(), indent=1, sort_keys=True))

    def _remove_leftovers(self) -> None:
        """Delete the hidden temporary files that this job's atomic writes left when a crash cut
        them short: those of this shard's images and, in a run of one process, of ``job.json``.
        In a sharded run another process may be writing its own files at this moment, so only
        this shard's are touched; files that are not such leftovers never are."""
        own: dict[Path, set[str]] = {self.out_dir: {JOB_FILE} if self.shard.count == 1 else set()}
        for batch in self.batches():
            for item in batch:
                slug, name = item.file.split("/")
                own.setdefault(resolve_inside(self.out_dir, slug), set()).add(name)
        for folder, names in own.items():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if leftover_target(path.name) in names and path.is_file():
                    path.unlink(missing_ok=True)

    # -- one batch ----------------------------------------------------------------------------

    def pick(self, item: JobItem) -> Pick:
        """Positive image, negative class and negative image of an item, from its own seed."""
        return pick_images(self.dataset, self.sampler, item.class_name, item.seed)

    def _generate(
        self, batch: list[JobItem], on_step: Callable | None
    ) -> tuple[list[Image.Image] | None, list[dict]]:
        picks = [self.pick(item) for item in batch]
        records = [
            {
                "file": item.file,
                "class_name": item.class_name,
                "index": item.index,
                "seed": item.seed,
                "prompt": self.config.prompt(item.class_name),
                "positive": pick.positive.source,
                "negative_class": pick.negative_class,
                "negative": pick.negative.source if pick.negative else None,
                # The batch's composition decides the last bits of every image in it.
                "batch": [member.file for member in batch],
                "batch_position": position,
            }
            for position, (item, pick) in enumerate(zip(batch, picks, strict=True))
        ]
        prompts = [record["prompt"] for record in records]
        return render(self.pipe, self.config, prompts, picks, [item.seed for item in batch], on_step), records

    def _record_settings(self) -> dict:
        settings = {
            key: value
            for key, value in self.config.to_dict().items()
            if key not in ("template", "seed", "images_per_class")
        }
        environment = generation_environment(self.pipe._execution_device, self.pipe.unet.dtype)
        return settings | environment | {"models": self.spec.to_dict()}

    # -- run ------------------------------------------------------------------------------------

    def run(self, on_event: OnEvent | None = None, cancel: threading.Event | None = None) -> Event:
        """Generate every image of this shard that the manifest does not list yet; returns the
        last event ("done", or "cancelled" with what exists).

        ``on_event`` receives :class:`~dipsy_ui.events.Event` s counting this shard's images
        (``step`` of ``total``, including those of earlier runs): a "step" per denoising step of
        the current batch (payload: ``preview``, the batch's (B, h/8, w/8, 3) latent previews,
        ``denoising_step``, ``denoising_steps`` and ``eta_s``), a "progress" per batch written
        (payload: ``files`` and ``eta_s``), then "done" or "cancelled". Setting ``cancel`` stops
        at the next denoising step (the unfinished batch is dropped, everything written stays valid).
        """
        on_event, cancel = protocol(on_event, cancel)
        self.claim()
        self._remove_leftovers()
        batches = self.batches()
        done_files = set(read_manifest(self.out_dir))
        total = sum(len(batch) for batch in batches)
        done = sum(item.file in done_files for batch in batches for item in batch)
        started, generated = time.perf_counter(), 0
        common = self._record_settings()

        def eta() -> float | None:
            return (total - done) * (time.perf_counter() - started) / generated if generated else None

        def on_step(pipe, step, timestep, kwargs):
            if cancel.is_set():
                pipe.request_interrupt()
            payload = {"preview": kwargs["preview"], "denoising_step": step + 1,
                       "denoising_steps": self.config.steps, "eta_s": eta()}  # fmt: skip
            on_event(
                Event(
                    STEP, done, total, f"{done}/{total} images (step {step + 1}/{self.config.steps})", payload
                )
            )
            return {}

        for batch in batches:
            missing = [item for item in batch if item.file not in done_files]
            if not missing:
                continue
            if cancel.is_set():
                break
            images, records = self._generate(batch, on_step)
            if images is None:
                break
            new = {item.file for item in missing}
            for record, image in zip(records, images, strict=True):
                if record["file"] in new:
                    path = resolve_inside(self.out_dir, *record["file"].split("/"))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    save_png(image, path, {"dipsy": json.dumps(record | common, sort_keys=True)})
            append_lines(self.out_dir, (record | common for record in records if record["file"] in new))
            done, generated = done + len(new), generated + len(new)
            payload = {"files": tuple(sorted(new)), "eta_s": eta()}
            on_event(Event(PROGRESS, done, total, f"{done}/{total} images", payload))
        final = Event(DONE if done == total else CANCELLED, done, total, f"{done}/{total} images")
        on_event(final)
        return final

    def regenerate(self, file: str, batch_size: int | None = None) -> RegenerationReport:
        """Recompute one listed image from its manifest record and compare it with the stored file.

        By default the image's batch is recomputed as it was generated (the same images in the same
        order): on the same hardware and software that gives the same pixels, bit for bit. With
        ``batch_size``, the image is recomputed in the batch a run with that batch size would have
        put it in (``1``: alone), which matches only within tolerance where the kernels round
        differently with the batch shape.
        """
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        if not self._check_folder():
            raise UsageError(f"{self.out_dir} holds no generation run ({JOB_FILE} is missing)")
        records = read_manifest(self.out_dir)
        if file not in records:
            raise UsageError(f"{file} is not in the manifest of {self.out_dir}")
        stored = resolve_inside(self.out_dir, *file.split("/"))
        if not stored.is_file():
            raise UsageError(f"{file} is in the manifest of {self.out_dir} but its image is missing")
        record = records[file]
        target = JobItem(record["class_name"], record["index"], file, record["seed"])
        if batch_size is None:
            members = [records[member] for member in record["batch"]]
            batch = [JobItem(r["class_name"], r["index"], r["file"], r["seed"]) for r in members]
        else:
            start = target.index - target.index % batch_size
            batch = [
                target if i == target.index else self._item(target.class_name, i)
                for i in range(start, start + batch_size)
            ]
        images, _ = self._generate(batch, None)
        now = generation_environment(self.pipe._execution_device, self.pipe.unet.dtype)
        differing = environment_differences(record, now | {"batch": [item.file for item in batch]})
        with Image.open(stored) as original:
            return RegenerationReport.judge(original, images[batch.index(target)], differing)
