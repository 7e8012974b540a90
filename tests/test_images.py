"""Image import limits: a decompression bomb is refused from its header, a large image is
downscaled with a report line, an image within the limits keeps its decoded pixels exactly."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from dipsy_ui.config import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from dipsy_ui.data import Downscaled, load_dataset
from dipsy_ui.errors import ImageReadError
from dipsy_ui.images import (
    capped_size,
    check_pixel_count,
    fit_image,
    image_digest,
    open_image,
    read_image,
    to_rgb,
)

LIMIT_MP = f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP"


def _blank_png(width: int, height: int) -> bytes:
    """A black 1-bit PNG of ``width`` x ``height``, written row by row: a few KB, never in memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then the packed pixels
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _smooth(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Smooth colour ramps (cheap to make at any size, and compressible)."""
    ramp = Image.linear_gradient("L")
    bands = Image.merge("RGB", [ramp, ramp.rotate(90), ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    return bands.resize((width, height)).convert(mode)


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rotated_jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encode(_smooth(*size, mode), "JPEG", exif=exif)


def _reference(data: bytes) -> Image.Image:
    """How images were decoded before the limits existed: PIL, EXIF orientation, to_rgb."""
    with Image.open(io.BytesIO(data)) as handle:
        return to_rgb(ImageOps.exif_transpose(handle))


@pytest.fixture
def decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image PIL decodes during the test, as it decodes it."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def spy(self):
        if self.tile:  # a loaded image has no tiles left, and load() returns at once
            sizes.append(self.size)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return sizes


def test_the_limits_sit_below_pils_and_fit_each_other():
    assert (
        MAX_IMAGE_SIDE**2 <= MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS
    )  # PIL never warns on an accepted image
    check_pixel_count((8000, 8000), "exactly.png")
    with pytest.raises(
        ImageReadError, match=f"^over.png: 8001x8000 pixels \\(64 MP\\) is over the {LIMIT_MP} limit"
    ):
        check_pixel_count((8001, 8000), "over.png")
    assert capped_size((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)) == (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
    assert capped_size((6000, 4000)) == (2048, 1365) and capped_size((4000, 6000)) == (1365, 2048)
    assert capped_size((MAX_IMAGE_SIDE + 1, 10)) == (MAX_IMAGE_SIDE, 10)
    assert capped_size((100_000, 1)) == (MAX_IMAGE_SIDE, 1)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns over 89 MP; we refuse
def test_a_decompression_bomb_in_a_zip_is_refused_from_its_header(tmp_path: Path, decoded_sizes):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cat/bomb.png", _blank_png(12000, 12000))
        zf.writestr("cat/giant.png", _blank_png(20000, 20000))  # over PIL's own hard limit
        zf.writestr("cat/ok.png", _encode(_smooth(64, 48)))
    assert archive.stat().st_size < 20_000  # the reported attack: a few KB declaring 432 MB of RGB

    dataset = load_dataset(archive)

    reasons = {skipped.source: skipped.reason for skipped in dataset.report.skipped}
    assert reasons[f"{archive}:cat/bomb.png"].startswith(
        f"12000x12000 pixels (144 MP) is over the {LIMIT_MP} limit"
    )
    # PIL itself refuses this one while reading the header; the message is the same.
    assert reasons[f"{archive}:cat/giant.png"].startswith(
        f"400000000 pixels (400 MP) is over the {LIMIT_MP} limit"
    )
    assert all(reason.endswith("downscale it to at most 2048 px on its longest side and add it again")
               for reason in reasons.values())  # fmt: skip
    assert f"skipped {archive}:cat/bomb.png: 12000x12000 pixels" in dataset.report.summary()
    assert decoded_sizes == [(64, 48)]  # neither oversized image was decoded at all
    assert [record.source for record in dataset.images("cat")] == [f"{archive}:cat/ok.png"]


def test_a_large_image_is_downscaled_with_a_report_line_in_every_input_form(tmp_path: Path):
    large = _smooth(3000, 2000)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    path = tmp_path / "data" / "cat" / "big.png"
    large.save(path)

    from_folder = load_dataset(tmp_path / "data")
    from_mapping = load_dataset({"pil": [large], "bytes": [path.read_bytes()], "path": [path]})

    [record] = from_folder.images("cat")
    assert record.image.size == (2048, 1365) and record.image.mode == "RGB"
    assert from_folder.report.downscaled == [Downscaled(str(path), (3000, 2000), (2048, 1365))]
    assert f"{path}: 3000x2000 downscaled to 2048x1365" in from_folder.report.summary()
    assert {cls.images[0].digest for cls in from_mapping.classes} == {record.digest}
    assert [d.original_size for d in from_mapping.report.downscaled] == [(3000, 2000)] * 3
    assert large.size == (3000, 2000)  # the caller's image is not modified
    assert image_digest(open_image(path)) == record.digest  # the classifier reads the same pixels


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_made_upright(decoded_sizes):
    data = _rotated_jpeg((6000, 4000), "L")

    decoded = read_image(data, "phone.jpg")

    assert decoded_sizes == [(3000, 2000)]  # JPEG's own 1/2 scale decoding, never the 24 MP
    assert decoded.original_size == (4000, 6000) and decoded.image.size == (1365, 2048)
    assert decoded.note == "4000x6000 downscaled to 1365x2048"
    full = np.asarray(_reference(data).resize((1365, 2048), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(decoded.image, dtype=float) - full).mean() < 2  # same picture, same way up


@pytest.mark.parametrize("mode", ["1", "P", "PA", "LA", "RGBA", "I;16", "CMYK"])
def test_every_mode_is_downscaled_to_rgb_like_its_full_size_conversion(mode: str):
    image = _smooth(2100, 300, "RGBA").convert(mode) if mode == "PA" else _smooth(2100, 300, mode)

    decoded = fit_image(image, f"{mode}.png")

    assert decoded.image.mode == "RGB" and decoded.image.size == (MAX_IMAGE_SIDE, 293)
    full = np.asarray(to_rgb(image).resize(decoded.image.size, Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(decoded.image, dtype=float) - full).mean() < 8, mode


WITHIN_LIMITS = {
    "png": lambda: _encode(_smooth(64, 48)),
    "exif-rotated jpeg": lambda: _rotated_jpeg((40, 20)),
    "16-bit png": lambda: _encode(Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 150)),
    "palette png with transparency": lambda: _encode(_smooth(24, 16, "P"), transparency=3),
    "at the side limit": lambda: _encode(_smooth(MAX_IMAGE_SIDE, 40)),
}


@pytest.mark.parametrize("case", WITHIN_LIMITS)
def test_images_within_the_limits_keep_their_decoded_pixels(case: str):
    data = WITHIN_LIMITS[case]()
    expected = image_digest(_reference(data))

    decoded = read_image(data, case)
    with Image.open(io.BytesIO(data)) as handle:
        in_memory = fit_image(handle, case)

    assert decoded.note is None and image_digest(decoded.image) == expected
    assert in_memory.note is None and image_digest(in_memory.image) == expected
    assert load_dataset({"a": [data]}).report.downscaled == []


def test_unreadable_bytes_name_the_source():
    with pytest.raises(ImageReadError, match="^upload 3: not a readable image") as refused:
        read_image(b"not a picture", "upload 3")
    # PIL's reason stays; its repr of the in-memory file does not.
    assert "cannot identify image file" in str(refused.value)
    assert "BytesIO" not in str(refused.value) and "0x" not in str(refused.value)


def test_unreadable_file_message_holds_no_server_path(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for missing_or_bad in (text, tmp_path / "gone.png"):
        with pytest.raises(ImageReadError, match="^notes: not a readable image") as refused:
            read_image(missing_or_bad, "notes")
        assert str(tmp_path) not in str(refused.value) and "/" not in str(refused.value), refused.value
