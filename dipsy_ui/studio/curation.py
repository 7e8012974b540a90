"""The curation service (Curate tab): the session's runs, the current run (the one Curate and
Train work on), and reviewing its images through the run's manifest, the source of truth."""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from ..data import class_slugs, resolve_inside, safe_slug
from ..errors import DipsyError, UsageError
from ..images import open_image
from ..manifest import kept_images, read_manifest, set_status
from .core import Core
from .data import DataService
from .jobs import Job, Progress
from .session import Session, check_name, run_name


class CurationService:
    """The current run (``session.run``, written here only) and its curation."""

    def __init__(self, core: Core, data: DataService):
        self.core, self.data = core, data

    def select(self, session: Session, run_dir: Path) -> None:
        """Make ``run_dir`` the run Curate and Train work on (a new run, or an earlier one)."""
        session = self.core.session(session)
        session.run.run_dir, session.run.scores = run_dir, {}
        self.core.save_choices(session)

    def runs(self, session: Session) -> list[str]:
        """The session's runs, oldest first: the picker's choices. Its own runs by folder name,
        then the generation runs of its experiments' cells (any cell opens like a run)."""
        root = self.core.session(session).root
        own = [p.parent for p in root.glob("runs/*/manifest.jsonl")]
        cells = [p.parent for p in root.glob("experiments/*/runs/*/*/*/manifest.jsonl")]
        by_age = lambda p: (p.stat().st_mtime, p.name)  # noqa: E731
        return [run_name(root, p) for p in sorted(own, key=by_age) + sorted(cells, key=by_age)]

    def open_run(self, session: Session, folder: str) -> str:
        """Make an earlier run of the session the one Curate and Train work on."""
        session = self.core.session(session)
        try:
            path = (
                resolve_inside(session.root, *folder.split("/"))
                if folder.startswith("experiments/")
                else resolve_inside(session.root, "runs", safe_slug(check_name(folder, "run name")))
            )
        except DipsyError:
            path = None
        if path is None or not (path / "manifest.jsonl").is_file():
            raise UsageError(
                f"there is no run {folder!r}; your runs: {', '.join(self.runs(session)) or 'none yet'}"
            )
        self.select(session, path)
        return self.run_line(session)

    def restore(self, session: Session, name: str | None) -> None:
        """A reopened session's current run (by its recorded name), if it still exists."""
        if name:
            with contextlib.suppress(DipsyError):
                self.open_run(session, name)

    def run_name(self, session: Session) -> str | None:
        """The current run's folder name (None before the first run)."""
        return run_name(session.root, session.run.run_dir) if self.has_run(session) else None

    def run_line(self, session: Session) -> str:
        """What Curate and Train say about the run they work on: "Run: run-1 (12 images kept)"."""
        if not self.has_run(session):
            return "Run: none yet (generate one in the Generate tab, or pick an earlier run)."
        records = read_manifest(session.run.run_dir).values()
        kept = sum(r["status"] != "rejected" for r in records)
        return f"Run: {self.run_name(session)} ({kept} image{'' if kept == 1 else 's'} kept)"

    def current_run(self, session: Session) -> Path:
        """The current run's folder; refused before any image was generated."""
        if not self.has_run(session):
            raise UsageError("no generated images yet: run the Generate tab first (or open a run)")
        return session.run.run_dir

    def kept_run(self, session: Session) -> Path | None:
        """The current run's folder if it has kept images (a training set), else None."""
        run_dir = self.core.session(session).run.run_dir
        return run_dir if run_dir is not None and kept_images(run_dir) else None

    # -- curation -------------------------------------------------------------------------------

    def has_run(self, session: Session) -> bool:
        """Whether there is a current run with images to curate."""
        run_dir = self.core.session(session).run.run_dir
        return run_dir is not None and (run_dir / "manifest.jsonl").is_file()

    def curate_counts(self, session: Session) -> list[list]:
        counts: dict[str, list[int]] = {}
        for record in read_manifest(self.current_run(session)).values():
            entry = counts.setdefault(record["class_name"], [0, 0])
            entry[record["status"] == "rejected"] += 1
        return [[name, kept, rejected] for name, (kept, rejected) in counts.items()]

    def curate_page(self, session: Session, class_name: str | None, page: int, page_size: int = 40):
        """(thumbnail path, caption, manifest file) of one page; ranked when scores exist."""
        session = self.core.session(session)
        run = self.current_run(session)
        scores = session.run.scores
        records = [r for r in read_manifest(run).values() if not class_name or r["class_name"] == class_name]
        if scores:
            records.sort(key=lambda r: scores.get(r["file"], 2.0))
        pages = max(1, -(-len(records) // page_size))
        page = min(max(int(page), 1), pages)
        items = []
        for record in records[(page - 1) * page_size : page * page_size]:
            score = scores.get(record["file"])
            caption = ("REJECTED" if record["status"] == "rejected" else "kept") + (
                f" {score:.2f}" if score is not None else "")  # fmt: skip
            items.append((str(thumbnail(run, record["file"], record["status"])), caption, record["file"]))
        return items, page, pages

    def toggle(self, session: Session, file: str) -> str:
        run = self.current_run(session)
        records = read_manifest(run)
        if file not in records:
            raise UsageError(f"{file} is not in the run's manifest")
        status = "kept" if records[file]["status"] == "rejected" else "rejected"
        set_status(run, [file], status)
        return f"{file}: {status}"

    def rank(self, session: Session) -> Iterator[Progress]:
        """Score every image, as a job ending in a message: the trained classifier's confidence
        in its class, else the CLIP cosine similarity to its class's real images."""
        session = self.core.session(session)
        run = self.current_run(session)
        dataset = None if session.classifier_dir is not None else self.data.dataset(session)

        def work(job: Job) -> str:
            records = list(read_manifest(run).values())
            paths = [run / r["file"] for r in records]
            if dataset is None:
                from ..classifier.evaluate import predict

                job.progress(0, 0, f"Classifying {len(paths)} synthetic images...")
                predictions = predict(session.classifier_dir, paths, runtime=self.core.runtime)
                scores = [
                    p.probs.get(r["class_name"], 0.0) for p, r in zip(predictions, records, strict=True)
                ]
                source = "classifier confidence"
            else:
                scores = self._clip_scores(job, dataset, records, paths)
                source = "CLIP similarity to the class's real images"
            session.run.scores = {r["file"]: float(s) for r, s in zip(records, scores, strict=True)}
            session.run.score_source = source
            return f"Ranked {len(records)} images by {source} (lowest first)."

        return self.core.run_job(session, "rank", work)

    def _clip_scores(self, job: Job, dataset, records: list[dict], paths: list[Path]) -> list[float]:
        """Each image's cosine similarity to the mean CLIP embedding of its class's real images."""
        import torch

        from ..similarity import embed_images, similarity_matrix

        _, clip = self.core.models(job)
        job.progress(0, 0, f"Embedding {len(paths)} synthetic images with CLIP...")
        real = {name: embed_images(clip, images, cache_dir=self.core.workspace / "cache")
                for name, images in dataset.image_lists().items()}  # fmt: skip
        synthetic = embed_images(clip, [open_image(p) for p in paths])
        # Cosine similarity to the class mean, via the engine's similarity matrix of the pair.
        return [float(similarity_matrix(torch.stack([real[r["class_name"]].mean(dim=0), e]))[0, 1])
                for r, e in zip(records, synthetic, strict=True)]  # fmt: skip

    def reject_below(self, session: Session, class_name: str | None, threshold: float) -> str:
        session = self.core.session(session)
        run = self.current_run(session)
        scores = session.run.scores
        if not scores:
            raise UsageError("rank the images first")
        records = read_manifest(run)
        files = [f for f, s in scores.items() if s < threshold and f in records
                 and (not class_name or records[f]["class_name"] == class_name)]  # fmt: skip
        if files:
            set_status(run, files, "rejected")
        return f"Rejected {len(files)} image(s) scoring below {threshold:.2f}."

    def restore_all(self, session: Session, class_name: str | None) -> str:
        """Keep every rejected image again (of one class, or of all)."""
        run = self.current_run(session)
        files = [f for f, r in read_manifest(run).items()
                 if r["status"] == "rejected" and (not class_name or r["class_name"] == class_name)]  # fmt: skip
        if files:
            set_status(run, files, "kept")
        return f"Restored {len(files)} image{'' if len(files) == 1 else 's'}: kept again."

    def export_kept(self, session: Session) -> str:
        """A zip of the kept images as an ImageFolder tree (class folders = safe names)."""
        session = self.core.session(session)
        run = self.current_run(session)
        kept = kept_images(run)
        if not kept:
            raise UsageError("no kept images to export")
        slugs = class_slugs(sorted({name for _, name in kept}))
        path = session.root / "exports" / f"{run.name}-kept.zip"
        path.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for file, name in kept:
                archive.write(file, f"{run.name}/{slugs[name]}/{file.name}")
        return str(path)


def thumbnail(run: Path, file: str, status: str, size: int = 128) -> Path:
    """A small cached copy of a run's image (crossed out when rejected): pages stay light."""
    thumb = resolve_inside(run, ".thumbs", *f"{file}.{status}.png".split("/"))
    if not thumb.is_file():
        thumb.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(resolve_inside(run, *file.split("/"))) as image:
            small = image.convert("RGB")
            small.thumbnail((size, size))
            small = small.resize((size, size)) if max(small.size) < size else small
        if status == "rejected":
            small = Image.blend(small, Image.new("RGB", small.size, (255, 255, 255)), 0.6)
            draw = ImageDraw.Draw(small)
            w, h = small.size
            draw.line((0, 0, w, h), fill=(220, 0, 0), width=max(3, w // 20))
            draw.line((0, h, w, 0), fill=(220, 0, 0), width=max(3, w // 20))
        small.save(thumb)
    return thumb
