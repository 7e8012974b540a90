"""Few-shot classifier training: LoRA fine-tuning of CLIP on real + synthetic images.

The recipe is the DataDream / DISEF one the DIPSY paper (arXiv 2509.22635) reports with
(REFERENCE.md section 4): LoRA (rank 16, alpha 32) on the attention of every block of both CLIP
encoders, the zero-shot head ``logit_scale * cos(image, text)``, loss
``lambda * CE(real) + (1 - lambda) * CE(synthetic)`` with ``lambda = 0.8``, AdamW with a cosine
schedule after a linear warm-up. An epoch is one pass over the synthetic set; the real set is
cycled alongside so each step sees a real batch and a synthetic batch of the same size.

:func:`train` is long work of the engine's one protocol (:mod:`dipsy_ui.events`): it reports
each optimisation step and each epoch's evaluation to ``on_event`` (the app plots them live, the
CLI draws a progress bar) and stops between steps once ``cancel`` is set, leaving the adapter of
the last completed step on disk. :func:`compare` runs it twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..events import CANCELLED, DONE, PROGRESS, Event, OnEvent, protocol
from ..files import write_atomic
from ..models import ClipBundle, ModelSpec, Runtime, load_clip, resolve_runtime
from .data import LabelledSource, as_labelled, describe, prepare_data, train_stream, train_transform
from .evaluate import EvalResult, evaluate_items, mixed_precision
from .model import (
    ADAPTER_DIR,
    CONFIG_NAME,
    LORA_TARGETS,
    ClipClassifier,
    SplitAttention,
    split_attention,
)
from .report import comparison_table, comparison_verdict, save_plots


@dataclass
class TrainResult:
    out_dir: Path
    class_names: tuple[str, ...]
    metrics: dict  # what metrics.json holds
    cancelled: bool
    classifier: ClipClassifier = field(repr=False)  # the trained model, ready for predict()

    @property
    def test_top1(self) -> float | None:
        """Test top-1 after the last completed epoch (None without a test set or epoch)."""
        epochs = self.metrics["epochs"]
        return epochs[-1]["test"]["top1"] if epochs and epochs[-1]["test"] else None

    @property
    def zero_shot_top1(self) -> float | None:
        return self.metrics["zero_shot"]["top1"] if self.metrics["zero_shot"] else None


# 1. Model ----------------------------------------------------------------------------------


def add_lora(clip: ClipBundle, class_names, config: TrainConfig) -> ClipClassifier:
    """LoRA on q, k, v and out projections of every block of both encoders (in place); only the
    LoRA parameters train. The attention is split first (see :class:`SplitAttention`)."""
    from peft import LoraConfig, get_peft_model

    split_attention(clip.model)
    split = [n for n, m in clip.model.named_modules() if isinstance(m, SplitAttention)]
    if not any(n.startswith("visual.") for n in split) or all(n.startswith("visual.") for n in split):
        raise ValueError(f"expected attention blocks in both CLIP encoders, found {split}")
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=LORA_TARGETS,
    )
    return ClipClassifier(clip, class_names, config.template, get_peft_model(clip.model, lora))


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def mixed_loss(logits, labels, n_real: int, lambda_real: float) -> torch.Tensor:
    """``lambda * CE(real) + (1 - lambda) * CE(synthetic)``; the first ``n_real`` rows are real.

    Both terms are always computed, so ``lambda = 1`` drops the synthetic batch through a zero
    weight (checked by the tests) rather than by skipping it.
    """
    if n_real == len(labels):
        return F.cross_entropy(logits, labels)
    real = F.cross_entropy(logits[:n_real], labels[:n_real])
    synthetic = F.cross_entropy(logits[n_real:], labels[n_real:])
    return lambda_real * real + (1 - lambda_real) * synthetic


def train_step(
    classifier: ClipClassifier,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    n_real: int,
    lambda_real: float,
    amp: bool,
) -> tuple[float, torch.Tensor]:
    """One optimisation step on a real (first ``n_real`` rows) + synthetic batch.

    Text features are recomputed inside the step: the text encoder's LoRA trains too. One
    forward pass over the concatenated batch keeps the image encoder's matmuls large.
    """
    classifier.train()
    device = classifier.device
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    with mixed_precision(amp):
        logits = classifier(images)
    loss = mixed_loss(logits.float(), labels, n_real, lambda_real)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), logits.detach()


class _PrivateRng:
    """The run's torch RNG state, kept apart from the caller's (whose code runs in on_event)."""

    def __init__(self, seed: int, cuda: bool):
        self.cuda = cuda
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            torch.manual_seed(seed)
            self.state = self._get()

    def _get(self):
        return (torch.get_rng_state(), torch.cuda.get_rng_state() if self.cuda else None)

    def _set(self, state):
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1])

    @contextlib.contextmanager
    def active(self):
        caller = self._get()
        self._set(self.state)
        try:
            yield
        finally:
            self.state = self._get()
            self._set(caller)


# 2. The run --------------------------------------------------------------------------------


def train(
    real: LabelledSource,
    out_dir: str | Path,
    spec: ModelSpec,
    *,
    synthetic: LabelledSource | None = None,
    test: LabelledSource | None = None,
    config: TrainConfig | None = None,
    runtime: Runtime | None = None,
    clip: ClipBundle | None = None,
    on_event: OnEvent | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train a LoRA classifier; returns a :class:`TrainResult`.

    ``real``, ``synthetic`` and ``test`` are folders or labelled lists (:func:`~.data.as_labelled`):
    the class names are the display names, whatever characters they hold.

    ``out_dir`` receives ``adapter/`` (peft, safetensors) and ``train_config.json`` (written at
    each epoch end and on cancel), ``metrics.json`` and the plots. ``clip`` is an already loaded,
    unmodified bundle for ``spec`` (LoRA is injected into it in place); by default it is loaded here.

    ``on_event`` receives a "progress" :class:`~dipsy_ui.events.Event` per optimisation step
    (``step``/``total``: optimisation steps) whose payload holds ``phase`` ("step", or "epoch"
    after an epoch's evaluation), ``epoch``, ``epochs``, ``loss`` (the step's, or the epoch's
    mean), ``lr``, ``accuracy`` (running training accuracy over the epoch), ``elapsed_s``,
    ``eta_s`` and ``test_top1`` (epochs with a test set), then "done" or "cancelled". ``cancel``
    is checked between steps.
    """
    # 1. Check inputs
    config = config or TrainConfig()
    runtime = runtime or resolve_runtime()
    on_event, cancel = protocol(on_event, cancel)
    data = prepare_data(real, synthetic, test)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = runtime.device.type == "cuda"
    rng = _PrivateRng(config.seed, cuda)

    # 2. Model: the base CLIP from the loader, LoRA initialised from the run's seed
    with rng.active():
        clip = clip or load_clip(spec, runtime)
        classifier = add_lora(clip, data.class_names, config)
    saved_config = {
        "config": config.to_dict(),
        "class_names": list(data.class_names),
        "template": config.template,
        "model_spec": spec.to_dict(),
        "clip_source": clip.source,
    }

    # 3. Step budget and data streams: one real and (optionally) one synthetic batch per step
    epoch_set = data.synthetic if data.synthetic is not None else data.real
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(epoch_set) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    transform = train_transform(clip, config)
    real_batches = train_stream(data.real, transform, config, total_steps, config.seed * 1000 + 11, cuda)
    synthetic_batches = (
        train_stream(data.synthetic, transform, config, total_steps, config.seed * 1000 + 23, cuda)
        if data.synthetic is not None
        else None
    )

    # 4. Optimiser over the LoRA parameters only
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, round(config.warmup_fraction * total_steps))
    )
    amp = cuda and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())

    # 5. Zero-shot baseline (adapter disabled), the common starting point of every run
    metrics = {
        "real": describe(real),
        "synthetic": describe(synthetic) if synthetic is not None else None,
        "test": describe(test) if test is not None else None,
        "class_names": list(data.class_names),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warnings": data.warnings,
        "zero_shot": _evaluate(classifier, data.test, config, zero_shot=True),
        "epochs": [],
        "step_loss": [],
        "cancelled": False,
    }

    def checkpoint() -> None:
        classifier.net.save_pretrained(str(out_dir / ADAPTER_DIR), safe_serialization=True)
        write_atomic(out_dir / CONFIG_NAME, json.dumps(saved_config, indent=2))
        write_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2))

    start = time.monotonic()

    def report(phase: str, step: int, epoch: int, loss: float, lr: float, accuracy: float, top1=None) -> None:
        elapsed = time.monotonic() - start
        payload = {"phase": phase, "epoch": epoch, "epochs": config.epochs, "loss": loss, "lr": lr,
                   "accuracy": accuracy, "elapsed_s": elapsed,
                   "eta_s": elapsed / step * (total_steps - step) if step else 0.0, "test_top1": top1}  # fmt: skip
        on_event(Event(PROGRESS, step, total_steps, f"step {step}/{total_steps}, loss {loss:.3f}", payload))

    # 6. Training loop, stopped between steps by a cancel (the last step's adapter is kept)
    epoch_loss = epoch_correct = epoch_seen = 0.0
    for step in range(total_steps):
        epoch = step // steps_per_epoch + 1
        if cancel.is_set():
            metrics["cancelled"] = True
            checkpoint()
            save_plots(out_dir, metrics)
            on_event(Event(CANCELLED, step, total_steps, f"Cancelled at step {step}/{total_steps}."))
            return TrainResult(out_dir, data.class_names, metrics, True, classifier)
        lr = optimizer.param_groups[0]["lr"]
        with rng.active():
            real_x, real_y = next(real_batches)
            images, labels = real_x, real_y
            if synthetic_batches is not None:
                syn_x, syn_y = next(synthetic_batches)
                images, labels = torch.cat([real_x, syn_x]), torch.cat([real_y, syn_y])
            loss, logits = train_step(
                classifier, optimizer, scaler, images, labels, len(real_y), config.lambda_real, amp
            )
            schedule.step()
        metrics["step_loss"].append(loss)
        epoch_loss += loss
        epoch_correct += (logits.argmax(dim=-1).cpu() == labels).sum().item()
        epoch_seen += len(labels)
        running = epoch_correct / epoch_seen
        report("step", step + 1, epoch, loss, lr, running)

        if (step + 1) % steps_per_epoch == 0 or step + 1 == total_steps:
            mean_loss = epoch_loss / (step + 1 - (epoch - 1) * steps_per_epoch)
            test = _evaluate(classifier, data.test, config)
            metrics["epochs"].append(
                {"epoch": epoch, "step": step + 1, "train_loss": mean_loss, "train_accuracy": running,
                 "lr": lr, "test": test}
            )  # fmt: skip
            checkpoint()
            report("epoch", step + 1, epoch, mean_loss, lr, running, test["top1"] if test else None)
            epoch_loss = epoch_correct = epoch_seen = 0.0

    save_plots(out_dir, metrics)
    on_event(Event(DONE, total_steps, total_steps, "Done."))
    return TrainResult(out_dir, data.class_names, metrics, False, classifier)


