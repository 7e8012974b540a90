"""The curation report of a generation run: what is wrong with which image, and how good each
class's synthetic set is, judged against the real few-shot images (``RUN/curation-report.json``).

Every image of the run and every real image is embedded (CLIP ``encode_image``, or a trained
classifier's image encoder; cached per run under ``RUN/.cache``), unit-normalised, and compared
by cosine similarity. The manifest says where each image came from, so the flags can use it:

- ``near_copy``: the image is too close to its own recorded positive image (memorised: it adds
  nothing the real image did not already give);
- ``duplicate``: it is too close to an earlier kept image of the run (the earlier one stays
  unflagged, so rejecting every flagged duplicate keeps one image of each group);
- ``off_class``: another class's real images are closer to it than its own class's, and the
  report says which class and whether that is the negative class the image was made to avoid.

"Too close" is at least the configured cosine *and* a small share of the usual gap between a real
image of the class and its nearest real neighbour (:func:`copy_floor`), since how close different
images of one class come depends on the encoder and the data (a small digit CLIP puts two
different handwritten ones at 0.999). Likewise an image
is ``off_class`` only if it leans to the other class further than any real image of its own class
does (:func:`real_margin`): where the encoder cannot tell two classes apart, leaning means nothing.

Per class, over its kept images: fidelity (mean closeness to the class's real images), density
and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models",
arXiv 2002.09797), diversity (mean cosine distance between the synthetic images, beside the
same for the real ones) and the share flagged.

The report only reads: images, the manifest and its curation statuses are never changed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath

import torch
import torch.nn.functional as F

from .config import CurationConfig
from .data import FewShotDataset, ImageRecord, resolve_inside
from .errors import UsageError
from .events import CANCELLED, DONE, PROGRESS, Event, OnEvent, protocol
from .files import write_atomic
from .images import open_image
from .manifest import MANIFEST_NAME, read_manifest
from .models import ClipBundle, Runtime
from .similarity import embed_images

REPORT_FILE = "curation-report.json"
CACHE_DIR = ".cache"  # inside the run, shared with the class similarity's embeddings
FLAGS = ("near_copy", "duplicate", "off_class")


# 1. The measures, on unit-normalised embeddings -------------------------------------------------


def closeness(images: torch.Tensor, real: torch.Tensor, k: int) -> torch.Tensor:
    """Each image's mean cosine to its ``k`` closest rows of ``real`` (all of them if fewer), ``(N,)``."""
    return (images @ real.T).topk(min(k, len(real)), dim=1).values.mean(dim=1)


def copy_floor(real: torch.Tensor, share: float) -> float | None:
    """The cosine above which an image counts as a copy in this class: its distance to the other
    image is at most ``share`` of the usual gap (the median distance from a real image of the
    class to its nearest real neighbour). None for a single real image.

    Distances are Euclidean between unit vectors, ``sqrt(2 - 2 cos)``; the usual gap says how
    close different images of the class come in this embedding, which depends on the encoder and
    the data: a small digit CLIP puts different handwritten ones 0.15 apart, eights 0.5 apart.
    """
    if len(real) < 2:
        return None
    gaps = torch.cdist(real, real).fill_diagonal_(torch.inf).min(dim=1).values
    distance = share * float(gaps.median())
    return 1.0 - distance * distance / 2


def mean_distance(embeddings: torch.Tensor) -> float | None:
    """Mean cosine distance ``1 - cos`` over all pairs of different rows; None below two rows."""
    count = len(embeddings)
    if count < 2:
        return None
    total = embeddings.sum(dim=0)
    # The sum of all pairwise cosines is |sum|^2 minus the n self-pairs: no (n, n) matrix needed.
    pair_cosines = (float(total @ total) - count) / (count * (count - 1))
    return 1.0 - pair_cosines


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float] | None:
    """Density and coverage of Naeem et al. 2020 (arXiv 2002.09797, Eqs. 3 and 4).

    Each real image gets a ball reaching its ``k``-th nearest other real image (Euclidean
    distance, which on unit vectors orders like the cosine). Density is the mean number of balls
    a fake image falls in, divided by ``k`` (about 1 when fakes are distributed like the real
    images, above 1 when they crowd the dense parts); coverage is the share of real images whose
    ball holds at least one fake. ``k`` is capped at the number of other real images; None when
    there are fewer than two real images or no fake.
    """
    if len(real) < 2 or len(fake) == 0:
        return None
    k = min(k, len(real) - 1)
    between_real = torch.cdist(real, real)
    # The nearest "neighbour" of a real image is itself at distance 0: the k-th other is k + 1-th.
    radii = between_real.topk(k + 1, dim=1, largest=False).values[:, -1]
    inside = torch.cdist(fake, real) < radii  # (fakes, reals): fake j in the ball of real i
    return float(inside.sum()) / (k * len(fake)), float(inside.any(dim=0).float().mean())


