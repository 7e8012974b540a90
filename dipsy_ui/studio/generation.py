"""The generation service (Generate tab): the batch job of the session's data and settings, and
the one place the app turns them into a :class:`~dipsy_ui.generate.GenerationJob`, so that a
run, a preview and "Open in Guidance" all share its setup."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import GenerationConfig
from ..data import resolve_inside, safe_slug
from ..errors import UsageError
from ..manifest import read_manifest
from .core import Core
from .curation import CurationService
from .data import DataService
from .jobs import Cancelled, Job, Progress, eta_text
from .session import Session, check_name
from .settings import SettingsService
from .similarity import SimilarityService

RULES = {
    "similarity": "similar classes first (softmax of CLIP similarity / T={t:g}, the paper's rule)",
    "dissimilar": "dissimilar classes first (softmax of -similarity / T={t:g}, an ablation)",
    "uniform": "any other class, uniformly",
    "none": "no negative image",
}


@dataclass(frozen=True)
class RunSummary:
    """Where a generation job stands when it ends: images there out of the run's total."""

    name: str  # the run's folder name
    done: int
    total: int


class GenerationService:
    """Runs under ``<session>/runs/<folder>``, generated from the session's data and settings."""

    def __init__(self, core: Core, data: DataService, settings: SettingsService,
                 similarity: SimilarityService, curation: CurationService):  # fmt: skip
        self.core, self.data, self.settings = core, data, settings
        self.similarity, self.curation = similarity, curation

    # -- the one setup --------------------------------------------------------------------------

    def job(self, job: Job, session: Session, config: GenerationConfig, out_dir: Path | None):
        """The :class:`~dipsy_ui.generate.GenerationJob` of the session's data with ``config``,
        for a job holding the model lock: the similarity (with the user's pinned negatives) where
        the negative rule needs it, computed first when missing; the models loaded."""
        from ..generate import GenerationJob, needs_similarity

        dataset = self.data.dataset(session)
        similarity = self.similarity.current(session)
        # The user's pinned negatives live in the similarity, whatever the rule.
        pinned = bool(self.similarity.pinned(session)) and config.negatives != "none"
        if similarity is None and (needs_similarity(config.negatives) or pinned):
            similarity = self.similarity.compute_in(job, session, config.temperature)
        pipe, _ = self.core.models(job)
        return GenerationJob(pipe, dataset, config, out_dir, self.core.spec, similarity)

    def negative_rule(self, session: Session) -> str:
        """The negative rule in force, in words, with the user's pinned negatives."""
        session = self.core.session(session)
        config = session.generation
        line = f"{config.negatives}, {RULES[config.negatives].format(t=config.temperature)}"
        pinned = self.similarity.pinned(session)
        if config.negatives != "none" and pinned:
            pins = ", ".join(f"{name} -> {' / '.join(row)}" for name, row in pinned.items())
            line += f"; pinned: {pins}"
        return line

    def describe(self, session: Session) -> str:
        """The settings a run would use, as the Generate tab shows them."""
        preset, c = self.settings.preset(session), self.settings.generation(session)
        return (f"**Settings** (from the preset `{preset}` and the Guidance tab): prompt `{c.template}`, "
                f"weights text {c.w_text:g} / positive {c.w_pos:g} / negative {c.w_neg:g}, adapter scale "
                f"{c.ip_adapter_scale:g}, {c.steps} steps, {c.width}x{c.height}, augmentation "
                f"{'on' if c.augment else 'off'}, seed {c.seed}. **Negatives**: {self.negative_rule(session)}.")  # fmt: skip

    # -- the batch job --------------------------------------------------------------------------

    def generate(
        self, session: Session, images_per_class: int, batch_size: int, folder: str
    ) -> Iterator[Progress]:
        """Generate (or resume) the run in ``folder`` as a job: "step" events carry the current
        batch's denoising previews side by side, "progress" events each written batch, and the
        end a :class:`RunSummary` (what a cancelled run kept stays valid: Resume continues). A
        folder holding a run made with other settings is refused (JobConflictError) before
        anything changes, and the current run stays the current run."""
        session = self.core.session(session)
        self.data.dataset(session)  # refuses a session without data now, not in the job
        config = replace(
            session.generation, images_per_class=int(images_per_class), batch_size=int(batch_size)
        )
        out_dir = self.run_dir(session, folder)
        running = session.jobs.running(("generate",))
        if running is not None:  # two writers in one run folder would mix their batches
            raise UsageError(
                f"a generation is already running in this session (folder {running.request['folder']!r}): "
                "follow it here, or Cancel it first"
            )
        request = {"per_class": int(images_per_class), "batch_size": int(batch_size), "folder": out_dir.name}

        def work(job: Job) -> RunSummary:
            run = self.job(job, session, config, out_dir)
            run.claim()
            self.curation.select(session, out_dir)
            if run.note:
                job.progress(0, 0, f"Note: {run.note}.")
            last = run.run(lambda event: job.relay(event, progress_line(event)), job.cancel)
            summary = RunSummary(out_dir.name, last.step, last.total)
            if last.kind == "cancelled":
                raise Cancelled(summary, f"Cancelled: {last.step} / {last.total} images in {out_dir.name} "
                                         "(Resume continues where it stopped).")  # fmt: skip
            return summary

        return self.core.run_job(session, "generate", work, request=request)

    def attach(self, session: Session):
        """The session's running generation, followed again (after a refresh, in a second tab):
        ``(request, events)`` with the form it was started with, or None."""
        return self.core.attach(session, ("generate",))

    def current_folder(self, session: Session) -> str | None:
        """The current run's folder name when it is one of the session's own runs (a Resume
        continues it), else None."""
        run_dir = self.core.session(session).run.run_dir
        return run_dir.name if run_dir is not None and run_dir.parent.name == "runs" else None

    def cancel(self, session: Session) -> bool:
        return self.core.cancel(session, ("generate",))

    def use_recorded(self, session: Session, folder: str) -> GenerationConfig:
        """Make the run's recorded generation settings the session's (to resume it as it began)."""
        from ..generate import recorded_run

        session = self.core.session(session)
        out_dir = self.run_dir(session, folder)
        if not (out_dir / "job.json").is_file():
            raise UsageError(f"the folder {folder!r} has no recorded settings (no run was started there)")
        recorded, _ = recorded_run(out_dir)
        return self.settings.use_recorded(session, recorded)

    def free_folder(self, session: Session, folder: str) -> str:
        """A folder name like ``folder`` that no run uses yet: "run-1" -> "run-2"."""
        session = self.core.session(session)
        base = re.sub(r"-\d+$", "", safe_slug(check_name(folder, "output folder name"))) or "run"
        runs = session.root / "runs"
        taken = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
        return next(f"{base}-{n}" for n in range(1, len(taken) + 2) if f"{base}-{n}" not in taken)

    def run_dir(self, session: Session, folder: str) -> Path:
        name = safe_slug(check_name(folder, "output folder name"))
        return resolve_inside(self.core.session(session).root, "runs", name)

    def run_files(self, session: Session, limit: int = 48) -> list[tuple[str, str]]:
        """The newest images of the current run, for the live gallery, captioned with their
        class and seed (the seed redraws the image in the Guidance tab)."""
        run_dir = self.core.session(session).run.run_dir
        if run_dir is None:
            return []
        records = list(read_manifest(run_dir).values())[-limit:]
        return [
            (str(run_dir / r["file"]), f"{r['class_name']} · seed {r['seed']}") for r in reversed(records)
        ]

    def manifest_file(self, session: Session, path: str) -> str:
        """The manifest's name of an image of the current run given by its path (a gallery's)."""
        run_dir = self.core.session(session).run.run_dir
        return Path(path).relative_to(run_dir).as_posix() if run_dir is not None else ""

    # -- a generated image, back in the Guidance tab --------------------------------------------

    def open_in_guidance(self, session: Session, file: str) -> dict:
        """What made one image of the current run (``file`` as its manifest names it), for the
        Guidance tab to redraw it: its class, the indices of its positive and negative images in
        the session's data, its negative class and seed, from the run's own record; the run's
        recorded settings become the session's (weights, steps, size, augmentation), since each
        image is a pure function of them all."""
        from ..generate import GenerationJob, JobItem

        session = self.core.session(session)
        run_dir = self.curation.current_run(session)
        records = read_manifest(run_dir)
        if file not in records:
            raise UsageError(f"{file!r} is not an image of the run {run_dir.name!r}")
        record = records[file]
        pipe, _ = self.core.load_models()
        run = GenerationJob.from_folder(pipe, self.data.dataset(session), run_dir, self.core.spec)
        run.claim()  # refuses a run made from other images than the session's
        pick = run.pick(JobItem(record["class_name"], record["index"], file, record["seed"]))
        self.settings.use_recorded(session, run.config)
        return {
            "class_name": record["class_name"],
            "positive_index": pick.positive_index,
            "negative_class": pick.negative_class or "sample",
            "negative_index": -1 if pick.negative_index is None else pick.negative_index,
            "seed": record["seed"],
        }


def progress_line(event) -> str:
    """A generation event as the Generate tab's progress line: images, ETA, denoising step."""
    info = event.payload or {}
    line = f"{event.step} / {event.total} images - ETA {eta_text(info.get('eta_s'))}"
    return line + (
        f" (step {info['denoising_step']}/{info['denoising_steps']})" if "denoising_step" in info else ""
    )
