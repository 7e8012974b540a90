"""The Studio's Generate and Curate tabs: the batch job, and reviewing its images."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw

from ..data import class_slugs, resolve_inside, safe_slug
from ..errors import UsageError
from ..images import open_image
from ..manifest import kept_images, read_manifest, set_status
from .session import Session, check_name, in_thread


class GenerateMixin:
    """Runs under ``<session>/runs/<folder>``; curation through the run's manifest."""

    def run_dir(self, session: Session, folder: str) -> Path:
        name = safe_slug(check_name(folder, "output folder name"))
        return resolve_inside(self.session(session).root, "runs", name)

    def generate(self, session: Session, images_per_class: int, batch_size: int, folder: str,
                 progress: Callable[[float, str], None] = lambda f, m: None) -> Iterator:  # fmt: skip
        """Run (or resume) the batch job into ``runs/<folder>``; yields JobEvents."""
        from ..generate import GenerationJob

        session = self.session(session)
        dataset = self.dataset(session)
        config = replace(
            session.generation, images_per_class=int(images_per_class), batch_size=int(batch_size)
        )
        if config.negatives == "similarity" and session.similarity is None and len(dataset.class_names) > 1:
            self.compute_similarity(session, config.temperature, progress)
        if len(dataset.class_names) < 2:
            config = replace(config, negatives="none")
        pipe, _ = self.load_models(progress)
        out_dir = self.run_dir(session, folder)
        job = GenerationJob(pipe, dataset, config, out_dir, self.spec, session.similarity)
        session.run_dir = out_dir
        session.scores = {}
        cancel = self._start(session)

        def work(emit):
            with self.gpu:
                return job.run(lambda event: emit((event.kind, event)), cancel)

        for kind, value in in_thread(work, cancel):
            if kind != "result":
                yield value

    @staticmethod
    def preview_strip(event, zoom: int = 4):
        """A step event's latent previews side by side, enlarged ``zoom`` times (uint8 RGB)."""
        import numpy as np

        return np.concatenate(list(event.preview), axis=1).repeat(zoom, axis=0).repeat(zoom, axis=1)

    def run_files(self, session: Session, limit: int = 48) -> list[tuple[str, str]]:
        """The newest images of the current run, for the live gallery."""
        session = self.session(session)
        if session.run_dir is None:
            return []
        records = list(read_manifest(session.run_dir).values())[-limit:]
        return [(str(session.run_dir / r["file"]), r["class_name"]) for r in reversed(records)]

    def runs(self, session: Session) -> list[str]:
        folder = self.session(session).root / "runs"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def open_run(self, session: Session, folder: str) -> str:
        session = self.session(session)
        path = self.run_dir(session, folder)
        if not path.is_dir():
            raise UsageError(f"there is no run {folder!r}")
        session.run_dir, session.scores = path, {}
        return f"{len(read_manifest(path))} images in {folder}"

    # -- curation -------------------------------------------------------------------------------

    def _run(self, session: Session) -> Path:
        session = self.session(session)
        if session.run_dir is None or not (session.run_dir / "manifest.jsonl").is_file():
            raise UsageError("no generated images yet: run the Generate tab first (or open a run)")
        return session.run_dir

    def curate_counts(self, session: Session) -> list[list]:
        counts: dict[str, list[int]] = {}
        for record in read_manifest(self._run(session)).values():
            entry = counts.setdefault(record["class_name"], [0, 0])
            entry[record["status"] == "rejected"] += 1
        return [[name, kept, rejected] for name, (kept, rejected) in counts.items()]

    def curate_page(self, session: Session, class_name: str | None, page: int, page_size: int = 40):
        """(thumbnail path, caption, manifest file) of one page; ranked when scores exist."""
        run = self._run(session)
        records = [r for r in read_manifest(run).values() if not class_name or r["class_name"] == class_name]
        if session.scores:
            records.sort(key=lambda r: session.scores.get(r["file"], 2.0))
        pages = max(1, -(-len(records) // page_size))
        page = min(max(int(page), 1), pages)
        items = []
        for record in records[(page - 1) * page_size : page * page_size]:
            score = session.scores.get(record["file"])
            caption = ("REJECTED" if record["status"] == "rejected" else "kept") + (
                f" {score:.2f}" if score is not None else "")  # fmt: skip
            items.append(
                (str(self._thumbnail(run, record["file"], record["status"])), caption, record["file"])
            )
        return items, page, pages

    @staticmethod
    def _thumbnail(run: Path, file: str, status: str, size: int = 128) -> Path:
        """A small cached copy (crossed out when rejected): pages of a big run stay light."""
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

    def toggle(self, session: Session, file: str) -> str:
        run = self._run(session)
        records = read_manifest(run)
        if file not in records:
            raise UsageError(f"{file} is not in the run's manifest")
        status = "kept" if records[file]["status"] == "rejected" else "rejected"
        set_status(run, [file], status)
        return f"{file}: {status}"

    def rank(self, session: Session, progress: Callable[[float, str], None] = lambda f, m: None) -> str:
        """Score every image: the trained classifier's confidence in its class, else the CLIP
        cosine similarity to its class's real images."""
        session = self.session(session)
        run = self._run(session)
        records = list(read_manifest(run).values())
        paths = [run / r["file"] for r in records]
        if session.classifier_dir is not None:
            from ..classifier.evaluate import predict

            progress(0.3, "Classifying the synthetic images")
            with self.gpu:
                predictions = predict(session.classifier_dir, paths, runtime=self.runtime)
            scores = [p.probs.get(r["class_name"], 0.0) for p, r in zip(predictions, records, strict=True)]
            session.score_source = "classifier confidence"
        else:
            from ..similarity import embed_images, similarity_matrix

            _, clip = self.load_models(progress)
            dataset = self.dataset(session)
            progress(0.3, "Embedding the synthetic images with CLIP")
            with self.gpu:
                real = {c.name: embed_images(clip, [r.image for r in c.images], cache_dir=self.workspace / "cache")
                        for c in dataset.classes}  # fmt: skip
                synthetic = embed_images(clip, [open_image(p) for p in paths])
            import torch

            scores = []
            for record, embedding in zip(records, synthetic, strict=True):
                # Cosine similarity to the class mean, via the engine's similarity matrix of the pair.
                mean = real[record["class_name"]].mean(dim=0)
                scores.append(float(similarity_matrix(torch.stack([mean, embedding]))[0, 1]))
            session.score_source = "CLIP similarity to the class's real images"
        session.scores = {r["file"]: float(s) for r, s in zip(records, scores, strict=True)}
        return f"Ranked {len(records)} images by {session.score_source} (lowest first)."

    def reject_below(self, session: Session, class_name: str | None, threshold: float) -> str:
        session = self.session(session)
        run = self._run(session)
        if not session.scores:
            raise UsageError("rank the images first")
        records = read_manifest(run)
        files = [f for f, s in session.scores.items() if s < threshold and f in records
                 and (not class_name or records[f]["class_name"] == class_name)]  # fmt: skip
        if files:
            set_status(run, files, "rejected")
        return f"Rejected {len(files)} image(s) scoring below {threshold:.2f}."

    def export_kept(self, session: Session) -> str:
        """A zip of the kept images as an ImageFolder tree (class folders = safe names)."""
        session = self.session(session)
        run = self._run(session)
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
