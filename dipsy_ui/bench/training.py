"""Classifier training benchmark: ``python -m dipsy_ui.bench.training`` (or ``python -m dipsy_ui.bench training``).

Measures, in one run on one machine, training throughput (images/s) and peak memory of

  (lora) the recipe: LoRA (rank 16) on q/k/v/out of every attention block of both encoders,
         only the LoRA weights in AdamW;
  (full) full fine-tuning of the same CLIP (every weight in AdamW),

on the real ViT-B/16 CLIP architecture built from open_clip's own config with random weights
(``load_clip`` with no pretrained tag: no download). Both use the training
step of :mod:`dipsy_ui.classifier.train` (text features recomputed each step, mixed real + synthetic loss)
on random 224 px tensors, so image decoding is not measured; the fastest of the timed steps is
reported (a shared machine only ever slows a step down). Each variant runs in its own
process; peak memory is that process's peak RSS (``resource.getrusage``) on the CPU, or
``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

VARIANTS = {"lora": "LoRA r=16 on attention, both encoders", "full": "full fine-tuning"}


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(variant: str, batch: int, steps: int, warmup: int, classes: int) -> dict:
    """Build ViT-B/16 (random weights), train ``warmup + steps`` steps, time the last ``steps``."""
    import torch

    from ..classifier.model import ClipClassifier
    from ..classifier.train import add_lora, train_step
    from ..config import TrainConfig
    from ..models import ModelSpec, load_clip, resolve_runtime

    runtime = resolve_runtime()
    torch.manual_seed(0)
    # The ViT-B/16 architecture with random weights: no pretrained tag, so nothing is downloaded.
    clip = load_clip(ModelSpec(clip="ViT-B-16", clip_pretrained=None), runtime)
    config = TrainConfig(batch_size=batch)
    names = [f"class {i}" for i in range(classes)]
    if variant == "lora":
        classifier = add_lora(clip, names, config)
    else:
        classifier = ClipClassifier(clip, names, config.template)
        classifier.requires_grad_(True)
    params = [p for p in classifier.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    cuda = runtime.device.type == "cuda"
    amp = cuda and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    rss_model_mb = _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        # half real, half synthetic: the recipe's mixed loss with lambda = 0.8
        train_step(classifier, optimizer, scaler, images, labels, batch // 2, config.lambda_real, amp)

    for _ in range(warmup):  # allocator, optimizer state, kernel selection
        step()
    times = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "variant": variant,
        # the fastest step: other processes on a shared machine only ever slow a step down
        "images_per_s": batch / min(times),
        "seconds_per_step": min(times),
        "seconds_per_step_all": times,
        "peak_mb": peak_mb,
        "model_loaded_rss_mb": rss_model_mb,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in classifier.parameters()),
        "device": str(runtime.device),
        "threads": torch.get_num_threads(),
    }


def bench(batch: int, steps: int, warmup: int, classes: int) -> dict:
    """Run both variants in subprocesses, print a table and the ratios, return the figures."""
    load = os.getloadavg()[0]
    results = {}
    for variant, label in VARIANTS.items():
        print(f"running ({variant}) {label} ...", flush=True)
        command = [
            sys.executable,
            "-m",
            "dipsy_ui.bench.training",
            "_variant",
            variant,
            "--batch",
            str(batch),
        ]
        command += ["--steps", str(steps), "--warmup", str(warmup), "--classes", str(classes)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    lora, full = results["lora"], results["full"]
    memory = "peak allocated (GPU)" if lora["device"].startswith("cuda") else "peak RSS"
    print(
        f"\nCLIP ViT-B/16 training (random weights), batch {batch} (half real, half synthetic), {classes} classes, "
        f"best of {steps} timed steps after {warmup} warm-up; device {lora['device']}, {lora['threads']} threads, "
        f"{platform.machine()}, load average before the run {load:.2f}"
    )
    print(f"{'variant':<44} {'images/s':>9} {'s/step':>8} {memory + ' MB':>20} {'trainable params':>17}")
    for variant, label in VARIANTS.items():
        row = results[variant]
        print(
            f"({variant}) {label:<37} {row['images_per_s']:>9.2f} {row['seconds_per_step']:>8.2f} "
            f"{row['peak_mb']:>20.0f} {row['trainable_params']:>17,}"
        )
    ratios = {
        "throughput_lora_over_full": lora["images_per_s"] / full["images_per_s"],
        "peak_memory_lora_over_full": lora["peak_mb"] / full["peak_mb"],
        "trainable_lora_over_full": lora["trainable_params"] / full["trainable_params"],
    }
    print(
        f"LoRA / full: throughput x{ratios['throughput_lora_over_full']:.2f}, "
        f"peak memory x{ratios['peak_memory_lora_over_full']:.2f}, "
        f"trainable parameters x{ratios['trainable_lora_over_full']:.4f}"
    )
    return {"results": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dipsy_ui.bench.training", description=__doc__.splitlines()[0]
    )
    parser.add_argument("variant", nargs="?", choices=["_variant"], help=argparse.SUPPRESS)
    parser.add_argument("name", nargs="?", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help="images per step (half real, half synthetic)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (the fastest one is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--classes", type=int, default=10, help="class prompts through the text encoder")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    if args.variant == "_variant":
        print(json.dumps(run_variant(args.name, args.batch, args.steps, args.warmup, args.classes)))
        return 0
    report = bench(args.batch, args.steps, args.warmup, args.classes)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
