"""Measures of a world whose classes come in families of look-alikes (the critters), as pure
functions of labels and matrices; :mod:`.report` feeds them generated images read back by the
world's judge. They state the hypotheses of BENCHMARKS.md ("The critter world"):

- H1/H2: :func:`family_recognition` (right family, right class, read as a sibling);
- H3/H4: :func:`paired_change` of the share read as the negative sibling (a 95% t interval of
  the per-image differences, the same seeds with and without the negative term);
- H5: :func:`family_structure` (within- vs across-family cosines, and the share of the
  negative-sampling probability (arXiv 2509.22635, section 3.2) that falls on siblings).
"""

from __future__ import annotations

import numpy as np
import torch

from ..experiment.stats import mean_interval


def family_index(classes: tuple[str, ...], families: dict[str, list[str]]) -> np.ndarray:
    """The family number of each class, in ``classes`` order."""
    of = {name: number for number, members in enumerate(families.values()) for name in members}
    missing = [name for name in classes if name not in of]
    if missing:
        raise ValueError(f"classes in no family: {missing}")
    return np.array([of[name] for name in classes])


def family_recognition(predicted: np.ndarray, expected: np.ndarray, family: np.ndarray) -> dict:
    """Shares of images read as their class, as any class of their family, and as a sibling
    (another class of the same family)."""
    same_family = family[predicted] == family[expected]
    right = predicted == expected
    return {
        "family": round(float(np.mean(same_family)), 3),
        "class_within_family": round(float(np.sum(right) / max(1, np.sum(same_family))), 3),
        "sibling": round(float(np.mean(same_family & ~right)), 3),
    }


def paired_change(before: np.ndarray, after: np.ndarray) -> dict:
    """Mean of two paired 0/1 vectors (the same image seeds) and of their difference, with the
    difference's 95% t interval."""
    difference = mean_interval((np.asarray(after, float) - np.asarray(before, float)).tolist())
    return {
        "before": round(float(np.mean(before)), 3),
        "after": round(float(np.mean(after)), 3),
        "difference": {
            key: None if value is None else round(value, 3) for key, value in difference.to_dict().items()
        },
    }


def family_structure(similarity: torch.Tensor, probabilities: torch.Tensor, family: np.ndarray) -> dict:
    """Mean cosine between classes of one family and of different families, and the share of
    each class's negative-sampling probability that falls on its siblings (mean and lowest)."""
    same = torch.as_tensor(family[:, None] == family[None, :])
    off = ~torch.eye(len(family), dtype=torch.bool)
    on_siblings = (probabilities * (same & off)).sum(1) / probabilities.sum(1)
    return {
        "within_family_cosine": round(float(similarity[same & off].mean()), 3),
        "across_family_cosine": round(float(similarity[~same].mean()), 3),
        "sibling_probability_mean": round(float(on_siblings.mean()), 3),
        "sibling_probability_min": round(float(on_siblings.min()), 3),
    }
