"""What a training run shows: its curves and confusion matrix (``curves.png``,
``confusion.png``), and the side-by-side text table of a real-only vs real+synthetic comparison."""

from __future__ import annotations

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


def comparison_table(report: dict, per_class_limit: int = 20) -> str:
    """A short text table of :func:`dipsy_ui.classifier.train.compare`'s dict: runs side by side."""
    runs = [("zero-shot", report["zero_shot"]), ("real only", report["real_only"]),
            ("real+synthetic", report["real_synthetic"])]  # fmt: skip
    width = max(12, *(len(n) for n in report["class_names"][:per_class_limit])) + 2
    lines = ["".ljust(width) + "".join(name.rjust(16) for name, _ in runs)]

    def row(label: str, values) -> None:
        lines.append(label.ljust(width) + "".join(v.rjust(16) for v in values))

    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    row("top-1 (%)", [pct(run["top1"]) if run else "-" for _, run in runs])
    row("steps", ["0", str(report["steps"]), str(report["steps"])])
    if len(report["class_names"]) <= per_class_limit:
        for name in report["class_names"]:
            row(name, [pct(run["per_class"][name]) if run else "-" for _, run in runs])
    return "\n".join(lines)
