"""Means, confidence intervals and paired differences over seeds, and the verdict in plain words.

Every interval is Student's t interval over seeds: ``mean +- t(0.975, n - 1) * sd / sqrt(n)``
(``sd`` with ``n - 1`` in the denominator). A paired difference is an arm's accuracy minus the
reference arm's on the same seed, hence the same few-shot subset; its interval is the t interval
of those differences, which removes the subset-to-subset spread both arms share. With one seed
there is no interval. Accuracies are fractions; the table and the verdict speak in points (x 100).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CONFIDENCE = 0.95  # the level of every interval in the results


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"the t distribution needs df >= 1, got {df}")
    return float(t.ppf(probability, df))


def accuracy_margin(count: int, confidence: float = CONFIDENCE) -> float:
    """The widest half-width (accuracy 50%) of the normal-approximation interval of one accuracy
    measured on ``count`` test images, as a fraction: how finely a test set of that size resolves."""
    from scipy.stats import norm

    return float(norm.ppf((1 + confidence) / 2) * math.sqrt(0.25 / count))


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values and its confidence interval (``low``/``high`` None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0: only then is a difference claimed."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}

    def points(self, signed: bool = False) -> str:
        """``"55.2 (51.0..59.4)"`` in points; ``signed`` writes ``+3.1 (+1.2..+5.0)``."""
        form = "{:+.1f}" if signed else "{:.1f}"
        text = form.format(100 * self.mean)
        if self.low is None:
            return text + " (one seed)"
        return f"{text} ({form.format(100 * self.low)}..{form.format(100 * self.high)})"


def mean_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` and its t interval."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("a mean needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean, None, None, n)
    sd = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(
    values: Mapping[int, float], reference: Mapping[int, float], confidence: float = CONFIDENCE
) -> Interval | None:
    """``values - reference`` over the seeds both have (same seed: same subset), with its t
    interval; None when they share no seed."""
    seeds = [seed for seed in values if seed in reference]
    if not seeds:
        return None
    return mean_interval([values[seed] - reference[seed] for seed in seeds], confidence)


def summarize(records: list[dict], arms: list[str], shots: list[int], reference: str) -> list[dict]:
    """One row per (arm, shots) with results: top-1 mean and interval, and the paired difference
    to ``reference`` (None for the reference itself)."""
    top1: dict[tuple[str, int], dict[int, float]] = {}
    for record in records:
        top1.setdefault((record["arm"], record["shots"]), {})[record["seed"]] = record["top1"]
    rows = []
    for k in shots:
        for arm in arms:
            if (arm, k) not in top1:
                continue
            by_seed = top1[(arm, k)]
            difference = (
                None if arm == reference else paired_difference(by_seed, top1.get((reference, k), {}))
            )
            rows.append(
                {
                    "arm": arm,
                    "shots": k,
                    "seeds": sorted(by_seed),
                    "top1": mean_interval(by_seed.values()),
                    "difference": difference,
                }
            )
    return rows


def verdict(rows: list[dict], reference: str, confidence: float = CONFIDENCE) -> str:
    """One paragraph: for each arm, where it beats or trails the reference (the interval of the
    paired difference excludes 0) and where there is no clear difference (it contains 0)."""
    level = f"{100 * confidence:.0f}% CI"
    sentences = []
    for arm in dict.fromkeys(row["arm"] for row in rows if row["arm"] != reference):
        parts = []
        for row in (row for row in rows if row["arm"] == arm):
            difference, at = row["difference"], f"at {row['shots']} shot{'s' if row['shots'] != 1 else ''}"
            if difference is None:
                parts.append(f"cannot be compared {at} (no {reference!r} result on the same seeds)")
            elif difference.n < 2:
                parts.append(
                    f"{100 * difference.mean:+.1f} points {at} from one seed (too few seeds to tell)"
                )
            elif difference.excludes_zero:
                word = "adds" if difference.mean > 0 else "loses"
                parts.append(
                    f"{word} {100 * difference.mean:+.1f} points ({level} "
                    f"{100 * difference.low:+.1f}..{100 * difference.high:+.1f}) {at}"
                )
            else:
                parts.append(
                    f"makes no clear difference {at} ({100 * difference.mean:+.1f} points, {level} "
                    f"{100 * difference.low:+.1f}..{100 * difference.high:+.1f} contains 0)"
                )
        sentences.append(f"{arm!r} compared with {reference!r}: " + "; ".join(parts) + ".")
    if not sentences:
        return f"Only {reference!r} has results: there is nothing to compare it with yet."
    seeds = max(row["top1"].n for row in rows)
    return (
        f"On this data ({seeds} seed{'s' if seeds != 1 else ''} per cell, each arm paired with "
        f"{reference!r} on the same few-shot subsets): " + " ".join(sentences)
    )
