"""The Studio's Train tab: the LoRA classifier, the real-only vs real+synthetic comparison."""

from __future__ import annotations

import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from ..data import load_dataset, resolve_inside, safe_slug
from ..errors import UsageError
from ..images import save_png
from ..manifest import kept_images
from .session import Session, in_thread


class TrainMixin:
    """Classifiers under ``<session>/classifiers/``, comparisons under ``<session>/comparisons/``."""

    def real_images(self, session: Session) -> list[tuple[Path, str]]:
        """The user's real images as a labelled list: (PNG path, display class name)."""
        session = self.session(session)
        if not session.classes:
            raise UsageError("no data yet: add classes in the Data tab")
        return [(Path(path), name) for name, paths in session.classes.items() for path in paths]

    def test_set(self, session: Session, upload: str | None, use_demo: bool) -> list | Path | None:
        """The test set: an uploaded zip of class folders (decoded and checked as the few-shot
        loader does, stored as PNGs and listed with the class names), the demo's test folder, or
        None. A zip folder named like a class's folder (its slug, as exports write it) counts as
        that class, so classes whose names cannot be folder names ("a/b") can be tested too."""
        if upload:
            path = Path(upload)
            if path.suffix.lower() != ".zip":
                raise UsageError("the test set must be a .zip of class folders")
            target = session.root / "test" / safe_slug(path.stem)
            shutil.rmtree(target, ignore_errors=True)
            dataset = load_dataset(path)
            by_slug = {slug: name for name, slug in session.slugs.items() if name in session.classes}
            items = []
            for cls in dataset.classes:
                name = cls.name if cls.name in session.classes else by_slug.get(cls.name, cls.name)
                for i, record in enumerate(cls.images):
                    out = resolve_inside(target, cls.slug, f"{i:05d}.png")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    save_png(record.image, out)
                    items.append((out, name))
            return items
        if use_demo:
            return self.demo_data_dir() / "test"
        return None

    def train(self, session: Session, settings: dict, test_upload: str | None = None,
              use_demo_test: bool = False, progress: Callable[[float, str], None] = lambda f, m: None):  # fmt: skip
        """Train a LoRA classifier on real (+ kept synthetic) images; yields TrainProgress, then
        ("result", TrainResult)."""
        from ..classifier.train import iter_train
        from ..models import load_clip

        session = self.session(session)
        config = session.train = replace(session.train, **settings)
        real = self.real_images(session)
        synthetic = session.run_dir if session.run_dir is not None and kept_images(session.run_dir) else None
        test = self.test_set(session, test_upload, use_demo_test)
        out_dir = session.root / "classifiers" / time.strftime("%Y%m%d-%H%M%S")
        cancel = self._start(session)
        progress(0.0, "Loading CLIP for training")
        clip = load_clip(self.spec, self.runtime)  # a fresh copy: LoRA is injected in place
        run = iter_train(real, out_dir, self.spec, synthetic=synthetic, test=test, config=config,
                         runtime=self.runtime, should_stop=cancel, clip=clip)  # fmt: skip
        while True:
            try:
                # The lock per step, not across yields: an abandoned stream must not hold it.
                with self.gpu:
                    event = next(run)
            except StopIteration as done:
                result = done.value
                break
            yield event
        session.classifier_dir = out_dir
        session.scores = {}
        yield ("result", result)

    def compare(self, session: Session, settings: dict, test_upload: str | None = None,
                use_demo_test: bool = False) -> Iterator:  # fmt: skip
        """Real-only vs real+synthetic on the current run's kept images; yields ``(run name,
        TrainProgress)`` while training ("real_only", then "real_synthetic"), then ``("result",
        report)`` (:func:`dipsy_ui.classifier.train.compare`'s dict; ``report["cancelled"]`` after a cancel)."""
        from ..classifier.train import compare

        session = self.session(session)
        config = replace(session.train, **settings)
        test = self.test_set(session, test_upload, use_demo_test)
        if test is None:
            raise UsageError("the comparison needs a test set: upload one or use the demo test set")
        synthetic = self._run(session)
        real = self.real_images(session)
        cancel = self._start(session)

        def work(emit):
            with self.gpu:
                return compare(real, synthetic, test, session.root / "comparisons" / synthetic.name, self.spec,
                               config=config, runtime=self.runtime, should_stop=cancel,
                               callback=lambda name, event: emit((name, event)))  # fmt: skip

        yield from in_thread(work, cancel)

    def adapter_zip(self, session: Session) -> str:
        session = self.session(session)
        if session.classifier_dir is None:
            raise UsageError("train a classifier first")
        path = session.classifier_dir.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(session.classifier_dir.rglob("*")):
                if file.is_file():
                    archive.write(file, f"classifier/{file.relative_to(session.classifier_dir)}")
        return str(path)
