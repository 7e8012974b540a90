"""Measuring and using a trained CLIP + LoRA classifier: top-1 overall and per class, the
confusion matrix, and predictions (the Curate tab's ranking).

The model is in :mod:`.model`, its inputs in :mod:`.data`, training in :mod:`.train`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..models import Runtime, resolve_runtime
from .data import LabelledImages, LabelledSource, as_labelled, indexed
from .model import ClipClassifier, load_classifier

# 1. Evaluation -----------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Top-1 accuracy of a classifier on a labelled set."""

    top1: float  # fraction of images whose arg-max class is the label
    count: int  # number of images evaluated
    per_class: dict[str, float | None]  # class -> accuracy (None: no test image of that class)
    confusion: list[list[int]] = field(repr=False)  # [true class][predicted class] counts

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def predict_probs(
    classifier: ClipClassifier, loader: DataLoader, zero_shot: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N x classes, CPU float32) and the loader's labels, in order."""
    classifier.eval()
    probs, labels = [], []
    cuda = classifier.device.type == "cuda"
    with classifier.adapter_disabled() if zero_shot else _nothing(), mixed_precision(cuda):
        text = classifier.text_features()
        for images, label in loader:
            logits = classifier(images.to(classifier.device, non_blocking=True), text)
            probs.append(logits.float().softmax(dim=-1).cpu())
            labels.append(torch.as_tensor(label))
    return torch.cat(probs), torch.cat(labels)


def evaluate_items(
    classifier: ClipClassifier,
    items: Sequence[tuple[Path, int]],
    batch_size: int = 64,
    num_workers: int = 0,
    zero_shot: bool = False,
) -> EvalResult:
    """Top-1 overall and per class, and the confusion matrix, with the eval transform."""
    loader = _eval_loader(classifier, items, batch_size, num_workers)
    probs, labels = predict_probs(classifier, loader, zero_shot=zero_shot)
    n = len(classifier.class_names)
    predicted = probs.argmax(dim=-1)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(dim=1)
    per_class = {
        name: (confusion[i, i].item() / totals[i].item() if totals[i] else None)
        for i, name in enumerate(classifier.class_names)
    }
    top1 = confusion.diag().sum().item() / max(len(labels), 1)
    return EvalResult(top1=top1, count=len(labels), per_class=per_class, confusion=confusion.tolist())


def evaluate(
    classifier_dir: str | Path, test: LabelledSource, runtime: Runtime | None = None, batch_size: int = 64
) -> dict[str, EvalResult]:
    """Evaluate a trained classifier folder on a test set (a folder or a labelled list; see
    :func:`~.data.as_labelled`): ``{"zero_shot", "fine_tuned"}``."""
    classifier = load_classifier(classifier_dir, runtime)
    items = indexed(as_labelled(test, "test"), classifier.class_names, "test")
    return {
        "zero_shot": evaluate_items(classifier, items, batch_size, zero_shot=True),
        "fine_tuned": evaluate_items(classifier, items, batch_size),
    }


# 2. Predict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    path: Path
    label: str  # the most probable class
    confidence: float  # its softmax probability
    probs: dict[str, float]  # every class's probability, in the classifier's class order


def predict(
    classifier: ClipClassifier | str | Path,
    paths: Sequence[str | Path],
    batch_size: int = 64,
    runtime: Runtime | None = None,
) -> list[Prediction]:
    """Classify images (a trained folder or a loaded classifier); one :class:`Prediction` per path.

    Curation ranks synthetic images by ``prediction.probs[labelled_class]``. An unreadable file
    raises :class:`~dipsy_ui.images.ImageReadError` naming it.
    """
    if not isinstance(classifier, ClipClassifier):
        classifier = load_classifier(classifier, runtime or resolve_runtime())
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    loader = _eval_loader(classifier, [(p, -1) for p in paths], batch_size, 0)
    probs, _ = predict_probs(classifier, loader)
    names = classifier.class_names
    out = []
    for path, row in zip(paths, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        out.append(Prediction(path, names[best], row[best], dict(zip(names, row, strict=True))))
    return out


# Helpers -----------------------------------------------------------------------------------


def _eval_loader(classifier: ClipClassifier, items, batch_size: int, num_workers: int) -> DataLoader:
    # open_clip's own eval transform (resize, centre crop, normalise): what zero-shot CLIP expects.
    dataset = LabelledImages(items, classifier.clip.preprocess)
    cuda = classifier.device.type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=cuda)


def mixed_precision(cuda: bool):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op on the CPU."""
    if not cuda:
        return _nothing()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _nothing():
    return contextlib.nullcontext()
