"""What an experiment shows: the summary table, the verdict and two plots, from its records.

``summary.json`` (every row's mean, interval and paired difference, the verdict, warnings),
``summary.md`` (the same as a table and a paragraph), ``accuracy_by_arm.png`` (top-1 per arm
with 95% error bars, one colour per number of shots) and ``accuracy_by_shots.png`` (top-1
against shots, one line per arm). Everything is recomputed from ``results.jsonl`` each time.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_atomic
from .spec import ExperimentSpec
from .stats import CONFIDENCE, Interval, summarize, verdict

PLOTS = ("accuracy_by_arm.png", "accuracy_by_shots.png")


def summary_table(rows: list[dict], reference: str) -> str:
    """The rows as a Markdown table: top-1 and the paired difference to ``reference``, in points."""
    level = f"{100 * CONFIDENCE:.0f}% CI"
    lines = [
        f"| arm | shots | seeds | top-1 % ({level}) | vs {reference}, points ({level}) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        difference = row["difference"]
        versus = "reference" if row["arm"] == reference else "no paired seeds"
        if difference is not None:
            versus = difference.points(signed=True)
        lines.append(
            f"| {row['arm']} | {row['shots']} | {len(row['seeds'])} | {row['top1'].points()} | {versus} |"
        )
    return "\n".join(lines)


def _error_bar(interval: Interval) -> tuple[float, float]:
    """Distances below and above the mean, in points (none without an interval)."""
    if interval.low is None:
        return 0.0, 0.0
    return 100 * (interval.mean - interval.low), 100 * (interval.high - interval.mean)


def save_plots(out_dir: Path, rows: list[dict], arms: list[str], shots: list[int]) -> None:
    """Write the two plots of the module docstring (a bare Figure on Agg: no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_key = {(row["arm"], row["shots"]): row["top1"] for row in rows}
    arms = [arm for arm in arms if any((arm, k) in by_key for k in shots)]
    width = 0.8 / len(shots)

    figure = Figure(figsize=(max(5.0, 1.1 * len(arms) + 2), 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for j, k in enumerate(shots):
        present = [(i, by_key[(arm, k)]) for i, arm in enumerate(arms) if (arm, k) in by_key]
        if not present:
            continue
        errors = list(zip(*(_error_bar(interval) for _, interval in present), strict=True))
        axes.errorbar(
            [i - 0.4 + width * (j + 0.5) for i, _ in present], [100 * interval.mean for _, interval in present],
            yerr=errors, fmt="o", capsize=3, label=f"{k} shot{'s' if k != 1 else ''}",
        )  # fmt: skip
    axes.set_xticks(range(len(arms)), arms, rotation=20, ha="right", rotation_mode="anchor")
    axes.set_xlim(-0.6, len(arms) - 0.4)
    axes.set(ylabel="test top-1 (%)", title=f"Accuracy per arm (mean over seeds, {CONFIDENCE:.0%} CI)")
    axes.legend(fontsize=8)
    figure.savefig(out_dir / PLOTS[0], dpi=100)

    figure = Figure(figsize=(6, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for arm in arms:
        present = [(k, by_key[(arm, k)]) for k in shots if (arm, k) in by_key]
        errors = list(zip(*(_error_bar(interval) for _, interval in present), strict=True))
        axes.errorbar(
            [k for k, _ in present], [100 * interval.mean for _, interval in present],
            yerr=errors, fmt="o-", capsize=3, label=arm,
        )  # fmt: skip
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(k) for k in shots])
    axes.set(xlabel="shots per class", ylabel="test top-1 (%)", title="Accuracy against shots")
    axes.legend(fontsize=8)
    figure.savefig(out_dir / PLOTS[1], dpi=100)


def write_report(out_dir: str | Path, spec: ExperimentSpec, records: list[dict], warnings: list[str]) -> dict:
    """Write the summary, the verdict and the plots of ``records``; returns summary.json's content."""
    out_dir = Path(out_dir)
    arms = [arm.name for arm in spec.arms]
    rows = summarize(records, arms, list(spec.shots), spec.reference)
    text, table = verdict(rows, spec.reference), summary_table(rows, spec.reference)
    cells = len(spec.arms) * len(spec.shots) * len(spec.seeds)
    summary = {
        "reference": spec.reference,
        "confidence": CONFIDENCE,
        "cells": {"finished": len(records), "planned": cells},
        "rows": [
            row
            | {"top1": row["top1"].to_dict(), "difference": row["difference"] and row["difference"].to_dict()}
            for row in rows
        ],
        "table": table,
        "verdict": text,
        "warnings": warnings,
    }
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    unfinished = (
        f"\n\n{cells - len(records)} of {cells} cells are not finished yet." if len(records) < cells else ""
    )
    notes = "".join(f"\n\nWarning: {warning}." for warning in warnings)
    markdown = (
        f"# Experiment\n\n{spec.description}\n\n{table}\n\n{text}{unfinished}"
        f"{notes}\n\n![accuracy per arm]({PLOTS[0]})\n![accuracy against shots]({PLOTS[1]})\n"
    )
    write_atomic(out_dir / "summary.md", markdown)
    save_plots(out_dir, rows, arms, list(spec.shots))
    return summary
