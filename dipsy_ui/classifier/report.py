"""What a training run shows: its curves and confusion matrix (``curves.png``,
``confusion.png``), and a real-only vs real+synthetic comparison's one-line verdict and
side-by-side text table."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

import torch


def save_plots(out_dir: str | Path, metrics: dict) -> list[Path]:
    """Write ``curves.png`` (loss, test top-1) and, with a test set, ``confusion.png``.

    Uses a bare matplotlib ``Figure`` on the Agg canvas: no pyplot global state, safe in a server.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    written = []
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    loss_axes.plot(
        range(1, len(metrics["step_loss"]) + 1), metrics["step_loss"], lw=0.8, alpha=0.5, label="step"
    )
    epochs = metrics["epochs"]
    loss_axes.plot([e["step"] for e in epochs], [e["train_loss"] for e in epochs], "o-", label="epoch mean")
    loss_axes.set(xlabel="step", ylabel="training loss", title="Loss")
    loss_axes.legend()
    accuracy_axes.plot(
        [e["epoch"] for e in epochs], [e["train_accuracy"] for e in epochs], "o-", label="train"
    )
    if metrics.get("zero_shot"):
        accuracy_axes.plot(
            [e["epoch"] for e in epochs], [e["test"]["top1"] for e in epochs], "o-", label="test"
        )
        accuracy_axes.axhline(metrics["zero_shot"]["top1"], ls="--", color="gray", label="zero-shot test")
    accuracy_axes.set(xlabel="epoch", ylabel="top-1", ylim=(0, 1), title="Accuracy")
    accuracy_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    accuracy_axes.legend()
    figure.savefig(out_dir / "curves.png", dpi=100)
    written.append(out_dir / "curves.png")

    if epochs and epochs[-1]["test"]:
        names = metrics["class_names"]
        confusion = torch.tensor(epochs[-1]["test"]["confusion"], dtype=torch.float32)
        rates = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
        side = min(4 + 0.25 * len(names), 16)
        figure = Figure(figsize=(side, side), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        image = axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
        figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
        if len(names) <= 40:  # beyond that the labels are unreadable; the matrix still shows
            axes.set_xticks(range(len(names)), names, rotation=90)
            axes.set_yticks(range(len(names)), names)
        axes.set(
            xlabel="predicted", ylabel="true", title=f"Confusion (top-1 {epochs[-1]['test']['top1']:.1%})"
        )
        figure.savefig(out_dir / "confusion.png", dpi=100)
        written.append(out_dir / "confusion.png")
    return written


# The comparison's runs: report key -> column title.
RUNS = {"zero_shot": "zero-shot", "real_only": "real only", "real_synthetic": "real+synthetic"}
# Longer class names are cut (with "…") so one long name cannot push the columns off the screen;
# comparison.json keeps them whole.
MAX_LABEL_WIDTH = 40


def comparison_verdict(report: dict) -> str:
    """One line on :func:`dipsy_ui.classifier.train.compare`'s dict: real+synthetic vs real-only
    test top-1 and the difference in points, or which run a cancel stopped."""
    real, mixed = report["real_only"], report["real_synthetic"]
    if real is None:
        return "cancelled during the real-only run: no comparison"
    if mixed is None:
        return (
            f"cancelled during the real+synthetic run (real-only top-1 {_pct(real['top1'])}%): no comparison"
        )
    points = 100 * (mixed["top1"] - real["top1"])
    change = "no difference" if round(points, 1) == 0 else f"{points:+.1f} points"
    return (
        f"real+synthetic {_pct(mixed['top1'])}% vs real-only {_pct(real['top1'])}% top-1: {change}, "
        f"same seed ({report['seed']}) and steps ({report['steps']})"
    )


def comparison_table(report: dict, per_class_limit: int = 20) -> str:
    """:func:`dipsy_ui.classifier.train.compare`'s dict as a text table: test top-1 (%) of the
    zero-shot, real-only and real+synthetic classifiers overall and for the first
    ``per_class_limit`` classes, and the change (real+synthetic minus real-only, in points).

    The columns line up whatever the class names hold: a name is escaped onto one line, cut to
    ``MAX_LABEL_WIDTH`` and padded by its display width (wide CJK characters take two cells).
    """
    runs = [report[key] for key in RUNS]
    names = report["class_names"]
    steps = str(report["steps"])

    def accuracies(label: str, read: Callable[[dict], float]) -> tuple[str, list[str]]:
        zero_shot, real, mixed = (None if run is None else read(run) for run in runs)
        change = "-" if real is None or mixed is None else f"{100 * (mixed - real):+.1f}"
        return label, [_pct(zero_shot), _pct(real), _pct(mixed), change]

    rows = [
        ("", [*RUNS.values(), "change"]),
        accuracies("top-1 (%)", lambda run: run["top1"]),
        ("steps", ["0", steps, steps, ""]),
        *(
            accuracies(_label(name), lambda run, name=name: run["per_class"][name])
            for name in names[:per_class_limit]
        ),
    ]
    width = max(_display_width(label) for label, _ in rows) + 2
    column = max(len(cell) for _, cells in rows for cell in cells) + 2
    lines = [
        label + " " * (width - _display_width(label)) + "".join(cell.rjust(column) for cell in cells)
        for label, cells in rows
    ]
    if len(names) > per_class_limit:
        more = len(names) - per_class_limit
        lines.append(
            f"... and {more} more {'class' if more == 1 else 'classes'} (all of them in comparison.json)"
        )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _label(name: str) -> str:
    """``name`` on one line (control characters escaped), cut to ``MAX_LABEL_WIDTH`` cells."""
    text = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in name)
    if _display_width(text) <= MAX_LABEL_WIDTH:
        return text
    while _display_width(text) > MAX_LABEL_WIDTH - 1:
        text = text[:-1]
    return text + "…"


def _display_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide and fullwidth characters two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )
