"""Class similarity and negative-class sampling (DIPSY, arXiv 2509.22635; REFERENCE.md section 3).

Every few-shot image goes through CLIP ``encode_image``; the raw embeddings are averaged per
class; the cosine similarity between class means gives ``S``; the negative class for an image of
class ``i`` is drawn from ``softmax(S[i] / T)`` with the diagonal removed (``T = 0.4``). The
ablations draw it uniformly from the other classes, or from ``softmax(-S[i] / T)`` (the most
dissimilar classes: the opposite of the paper's rule, to measure what the rule buys). Users may
pin or exclude negatives per class.

The engine side only: plain inputs (PIL images, tensors), no UI imports.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import GenerationConfig
from .errors import DatasetError, SettingsError, UsageError
from .files import write_atomic
from .images import image_digest, to_rgb
from .models import ClipBundle

DEFAULT_TEMPERATURE = GenerationConfig.temperature  # the paper's softmax temperature (REFERENCE.md section 3)
SIMILARITY_FILE = "similarity.json"
# The negative modes (config.NEGATIVE_MODES) whose draw needs the class similarity of the data.
SIMILARITY_MODES = ("similarity", "dissimilar")


def _cache_folder(clip: ClipBundle, cache_dir: Path) -> Path:
    # fp16 and fp32 runs of the same weights give slightly different embeddings: key on both.
    dtype = next(clip.model.parameters()).dtype
    key = hashlib.sha256(f"{clip.source}|{dtype}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"clip-embeddings-{key}"


def _read_cached(path: Path) -> torch.Tensor | None:
    """A cached embedding, or None when missing or unreadable (then it is recomputed)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError):
        return None
    if array.ndim != 1 or array.dtype != np.float32 or not np.isfinite(array).all():
        return None
    return torch.from_numpy(array)


