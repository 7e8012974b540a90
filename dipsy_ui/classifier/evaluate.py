"""Labelled image lists, evaluation and prediction for the CLIP + LoRA classifier.

The model itself is in :mod:`dipsy_ui.classifier.model`, training in :mod:`dipsy_ui.classifier.train`; this module
holds what both training and inference use to read images and measure the classifier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import IMAGE_SUFFIXES
from ..images import ImageReadError, open_image
from ..manifest import kept_images, manifest_path
from ..models import Runtime, resolve_runtime
from .model import ClipClassifier, TrainDataError, load_classifier

# 1. Labelled image lists -------------------------------------------------------------------


def labelled_images(folder: str | Path, role: str = "image") -> list[tuple[Path, str]]:
    """(path, class name) of every image in ``folder``, sorted by class then file.

    A folder with ``manifest.jsonl`` is a synthetic set: only its *kept* records are listed
    (rejected images never reach a loader), with the manifest's display class names. Any other
    folder is an ImageFolder tree: one subfolder per class, the subfolder name is the class name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainDataError(f"the {role} folder {folder} does not exist or is not a folder")
    if manifest_path(folder).is_file():
        items = kept_images(folder)
    else:
        items = [
            (path, sub.name)
            for sub in folder.iterdir()
            if sub.is_dir() and not sub.name.startswith(".")
            for path in sub.iterdir()
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        ]
    if not items:
        raise TrainDataError(
            f"the {role} folder {folder} holds no images: expected one subfolder of images per class"
            " (or a DIPSY synthetic set with manifest.jsonl and kept images)"
        )
    return sorted(items, key=lambda item: (item[1], str(item[0])))


def readable_only(
    items: list[tuple[Path, str]], folder: str | Path, role: str
) -> tuple[list[tuple[Path, str]], list[str]]:
    """Drop files that do not decode; return the rest and one warning per dropped file.

    Used on the few-shot set (small, and every image counts); raises when nothing is left.
    """
    kept, warnings = [], []
    for path, name in items:
        try:
            open_image(path)
        except ImageReadError as error:
            warnings.append(f"skipped {error}")
        else:
            kept.append((path, name))
    if not kept:
        raise TrainDataError(f"the {role} folder {folder} has no readable images ({len(items)} files tried)")
    return kept, warnings


def check_classes(class_names: Sequence[str], other: Sequence[str], role: str) -> None:
    """Raise unless ``other`` (the classes of the ``role`` set) are exactly ``class_names``."""
    missing_there = sorted(set(class_names) - set(other))
    missing_here = sorted(set(other) - set(class_names))
    if missing_there or missing_here:
        raise TrainDataError(
            f"the real and {role} sets must have the same classes; "
            f"missing in the {role} set: {missing_there or 'none'}; "
            f"missing in the real set: {missing_here or 'none'}. "
            "Rename or remove class folders so both sides match."
        )


class LabelledImages(Dataset):
    """(transformed image, label index) pairs, decoded from disk on access."""

    def __init__(self, items: Sequence[tuple[Path, int]], transform):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        return self.transform(open_image(path)), label


# 2. Evaluation -----------------------------------------------------------------------------


@dataclass
class EvalResult:
    """Top-1 accuracy of a classifier on a labelled set."""

    top1: float  # fraction of images whose arg-max class is the label
    count: int  # number of images evaluated
    per_class: dict[str, float | None]  # class -> accuracy (None: no test image of that class)
    confusion: list[list[int]] = field(repr=False)  # [true class][predicted class] counts

    def to_dict(self) -> dict:
        return asdict(self)


def eval_items(folder: str | Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """A test ImageFolder as (path, label index); its classes must be among ``class_names``."""
    items = labelled_images(folder, role="test")
    unknown = sorted({name for _, name in items} - set(class_names))
    if unknown:
        raise TrainDataError(
            f"the test folder {folder} has classes the classifier was not trained on: {unknown}; "
            f"known classes: {list(class_names)}"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return [(path, index[name]) for path, name in items]


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
    classifier_dir: str | Path, test_dir: str | Path, runtime: Runtime | None = None, batch_size: int = 64
) -> dict[str, EvalResult]:
    """Evaluate a trained classifier folder on a test ImageFolder: ``{"zero_shot", "fine_tuned"}``."""
    classifier = load_classifier(classifier_dir, runtime)
    items = eval_items(test_dir, classifier.class_names)
    return {
        "zero_shot": evaluate_items(classifier, items, batch_size, zero_shot=True),
        "fine_tuned": evaluate_items(classifier, items, batch_size),
    }


# 3. Predict --------------------------------------------------------------------------------


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


# 4. Report: plots and the side-by-side comparison -------------------------------------------


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