def _evaluate(classifier: ClipClassifier, items, config: TrainConfig, zero_shot: bool = False) -> dict | None:
    if items is None:
        return None
    result: EvalResult = evaluate_items(
        classifier,
        items,
        config.eval_batch_size,
        config.workers(classifier.device.type == "cuda"),
        zero_shot=zero_shot,
    )
    return result.to_dict()


# 3. Comparison -----------------------------------------------------------------------------


def compare(
    real: LabelledSource,
    synthetic: LabelledSource,
    test: LabelledSource,
    out_dir: str | Path,
    spec: ModelSpec,
    *,
    config: TrainConfig | None = None,
    runtime: Runtime | None = None,
    on_event: OnEvent | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """Real-only vs real+synthetic with the same seed and the same number of optimisation steps.

    Both runs use the synthetic set's epoch length, so they also share the learning-rate
    schedule and evaluation points. Writes ``out_dir/real-only`` and ``out_dir/real+synthetic``
    (each a classifier folder as :func:`train` writes it) and ``comparison.json`` and
    ``comparison.txt``. Returns a dict: test top-1 and per-class accuracy of the zero-shot,
    real-only and real+synthetic classifiers (None for a run a cancel stopped), ``"folders"``
    (each run's output folder, None for a run that never started), ``"verdict"``
    (:func:`~.report.comparison_verdict`), ``"table"`` (:func:`~.report.comparison_table`) and
    ``"text"`` (the verdict, a blank line and the table: what ``comparison.txt`` holds).

    ``on_event`` receives both runs' events as :func:`train` reports them, each payload naming
    its ``run`` ("real_only", then "real_synthetic") and the step in it (``run_step`` of
    ``run_total``; ``step``/``total`` count both runs' steps), then one "done" or "cancelled".
    """
    config = config or TrainConfig()
    on_event, cancel = protocol(on_event, cancel)
    if config.steps_per_epoch is None:
        synthetic = as_labelled(synthetic, "synthetic")
        config = config.with_budget_of(len(synthetic))
    folders = {"real_only": Path(out_dir) / "real-only", "real_synthetic": Path(out_dir) / "real+synthetic"}
    results = {}
    for offset, (name, arm) in enumerate((("real_only", None), ("real_synthetic", synthetic))):

        def relay(event: Event, name=name, offset=offset) -> None:
            if not event.last:  # the comparison ends once, after both runs
                done, total = offset * event.total + event.step, 2 * event.total
                own = {"run": name, "run_step": event.step, "run_total": event.total}
                on_event(Event(event.kind, done, total, event.message, (event.payload or {}) | own))

        results[name] = train(real, folders[name], spec, synthetic=arm, test=test, config=config,
                              runtime=runtime, on_event=relay, cancel=cancel)  # fmt: skip
        if results[name].cancelled:
            break
    first = results["real_only"].metrics
    finished = {key: r for key, r in results.items() if not r.cancelled}
    report = {
        "class_names": first["class_names"],
        "steps": first["total_steps"],
        "seed": config.seed,
        "zero_shot": {key: first["zero_shot"][key] for key in ("top1", "per_class")},
        **{key: None for key in ("real_only", "real_synthetic")},
        **{
            key: {k: r.metrics["epochs"][-1]["test"][k] for k in ("top1", "per_class")}
            for key, r in finished.items()
        },
        "cancelled": len(finished) < 2,
        "folders": {key: str(folder) if key in results else None for key, folder in folders.items()},
    }
    report["verdict"] = comparison_verdict(report)
    report["table"] = comparison_table(report)
    report["text"] = f"{report['verdict']}\n\n{report['table']}"
    write_atomic(Path(out_dir) / "comparison.json", json.dumps(report, indent=2))
    write_atomic(Path(out_dir) / "comparison.txt", report["text"] + "\n")
    on_event(Event(CANCELLED if report["cancelled"] else DONE, message=report["verdict"]))
    return report