def real_margin(real: dict[str, torch.Tensor], name: str, k: int) -> float | None:
    """How far the real images of class ``name`` themselves lean to another class: the largest
    ``closeness to another class - closeness to the rest of their own class`` among them (each
    left out of its own class). Positive where the encoder cannot tell the class from another;
    None for a class with a single real image."""
    own = real[name]
    if len(own) < 2:
        return None
    similarity = (own @ own.T).fill_diagonal_(-torch.inf)
    within = similarity.topk(min(k, len(own) - 1), dim=1).values.mean(dim=1)
    others = [closeness(own, rows, k) for other, rows in real.items() if other != name]
    if not others:
        return None
    return float((torch.stack(others).max(dim=0).values - within).max())


def earlier_duplicates(
    embeddings: torch.Tensor, candidates: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the highest cosine to an earlier row that is a candidate (a kept image) and
    that row's index; ``-inf`` and ``-1`` where there is none. Rows are in manifest order; the
    (N, N) similarity is computed ``chunk`` rows at a time to bound memory."""
    count = len(embeddings)
    best = torch.full((count,), -torch.inf)
    which = torch.full((count,), -1, dtype=torch.long)
    columns = torch.arange(count)
    for start in range(0, count, chunk):
        rows = torch.arange(start, min(start + chunk, count))
        similarity = embeddings[rows] @ embeddings.T
        allowed = (columns[None, :] < rows[:, None]) & candidates[None, :]
        similarity = similarity.masked_fill(~allowed, -torch.inf)
        best[rows], which[rows] = similarity.max(dim=1)
    which[best == -torch.inf] = -1
    return best, which


# 2. The report, from embeddings -------------------------------------------------------------


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def build_report(
    records: list[dict],
    synthetic: torch.Tensor,
    real: dict[str, torch.Tensor],
    positives: list[int | None],
    config: CurationConfig,
) -> dict:
    """The report of :mod:`this module <dipsy_ui.curation>` from embeddings.

    ``records`` are manifest records in manifest order, ``synthetic`` their embeddings ``(N, D)``,
    ``real`` each class's real embeddings, ``positives[i]`` the row of image ``i``'s positive image
    in ``real[class of i]`` (None when it could not be found). Embeddings need not be normalised.
    """
    names = list(real)
    real = {name: F.normalize(rows.float(), dim=1) for name, rows in real.items()}
    synthetic = F.normalize(synthetic.float(), dim=1)
    own = torch.tensor([names.index(record["class_name"]) for record in records], dtype=torch.long)
    kept = torch.tensor([record.get("status", "kept") == "kept" for record in records], dtype=torch.bool)
    # (N, C): how close each image is to each class's real images.
    affinity = torch.stack([closeness(synthetic, real[name], config.nearest_k) for name in names], dim=1)
    own_affinity = affinity.gather(1, own[:, None])[:, 0]
    other, other_class = affinity.scatter(1, own[:, None], -torch.inf).max(dim=1)
    floors = {name: copy_floor(rows, config.copy_gap_share) for name, rows in real.items()}
    leaning = {name: real_margin(real, name, config.nearest_k) for name in real}
    duplicate, duplicate_of = earlier_duplicates(synthetic, kept)

    images = []
    for index, record in enumerate(records):
        name = record["class_name"]
        floor = floors[name] if floors[name] is not None else -1.0
        position = positives[index]
        positive = None if position is None else float(synthetic[index] @ real[name][position])
        nearest = names[int(other_class[index])] if len(names) > 1 else None
        entry = {"file": record["file"], "class_name": name, "status": record.get("status", "kept")}
        flags = []
        if positive is not None and positive >= max(config.near_copy, floor):
            flags.append("near_copy")
        if duplicate_of[index] >= 0 and float(duplicate[index]) >= max(config.duplicate, floor):
            flags.append("duplicate")
            entry["duplicate_of"] = records[int(duplicate_of[index])]["file"]
        margin = max(config.off_class_margin, leaning[name] if leaning[name] is not None else -2.0)
        if nearest is not None and float(other[index]) > float(own_affinity[index]) + margin:
            flags.append("off_class")
            entry["off_class"] = {"class": nearest, "is_negative": nearest == record.get("negative_class")}
        entry["flags"] = flags
        entry["scores"] = {
            "fidelity": _rounded(own_affinity[index]),  # closeness to its own class's real images
            "nearest_other": _rounded(other[index]) if nearest is not None else None,
            "positive": _rounded(positive),  # cosine to its own positive image
            "duplicate": _rounded(duplicate[index]) if duplicate_of[index] >= 0 else None,
        }
        entry["nearest_class"] = nearest
        images.append(entry)
    return {
        "images": images,
        "classes": {
            name: _class_measures(name, images, synthetic, real[name], kept, affinity[:, c], config)
            for c, name in enumerate(names)
            if any(record["class_name"] == name for record in records)
        },
        "thresholds": config.to_dict(),
        "unmatched_positives": sum(position is None for position in positives),
    }


def _class_measures(name, images, synthetic, real, kept, affinity, config) -> dict:
    """Fidelity, density, coverage, diversity and the share flagged, over the class's kept images."""
    mine = torch.tensor([entry["class_name"] == name for entry in images], dtype=torch.bool) & kept
    fake = synthetic[mine]
    flagged = [
        entry for entry, chosen in zip(images, mine.tolist(), strict=True) if chosen and entry["flags"]
    ]
    naeem = density_coverage(real, fake, config.nearest_k)
    return {
        "images": sum(entry["class_name"] == name for entry in images),
        "kept": len(fake),
        "fidelity": _rounded(affinity[mine].mean()) if len(fake) else None,
        "density": _rounded(naeem[0]) if naeem else None,
        "coverage": _rounded(naeem[1]) if naeem else None,
        "diversity": _rounded(mean_distance(fake)),
        "real_diversity": _rounded(mean_distance(real)),
        "flagged": _rounded(len(flagged) / len(fake)) if len(fake) else None,
        "flag_counts": {flag: sum(flag in entry["flags"] for entry in flagged) for flag in FLAGS},
    }


# 3. The job: embed (cached), report, write --------------------------------------------------


def locate_positive(source: str, candidates: tuple[ImageRecord, ...]) -> int | None:
    """The index of the real image a manifest's ``positive`` names among its class's images.

    The manifest holds the source as the run saw it; the same folder passed another way
    (relative, absolute, moved) still ends in the same class folder and file name, so failing an
    exact match, the candidate sharing the longest path ending wins, when it is unique.
    """
    exact = [index for index, record in enumerate(candidates) if record.source == source]
    if exact:
        return exact[0]

    def parts(text: str) -> list[str]:
        return [
            part for part in PurePosixPath(text.replace("\\", "/").replace(":", "/")).parts if part != "/"
        ]

    wanted = parts(source)[::-1]
    shared = []
    for record in candidates:
        theirs, length = parts(record.source)[::-1], 0
        while length < min(len(wanted), len(theirs)) and wanted[length] == theirs[length]:
            length += 1
        shared.append(length)
    best = max(shared, default=0)
    return shared.index(best) if best and shared.count(best) == 1 else None


def classifier_encoder(folder: str | Path, runtime: Runtime | None = None) -> ClipBundle:
    """The image encoder of a trained classifier (its LoRA applied), named for the cache by the
    adapter's weights, so its embeddings never mix with the base CLIP's."""
    from .classifier.model import ADAPTER_DIR, load_classifier

    classifier = load_classifier(folder, runtime)
    weights = Path(folder) / ADAPTER_DIR / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return replace(classifier.clip, source=f"{classifier.clip.source}+lora-{digest}")


def run_records(run_dir: str | Path, dataset: FewShotDataset) -> list[dict]:
    """The manifest records of a run in manifest order, checked for a report against ``dataset``:
    the run lists images, each exists, and every class of the run is a class of the data. Messages
    name the run folder, never a server path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir.name!r} is not a folder; name a generation run's output folder")
    records = list(read_manifest(run_dir).values())
    if not records:
        raise UsageError(f"{run_dir.name!r} lists no images ({MANIFEST_NAME} is missing or empty)")
    missing = sorted({r["class_name"] for r in records} - set(dataset.class_names))
    if missing:
        raise UsageError(
            f"the run has classes that the real data lacks: {missing}; the real data has "
            f"{list(dataset.class_names)} (pass the few-shot set the run was generated from)"
        )
    absent = [r["file"] for r in records if not resolve_inside(run_dir, *r["file"].split("/")).is_file()]
    if absent:
        raise UsageError(f"images listed in the manifest of {run_dir.name!r} are missing: {absent[:5]}")
    return records


class CurationJob:
    """The curation report of the run in ``run_dir`` against the real images of ``dataset``."""

    def __init__(
        self,
        run_dir: str | Path,
        dataset: FewShotDataset,
        encoder: ClipBundle,
        config: CurationConfig | None = None,
        features: str = "clip",
        batch_size: int = 64,
    ):
        self.run_dir, self.dataset, self.encoder = Path(run_dir), dataset, encoder
        self.config, self.features, self.batch_size = config or CurationConfig(), features, batch_size
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        self.records = run_records(self.run_dir, dataset)

    def run(self, on_event: OnEvent | None = None, cancel: threading.Event | None = None) -> dict | None:
        """Embed every image (cached), build the report and write ``RUN/curation-report.json``.

        The run protocol of :mod:`dipsy_ui.events`: a "progress" event after each batch of images
        (``step``: images embedded so far), then "done" and the report is returned; setting
        ``cancel`` stops before the next batch with "cancelled", writes no report (embeddings
        cached so far are kept) and returns None.
        """
        on_event, cancel = protocol(on_event, cancel)
        cache = self.run_dir / CACHE_DIR
        total = len(self.records)
        # Every class of the data, not only the run's: an image may belong to any of them. One
        # call for all real images keeps the batches full whatever the number of shots.
        names = self.dataset.class_names
        everything = embed_images(
            self.encoder, [r.image for name in names for r in self.dataset.images(name)], cache_dir=cache
        )
        real = dict(zip(names, everything.split([len(self.dataset.images(n)) for n in names]), strict=True))
        rows = []
        for start in range(0, total, self.batch_size):
            if cancel.is_set():
                on_event(Event(CANCELLED, start, total, "Cancelled; nothing was written."))
                return None
            # One batch of images in memory at a time: a run of 2000 512-px images would take 1.5 GB.
            batch = self.records[start : start + self.batch_size]
            images = [open_image(resolve_inside(self.run_dir, *r["file"].split("/"))) for r in batch]
            rows.append(embed_images(self.encoder, images, self.batch_size, cache_dir=cache))
            done = start + len(batch)
            on_event(Event(PROGRESS, done, total, f"Embedded {done}/{total} images."))
        positives = [
            locate_positive(r.get("positive") or "", self.dataset.images(r["class_name"]))
            for r in self.records
        ]
        report = build_report(self.records, torch.cat(rows), real, positives, self.config)
        report = {"features": self.features, **report}
        write_atomic(self.run_dir / REPORT_FILE, json.dumps(report, indent=1, ensure_ascii=False))
        on_event(Event(DONE, total, total, f"Wrote {REPORT_FILE}."))
        return report


def load_report(run_dir: str | Path) -> dict:
    """A run's curation report, as written by :class:`CurationJob`."""
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise UsageError(f"{Path(run_dir).name!r} has no curation report yet; make one first")
    return json.loads(path.read_text(encoding="utf-8"))
