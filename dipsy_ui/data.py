"""The few-shot dataset: loading, validation, safe class folder names and the demo data.

A dataset comes from a folder with one subfolder per class (torchvision ``ImageFolder`` layout),
a ``.zip`` of such a folder, or an in-memory mapping ``class name -> images`` (what the UI hands
over). Every image is decoded up front to upright RGB through :mod:`dipsy_ui.images` and kept in
memory: few-shot sets are small, and the similarity step and the pipeline both need every image.
Images over the size limits are refused (too many pixels) or downscaled (too long a side) there.

Loading never fails on a single bad file: unreadable or oversized files, empty classes and
duplicates are recorded in a :class:`LoadReport` and skipped, and each downscaled image gets a
line there. Only an input with no usable class at all raises :class:`DatasetError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import DatasetError, UsageError
from .images import Decoded, ImageReadError, fit_image, image_digest, read_image

# Files in a folder or zip with any other extension are skipped with a reason, not decoded:
# datasets routinely carry README, labels.csv or .json files, and reporting each of those as a
# "corrupt image" would bury the real problems. Mapping entries are always decoded.
IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})

MAX_SLUG_LENGTH = 64
# In a data folder the app wrote: display name -> {"folder", "files"}, in the user's order.
CLASSES_FILE = "classes.json"
# A zip entry larger than this is skipped unread, so a zip bomb cannot exhaust memory.
MAX_ZIP_ENTRY_BYTES = 64 * 1024 * 1024
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{port}{n}" for port in ("com", "lpt") for n in range(1, 10)}
)
_SLUG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# Hidden class folders are skipped with this reason, so a class hidden by accident shows up in the
# report; hidden files and folders inside a class folder (.DS_Store, .ipynb_checkpoints) are
# skipped silently: they are tools' clutter, never a class.
HIDDEN_CLASS_FOLDER = "hidden folder (names starting with '.' are ignored; rename it to use it as a class)"

ImageLike = Image.Image | str | os.PathLike | bytes | bytearray | memoryview
Reader = Callable[[], Decoded]  # decodes one image lazily, raising ImageReadError


@dataclass(frozen=True)
class ImageRecord:
    source: str  # where the image came from: a file path, "archive.zip:cat/1.jpg" or "cat[0]"
    digest: str  # image_digest of the decoded RGB pixels
    image: Image.Image = field(compare=False, repr=False)  # upright 8-bit RGB


@dataclass(frozen=True)
class FewShotClass:
    name: str  # display name, as given (surrounding whitespace stripped)
    slug: str  # folder name for this class on disk, unique within the dataset
    images: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class SkippedFile:
    source: str
    reason: str


@dataclass(frozen=True)
class DroppedClass:
    name: str
    reason: str


@dataclass(frozen=True)
class Duplicate:
    class_name: str
    source: str  # the dropped copy
    kept: str  # the earlier copy that stays in the dataset


@dataclass(frozen=True)
class Downscaled:
    source: str
    original_size: tuple[int, int]  # upright (width, height) as stored
    size: tuple[int, int]  # (width, height) kept in the dataset


@dataclass
class LoadReport:
    """Everything loading skipped or noticed, in the order it happened."""

    source: str
    skipped: list[SkippedFile] = field(default_factory=list)
    dropped_classes: list[DroppedClass] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    downscaled: list[Downscaled] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    class_count: int = 0
    image_count: int = 0

    def skip(self, source: str, reason: str, *, error: bool = False) -> None:
        self.skipped.append(SkippedFile(source, reason))
        (self.errors if error else self.warnings).append(f"skipped {source}: {reason}")

    def drop_class(self, name: str, reason: str) -> None:
        self.dropped_classes.append(DroppedClass(name, reason))
        self.warnings.append(f"dropped class {name!r}: {reason}")

    def duplicate(self, duplicate: Duplicate) -> None:
        self.duplicates.append(duplicate)
        self.warnings.append(f"class {duplicate.class_name!r}: {duplicate.source} repeats {duplicate.kept}")

    def downscale(self, source: str, decoded: Decoded) -> None:
        self.downscaled.append(Downscaled(source, decoded.original_size, decoded.image.size))
        self.warnings.append(f"{source}: {decoded.note}")

    def summary(self, max_lines: int = 20) -> str:
        """A short text for the user: counts, then errors and warnings (long lists are cut)."""
        lines = [f"Loaded {self.image_count} images in {self.class_count} classes from {self.source}."]
        for title, messages in (("Errors", self.errors), ("Warnings", self.warnings)):
            if messages:
                lines.append(f"{title} ({len(messages)}):")
                lines += [f"  - {message}" for message in messages[:max_lines]]
                if len(messages) > max_lines:
                    lines.append(f"  ... and {len(messages) - max_lines} more")
        return "\n".join(lines)


class FewShotDataset:
    """Classes in a fixed order, each with its display name, disk slug and RGB images."""

    def __init__(self, classes: Sequence[FewShotClass], report: LoadReport):
        self.classes = tuple(classes)
        self.report = report
        self._by_name = {c.name: c for c in self.classes}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def image_lists(self) -> dict[str, list[Image.Image]]:
        """Class name -> its decoded images, in order (what the similarity embeds)."""
        return {c.name: [record.image for record in c.images] for c in self.classes}

    def slug(self, name: str) -> str:
        return self._get(name).slug

    def images(self, name: str) -> tuple[ImageRecord, ...]:
        return self._get(name).images

    def __len__(self) -> int:
        """The total number of images over all classes."""
        return sum(len(c.images) for c in self.classes)

    def require_classes(self, count: int, purpose: str = "negative-class sampling") -> None:
        """Raise :class:`DatasetError` unless the dataset has at least ``count`` classes."""
        if len(self.classes) >= count:
            return
        found = ", ".join(repr(n) for n in self.class_names)
        dropped = len(self.report.dropped_classes)
        raise DatasetError(
            f"{purpose} needs at least {count} classes, but {self.report.source} has {len(self.classes)} "
            f"({found}{f'; {dropped} dropped, see the report' if dropped else ''}); add images for "
            f"{count - len(self.classes)} more class(es) or turn {purpose} off",
            self.report,
        )

    def _get(self, name: str) -> FewShotClass:
        if name not in self._by_name:
            raise UsageError(f"no class {name!r} in the dataset; classes are {list(self.class_names)}")
        return self._by_name[name]


def class_name(raw: str) -> str:
    """A class's display name from a folder name, zip entry or mapping key: surrounding whitespace
    removed, nothing else (two names that differ only in Unicode form stay two classes). Every
    reader (few-shot sets, classifier training and test sets) names classes through this one
    function, so the same folder gives the same class everywhere."""
    return raw.strip()


def safe_slug(name: str) -> str:
    """A single, portable path component for ``name``: only ``[A-Za-z0-9._-]``, never empty.

    NFKC-normalised, accents transliterated (``Café`` -> ``Cafe``), other characters replaced
    by ``_``, no leading/trailing ``.``/``_``/``-``, no ``..``, Windows reserved device names
    (``CON``, ``nul.txt``, ...) prefixed with ``_``, at most ``MAX_SLUG_LENGTH`` characters.
    Different names may share a slug; :func:`class_slugs` makes them unique.
    """
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name))
    text = "".join(ch if ch in _SLUG_CHARS else "_" for ch in text if not unicodedata.combining(ch))
    while "__" in text or ".." in text:
        text = text.replace("__", "_").replace("..", ".")
    text = text[:MAX_SLUG_LENGTH].strip("._-") or "class"
    if text.partition(".")[0].lower() in _WINDOWS_RESERVED:
        # A prefix, not a suffix: Windows reserves "nul.txt" as well as "nul".
        text = f"_{text}"[:MAX_SLUG_LENGTH].rstrip("._-")
    return text


def class_slugs(names: Iterable[str]) -> dict[str, str]:
    """Unique slugs for ``names``, deterministic for their order.

    Uniqueness is case-insensitive, since ``Cat`` and ``cat`` share a folder on macOS and
    Windows. A clash gets an 8-hex suffix from the hash of the display name, so the slug does
    not depend on how many other clashes there are.
    """
    slugs: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if name in slugs:
            raise DatasetError(f"duplicate class name {name!r}")
        base = safe_slug(name)
        slug, attempt = base, 1
        while slug.casefold() in taken:
            suffix = "-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            suffix += f"-{attempt}" if attempt > 1 else ""
            slug = base[: MAX_SLUG_LENGTH - len(suffix)].rstrip("._-") + suffix
            attempt += 1
        slugs[name] = slug
        taken.add(slug.casefold())
    return slugs


def resolve_inside(root: str | Path, *parts: str) -> Path:
    """``root / parts...`` resolved, raising ``ValueError`` unless it lies strictly below ``root``."""
    base = Path(root).resolve()
    if any("\x00" in part for part in parts):
        raise DatasetError(f"path part contains a NUL character: {parts!r}")
    target = base.joinpath(*parts).resolve()
    if target == base or not target.is_relative_to(base):
        raise DatasetError(f"{parts!r} does not name a path inside {base}")
    return target


def load_dataset(source: str | Path | Mapping[str, Sequence[ImageLike]]) -> FewShotDataset:
    """Load a class folder, a ``.zip`` of one, or a ``class name -> images`` mapping."""
    if isinstance(source, Mapping):
        return load_mapping(source)
    path = Path(source)
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and (path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)):
        return load_zip(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    raise DatasetError(f"{path} is neither a folder nor a .zip archive of class folders")


def load_folder(root: str | Path) -> FewShotDataset:
    """Load ``root/<class name>/**/<image>``; hidden files and folders are ignored (a hidden
    class folder with a line in the report). A folder the app wrote (with its ``classes.json``)
    loads as the app sees it: its class names, classes and images in the order they were added."""
    root = Path(root)
    report = LoadReport(str(root))
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder", report)
    if (root / CLASSES_FILE).is_file():
        return _build(_recorded_entries(root), report, f"{root / CLASSES_FILE} lists no images")
    entries: dict[str, list[tuple[str, Reader]]] = {}
    seen: set[str] = set()
    # Linked folders are followed, as torchvision's ImageFolder does, but each real folder is
    # read once: a link back up the tree would otherwise make the walk endless.
    for directory, subdirs, filenames in os.walk(root, followlinks=True):
        if os.path.realpath(directory) in seen:
            subdirs[:] = []
            continue
        seen.add(os.path.realpath(directory))
        hidden = sorted(d for d in subdirs if d.startswith("."))
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        relative = Path(directory).relative_to(root).parts
        if not relative:
            entries = {name: [] for name in sorted(subdirs, key=class_name)}
            for name in hidden:
                report.skip(str(Path(directory, name)), HIDDEN_CLASS_FOLDER)
        for filename in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(directory, filename)
            if _accept(relative[0] if relative else "", str(path), report):
                entries[relative[0]].append((str(path), partial(read_image, path)))
    return _build(entries, report, f"no class folders found in {root}; expected {root}/<class name>/<images>")


def _recorded_entries(root: Path) -> dict[str, list[tuple[str, Reader]]]:
    """The classes an app's data folder records in ``classes.json`` (display name -> its folder
    and file names, in order); only files inside ``root`` are read, whatever the file says."""
    try:
        recorded = json.loads((root / CLASSES_FILE).read_text(encoding="utf-8"))
        entries = {
            str(name): [resolve_inside(root, str(entry["folder"]), str(file)) for file in entry["files"]]
            for name, entry in recorded.items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise DatasetError(f"{root / CLASSES_FILE} is not a class list the app wrote ({error})") from None
    return {
        name: [(str(path), partial(read_image, path)) for path in paths] for name, paths in entries.items()
    }


def load_zip(archive: str | Path) -> FewShotDataset:
    """Load a zip of class folders, flat (``cat/1.jpg``) or wrapped (``data/cat/1.jpg``).

    Images are decoded straight from the archive; nothing is extracted, so entries such as
    ``../evil.png`` or ``/etc/x.png`` cannot write anywhere (they are skipped and reported).
    Hidden entries are ignored (a hidden class folder with a line in the report), and so is
    ``__MACOSX`` (the resource forks macOS adds), silently.
    """
    archive = Path(archive)
    report = LoadReport(str(archive))
    try:
        with zipfile.ZipFile(archive) as zf:
            paths: list[tuple[zipfile.ZipInfo, list[str]]] = []
            hidden: list[list[str]] = []  # the folders holding each hidden entry, itself included
            for info in zf.infolist():
                name = info.filename.replace("\\", "/")
                parts = [p for p in name.split("/") if p]
                if not parts or name.startswith("/") or ".." in parts or ":" in parts[0]:
                    report.skip(f"{archive}:{info.filename}", "unsafe path in archive", error=True)
                elif "__MACOSX" in parts:
                    continue
                elif any(p.startswith(".") for p in parts):
                    hidden.append(parts if info.is_dir() else parts[:-1])
                elif not info.is_dir():
                    paths.append((info, parts))
            # One folder wrapping everything (what zipping a folder gives) is not a class; a
            # single class folder holding its images directly is.
            tops = {parts[0] for _, parts in paths}
            wrapper = []
            if len(tops) == 1 and not any(len(parts) == 2 and _is_image_name(parts[1]) for _, parts in paths):
                wrapper = [*tops]
                paths = [(info, parts[1:]) for info, parts in paths]
            level = len(wrapper)  # where the class folders are
            for folder in sorted({f[level] for f in hidden if f[:level] == wrapper and len(f) > level}):
                if folder.startswith(".") and folder != ".":  # "./cat/1.png" is no hidden folder
                    report.skip(f"{archive}:{'/'.join([*wrapper, folder])}/", HIDDEN_CLASS_FOLDER)
            entries: dict[str, list[tuple[str, Reader]]] = {
                n: [] for n in sorted({p[0] for _, p in paths if len(p) > 1}, key=class_name)
            }
            for info, parts in paths:
                source = f"{archive}:{info.filename}"
                if _accept(parts[0] if len(parts) > 1 else "", source, report):
                    entries[parts[0]].append((source, partial(_read_zip_entry, zf, info, source)))
            return _build(
                entries, report, f"no class folders found in {archive}; expected <class name>/<images>"
            )
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{archive} is not a readable zip archive ({error})", report) from error


def load_mapping(mapping: Mapping[str, Sequence[ImageLike]]) -> FewShotDataset:
    """Load ``{class name: [PIL image | path | bytes, ...]}``; classes keep the mapping's order."""
    report = LoadReport("the uploaded images")
    entries: dict[str, list[tuple[str, Reader]]] = {}
    for name, images in mapping.items():
        if not isinstance(name, str):
            raise DatasetError(f"class names must be strings, got {name!r}", report)
        if isinstance(images, str | bytes | os.PathLike | Image.Image):
            kind = type(images).__name__
            raise DatasetError(f"class {name!r}: expected a list of images, got a single {kind}", report)
        entries[name] = []
        for index, item in enumerate(images):
            source = str(item) if isinstance(item, str | os.PathLike) else f"{name}[{index}]"
            entries[name].append((source, partial(_read_item, item, source)))
    return _build(entries, report, "no classes given")


