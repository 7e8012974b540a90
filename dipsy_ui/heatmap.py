"""The class-similarity figure (paper section 3's S, made visible): a heatmap in an order that puts
similar classes together, or above 40 classes a list of each class's most similar ones; class
names in any script (a CJK fallback font, escapes for what no font draws). :func:`save_similarity`
writes a result and its figure together, for the CLI and the app alike.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import colormaps, font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from .similarity import SimilarityResult, check_class_count, similarity_order, top_similar

HEATMAP_FILE = "similarity.png"


# matplotlib's own fonts have no CJK glyphs (class names showed as boxes). Noto Sans CJK (SIL OFL
# 1.1, shipped by the pinned notojp-matplotlib) draws what they lack: CJK ideographs, kana and
# Hangul. Only its font file is used: importing that package would change matplotlib's global
# font settings for the whole process.
_CJK_FONT = ("notojp-matplotlib", "notojp_matplotlib/fonts/NotoSansCJKjp-Regular.otf")
ESCAPE_NOTE = "\\u\u2026: characters no available font can draw, written as their Unicode code points"


@functools.cache
def _cjk_family() -> str:
    """Register the packaged CJK font with matplotlib (once per process); its family name."""
    path = str(importlib.metadata.distribution(_CJK_FONT[0]).locate_file(_CJK_FONT[1]))
    font_manager.fontManager.addfont(path)
    return font_manager.get_font(path).family_name


class _Labels:
    """Class names as a figure draws them: in ``families`` and then the CJK font for the characters
    those lack (matplotlib falls back glyph by glyph), a character no font has as its ``\\u``
    escape instead of a box, with :data:`ESCAPE_NOTE` on the figure."""

    def __init__(self, families: list[str]):
        self.family = [*families, _cjk_family()]
        self._fonts = [
            font_manager.get_font(font_manager.findfont(FontProperties(family=[f]))) for f in self.family
        ]
        self.escaped = False

    def __call__(self, text: str) -> str:
        drawn = "".join(
            c if c == "\n" or any(font.get_char_index(ord(c)) for font in self._fonts) else ascii(c)[1:-1]
            for c in text
        )
        self.escaped |= drawn != text
        return drawn

    def note(self, figure: Figure) -> None:
        """Explain the escapes at the bottom of ``figure``, if any label needed one."""
        if self.escaped:
            figure.supxlabel(ESCAPE_NOTE, fontsize=7, color="0.3")


def _quarter(inches: float) -> float:
    # Quarter inches are exact binary fractions: the PNG is exactly figsize * dpi pixels.
    return round(inches * 4) / 4


def _short(label: str, width: int = 24) -> str:
    return label if len(label) <= width else label[: width - 1] + "\u2026"


def _heatmap(names: list[str], similarity: torch.Tensor, order: list[int]) -> Figure:
    count = len(names)
    side = _quarter(min(max(4.0, 1.5 + 0.3 * count), 14.0))
    font = 8 if count <= 20 else 6.5
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.add_subplot()
    matrix = similarity.double().numpy()[np.ix_(order, order)]
    # The diagonal is always 1; greyed out so the colour scale spans the off-diagonal values.
    masked = np.ma.masked_where(np.eye(count, dtype=bool), matrix)
    colormap = colormaps["viridis"].with_extremes(bad="0.85")
    image = axes.imshow(masked, cmap=colormap, interpolation="nearest")
    drawable = _Labels(matplotlib.rcParams["font.family"])
    labels = [drawable(_short(names[i])) for i in order]
    # Class names are plain text: "$5 note" must not start mathtext.
    style = {"fontsize": font, "fontfamily": drawable.family, "parse_math": False}
    axes.set_xticks(range(count), labels, rotation=60, ha="right", rotation_mode="anchor", **style)
    axes.set_yticks(range(count), labels, **style)
    if count <= 12:  # few classes: the values themselves fit in the cells
        for row, column in zip(*np.nonzero(~np.eye(count, dtype=bool)), strict=True):
            value = matrix[row, column]
            colour = "black" if image.norm(value) > 0.6 else "white"  # legible on both ends of viridis
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=font - 1, color=colour)
    figure.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity")
    axes.set_title("Class similarity (similar classes adjacent)", fontsize=font + 2)
    drawable.note(figure)
    return figure


def _similar_list(names: list[str], similarity: torch.Tensor, rows_per_column: int = 50, max_rows: int = 100):
    # Most confusable classes first: that is where the negatives concentrate. Rows are capped
    # because glyph rendering dominates the cost; top_similar() gives the full table.
    entries = top_similar(names, similarity)
    order = sorted(range(len(names)), key=lambda i: (-entries[i][1][0][1], names[i]))[:max_rows]
    drawable = _Labels(["monospace"])
    lines = [
        f"{drawable(_short(names[i], 20)):<20} \u2192 "
        + ", ".join(f"{drawable(_short(other, 16))} {value:.2f}" for other, value in entries[i][1])
        for i in order
    ]
    columns = math.ceil(len(lines) / rows_per_column)
    font, spacing = 7, 1.3
    height = _quarter(0.9 + min(len(lines), rows_per_column) * font * spacing / 72)
    figure = Figure(figsize=(5.8 * columns, height))
    hidden = len(names) - len(order)
    more = f", the {hidden} least confusable not shown" if hidden else ""
    figure.suptitle(f"{len(names)} classes: each one's most similar classes{more}", fontsize=9)
    style = {
        "va": "top",
        "family": drawable.family,
        "fontsize": font,
        "linespacing": spacing,
        "parse_math": False,
    }
    for column in range(columns):
        block = "\n".join(lines[column * rows_per_column : (column + 1) * rows_per_column])
        figure.text(column / columns + 0.01, 1 - 0.6 / height, block, **style)
    drawable.note(figure)
    return figure, order


def heatmap_figure(names: list[str], similarity: torch.Tensor, max_classes: int = 40) -> Figure:
    """A labelled heatmap in :func:`similarity_order`, or above ``max_classes`` a list of each
    class's most similar classes (a heatmap of hundreds of labels is unreadable)."""
    return _figure_and_order(names, similarity, max_classes)[0]


def _figure_and_order(
    names: list[str], similarity: torch.Tensor, max_classes: int
) -> tuple[Figure, list[int]]:
    if similarity.shape != (len(names), len(names)):
        raise ValueError(f"similarity must be {len(names)}x{len(names)}, got {tuple(similarity.shape)}")
    check_class_count(len(names))
    if len(names) > max_classes:
        figure, order = _similar_list(names, similarity)
    else:
        order = similarity_order(similarity)
        figure = _heatmap(names, similarity, order)
    FigureCanvasAgg(figure)
    return figure, order


def save_heatmap(
    path: str | Path, names: list[str], similarity: torch.Tensor, max_classes: int = 40, dpi: int = 100
) -> list[int]:
    """Write :func:`heatmap_figure` as a PNG; returns the order of the classes shown (indices into
    ``names``: the heatmap's rows, or the fallback's rows, most confusable first)."""
    figure, order = _figure_and_order(names, similarity, max_classes)
    figure.savefig(path, format="png", dpi=dpi)
    return order


def save_similarity(result: SimilarityResult, folder: str | Path) -> Path:
    """Write ``folder/similarity.json`` and its heatmap ``folder/similarity.png``; returns the
    heatmap's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.save(folder)
    save_heatmap(folder / HEATMAP_FILE, list(result.names), result.similarity)
    return folder / HEATMAP_FILE
