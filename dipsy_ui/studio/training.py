"""The training service: the LoRA classifier on the real (+ kept synthetic) images and the
real-only vs real+synthetic comparison (Train tab)."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..data import load_dataset, resolve_inside, safe_slug
from ..errors import UsageError
from ..images import save_png
from .core import Core
from .curation import CurationService
from .data import DataService
from .jobs import Cancelled, Job, Progress, eta_text
from .session import Session
from .settings import SettingsService

RUNS = ("real_only", "real_synthetic")  # a comparison's two runs, in the order they train
LABELS = {"train": "train", "real_only": "real only", "real_synthetic": "real+synthetic"}


class TrainingService:
    """Classifiers under ``<session>/classifiers/``, comparisons under ``<session>/comparisons/``."""

    def __init__(self, core: Core, data: DataService, settings: SettingsService, runs: CurationService):
        self.core, self.data, self.settings, self.runs = core, data, settings, runs

    @property
    def demo(self) -> bool:
        """Whether the app runs the demo (whose test set is then the natural choice)."""
        return self.core.demo

    def cancel(self, session: Session) -> bool:
        return self.core.cancel(session, ("train", "compare"))

    def train(self, session: Session, settings: dict, test_upload: str | None = None,
              use_demo_test: bool = False) -> Iterator[Progress]:  # fmt: skip
        """Train a LoRA classifier on the real and the current run's kept images, as a job:
        "progress" events carry the engine's training events, the end the
        :class:`~dipsy_ui.classifier.train.TrainResult` (a cancelled run keeps its last step)."""
        from ..classifier.train import train
        from ..models import load_clip

        session = self.core.session(session)
        config = self.settings.update_train(session, **settings)
        real = self.data.labelled_images(session)
        synthetic = self.runs.kept_run(session)
        test = self.test_set(session, test_upload, use_demo_test)
        out_dir = session.root / "classifiers" / time.strftime("%Y%m%d-%H%M%S")

        def work(job: Job):
            job.progress(0, 0, "Loading CLIP for training...")
            clip = load_clip(self.core.spec, self.core.runtime)  # a fresh copy: LoRA is injected in place
            result = train(real, out_dir, self.core.spec, synthetic=synthetic, test=test, config=config,
                           runtime=self.core.runtime, clip=clip, on_event=lambda e: job.relay(e, status(e)),
                           cancel=job.cancel)  # fmt: skip
            session.classifier_dir = out_dir
            self.core.save_choices(session)
            if result.cancelled:
                raise Cancelled(result)
            return result

        return self.core.run_job(session, "train", work)

    def compare(self, session: Session, settings: dict, test_upload: str | None = None,
                use_demo_test: bool = False) -> Iterator[Progress]:  # fmt: skip
        """Real-only vs real+synthetic on the current run's kept images, as a job: "progress"
        events carry the engine's training events of either run, the end
        :func:`dipsy_ui.classifier.train.compare`'s report (``report["cancelled"]`` after a cancel)."""
        from ..classifier.train import compare

        session = self.core.session(session)
        config = self.settings.update_train(session, **settings)
        test = self.test_set(session, test_upload, use_demo_test)
        if test is None:
            raise UsageError("the comparison needs a test set: upload one or use the demo test set")
        synthetic = self.runs.current_run(session)
        real = self.data.labelled_images(session)

        def work(job: Job) -> dict:
            report = compare(real, synthetic, test, session.root / "comparisons" / synthetic.name, self.core.spec,
                             config=config, runtime=self.core.runtime, on_event=lambda e: job.relay(e, status(e)),
                             cancel=job.cancel)  # fmt: skip
            if report["cancelled"]:
                raise Cancelled(report)
            return report

        return self.core.run_job(session, "compare", work)

    def test_set(self, session: Session, upload: str | None, use_demo: bool) -> list | Path | None:
        """The test set: an uploaded zip of class folders (decoded and checked as the few-shot
        loader does, stored as PNGs and listed with the class names), the demo's test folder, or
        None. A zip folder named like a class's folder (its slug, as exports write it) counts as
        that class, so classes whose names cannot be folder names ("a/b") can be tested too."""
        session = self.core.session(session)
        if upload:
            path = Path(upload)
            if path.suffix.lower() != ".zip":
                raise UsageError("the test set must be a .zip of class folders")
            target = session.root / "test" / safe_slug(path.stem)
            shutil.rmtree(target, ignore_errors=True)
            dataset = load_dataset(path)
            names = self.data.class_names(session)
            by_slug = {slug: name for name, slug in self.data.slugs(session).items() if name in names}
            items = []
            for cls in dataset.classes:
                name = cls.name if cls.name in names else by_slug.get(cls.name, cls.name)
                for i, record in enumerate(cls.images):
                    out = resolve_inside(target, cls.slug, f"{i:05d}.png")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    save_png(record.image, out)
                    items.append((out, name))
            return items
        if use_demo:
            return self.data.demo_data_dir() / "test"
        return None

    # -- earlier results ------------------------------------------------------------------------

    def classifiers(self, session: Session) -> list[str]:
        """The session's trained classifiers (folder names, oldest first): the picker's choices."""
        return self._finished(session, "classifiers", "metrics.json")

    def classifier_name(self, session: Session) -> str | None:
        """The classifier Curate ranks with and "Download the adapter" zips (None before one)."""
        folder = self.core.session(session).classifier_dir
        return folder.name if folder is not None else None

    def open_classifier(self, session: Session, name: str) -> dict:
        """Make an earlier classifier of the session the current one; its recorded metrics."""
        session = self.core.session(session)
        if name not in self.classifiers(session):
            raise UsageError(
                f"there is no classifier {name!r}; yours: {', '.join(self.classifiers(session)) or 'none yet'}"
            )
        session.classifier_dir = session.root / "classifiers" / name
        self.core.save_choices(session)
        return json.loads((session.classifier_dir / "metrics.json").read_text(encoding="utf-8"))

    def classifier_file(self, session: Session, name: str) -> str | None:
        """A file the current classifier wrote (``confusion.png``), or None."""
        folder = self.core.session(session).classifier_dir
        path = folder / name if folder is not None else None
        return str(path) if path is not None and path.is_file() else None

    def run_line(self, session: Session) -> str:
        """The run whose kept images training adds ("Run: run-1 (12 images kept)")."""
        return self.runs.run_line(session)

    def restore(self, session: Session, name: str | None) -> None:
        """A reopened session's current classifier (by its recorded name), if it still exists."""
        if name and name in self.classifiers(session):
            session.classifier_dir = session.root / "classifiers" / name

    def comparisons(self, session: Session) -> list[str]:
        """The session's comparisons (named for the run they compared): the picker's choices."""
        return self._finished(session, "comparisons", "comparison.json")

    def _finished(self, session: Session, kind: str, record: str) -> list[str]:
        """Names of the session's ``kind`` folders that hold their ``record`` file, sorted."""
        return sorted(path.parent.name for path in self.core.session(session).root.glob(f"{kind}/*/{record}"))

    def open_comparison(self, session: Session, name: str) -> dict:
        """An earlier comparison's report (what :meth:`compare` ended with)."""
        session = self.core.session(session)
        if name not in self.comparisons(session):
            raise UsageError(
                f"there is no comparison {name!r}; yours: {', '.join(self.comparisons(session)) or 'none yet'}"
            )
        return json.loads(
            (session.root / "comparisons" / name / "comparison.json").read_text(encoding="utf-8")
        )

    def adapter_zip(self, session: Session) -> str:
        session = self.core.session(session)
        if session.classifier_dir is None:
            raise UsageError("train a classifier first")
        return zip_folder(session.classifier_dir, "classifier")

    def comparison_zips(self, session: Session, report: dict) -> list[str]:
        """Both runs' classifiers of a comparison as zips (a run a cancel stopped has none)."""
        return [zip_folder(folder, run) for run, folder in self._run_folders(session, report).items()]

    def comparison_files(self, session: Session, report: dict, name: str) -> dict[str, str]:
        """A file each run of a comparison wrote (``confusion.png``), by run."""
        folders = self._run_folders(session, report)
        return {run: str(folder / name) for run, folder in folders.items() if (folder / name).is_file()}

    def comparison_metrics(self, session: Session, report: dict) -> dict[str, dict]:
        """Each run's ``metrics.json`` of a comparison (what a reopened comparison plots), by run."""
        files = self.comparison_files(session, report, "metrics.json")
        return {run: json.loads(Path(file).read_text(encoding="utf-8")) for run, file in files.items()}

    def _run_folders(self, session: Session, report: dict) -> dict[str, Path]:
        """The folders of a comparison's runs that exist inside the session's comparisons (a
        report names them; one naming anything else is not followed)."""
        root = (self.core.session(session).root / "comparisons").resolve()
        folders = {run: (report.get("folders") or {}).get(run) for run in RUNS}
        return {run: Path(folder) for run, folder in folders.items()
                if folder and Path(folder).is_dir() and Path(folder).resolve().is_relative_to(root)}  # fmt: skip


def zip_folder(folder: Path, top: str) -> str:
    """``folder`` zipped next to itself, its files under ``top/``; the zip's path."""
    path = folder.with_suffix(".zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, f"{top}/{file.relative_to(folder)}")
    return str(path)


def status(event) -> str:
    """A training event (:func:`~dipsy_ui.classifier.train.train`'s payload) as a status line;
    a comparison's names its run."""
    info = event.payload or {}
    run = f"{LABELS[info['run']]}: " if "run" in info else ""
    return (f"{run}Epoch {info.get('epoch')}/{info.get('epochs')}, step {info.get('run_step', event.step)}/"
            f"{info.get('run_total', event.total)}, loss {info.get('loss', 0.0):.3f}, "
            f"ETA {eta_text(info.get('eta_s'))}")  # fmt: skip