def _accept(class_name: str, source: str, report: LoadReport) -> bool:
    """Whether a file in a folder or zip should be decoded; reports why not."""
    if not class_name:
        report.skip(source, "not inside a class folder")
    elif not _is_image_name(source):
        report.skip(source, f"not an image file extension (accepted: {', '.join(sorted(IMAGE_SUFFIXES))})")
    else:
        return True
    return False


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _read_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> Decoded:
    if info.file_size > MAX_ZIP_ENTRY_BYTES:
        raise ImageReadError(f"{source}: larger than {MAX_ZIP_ENTRY_BYTES} bytes")
    try:
        data = zf.read(info)
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as error:
        raise ImageReadError(f"{source}: cannot read archive entry ({error})") from error
    return read_image(data, source)


def _read_item(item: Any, source: str) -> Decoded:
    """Upright RGB within the size limits from a PIL image, a path or encoded bytes."""
    if isinstance(item, Image.Image):
        return fit_image(item, source)
    if isinstance(item, str | os.PathLike | bytes | bytearray | memoryview):
        return read_image(item, source)
    raise ImageReadError(f"{source}: unsupported {type(item).__name__}; expected a PIL image, path or bytes")


def _build(
    entries: Mapping[str, list[tuple[str, Reader]]], report: LoadReport, empty_message: str
) -> FewShotDataset:
    """Decode, deduplicate and name the classes; ``entries`` maps raw names to (source, reader)."""
    if not entries:
        raise DatasetError(empty_message, report)
    records: dict[str, list[ImageRecord]] = {}
    for raw_name, items in entries.items():
        name = class_name(raw_name)
        if not name:
            raise DatasetError(
                f"class name {raw_name!r} is empty or only whitespace; give the class a name", report
            )
        if name in records:
            report.drop_class(raw_name, f"same name as class {name!r} once surrounding spaces are removed")
            continue
        kept: dict[str, ImageRecord] = {}
        for source, read in items:
            try:
                decoded = read()
            except ImageReadError as error:
                report.skip(source, str(error).removeprefix(f"{source}: "), error=True)
                continue
            if decoded.note:
                report.downscale(source, decoded)
            record = ImageRecord(source, image_digest(decoded.image), decoded.image)
            if record.digest in kept:
                report.duplicate(Duplicate(name, source, kept[record.digest].source))
            else:
                kept[record.digest] = record
        if kept:
            records[name] = list(kept.values())
        else:
            report.drop_class(name, "no readable image")
    if not records:
        raise DatasetError(f"no class in {report.source} has a readable image\n{report.summary()}", report)
    slugs = class_slugs(records)
    classes = [FewShotClass(name, slugs[name], tuple(images)) for name, images in records.items()]
    report.class_count, report.image_count = len(classes), sum(len(c.images) for c in classes)
    return FewShotDataset(classes, report)
