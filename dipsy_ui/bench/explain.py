"""The explain benchmark: ``python -m dipsy_ui.bench explain`` times one explain (Eq. 9's ladder,
:func:`dipsy_ui.explain.explain`: three rungs in one batched call, traced, the branches decoded at
four steps) against one preview (the single DIPSY image of the same settings and seed), on the
digit world with the demo preset's settings. Target: explain <= 3x one preview.

Both run in this process on the same loaded pipeline, after one warm-up each, alternating so that
other work on a shared machine slows both alike; the median of the repeats is reported.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..digits import digit_image, fewshot_indices, load_digits
from ..explain import explain
from ..models import WORLD_DIR, ModelSpec, load_pipeline, resolve_runtime
from ..presets import load_preset

POSITIVE, NEGATIVE = 3, 8  # a three steered away from an eight, as the world report's preview


def bench_explain(models: Path | None = None, preset: str = "demo", repeats: int = 5) -> dict:
    """Median seconds of one preview and one explain, and their ratio; printed and returned.
    ``models``: a models folder (default: the digit world)."""
    models = Path(models or WORLD_DIR)
    runtime = resolve_runtime()
    pipe = load_pipeline(ModelSpec.from_models_dir(models), runtime)
    pipe.set_progress_bar_config(disable=True)  # per-call bars would bury the figures
    config = load_preset(preset).generation
    digits, _ = load_digits()
    shots = fewshot_indices(1, 0)
    positive = digit_image(digits[shots[POSITIVE][0]], config.height)
    negative = digit_image(digits[shots[NEGATIVE][0]], config.height)
    prompt = config.prompt("three")

    def preview() -> None:
        pipe.use_scheduler(config.scheduler)
        pipe(
            prompt, positive, negative, w_text=config.w_text, w_pos=config.w_pos, w_neg=config.w_neg,
            ip_adapter_scale=config.ip_adapter_scale, num_inference_steps=config.steps,
            height=config.height, width=config.width, augment=config.augment,
            generator=torch.Generator(runtime.device).manual_seed(0),
        )  # fmt: skip

    def ladder() -> None:
        explain(pipe, prompt, positive, negative, config, seed=0)

    seconds = {"preview": [], "explain": []}
    for work in (preview, ladder):
        work()  # warm-up: allocator, kernels, caches
    for _ in range(repeats):
        for name, work in (("preview", preview), ("explain", ladder)):
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            work()
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = median["explain"] / median["preview"]
    print(
        f"explain benchmark: {models.name}, preset {preset} ({config.steps} steps, "
        f"{config.width}x{config.height}), device {runtime.device}, {torch.get_num_threads()} threads, "
        f"median of {repeats}"
    )
    print(f"one preview {median['preview']:.3f} s, one explain {median['explain']:.3f} s")
    print(f"ratio explain / preview = {ratio:.2f} (target <= 3)")
    return {"seconds": median, "ratio": ratio, "device": str(runtime.device)}