def embed_images(
    clip: ClipBundle, images: list[Image.Image], batch_size: int = 64, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """Raw (not normalised) CLIP ``encode_image`` embeddings, ``(N, D)`` float32 on the CPU.

    With ``cache_dir``, each embedding is stored as ``<digest>.npy`` in a folder keyed by the
    model (``clip.source`` and dtype); cached images never reach the model, and an unreadable
    cache file is recomputed and overwritten.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not images:
        raise ValueError("embed_images needs at least one image")
    images = [to_rgb(image) for image in images]
    rows: list[torch.Tensor | None] = [None] * len(images)
    paths: list[Path | None] = [None] * len(images)
    if cache_dir is not None:
        folder = _cache_folder(clip, Path(cache_dir))
        for index, image in enumerate(images):
            paths[index] = folder / f"{image_digest(image)}.npy"
            rows[index] = _read_cached(paths[index])
    missing = [index for index, row in enumerate(rows) if row is None]
    parameter = next(clip.model.parameters())
    with torch.no_grad():
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            pixels = torch.stack([clip.preprocess(images[index]) for index in chunk])
            features = clip.model.encode_image(pixels.to(parameter.device, parameter.dtype))
            for index, feature in zip(chunk, features.float().cpu(), strict=True):
                rows[index] = feature
                if paths[index] is not None:
                    buffer = io.BytesIO()
                    np.save(buffer, feature.numpy(), allow_pickle=False)
                    write_atomic(paths[index], buffer.getvalue())
    return torch.stack(rows)


def class_embeddings(
    clip: ClipBundle, classes: dict[str, list[Image.Image]], cache_dir: str | Path | None = None
) -> tuple[list[str], torch.Tensor]:
    """Class names (in the given order) and the mean raw embedding per class, ``(C, D)``."""
    empty = [name for name, images in classes.items() if not images]
    if empty:
        raise DatasetError(f"classes without images: {empty}")
    names = list(classes)
    # One call for all classes so batches are full regardless of the number of shots.
    embeddings = embed_images(clip, [image for name in names for image in classes[name]], cache_dir=cache_dir)
    means = torch.stack([chunk.mean(dim=0) for chunk in embeddings.split([len(classes[n]) for n in names])])
    return names, means


def similarity_matrix(means: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between class means, ``(C, C)`` float64: symmetric, in [-1, 1], unit diagonal."""
    if means.ndim != 2 or not torch.isfinite(means).all():
        raise ValueError(f"means must be a finite (C, D) tensor, got shape {tuple(means.shape)}")
    norms = means.double().norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(
            f"class means with zero norm have no direction: rows {torch.nonzero(norms[:, 0] == 0)[:, 0].tolist()}"
        )
    unit = means.double() / norms
    similarity = unit @ unit.T
    # Symmetrise and pin the diagonal so rounding never makes S[i, j] != S[j, i] or S[i, i] != 1.
    similarity = ((similarity + similarity.T) / 2).clamp(-1.0, 1.0)
    return similarity.fill_diagonal_(1.0)


def check_class_count(count: int) -> None:
    if count < 2:
        raise ValueError(
            f"negative sampling needs at least two classes (a negative is another class), got {count}"
        )


def negative_probabilities(
    similarity: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """Row-wise softmax of ``S / T``, diagonal set to 0, rows renormalised (REFERENCE.md section 3)."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {tuple(similarity.shape)}")
    check_class_count(similarity.shape[0])
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"temperature must be a finite number > 0, got {temperature!r}")
    logits = similarity.double() / value
    # Softmax, zeroing the diagonal and renormalising equals a softmax over the off-diagonal
    # entries only. Masking first keeps small T exact: the diagonal (S = 1) would otherwise
    # swallow all the mass and the renormalisation would divide 0 by 0.
    logits.fill_diagonal_(-math.inf)
    return torch.softmax(logits, dim=1)


def dissimilar_probabilities(
    similarity: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """The "dissimilar" ablation: row-wise softmax of ``-S / T`` without the diagonal, so the least
    similar classes are the likeliest negatives (the paper's rule, section 3, with the sign flipped)."""
    return negative_probabilities(-similarity, temperature)


def uniform_probabilities(n: int) -> torch.Tensor:
    """The ablation: every other class equally likely as the negative, ``(n, n)`` float64."""
    check_class_count(n)
    return (1.0 - torch.eye(n, dtype=torch.float64)) / (n - 1)


def mode_probabilities(mode: str, similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """The negative-class probabilities of a negative mode before overrides: ``"similarity"``
    (the paper's), ``"dissimilar"`` or ``"uniform"``."""
    if mode == "uniform":
        return uniform_probabilities(similarity.shape[0])
    if mode == "dissimilar":
        return dissimilar_probabilities(similarity, temperature)
    if mode == "similarity":
        return negative_probabilities(similarity, temperature)
    raise SettingsError(f"negative mode must be 'similarity', 'dissimilar' or 'uniform', got {mode!r}")


def apply_override(
    probabilities: torch.Tensor,
    names: list[str],
    allowed: dict[str, list[str]] | None = None,
    excluded: dict[str, list[str]] | None = None,
) -> torch.Tensor:
    """Restrict rows to pinned negatives (``allowed``) and zero ``excluded`` ones, then renormalise.

    Keys and values are class names. Pinning a class as its own negative is an error; a row left
    without probability mass is an error naming the class.
    """
    allowed, excluded = allowed or {}, excluded or {}
    index = {name: i for i, name in enumerate(names)}
    mentioned = [*allowed, *excluded] + [
        name for group in (allowed, excluded) for row in group.values() for name in row
    ]
    unknown = sorted({name for name in mentioned if name not in index})
    if unknown:
        raise SettingsError(f"unknown class names in the negative-class override: {unknown}")
    pinned_self = sorted(name for name, row in allowed.items() if name in row)
    if pinned_self:
        raise SettingsError(f"a class cannot be its own negative: {pinned_self}")
    mask = torch.ones_like(probabilities, dtype=torch.bool)
    for name, row in allowed.items():
        mask[index[name]] = False
        mask[index[name], [index[other] for other in row]] = True
    for name, row in excluded.items():
        mask[index[name], [index[other] for other in row]] = False
    result = probabilities.double() * mask
    totals = result.sum(dim=1, keepdim=True)
    empty = [names[i] for i in torch.nonzero(totals[:, 0] <= 0)[:, 0].tolist()]
    if empty:
        raise SettingsError(f"the override leaves no possible negative class for: {empty}")
    # Rows without an override keep their exact values (renormalising would move the last bits).
    return torch.where(mask.all(dim=1, keepdim=True), probabilities.double(), result / totals)


def sample_negative(probabilities_row: torch.Tensor, generator: torch.Generator) -> int:
    """Draw a column index from one probability row by inverse CDF.

    Uses exactly one float64 ``torch.rand`` draw from ``generator`` (a CPU generator), so the
    draw is fixed by the generator's seed and the random stream consumed is documented.
    """
    row = probabilities_row.detach().double().cpu()
    if row.ndim != 1 or not torch.isfinite(row).all() or (row < 0).any() or row.sum() <= 0:
        raise ValueError("probabilities_row must be a 1-D finite non-negative tensor with positive sum")
    cumulative = row.cumsum(dim=0)
    target = torch.rand((), generator=generator, dtype=torch.float64) * cumulative[-1]
    # right=True: the first index whose cumulative mass exceeds the target, which skips
    # zero-probability entries; the clamp guards against rounding at the very top.
    index = int(torch.searchsorted(cumulative, target, right=True))
    return min(index, int(torch.nonzero(row)[-1]))


class NegativeSampler:
    """Negative classes by name for a fixed probability matrix (rows: target class)."""

    def __init__(self, names: list[str], probabilities: torch.Tensor):
        if probabilities.shape != (len(names), len(names)):
            raise ValueError(
                f"probabilities must be {len(names)}x{len(names)}, got {tuple(probabilities.shape)}"
            )
        if probabilities.diagonal().any():
            raise ValueError("probabilities must have a zero diagonal: a class is never its own negative")
        self.names = list(names)
        self.probabilities = probabilities.double().cpu()
        self._index = {name: i for i, name in enumerate(self.names)}

    def sample(self, class_name: str, generator: torch.Generator) -> str:
        """The negative class for one image of ``class_name``."""
        if class_name not in self._index:
            raise UsageError(f"unknown class {class_name!r}; known: {self.names}")
        return self.names[sample_negative(self.probabilities[self._index[class_name]], generator)]


@dataclass
class SimilarityResult:
    """Everything the sampler needs, and what produced it."""

    names: list[str]  # class names, the order of rows and columns
    similarity: torch.Tensor  # (C, C) cosine similarity of class means
    probabilities: torch.Tensor  # (C, C) negative-class probabilities, overrides applied
    temperature: float  # softmax temperature (unused when uniform)
    mode: str = "similarity"  # how probabilities follow from similarity (mode_probabilities)
    allowed: dict[str, list[str]] = field(default_factory=dict)  # pinned negatives per class
    excluded: dict[str, list[str]] = field(default_factory=dict)  # excluded negatives per class

    def sampler(self) -> NegativeSampler:
        return NegativeSampler(self.names, self.probabilities)

    def with_mode(self, mode: str) -> SimilarityResult:
        """The same similarity, temperature and overrides with the probabilities of ``mode``
        (this result itself when it already has that mode)."""
        if mode == self.mode:
            return self
        base = mode_probabilities(mode, self.similarity, self.temperature)
        probabilities = apply_override(base, self.names, self.allowed, self.excluded)
        return replace(self, mode=mode, probabilities=probabilities)

    def to_json(self) -> str:
        data = {
            "names": self.names,
            "temperature": self.temperature,
            "mode": self.mode,
            "allowed": self.allowed,
            "excluded": self.excluded,
            # float64 -> Python float -> JSON round-trips exactly.
            "similarity": self.similarity.double().tolist(),
            "probabilities": self.probabilities.double().tolist(),
        }
        return json.dumps(data, indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SimilarityResult:
        data = json.loads(text)
        missing = sorted({"names", "similarity", "probabilities", "temperature"} - set(data))
        if missing:
            raise DatasetError(f"similarity data lacks keys: {missing}")
        names = list(data["names"])
        shape = (len(names), len(names))
        matrices = {
            key: torch.tensor(data[key], dtype=torch.float64) for key in ("similarity", "probabilities")
        }
        for key, matrix in matrices.items():
            if matrix.shape != shape:
                raise DatasetError(
                    f"{key} must be {shape[0]}x{shape[1]} for {len(names)} names, got {tuple(matrix.shape)}"
                )
        return cls(
            names=names,
            temperature=float(data["temperature"]),
            # Files written before the dissimilar mode recorded only a "uniform" flag.
            mode=str(data.get("mode", "uniform" if data.get("uniform") else "similarity")),
            allowed=dict(data.get("allowed", {})),
            excluded=dict(data.get("excluded", {})),
            **matrices,
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/similarity.json`` atomically; returns its path."""
        path = Path(folder) / SIMILARITY_FILE
        write_atomic(path, self.to_json().encode("utf-8"))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SimilarityResult:
        return cls.from_json((Path(folder) / SIMILARITY_FILE).read_text(encoding="utf-8"))


def compute_similarity(
    clip: ClipBundle,
    classes: dict[str, list[Image.Image]],
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "similarity",
    allowed: dict[str, list[str]] | None = None,
    excluded: dict[str, list[str]] | None = None,
    cache_dir: str | Path | None = None,
) -> SimilarityResult:
    """The whole section-3 step: embeddings -> class means -> S -> probabilities (``mode``, see
    :func:`mode_probabilities`) -> overrides."""
    check_class_count(len(classes))
    names, means = class_embeddings(clip, classes, cache_dir=cache_dir)
    similarity = similarity_matrix(means)
    probabilities = apply_override(
        mode_probabilities(mode, similarity, temperature), names, allowed, excluded
    )
    return SimilarityResult(
        names, similarity, probabilities, temperature, mode, dict(allowed or {}), dict(excluded or {})
    )


def similarity_order(similarity: torch.Tensor) -> list[int]:
    """A deterministic order placing similar classes together: the leaves of average-linkage
    clustering on ``1 - S`` with optimal leaf ordering."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    count = similarity.shape[0]
    if count < 3:
        return list(range(count))
    distance = (1.0 - similarity.double().numpy()).clip(min=0.0)
    distance = (distance + distance.T) / 2
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)]


def top_similar(
    names: list[str], similarity: torch.Tensor, k: int = 3
) -> list[tuple[str, list[tuple[str, float]]]]:
    """For each class, its ``k`` most similar other classes with their similarity."""
    off = similarity.double().clone().fill_diagonal_(-math.inf)
    values, indices = off.topk(min(k, len(names) - 1), dim=1)
    return [
        (name, [(names[j], float(v)) for j, v in zip(indices[i].tolist(), values[i].tolist(), strict=True)])
        for i, name in enumerate(names)
    ]
