"""The experiment run: every (arm, shots, seed) cell, resumable, with progress events and cancel.

A cell is a normal generation run (:class:`~dipsy_ui.generate.GenerationJob`) plus a normal
training run (:func:`~dipsy_ui.classifier.train.train`) on the seed's few-shot subset, so
any cell can be opened in the Studio, curated or regenerated. The output folder::

    OUT/experiment.json                  the resolved spec, models and data (a rerun must match)
    OUT/results.jsonl                    one record per finished cell, in plan order
    OUT/subsets/seed-S/shots-K/          the few-shot subset (ImageFolder)
    OUT/runs/seed-S/shots-K/gen-<key>/   a generation run (job.json, manifest.jsonl, images)
    OUT/cells/<arm>/shots-K/seed-S/      the classifier (adapter, metrics.json, plots)
    OUT/summary.md ...                   the report (dipsy_ui.experiment.report)

A generation run is keyed by its settings (the arm's, with the seed) and models, so arms that
generate alike share one run; "real only" generates nothing. A cell is finished when its line is
in ``results.jsonl`` (rewritten atomically, one line more per cell) and is never recomputed; a
rerun resumes the generation where it stopped and trains an unfinished cell again from scratch.
Training and generation are seeded, so an interrupted experiment ends with the same records as
an uninterrupted one (only the wall times differ).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..classifier.data import check_classes, labelled_images
from ..classifier.train import train
from ..config import GenerationConfig, TrainConfig
from ..data import class_slugs, load_dataset
from ..errors import JobConflictError
from ..events import CANCELLED, DONE, NOTE, PROGRESS, Event, OnEvent, protocol
from ..files import write_atomic
from ..generate import GenerationJob, needs_similarity
from ..models import ModelSpec, Runtime, dtype_name, load_clip, load_pipeline, resolve_runtime
from ..similarity import compute_similarity
from ..world.worlds import get_world
from .report import write_report
from .spec import DEMO_DATA, Arm, ExperimentSpec
from .stats import accuracy_margin
from .subsets import Pool, check_shots, draw_extra, draw_subset, hold_out, write_image_folder, write_once

EXPERIMENT_FILE = "experiment.json"
RESULTS_FILE = "results.jsonl"
# The demo digits stand in for a user's images: this many per class to draw subsets from.
DEMO_IMAGES_PER_CLASS = 16


@dataclass(frozen=True)
class Cell:
    """One arm on one seed's subset of ``shots`` images per class."""

    arm: Arm
    shots: int
    seed: int

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.arm.name, self.shots, self.seed)


def cell_state(event: Event) -> str:
    """A running cell's state in words, from an experiment's "progress" event: "starting",
    "generating 12/40 images", "training step 3/30"."""
    payload = event.payload or {}
    stage, inner = payload.get("stage"), payload.get("event")
    if stage == "generation" and inner is not None:
        return f"generating {inner.step}/{inner.total} images"
    if stage == "training" and inner is not None:
        return f"training step {inner.step}/{inner.total}"
    return "starting" if stage == "cell" else event.message


def plan(spec: ExperimentSpec) -> list[Cell]:
    """Every cell, in the order they run: by seed, then shots, then arm."""
    return [Cell(arm, shots, seed) for seed in spec.seeds for shots in spec.shots for arm in spec.arms]


def generation_key(config: GenerationConfig, models: ModelSpec) -> str:
    """What a generation run folder is named by: a hash of its settings (seed included) and models."""
    settings = json.dumps({"generation": config.to_dict(), "models": models.to_dict()}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:12]


