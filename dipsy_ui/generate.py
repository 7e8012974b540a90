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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import GenerationConfig
from .data import FewShotDataset, ImageRecord, resolve_inside
from .errors import JobConflictError, UsageError
from .files import leftover_target, write_atomic
from .images import save_png
from .manifest import append_lines, environment_differences, read_manifest
from .models import ModelSpec, dtype_name
from .reproduce import RegenerationReport, generation_environment
from .similarity import NegativeSampler, SimilarityResult, uniform_probabilities

JOB_FILE = "job.json"


def item_seed(base_seed: int, class_name: str, index: int) -> int:
    """The seed of one image: a hash of (base seed, class name, index), independent of order."""
    digest = hashlib.sha256(f"{base_seed}\x00{class_name}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
class JobEvent:
    """Progress of a job. ``kind``: "step" (a denoising step of the current batch, with a
    preview), "batch" (images written), "done" or "cancelled"."""

    kind: str
    done: int  # images of this shard that exist, including earlier runs
    total: int  # images of this shard
    eta_seconds: float | None = None
    step: int = 0
    steps: int = 0
    preview: np.ndarray | None = None  # (B, h/8, w/8, 3) uint8, on "step"
    files: tuple[str, ...] = field(default_factory=tuple)  # written, on "batch"


def recorded_run(out_dir: str | Path) -> tuple[GenerationConfig, ModelSpec]:
    """The generation settings and model sources a run recorded in ``OUT/job.json``
    (images per class and batch size are not part of a run's identity: defaults stand in)."""
    path = Path(out_dir) / JOB_FILE
    if not path.is_file():
        raise UsageError(f"{out_dir} holds no generation run ({JOB_FILE} is missing)")
    job = json.loads(path.read_text(encoding="utf-8"))
    return GenerationConfig(**job["generation"]), ModelSpec(**job["models"])


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
    """Generate the synthetic set of a few-shot dataset with a loaded DipsyPipeline."""

    def __init__(
        self,
        pipe,
        dataset: FewShotDataset,
        config: GenerationConfig,
        out_dir: str | Path,
        spec: ModelSpec,
        similarity: SimilarityResult | None = None,
        shard: Shard | None = None,
    ):
        self.pipe, self.dataset, self.config, self.spec = pipe, dataset, config, spec
        self.out_dir = Path(out_dir)
        self.shard = shard or Shard()
        self.sampler = self._negative_sampler(similarity)

    def _negative_sampler(self, similarity: SimilarityResult | None) -> NegativeSampler | None:
        names = list(self.dataset.class_names)
        if self.config.negatives == "none":
            return None
        self.dataset.require_classes(2, purpose="negative-class sampling")
        if self.config.negatives == "uniform":
            return NegativeSampler(names, uniform_probabilities(len(names)))
        if similarity is None:
            raise ValueError(
                f"negatives={self.config.negatives!r} needs the class similarity: compute it first "
                "(or use 'uniform' or 'none')"
            )
        if list(similarity.names) != names:
            raise ValueError(
                f"the similarity was computed for classes {similarity.names}, the dataset has {names}"
            )
        # A similarity computed for one mode serves the other ("similarity" <-> "dissimilar").
        return similarity.with_mode(self.config.negatives).sampler()

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
                f"the folder {self.out_dir.name!r} holds images generated with different "
                f"{', '.join(differing_fields(theirs, mine))}; choose another output folder (nothing was changed)"
            )
        return True

    def _claim_folder(self) -> None:
        if not self._check_folder():
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

    def _pick(self, item: JobItem) -> tuple[ImageRecord, str | None, ImageRecord | None]:
        """Positive image, negative class and negative image of an item, from its own seed."""
        generator = torch.Generator().manual_seed(item.seed)
        positives = self.dataset.images(item.class_name)
        positive = positives[int(torch.randint(len(positives), (), generator=generator))]
        if self.sampler is None:
            return positive, None, None
        negative_class = self.sampler.sample(item.class_name, generator)
        negatives = self.dataset.images(negative_class)
        return (
            positive,
            negative_class,
            negatives[int(torch.randint(len(negatives), (), generator=generator))],
        )

    def _generate(
        self, batch: list[JobItem], on_step: Callable | None
    ) -> tuple[list[Image.Image] | None, list[dict]]:
        config, device = self.config, self.pipe._execution_device
        picks = [self._pick(item) for item in batch]
        records = [
            {
                "file": item.file,
                "class_name": item.class_name,
                "index": item.index,
                "seed": item.seed,
                "prompt": config.prompt(item.class_name),
                "positive": positive.source,
                "negative_class": negative_class,
                "negative": negative.source if negative else None,
                # The batch's composition decides the last bits of every image in it.
                "batch": [member.file for member in batch],
                "batch_position": position,
            }
            for position, (item, (positive, negative_class, negative)) in enumerate(
                zip(batch, picks, strict=True)
            )
        ]
        output = self.pipe(
            [record["prompt"] for record in records],
            [positive.image for positive, _, _ in picks],
            [negative.image if negative else None for _, _, negative in picks],
            w_text=config.w_text,
            w_pos=config.w_pos,
            w_neg=config.w_neg,
            ip_adapter_scale=config.ip_adapter_scale,
            num_inference_steps=config.steps,
            height=config.height,
            width=config.width,
            generator=[torch.Generator(device).manual_seed(item.seed) for item in batch],
            augment=config.augment,
            callback_on_step_end=on_step,
        )
        return output.images, records

    def _record_settings(self) -> dict:
        settings = {
            key: value
            for key, value in self.config.to_dict().items()
            if key not in ("template", "seed", "images_per_class")
        }
        environment = generation_environment(self.pipe._execution_device, self.pipe.unet.dtype)
        return settings | environment | {"models": self.spec.to_dict()}

    # -- run ------------------------------------------------------------------------------------

    def run(
        self, on_event: Callable[[JobEvent], None] | None = None, cancel: threading.Event | None = None
    ) -> JobEvent:
        """Generate every image of this shard that the manifest does not list yet.

        ``on_event`` receives progress; setting ``cancel`` stops at the next denoising step
        (the unfinished batch is dropped, everything written stays valid). Returns the last event.
        """
        on_event = on_event or (lambda event: None)
        cancel = cancel or threading.Event()
        self._claim_folder()
        self._remove_leftovers()
        self.pipe.use_scheduler(self.config.scheduler)
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
            on_event(
                JobEvent("step", done, total, eta(), step + 1, self.config.steps, preview=kwargs["preview"])
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
            on_event(JobEvent("batch", done, total, eta(), files=tuple(sorted(new))))
        final = JobEvent(
            "done" if done == total else "cancelled", done, total, 0.0 if done == total else None
        )
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
        self.pipe.use_scheduler(self.config.scheduler)
        images, _ = self._generate(batch, None)
        now = generation_environment(self.pipe._execution_device, self.pipe.unet.dtype)
        differing = environment_differences(record, now | {"batch": [item.file for item in batch]})
        with Image.open(stored) as original:
            return RegenerationReport.judge(original, images[batch.index(target)], differing)
