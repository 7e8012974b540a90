"""The generation benchmark: ``python -m dipsy_ui.bench generation`` measures, in one run on one machine, seconds per image and peak memory of

  (a) diffusers' standard two-branch CFG with IP-Adapter (``StableDiffusionPipeline``),
  (b) the authors' three-call DIPSY formulation (adapter loaded twice, scales switched),
  (c) ``DipsyPipeline`` (four branches in one U-Net call, one adapter),

on the real SD1.5 U-Net architecture (random weights, built from config: no download) with
tiny other parts, all loaded through :mod:`dipsy_ui.models`. Each variant runs in its own
process so that peak memory is its own. It prints the ratios c/a and c/b, and the largest pixel
difference between (b) and (c), which implement the same rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VARIANTS = {
    "a": "diffusers CFG + IP-Adapter (2 evals/step, 1 call)",
    "b": "authors' DIPSY loop (6 evals/step, 3 calls)",
    "c": "DipsyPipeline (4 evals/step, 1 call)",
}


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


def run_variant(variant: str, models: Path, size: int, steps: int, repeats: int, out: Path) -> dict:
    """Time one variant (in this process) and save its image for the (b)/(c) comparison."""
    import numpy as np
    import torch
    from PIL import Image

    from ..config import GenerationConfig
    from ..diffusion.reference import three_call_dipsy
    from ..models import ModelSpec, load_pipeline, load_stock_pipeline, resolve_runtime

    runtime = resolve_runtime()
    spec = ModelSpec.from_models_dir(models)
    noise = np.random.RandomState(0).randint(0, 256, (size, size, 3), dtype=np.uint8)
    positive, negative = Image.fromarray(noise), Image.fromarray(255 - noise)
    authors = GenerationConfig()
    weights = dict(
        w_text=authors.w_text,
        w_pos=authors.w_pos,
        w_neg=authors.w_neg,
        ip_adapter_scale=authors.ip_adapter_scale,
    )
    common = dict(num_inference_steps=steps, height=size, width=size, output_type="np")

    if variant == "a":
        pipe = load_stock_pipeline(spec, runtime, adapter_copies=1)
        pipe.set_ip_adapter_scale(weights["ip_adapter_scale"])

        def generate(generator):
            return pipe(
                "A photo of a cat",
                ip_adapter_image=positive,
                guidance_scale=authors.w_text,
                generator=generator,
                **common,
            ).images
    elif variant == "b":
        pipe = load_stock_pipeline(spec, runtime, adapter_copies=2)

        def generate(generator):
            return three_call_dipsy(
                pipe, "A photo of a cat", positive, negative, generator=generator, **weights, **common
            )
    else:
        pipe = load_pipeline(spec, runtime)

        def generate(generator):
            return pipe(
                "A photo of a cat", positive, negative, generator=generator, **weights, **common
            ).images

    generate(torch.Generator(runtime.device).manual_seed(0))  # warm-up: allocator, kernels, caches
    with PeakMemory(runtime.device) as memory:
        start = time.perf_counter()
        for _ in range(repeats):
            image = generate(torch.Generator(runtime.device).manual_seed(0))
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    np.save(out / f"{variant}.npy", np.asarray(image))
    return {
        "variant": variant,
        "seconds_per_image": seconds,
        "peak_mb": memory.peak_mb,
        "device": str(runtime.device),
    }


def bench_generation(size: int, steps: int, repeats: int, models: Path | None) -> dict:
    """Run the three variants in subprocesses and print the comparison."""
    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if models is None:
            from ..tiny import SD15_UNET, make_tiny_models

            print("building the SD1.5 U-Net architecture with random weights (no download) ...", flush=True)
            models = make_tiny_models(scratch / "models", shapes=SD15_UNET)
        results = {}
        for variant in VARIANTS:
            print(f"running ({variant}) {VARIANTS[variant]} ...", flush=True)
            command = [sys.executable, "-m", "dipsy_ui.bench", "_variant", variant, str(models), str(scratch)]
            command += ["--size", str(size), "--steps", str(steps), "--repeats", str(repeats)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        images = {variant: np.load(scratch / f"{variant}.npy") for variant in ("b", "c")}

    max_diff = float(np.abs(images["b"] - images["c"]).max())
    print(
        f"\nDIPSY generation benchmark: {size}x{size}, {steps} steps, 1 image, device {results['c']['device']}"
    )
    print(f"{'variant':<52} {'s/image':>9} {'peak MB':>9}")
    for variant, label in VARIANTS.items():
        row = results[variant]
        print(f"({variant}) {label:<48} {row['seconds_per_image']:>9.2f} {row['peak_mb']:>9.0f}")
    ratios = {
        "c/a_time": results["c"]["seconds_per_image"] / results["a"]["seconds_per_image"],
        "c/b_time": results["c"]["seconds_per_image"] / results["b"]["seconds_per_image"],
        "c/a_memory": results["c"]["peak_mb"] / results["a"]["peak_mb"],
        "c/b_memory": results["c"]["peak_mb"] / results["b"]["peak_mb"],
    }
    print(
        f"time ratio c/a = {ratios['c/a_time']:.2f} (target <= 1.8), c/b = {ratios['c/b_time']:.2f} (target <= 0.6)"
    )
    print(f"peak memory ratio c/a = {ratios['c/a_memory']:.2f}, c/b = {ratios['c/b_memory']:.2f}")
    print(f"max |image(b) - image(c)| = {max_diff:.2e} (pixel values in [0, 1])")
    return {"results": results, "ratios": ratios, "max_diff_b_c": max_diff}
