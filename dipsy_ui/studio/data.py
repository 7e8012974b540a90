"""The data service: a session's classes and images, the demo data, presets."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from PIL import Image

from ..data import FewShotDataset, class_slugs, load_dataset, resolve_inside, safe_slug
from ..digits import write_demo_data
from ..errors import ImageReadError, UsageError
from ..images import image_digest, open_image, save_png
from ..presets import Preset, list_presets, load_preset, save_preset
from .core import Core
from .session import Session, check_name


class DataService:
    """Classes and images kept as PNGs in ``<session>/data/<class slug>/``, decoded once into a
    :class:`~dipsy_ui.data.FewShotDataset` that is kept until they change; presets."""

    def __init__(self, core: Core):
        self.core = core
        self._decoding = threading.Lock()  # two requests of one session decode its data once

    # -- classes and images ---------------------------------------------------------------------

    def add_images(self, session: Session, name: str, files: list[str]) -> str:
        """Add images to a class (created if new). Unreadable files are skipped and reported."""
        state = self.core.session(session).data
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
        if not state.classes.get(name):
            state.classes.pop(name, None)
            state.slugs.pop(name, None)
            raise UsageError(f"class {name!r} was not added: none of the {len(files)} file(s) is a readable image. "
                             + "; ".join(notes[:5]))  # fmt: skip
        self._changed(session)
        state.notes = notes
        message = f"Class {name!r}: added {added} image(s), {len(state.classes[name])} in total."
        return "\n".join([message, *notes])

    def load_source(self, session: Session, source: str | Path, replace_all: bool = True) -> str:
        """Load a class folder or zip (the engine validates it); its report is kept for the user."""
        state = self.core.session(session).data
        dataset = load_dataset(source)
        if replace_all:
            self.clear(session)
        for cls in dataset.classes:
            for record in cls.images:
                self._store(session, cls.name, record.image)
        self._changed(session)
        state.report, state.notes = dataset.report.summary(), []
        return state.report

    def demo_data_dir(self) -> Path:
        folder = self.core.workspace / "demo-data"
        if not (folder / "train").is_dir():
            write_demo_data(folder)
        return folder

    def load_demo(self, session: Session) -> str:
        report = self.load_source(session, self.demo_data_dir() / "train")
        self.set_preset(session, "demo")
        return report

    def clear(self, session: Session) -> None:
        state = self.core.session(session).data
        state.classes, state.slugs = {}, {}
        shutil.rmtree(session.root / "data", ignore_errors=True)
        self._changed(session)

    def remove_class(self, session: Session, name: str) -> str:
        state = self.core.session(session).data
        if name not in state.classes:
            raise UsageError(f"there is no class {name!r}")
        shutil.rmtree(resolve_inside(session.root, "data", state.slugs[name]), ignore_errors=True)
        del state.classes[name], state.slugs[name]
        self._changed(session)
        return f"Removed class {name!r}."

    def remove_image(self, session: Session, path: str) -> str:
        state = self.core.session(session).data
        for name, paths in state.classes.items():
            if path in paths:
                paths.remove(path)
                Path(path).unlink(missing_ok=True)
                if not paths:
                    del state.classes[name], state.slugs[name]
                self._changed(session)
                return f"Removed an image from {name!r}."
        raise UsageError("that image is not in your data (already removed?)")

    # -- what the other services and the tabs read ----------------------------------------------

    def class_names(self, session: Session) -> list[str]:
        return list(self.core.session(session).data.classes)

    def image_paths(self, session: Session, name: str | None) -> list[str]:
        """The PNG paths of a class (none for an unknown class)."""
        return list(self.core.session(session).data.classes.get(name, []))

    def version(self, session: Session) -> int:
        """A number that changes whenever the classes or their images change."""
        return self.core.session(session).data.version

    def slugs(self, session: Session) -> dict[str, str]:
        """Display name -> folder name of each class."""
        return dict(self.core.session(session).data.slugs)

    def class_table(self, session: Session) -> list[list]:
        return [[name, len(paths)] for name, paths in self.core.session(session).data.classes.items()]

    def thumbnails(self, session: Session) -> list[tuple[str, str]]:
        classes = self.core.session(session).data.classes
        return [(path, name) for name, paths in classes.items() for path in paths]

    def labelled_images(self, session: Session) -> list[tuple[Path, str]]:
        """The user's real images as a labelled list: (PNG path, display class name)."""
        classes = self.core.session(session).data.classes
        if not classes:
            raise UsageError("no data yet: add classes in the Data tab")
        return [(Path(path), name) for name, paths in classes.items() for path in paths]

    def dataset(self, session: Session) -> FewShotDataset:
        """The session's classes decoded (once: kept until the data changes)."""
        state = self.core.session(session).data
        if not state.classes:
            raise UsageError("no data yet: add classes in the Data tab (or load the demo data)")
        with self._decoding:
            if state.dataset is None:
                state.dataset = load_dataset({name: list(paths) for name, paths in state.classes.items()})
            return state.dataset

    def report(self, session: Session) -> str:
        state = self.core.session(session).data
        count = sum(map(len, state.classes.values()))
        lines = [f"{len(state.classes)} classes, {count} images."]
        lines += [f"  - {note}" for note in state.notes]
        if state.report:
            lines += ["", "Last folder/zip loaded:", state.report]
        if state.classes and len(state.classes) < 2:
            lines.append("Note: negative guidance needs at least 2 classes.")
        return "\n".join(lines)

    # -- presets --------------------------------------------------------------------------------

    def preset(self, session: Session) -> str:
        return self.core.session(session).preset

    def preset_choices(self, session: Session | None = None) -> list[str]:
        """The built-in presets, then the user's own (none for a session not used yet)."""
        folder = session.root / "presets" if session is not None and session.root is not None else None
        own = sorted(str(p) for p in folder.glob("*.json")) if folder is not None and folder.is_dir() else []
        return list_presets() + own

    def set_preset(self, session: Session, name: str) -> str:
        session = self.core.session(session)
        if name not in list_presets():
            # Only the user's own saved presets, whatever path a client sends.
            name = str(resolve_inside(session.root / "presets", Path(name).name))
        preset = load_preset(name)
        session.preset = name
        session.generation, session.train = preset.generation, preset.train
        return f"Preset {preset.name}: {preset.description or 'no description'}"

    def save_preset(self, session: Session, name: str) -> str:
        """Save the session's current settings as the user's own preset; its path."""
        session = self.core.session(session)
        slug = safe_slug(check_name(name, "preset name"))
        folder = session.root / "presets"
        folder.mkdir(exist_ok=True)
        path = save_preset(
            Preset(slug, "saved from the app", session.generation, session.train), folder / f"{slug}.json"
        )
        session.preset = str(path)
        return str(path)

    # -- internals ------------------------------------------------------------------------------

    def _slug(self, session: Session, name: str) -> str:
        state = session.data
        if name not in state.slugs:
            state.slugs = class_slugs([*state.slugs, name])
        return state.slugs[name]

    def _store(self, session: Session, name: str, image: Image.Image) -> str | None:
        """Save one decoded image into the class folder; None when it is a duplicate."""
        folder = resolve_inside(session.root, "data", self._slug(session, name))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_digest(image)[:16]}.png"
        if str(path) in session.data.classes.setdefault(name, []):
            return None
        save_png(image, path)
        session.data.classes[name].append(str(path))
        return str(path)

    def _changed(self, session: Session) -> None:
        """The classes changed: the decoded set goes, and what other services computed from the
        old classes sees a new version."""
        session.data.dataset = None
        session.data.version += 1
