"""The Studio's Data tab: a session's classes and images, the demo data, presets."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from ..data import ImageReadError, class_slugs, load_dataset, resolve_inside, safe_slug, write_demo_data
from ..errors import UsageError
from ..images import image_digest, open_image, save_png
from ..presets import Preset, list_presets, load_preset, save_preset
from .session import Session, check_name


class DataMixin:
    """Classes and images kept as PNGs in ``<session>/data/<class slug>/``; presets."""

    def _slug(self, session: Session, name: str) -> str:
        if name not in session.slugs:
            session.slugs = class_slugs([*session.slugs, name])
        return session.slugs[name]

    def _store(self, session: Session, name: str, image: Image.Image) -> str | None:
        """Save one decoded image into the class folder; None when it is a duplicate."""
        folder = resolve_inside(session.root, "data", self._slug(session, name))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_digest(image)[:16]}.png"
        if str(path) in session.classes.setdefault(name, []):
            return None
        save_png(image, path)
        session.classes[name].append(str(path))
        return str(path)

    def _data_changed(self, session: Session) -> None:
        session.similarity = None
        session.allowed, session.excluded = {}, {}

    def add_images(self, session: Session, name: str, files: list[str]) -> str:
        """Add images to a class (created if new). Unreadable files are skipped and reported."""
        session = self.session(session)
        name = check_name(name, "class name")
        if not files:
            raise UsageError(f"no images given for class {name!r}; drop one or more image files")
        added, notes = 0, []
        for file in files:
            try:
                image = open_image(file)
            except ImageReadError:
                notes.append(f"skipped {Path(file).name}: not a readable image")
                continue
            added += self._store(session, name, image) is not None
        if not session.classes.get(name):
            session.classes.pop(name, None)
            session.slugs.pop(name, None)
            raise UsageError(f"class {name!r} was not added: none of the {len(files)} file(s) is a readable image. "
                             + "; ".join(notes[:5]))  # fmt: skip
        self._data_changed(session)
        session.notes = notes
        message = f"Class {name!r}: added {added} image(s), {len(session.classes[name])} in total."
        return "\n".join([message, *notes])

    def load_source(self, session: Session, source: str | Path, replace_all: bool = True) -> str:
        """Load a class folder or zip (the engine validates it); its report is kept for the user."""
        session = self.session(session)
        dataset = load_dataset(source)
        if replace_all:
            self.clear(session)
        for cls in dataset.classes:
            for record in cls.images:
                self._store(session, cls.name, record.image)
        self._data_changed(session)
        session.report = dataset.report.summary()
        session.notes = []
        return session.report

    def demo_data_dir(self) -> Path:
        folder = self.workspace / "demo-data"
        if not (folder / "train").is_dir():
            write_demo_data(folder)
        return folder

    def load_demo(self, session: Session) -> str:
        report = self.load_source(session, self.demo_data_dir() / "train")
        session.preset = "demo"
        self.set_preset(session, "demo")
        return report

    def clear(self, session: Session) -> None:
        session.classes, session.slugs = {}, {}
        shutil.rmtree(session.root / "data", ignore_errors=True)
        self._data_changed(session)

    def remove_class(self, session: Session, name: str) -> str:
        session = self.session(session)
        if name not in session.classes:
            raise UsageError(f"there is no class {name!r}")
        shutil.rmtree(resolve_inside(session.root, "data", session.slugs[name]), ignore_errors=True)
        del session.classes[name], session.slugs[name]
        self._data_changed(session)
        return f"Removed class {name!r}."

    def remove_image(self, session: Session, path: str) -> str:
        session = self.session(session)
        for name, paths in session.classes.items():
            if path in paths:
                paths.remove(path)
                Path(path).unlink(missing_ok=True)
                if not paths:
                    del session.classes[name], session.slugs[name]
                self._data_changed(session)
                return f"Removed an image from {name!r}."
        raise UsageError("that image is not in your data (already removed?)")

    def class_table(self, session: Session) -> list[list]:
        return [[name, len(paths)] for name, paths in self.session(session).classes.items()]

    def thumbnails(self, session: Session) -> list[tuple[str, str]]:
        return [(p, name) for name, paths in self.session(session).classes.items() for p in paths]

    def dataset(self, session: Session):
        session = self.session(session)
        if not session.classes:
            raise UsageError("no data yet: add classes in the Data tab (or load the demo data)")
        return load_dataset({name: list(paths) for name, paths in session.classes.items()})

    def report(self, session: Session) -> str:
        session = self.session(session)
        count = sum(map(len, session.classes.values()))
        lines = [f"{len(session.classes)} classes, {count} images."]
        lines += [f"  - {note}" for note in session.notes]
        if session.report:
            lines += ["", "Last folder/zip loaded:", session.report]
        if session.classes and len(session.classes) < 2:
            lines.append("Note: negative guidance needs at least 2 classes.")
        return "\n".join(lines)

    # -- presets --------------------------------------------------------------------------------

    def preset_choices(self, session: Session) -> list[str]:
        folder = self.session(session).root / "presets"
        own = sorted(str(p) for p in folder.glob("*.json")) if folder.is_dir() else []
        return list_presets() + own

    def set_preset(self, session: Session, name: str) -> str:
        session = self.session(session)
        if name not in list_presets():
            # Only the user's own saved presets, whatever path a client sends.
            name = str(resolve_inside(session.root / "presets", Path(name).name))
        preset = load_preset(name)
        session.preset = name
        session.generation, session.train = preset.generation, preset.train
        return f"Preset {preset.name}: {preset.description or 'no description'}"

    def save_preset(self, session: Session, name: str) -> str:
        session = self.session(session)
        slug = safe_slug(check_name(name, "preset name"))
        folder = session.root / "presets"
        folder.mkdir(exist_ok=True)
        path = save_preset(
            Preset(slug, "saved from the app", session.generation, session.train),
            folder / f"{slug}.json",
        )
        session.preset = str(path)
        return str(path)