def read_results(out_dir: str | Path) -> list[dict]:
    """The records of the finished cells, in the order they finished."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Experiment:
    """Run an :class:`ExperimentSpec` into ``out_dir`` on ``models`` (default: the spec's)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        out_dir: str | Path,
        models: ModelSpec | None = None,
        runtime: Runtime | None = None,
        pipeline=None,
        clip=None,
    ):
        self.spec, self.out_dir = spec, Path(out_dir)
        self.models = models or spec.model_spec()
        self.runtime = runtime or resolve_runtime()
        self.cells = plan(spec)
        self.warnings: list[str] = []
        self._slugs = class_slugs(arm.name for arm in spec.arms)
        # Models already loaded from ``models`` (the Studio's, shared with its other jobs) are
        # used as they are; otherwise each is loaded on first need. Training loads its own CLIP
        # in every cell: LoRA is injected in place.
        self._pipe, self._clip = pipeline, clip

    # -- data ----------------------------------------------------------------------------------

    def _prepare(self) -> tuple[Pool, Path]:
        """The pool subsets are drawn from and the test folder; claims ``out_dir`` for this spec."""
        spec = self.spec
        source, test = Path(spec.data), spec.test and Path(spec.test)
        if spec.data in DEMO_DATA:
            world = get_world(DEMO_DATA[spec.data])
            per_class = DEMO_IMAGES_PER_CLASS
            if any(arm.oracle for arm in spec.arms):  # room for the oracle's extra real images
                per_class = max(per_class, max(spec.shots) + spec.generation.images_per_class)
            # Written once: a folder holding another experiment must be refused before it changes.
            demo = write_once(
                self.out_dir / "data",
                lambda folder: world.write_demo_data(folder, per_class, size=spec.generation.height),
            )
            source, test = demo / "train", test or demo / "test"
        dataset = load_dataset(source)
        pool = {c.name: list(c.images) for c in dataset.classes}
        digests = {name: sorted(record.digest for record in records) for name, records in pool.items()}
        self.warnings = []
        if spec.held_out_per_class:
            pool, held_out = hold_out(pool, spec.held_out_per_class)
            count = spec.held_out_per_class * len(held_out)
            self.warnings.append(
                f"the test set is held out of your images: {spec.held_out_per_class} per class, {count} in "
                f"all, so one accuracy is known only to within about +-{100 * accuracy_margin(count):.0f} "
                "points; differences between arms need several seeds to show, and a separate test set "
                "of a few hundred images per class measures them better"
            )
        check_shots(pool, max(spec.shots))
        self._claim(digests)  # after every check, so a corrected spec may use the same folder
        if spec.held_out_per_class:
            test = write_image_folder(self.out_dir / "test", held_out)
        elif test.suffix.lower() == ".zip":
            test = write_image_folder(
                self.out_dir / "test", {c.name: c.images for c in load_dataset(test).classes}
            )
        # Checked now rather than at the first training, which may come after hours of generation.
        check_classes(list(pool), sorted({name for _, name in labelled_images(test, "test")}), "test")
        return pool, test

    def _claim(self, data: dict) -> None:
        """Record what this folder's results come from; refuse a folder holding another experiment."""
        mine = {
            "spec": self.spec.to_dict(),
            "models": self.models.to_dict(),
            "dtype": dtype_name(self.runtime.dtype),
            "data": data,
        }
        path = self.out_dir / EXPERIMENT_FILE
        if path.is_file():
            theirs = json.loads(path.read_text(encoding="utf-8"))
            if theirs != mine:
                different = sorted(key for key in mine | theirs if mine.get(key) != theirs.get(key))
                raise JobConflictError(
                    f"{self.out_dir} holds an experiment with different {', '.join(different)}; "
                    "choose another --out folder (nothing was changed)"
                )
        else:
            write_atomic(path, json.dumps(mine, indent=1, sort_keys=True))

    # -- one cell --------------------------------------------------------------------------------

    def _generate(self, cell: Cell, subset: Path, emit: Callable, cancel: threading.Event) -> Path | None:
        """The cell's synthetic set (shared by every arm that generates alike); None when cancelled."""
        config = replace(cell.arm.generation, seed=cell.seed)
        folder = self._folder("runs", cell) / f"gen-{generation_key(config, self.models)}"
        dataset = load_dataset(subset)
        similarity = None
        if needs_similarity(config.negatives):
            if self._clip is None:
                self._clip = load_clip(self.models, self.runtime)
            similarity = compute_similarity(
                self._clip,
                dataset.image_lists(),
                config.temperature,
                mode=config.negatives,
                cache_dir=self.out_dir / ".cache",
            )
        if self._pipe is None:
            self._pipe = load_pipeline(self.models, self.runtime)
        job = GenerationJob(self._pipe, dataset, config, folder, self.models, similarity)
        final = job.run(lambda event: emit("generation", event), cancel)
        return folder if final.kind == DONE else None

    def _train_config(self, cell: Cell, classes: int) -> TrainConfig:
        config = replace(cell.arm.train, seed=cell.seed)
        if cell.arm.generation is None:
            # As `compare` does: real only trains for the budget of the experiment's synthetic set.
            config = config.with_budget_of(self.spec.generation.images_per_class * classes)
        return config

    def _run_cell(
        self, cell: Cell, pool: Pool, test: Path, emit: Callable, cancel: threading.Event
    ) -> dict | None:
        """Generate and train one cell; its record, or None when cancelled."""
        subset = draw_subset(pool, cell.shots, cell.seed)
        subset_dir = write_image_folder(self._folder("subsets", cell), subset)
        started = time.perf_counter()
        synthetic = None
        if cell.arm.oracle:
            extra = draw_extra(pool, cell.seed, max(self.spec.shots), self.spec.generation.images_per_class)
            synthetic = write_image_folder(self.out_dir / "oracle" / f"seed-{cell.seed}", extra)
        elif cell.arm.generation is not None:
            synthetic = self._generate(cell, subset_dir, emit, cancel)
            if synthetic is None:
                return None
        generated = time.perf_counter()
        out = (
            self.out_dir / "cells" / self._slugs[cell.arm.name] / f"shots-{cell.shots}" / f"seed-{cell.seed}"
        )
        shutil.rmtree(out, ignore_errors=True)  # what an interrupted attempt left: train again from scratch
        result = train(
            subset_dir, out, self.models, synthetic=synthetic, test=test,
            config=self._train_config(cell, len(subset)), runtime=self.runtime,
            on_event=lambda event: emit("training", event), cancel=cancel,
        )  # fmt: skip
        if result.cancelled:
            return None
        return {
            "arm": cell.arm.name,
            "shots": cell.shots,
            "seed": cell.seed,
            "top1": result.test_top1,
            "per_class": result.metrics["epochs"][-1]["test"]["per_class"],
            "zero_shot_top1": result.zero_shot_top1,
            "images": {
                "real": sum(len(records) for records in subset.values()),
                "synthetic": 0 if synthetic is None else len(labelled_images(synthetic, "synthetic")),
            },
            "subset": self._relative(subset_dir),
            "generation": synthetic and self._relative(synthetic),
            "classifier": self._relative(out),
            "wall_s": {"generation": generated - started, "training": time.perf_counter() - generated},
        }

    def _folder(self, kind: str, cell: Cell) -> Path:
        return self.out_dir / kind / f"seed-{cell.seed}" / f"shots-{cell.shots}"

    def _relative(self, path: Path) -> str:
        """How a record names a folder: relative to the experiment, so the folder can move."""
        return path.relative_to(self.out_dir).as_posix()

    # -- the run ---------------------------------------------------------------------------------

    def run(self, on_event: OnEvent | None = None, cancel: threading.Event | None = None) -> Event:
        """Run every cell that ``results.jsonl`` does not list yet, then write the report; returns
        the last event ("done", or "cancelled" with the finished cells).

        ``on_event`` receives :class:`~dipsy_ui.events.Event` s counting cells (``step`` finished of
        ``total``, including earlier runs): a "note" per warning, "progress" events whose payload
        names the ``cell`` (arm, shots, seed) and its ``stage``: "cell" (it starts),
        "generation" or "training" (with that work's own ``event``) or "result" (it finished, its
        ``record``), then "done" or "cancelled". Setting ``cancel`` stops the running generation
        at its next denoising step or the running training at its next step (that cell is not
        recorded; a rerun continues). The report (rewritten after each finished cell) covers the
        finished cells.
        """
        on_event, cancel = protocol(on_event, cancel)
        pool, test = self._prepare()
        records = read_results(self.out_dir)
        finished = {(r["arm"], r["shots"], r["seed"]) for r in records}
        total = len(self.cells)
        for warning in self.warnings:
            on_event(Event(NOTE, len(records), total, warning))
        for cell in self.cells:
            if cell.key in finished:
                continue
            if cancel.is_set():
                break

            def emit(stage: str, event: Event | None = None, cell=cell, **details) -> None:
                payload = {"cell": cell.key, "stage": stage, "event": event} | details
                on_event(Event(PROGRESS, len(records), total, stage, payload))

            emit("cell")
            record = self._run_cell(cell, pool, test, emit, cancel)
            if record is None:
                break
            records.append(record)
            lines = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
            write_atomic(self.out_dir / RESULTS_FILE, lines)
            # The report as cells finish, so a viewer (or an interrupted run) has the summary so far.
            write_report(self.out_dir, self.spec, records, self.warnings)
            emit("result", record=record)
        if records:
            write_report(self.out_dir, self.spec, records, self.warnings)
        final = Event(DONE if len(records) == total else CANCELLED, len(records), total)
        on_event(final)
        return final
