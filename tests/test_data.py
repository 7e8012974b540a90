"""The few-shot dataset layer: the three input forms agree, bad files are reported, names are safe."""

from __future__ import annotations

import hashlib
import io
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dipsy_ui.data import (
    HIDDEN_CLASS_FOLDER,
    IMAGE_SUFFIXES,
    MAX_SLUG_LENGTH,
    DatasetError,
    class_slugs,
    load_dataset,
    resolve_inside,
    safe_slug,
)
from dipsy_ui.digits import write_demo_data
from dipsy_ui.errors import UsageError
from dipsy_ui.images import image_digest, open_image


def _noise(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _make_tree(root: Path, layout: dict[str, list[tuple[str, bytes]]]) -> Path:
    for class_name, files in layout.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for filename, content in files:
            (root / class_name / filename).write_bytes(content)
    return root


def _zip_tree(root: Path, archive: Path, wrapper: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                name = path.relative_to(root).as_posix()
                zf.write(path, f"{wrapper}/{name}" if wrapper else name)
    return archive


def _digests(dataset) -> dict[str, list[str]]:
    return {name: [r.digest for r in dataset.images(name)] for name in dataset.class_names}


@pytest.fixture
def three_classes(tmp_path: Path) -> Path:
    layout = {
        name: [(f"{i}.png", _encode(_noise(10 * c + i))) for i in range(3)]
        for c, name in enumerate(["dog", "cat", "bird"])
    }
    return _make_tree(tmp_path / "folder", layout)


@pytest.mark.parametrize("wrapper", [None, "mydata"])
def test_folder_and_zip_give_the_same_dataset(three_classes: Path, tmp_path: Path, wrapper: str | None):
    from_folder = load_dataset(three_classes)
    archive = _zip_tree(three_classes, tmp_path / "data.zip", wrapper)
    if wrapper:  # a stray file beside the class folders must not stop the wrapper being recognised
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(f"{wrapper}/README.txt", "about this data")
    from_zip = load_dataset(archive)

    assert from_folder.class_names == ("bird", "cat", "dog")
    assert from_zip.class_names == from_folder.class_names
    assert _digests(from_zip) == _digests(from_folder)
    assert len(from_folder) == 9
    assert all(record.image.mode == "RGB" for record in from_zip.images("cat"))


def test_mapping_accepts_pil_images_paths_and_bytes(tmp_path: Path):
    path = tmp_path / "on_disk.png"
    path.write_bytes(_encode(_noise(2)))
    pil, raw = _noise(1), _encode(_noise(3))
    dataset = load_dataset({"zebra": [pil, path, str(path.with_name("x.png"))], "ant": [raw]})

    assert dataset.class_names == ("zebra", "ant")  # insertion order, not sorted
    assert [r.digest for r in dataset.images("zebra")] == [image_digest(pil), image_digest(open_image(path))]
    assert [r.digest for r in dataset.images("ant")] == [image_digest(_noise(3))]
    assert [s.source for s in dataset.report.skipped] == [str(tmp_path / "x.png")]  # missing file


def test_folder_ignores_hidden_entries_and_reports_non_images(three_classes: Path):
    (three_classes / ".cache").mkdir()
    (three_classes / ".cache" / "0.png").write_bytes(_encode(_noise(99)))
    (three_classes / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (three_classes / "cat" / ".thumbnails").mkdir()
    (three_classes / "cat" / ".thumbnails" / "0.png").write_bytes(_encode(_noise(96)))
    (three_classes / ".DS_Store").write_bytes(b"\0\0")
    (three_classes / "cat" / "labels.csv").write_text("a,b\n")
    (three_classes / "stray.png").write_bytes(_encode(_noise(98)))
    _make_tree(three_classes, {" zebra ": [("0.png", _encode(_noise(97)))]})

    dataset = load_dataset(three_classes)
    reasons = {Path(s.source).name: s.reason for s in dataset.report.skipped}

    assert dataset.class_names == ("bird", "cat", "dog", "zebra")  # sorted by display name
    assert len(dataset.images("cat")) == 3
    # A hidden class folder is reported; hidden files and folders inside a class are not.
    assert set(reasons) == {".cache", "labels.csv", "stray.png"}
    assert reasons[".cache"] == HIDDEN_CLASS_FOLDER
    assert "extension" in reasons["labels.csv"] and "class folder" in reasons["stray.png"]
    assert f"skipped {three_classes / '.cache'}: hidden folder" in dataset.report.summary()
    assert ".png" in IMAGE_SUFFIXES and ".jpg" in IMAGE_SUFFIXES


@pytest.mark.parametrize("wrapper", [None, "mydata"])
def test_zip_reports_hidden_class_folders_and_ignores_macos_forks(
    three_classes: Path, tmp_path: Path, wrapper: str | None
):
    archive = _zip_tree(three_classes, tmp_path / "data.zip", wrapper)
    inside = f"{wrapper}/" if wrapper else ""
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(f"{inside}.cache/0.png", _encode(_noise(99)))
        zf.writestr(f"{inside}.git/", "")  # a folder entry only
        zf.writestr(f"{inside}cat/.DS_Store", b"\0\0")
        zf.writestr(f"{inside}cat/.thumbnails/0.png", _encode(_noise(96)))
        zf.writestr(f"__MACOSX/{inside}cat/._0.png", b"\0\0")

    dataset = load_dataset(archive)

    assert dataset.class_names == ("bird", "cat", "dog") and len(dataset.images("cat")) == 3
    assert [(s.source, s.reason) for s in dataset.report.skipped] == [
        (f"{archive}:{inside}{name}/", HIDDEN_CLASS_FOLDER) for name in (".cache", ".git")
    ]
    assert dataset.report.errors == []


def _truncated_png() -> bytes:
    return _encode(_noise(5, (64, 64)))[:200]


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(_noise(6, (40, 20)), "JPEG", exif=exif)


def _sixteen_bit_png() -> bytes:
    data = _encode(Image.fromarray(np.linspace(0, 65535, 24 * 16).astype(np.uint16).reshape(16, 24)))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")  # the case under test really is 16-bit
    return data


def _transparent_png() -> bytes:
    image = Image.new("RGBA", (24, 16), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    return _encode(image)


BAD_INPUTS = {
    # name: (filename, bytes, expected RGB size or None when the file must be skipped)
    "truncated png": ("broken.png", _truncated_png, None),
    "text named jpg": ("notes.jpg", lambda: b"this is not a picture\n", None),
    "cmyk jpeg": ("cmyk.jpg", lambda: _encode(Image.new("CMYK", (24, 16), (0, 255, 0, 0)), "JPEG"), (24, 16)),
    "16-bit png": ("deep.png", _sixteen_bit_png, (24, 16)),
    "rgba png": ("alpha.png", _transparent_png, (24, 16)),
    "palette png": ("palette.png", lambda: _encode(_noise(7, (24, 16)).convert("P")), (24, 16)),
    "grayscale png": ("gray.png", lambda: _encode(_noise(8, (24, 16)).convert("L")), (24, 16)),
    "exif-rotated jpeg": ("phone.jpg", _exif_rotated_jpeg, (20, 40)),
}


@pytest.mark.parametrize("form", ["folder", "zip"])  # files and zip entries take different decoding paths
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_awkward_files_are_converted_or_skipped_with_a_reason(tmp_path: Path, case: str, form: str):
    filename, make, expected_size = BAD_INPUTS[case]
    good = ("good.png", _encode(_noise(0)))
    root = _make_tree(tmp_path / "data", {"a": [good, (filename, make())], "b": [good]})

    dataset = load_dataset(root if form == "folder" else _zip_tree(root, tmp_path / "data.zip"))
    sources = {Path(r.source).name: r for r in dataset.images("a")}

    if expected_size is None:
        assert set(sources) == {"good.png"}
        [skipped] = dataset.report.skipped
        assert Path(skipped.source).name == filename and "not a readable image" in skipped.reason
        assert any(filename in error for error in dataset.report.errors)
    else:
        image = sources[filename].image
        assert (image.mode, image.size) == ("RGB", expected_size)
        assert dataset.report.skipped == []


def test_conversions_keep_content(tmp_path: Path):
    dataset = load_dataset({"a": [_sixteen_bit_png(), _transparent_png()]})
    deep, alpha = (np.asarray(r.image) for r in dataset.images("a"))
    assert deep.min() == 0 and deep.max() == 255  # rescaled over the range, not clipped to white
    assert tuple(alpha[0, 0]) == (255, 255, 255) and tuple(alpha[1, 1]) == (255, 0, 0)


def test_class_without_readable_images_is_dropped_with_a_warning(three_classes: Path):
    (three_classes / "empty").mkdir()
    (three_classes / "broken").mkdir()
    (three_classes / "broken" / "0.png").write_bytes(_truncated_png())

    dataset = load_dataset(three_classes)

    assert dataset.class_names == ("bird", "cat", "dog")
    assert {d.name for d in dataset.report.dropped_classes} == {"empty", "broken"}
    assert any("'broken'" in w for w in dataset.report.warnings)
    assert "broken" in dataset.report.summary() and "9 images in 3 classes" in dataset.report.summary()


def test_single_class_loads_but_cannot_sample_negatives():
    dataset = load_dataset({"cat": [_noise(1), _noise(2)]})
    dataset.require_classes(1)
    with pytest.raises(DatasetError, match=r"negative-class sampling needs at least 2 classes.* has 1 "):
        dataset.require_classes(2, purpose="negative-class sampling")


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda root: root, "no class folders found in"),
        (lambda root: _make_tree(root, {"a": [("0.png", b"junk")]}), "no class .* has a readable image"),
        (lambda root: root / "missing", "does not exist"),
        (lambda root: _write(root / "fake.zip", b"PK not really"), "not a readable zip archive"),
        (lambda root: _write(root / "notes.txt", b"hello"), "neither a folder nor a .zip"),
        (lambda root: {}, "no classes"),
        (lambda root: {"   ": [_noise(1)]}, "'   ' is empty"),
        (lambda root: {"cat": _noise(1)}, "expected a list of images"),
    ],
)
def test_unusable_inputs_raise_dataset_error(tmp_path: Path, make_input, message: str):
    with pytest.raises(DatasetError, match=message):
        load_dataset(make_input(tmp_path))


def test_linked_folders_are_followed_once(three_classes: Path, tmp_path: Path):
    outside = _make_tree(tmp_path / "elsewhere", {"fox": [("0.png", _encode(_noise(50)))]})
    (three_classes / "fox").symlink_to(outside / "fox", target_is_directory=True)
    (three_classes / "cat" / "loop").symlink_to(three_classes, target_is_directory=True)

    dataset = load_dataset(three_classes)

    assert dataset.class_names == ("bird", "cat", "dog", "fox")
    assert len(dataset.images("cat")) == 3 and dataset.report.duplicates == []


def test_names_equal_after_stripping_keep_the_first_class():
    dataset = load_dataset({"cat": [_noise(1)], " cat ": [_noise(2)]})

    assert dataset.class_names == ("cat",)
    assert [r.digest for r in dataset.images("cat")] == [image_digest(_noise(1))]
    assert [d.name for d in dataset.report.dropped_classes] == [" cat "]


def test_oversized_zip_entries_are_skipped_unread(three_classes: Path, tmp_path: Path, monkeypatch):
    archive = _zip_tree(three_classes, tmp_path / "data.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("cat/huge.png", _encode(_noise(60, (200, 200))))
    monkeypatch.setattr("dipsy_ui.data.MAX_ZIP_ENTRY_BYTES", 10_000)

    dataset = load_dataset(archive)

    assert len(dataset.images("cat")) == 3
    assert [s.reason for s in dataset.report.skipped] == ["larger than 10000 bytes"]


def test_duplicates_within_a_class_are_dropped_and_reported(tmp_path: Path):
    image = _encode(_noise(4))
    root = _make_tree(tmp_path, {"a": [("1.png", image), ("2.png", image), ("3.png", _encode(_noise(5)))]})
    dataset = load_dataset(root)

    assert [Path(r.source).name for r in dataset.images("a")] == ["1.png", "3.png"]
    [duplicate] = dataset.report.duplicates
    assert (Path(duplicate.source).name, Path(duplicate.kept).name) == ("2.png", "1.png")


HOSTILE_NAMES = [
    "../../etc",
    "/abs/path",
    "a/b",
    "a\\b",
    "..",
    ".",
    "CON",
    "con.txt",
    "nul",
    "LPT9",
    "x\x00y",
    "tab\there",
    "  spaced  ",
    "Café",
    unicodedata.normalize("NFD", "Café"),
    "Cat",
    "cat",
    "x" * 300,
    "x" * 299 + "y",
    "\U0001f600\U0001f431",
    "\u732b",
    "class",
    "trailing. ",
]


def test_hostile_class_names_get_unique_safe_slugs(tmp_path: Path):
    slugs = class_slugs(HOSTILE_NAMES)

    assert list(slugs) == HOSTILE_NAMES
    assert len({s.casefold() for s in slugs.values()}) == len(HOSTILE_NAMES)
    for slug in slugs.values():
        assert slug and len(slug) <= MAX_SLUG_LENGTH
        assert set(slug) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        assert ".." not in slug and slug[0] not in ". " and slug[-1] not in ". "
        assert slug.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "LPT9"}
        assert resolve_inside(tmp_path, slug).parent == tmp_path.resolve()
    assert class_slugs(HOSTILE_NAMES) == slugs  # deterministic
    assert safe_slug("Café") == "Cafe"


def test_dataset_keeps_display_names_and_assigns_distinct_slugs():
    names = ["  spaced  ", "Café", unicodedata.normalize("NFD", "Café"), "Cat", "cat", "../../etc"]
    dataset = load_dataset({name: [_noise(i)] for i, name in enumerate(names)})

    assert dataset.class_names == ("spaced", *names[1:])
    assert len({dataset.slug(n).casefold() for n in dataset.class_names}) == len(names)


@pytest.mark.parametrize("parts", [("..",), ("../x",), ("/etc",), ("a", "..", "..", "b"), ("",), ("a\x00",)])
def test_resolve_inside_rejects_escapes(tmp_path: Path, parts: tuple[str, ...]):
    with pytest.raises(ValueError):
        resolve_inside(tmp_path, *parts)


def test_zip_with_escaping_entries_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    archive = work / "evil.zip"
    png = _encode(_noise(1))
    with zipfile.ZipFile(archive, "w") as zf:
        for name in [
            "../evil.png",
            "../../evil.png",
            "/tmp/abs-evil.png",
            "cat/../../evil.png",
            "cat/ok.png",
        ]:
            zf.writestr(name, png)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(work)

    dataset = load_dataset(archive)

    assert sorted(tmp_path.rglob("*")) == before
    assert dataset.class_names == ("cat",) and len(dataset) == 1
    assert sum(s.reason == "unsafe path in archive" for s in dataset.report.skipped) == 4


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_demo_data_is_a_deterministic_disjoint_few_shot_split(tmp_path: Path):
    first = write_demo_data(tmp_path / "one", shots=4, test_per_class=6, size=32, seed=3)
    second = write_demo_data(tmp_path / "two", shots=4, test_per_class=6, size=32, seed=3)

    train, test = load_dataset(first / "train"), load_dataset(first / "test")
    names = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert set(train.class_names) == set(test.class_names) == names
    assert {len(train.images(n)) for n in names} == {4} and {len(test.images(n)) for n in names} == {6}
    assert train.images("one")[0].image.size == (32, 32)
    assert not {r.digest for r in _all(train)} & {r.digest for r in _all(test)}
    assert _tree_hash(first) == _tree_hash(second)
    assert _tree_hash(write_demo_data(tmp_path / "three", shots=4, test_per_class=6, size=32, seed=4)) != (
        _tree_hash(first)
    )


def _all(dataset):
    return [record for name in dataset.class_names for record in dataset.images(name)]


def test_demo_data_rewrites_its_own_folder_but_never_a_foreign_one(tmp_path: Path):
    demo = write_demo_data(tmp_path / "demo", shots=3, test_per_class=2)
    write_demo_data(demo, shots=2, test_per_class=2)  # rerun with fewer shots leaves no stale files
    assert len(load_dataset(demo / "train")) == 20

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="choose another folder"):
        write_demo_data(foreign)
    assert [p.name for p in foreign.iterdir()] == ["thesis.txt"]
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_demo_data_with_impossible_shots_is_refused_before_anything_is_removed(tmp_path):
    demo = write_demo_data(tmp_path / "demo", shots=2, test_per_class=2)
    before = sorted(p.relative_to(demo) for p in demo.rglob("*.png"))
    with pytest.raises(ValueError, match="shots must be in 1.."):
        write_demo_data(demo, shots=100_000, test_per_class=2)
    assert sorted(p.relative_to(demo) for p in demo.rglob("*.png")) == before


def test_a_data_folder_the_app_wrote_loads_as_the_app_sees_it(tmp_path):
    """With its classes.json, a session's data folder keeps the app's class names (not the folder
    slugs), the order classes and images were added in, and reads nothing outside the folder."""
    import json

    for folder, files in {"cat-tabby": ["b.png", "a.png"], "dog": ["c.png"]}.items():
        (tmp_path / folder).mkdir()
        for shade, file in enumerate(files):
            Image.new("RGB", (8, 8), (40 * shade, 9, 9) if folder == "dog" else (9, 40 * shade, 9)).save(
                tmp_path / folder / file
            )
    classes = {"dog": {"folder": "dog", "files": ["c.png"]},
               "Cat (tabby)": {"folder": "cat-tabby", "files": ["b.png", "a.png"]}}  # fmt: skip
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    dataset = load_dataset(tmp_path)
    assert list(dataset.class_names) == ["dog", "Cat (tabby)"]
    assert [Path(r.source).name for r in dataset.images("Cat (tabby)")] == ["b.png", "a.png"]
    assert not dataset.report.skipped  # classes.json is the list, not a stray file
    classes["dog"]["files"] = ["../../escape.png"]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(DatasetError, match="inside"):
        load_dataset(tmp_path)
