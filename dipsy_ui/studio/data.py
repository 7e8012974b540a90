"""The data service: a session's classes and images, and the demo data."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..data import CLASSES_FILE, FewShotDataset, class_slugs, load_dataset, resolve_inside
from ..errors import DipsyError, ImageReadError, UsageError
from ..files import write_atomic
from ..images import image_digest, read_image, save_png
from ..world.worlds import demo_world
from .core import Core
from .session import Session, check_name
from .settings import SettingsService


class DataService:
    """Classes and images kept as PNGs in ``<session>/data/<class slug>/``, decoded once into a
    :class:`~dipsy_ui.data.FewShotDataset` that is kept until they change."""

    def __init__(self, core: Core, settings: SettingsService):
        self.core, self.settings = core, settings
        self._decoding = threading.Lock()  # two requests of one session decode its data once

    # -- classes and images ---------------------------------------------------------------------

    def add_images(self, session: Session, name: str, files: list[str]) -> str:
        """Add images to a class (created if new), through the engine's limits: a file that is
        not an image or is too large is skipped with the engine's reason, a downscaled one noted.
        Files are named by their upload name, never by their path on the server."""
        state = self.core.session(session).data
        name = check_name(name, "class name")
        if not files:
            raise UsageError(f"no images given for class {name!r}; drop one or more image files")
        added, notes = 0, []
        for file in files:
            shown = Path(file).name
            try:
                decoded = read_image(file, source=shown)
            except ImageReadError as error:
                notes.append(f"skipped {readable_reason(error, file, shown)}")
                continue
            if decoded.note:
                notes.append(f"{shown}: {decoded.note}")
            added += self._store(session, name, decoded.image) is not None
        if not state.classes.get(name):
            state.classes.pop(name, None)
            state.slugs.pop(name, None)
            raise UsageError(f"class {name!r} was not added: none of the {plural(len(files), 'file')} is a "
                             "readable image. " + "; ".join(notes[:5]))  # fmt: skip
        self._changed(session)
        state.notes = notes
        message = f"Class {name!r}: added {plural(added, 'image')}, {len(state.classes[name])} in total."
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
        state.report, state.notes = public_text(dataset.report.summary(), source), []
        return state.report

    def demo_data_dir(self) -> Path:
        """The demo world's few-shot (``train``) and held-out (``test``) images, written once."""
        world = demo_world(self.core.demo or True)
        folder = self.core.workspace / ("demo-data" if world.name == "digits" else f"demo-data-{world.name}")
        if not (folder / "train").is_dir():
            world.write_demo_data(folder)
        return folder

    def demo_name(self) -> str:
        """The demo world's name ("critters", "digits"), as the Data tab's button says it."""
        return demo_world(self.core.demo or True).name

    def load_demo(self, session: Session) -> str:
        report = self.load_source(session, self.demo_data_dir() / "train")
        self.settings.set_preset(session, demo_world(self.core.demo or True).preset)
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
        lines = [f"{plural(len(state.classes), 'class', 'classes')}, {plural(count, 'image')}."]
        lines += [f"  - {note}" for note in state.notes]
        if state.report:
            lines += ["", "Last folder/zip loaded:", state.report]
        if state.classes and len(state.classes) < 2:
            lines.append("Note: negative guidance needs at least 2 classes.")
        return "\n".join(lines)

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
        """The classes changed: the decoded set goes, what other services computed from the old
        classes sees a new version, and the folder records the classes' names for a reopen."""
        session.data.dataset = None
        session.data.version += 1
        if session.root is not None and (session.root / "data").is_dir():
            # The images' order too: a run's positive picks index into it, so a reopened session
            # must list them as they were, or resuming a run would find "different classes".
            classes = {
                name: {"folder": session.data.slugs[name], "files": [Path(path).name for path in paths]}
                for name, paths in session.data.classes.items()
            }
            write_atomic(
                session.root / "data" / CLASSES_FILE, json.dumps(classes, indent=1, ensure_ascii=False)
            )

    def restore(self, session: Session) -> None:
        """The classes of a reopened session, from its ``data/`` folder: the names recorded there
        and each class's PNGs in their recorded order (only files inside ``data/``, whatever the
        file says)."""
        state = session.data
        try:
            recorded = json.loads((session.root / "data" / CLASSES_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        for name, entry in recorded.items() if isinstance(recorded, dict) else ():
            if not (isinstance(name, str) and isinstance(entry, dict)):
                continue
            try:
                folder = resolve_inside(session.root / "data", str(entry.get("folder")))
                files = [resolve_inside(folder, str(file)) for file in entry.get("files", [])]
            except DipsyError:
                continue
            paths = [str(path) for path in files if path.suffix == ".png" and path.is_file()]
            if paths:
                state.classes[name], state.slugs[name] = paths, folder.name
        self._changed(session)


def plural(count: int, one: str, many: str | None = None) -> str:
    """``"1 class"``, ``"3 classes"``."""
    return f"{count} {one if count == 1 else many or one + 's'}"


_REPR = re.compile(r"<[\w.]+ (object at 0x[0-9a-f]+|name=[^>]*)>")


def public_text(text: str, source: str | Path) -> str:
    """An engine message with the server's path of an upload replaced by its file name and
    Python object reprs removed: the page never shows where the server keeps files."""
    text = text.replace(str(source), Path(source).name)
    return _REPR.sub("the file", text)


def readable_reason(error: ImageReadError, file: str | Path, shown: str) -> str:
    """Why an uploaded file was refused, naming it by ``shown`` (PIL's own message names the
    server's path or a Python object)."""
    if isinstance(error.__cause__, UnidentifiedImageError):
        return f"{shown}: not a readable image (not a format Pillow can decode)"
    return public_text(str(error), file)
