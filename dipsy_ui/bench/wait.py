"""``python -m dipsy_ui.bench.wait``: how long a preview waits while another user's generation
runs on the same Studio (the demo models), with the model lock shared between batches and, for
reference in the same run, with the lock held by the generation to its end.

Three sessions of one Studio: A generates ``--per-class`` images per class of the demo data in
batches of ``--batch-size``; once A has written its first batch, B asks for a preview. The wait is
the time from B's request to its first denoising step, beside the same preview's start-up with the
models free; the reference is one batch of A (the median interval between A's written batches). Sharing is the Studio's behaviour; "held to the end" turns
sharing off (``ModelLock.share`` answers "nobody waits") to show what it replaced.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from ..studio import DONE, PROGRESS, STEP, GuidanceSettings, Studio


def measure(studio: Studio, per_class: int, batch_size: int, steps: int) -> dict:
    """One generation in session A and one preview in session B requested after A's first batch;
    the seconds B waited for its first step, A's batch intervals and whether A was still running
    when B's preview ended."""
    generator, viewer = studio.core.session(None), studio.core.session(None)
    for session in (generator, viewer):
        studio.data.load_demo(session)
    name = studio.data.class_names(viewer)[0]
    written: list[float] = []
    first_batch, generation_done = threading.Event(), threading.Event()

    def generate() -> None:
        folder = f"bench-{time.time_ns()}"
        for event in studio.generation.generate(generator, per_class, batch_size, folder):
            if (
                event.kind == PROGRESS
                and event.detail is not None
                and "files" in (event.detail.payload or {})
            ):
                written.append(time.perf_counter())
                first_batch.set()
        generation_done.set()

    def first_step_after(seed: int) -> tuple[float, bool]:
        """Seconds from asking for a preview to its first denoising step; whether the
        generation still ran when the preview ended."""
        asked, first_step, running_after = time.perf_counter(), None, False
        for event in studio.guidance.preview(viewer, GuidanceSettings(name, steps=steps, seed=seed)):
            if event.kind == STEP and first_step is None:
                first_step = time.perf_counter()
            if event.kind == DONE:
                running_after = not generation_done.is_set()
        return first_step - asked, running_after

    alone, _ = first_step_after(1)  # the preview's own start-up, with the models free
    thread = threading.Thread(target=generate)
    thread.start()
    first_batch.wait(600)
    wait, running_after = first_step_after(0)
    thread.join()
    intervals = [later - earlier for earlier, later in zip(written, written[1:], strict=False)]
    return {
        "alone_s": alone,
        "wait_s": wait,
        "batch_s": statistics.median(intervals) if intervals else float("nan"),
        "generation_still_running_after_preview": running_after,
    }


def bench_wait(per_class: int, batch_size: int, steps: int) -> dict:
    """The wait with the lock shared and with it held to the end, on one demo Studio."""
    with tempfile.TemporaryDirectory() as workspace:
        studio = Studio(None, workspace, demo=True)
        studio.core.load_models()
        shared = measure(studio, per_class, batch_size, steps)
        share, studio.core.model_lock.share = studio.core.model_lock.share, lambda: False
        try:
            held = measure(studio, per_class, batch_size, steps)
        finally:
            studio.core.model_lock.share = share
    return {"shared": shared, "held_to_the_end": held, "models": Path(studio.core.spec.sd).parent.name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dipsy_ui.bench.wait", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--per-class", type=int, default=20, help="images per class of the generation")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="the preview's denoising steps")
    args = parser.parse_args(argv)
    result = bench_wait(args.per_class, args.batch_size, args.steps)
    shared, held = result["shared"], result["held_to_the_end"]
    print(f"models: {result['models']}; {os.cpu_count()} CPU threads")
    for label, run in (("shared between batches", shared), ("held to the end (reference)", held)):
        queued = run["wait_s"] - run["alone_s"]
        print(f"{label:28s} first step after {run['wait_s']:6.2f} s (alone {run['alone_s']:.2f} s): waited "
              f"{queued:6.2f} s = {queued / run['batch_s']:5.2f} batches of {run['batch_s']:.2f} s; generation "
              f"still running after the preview: {run['generation_still_running_after_preview']}")  # fmt: skip
    print(f"ratio held / shared: {held['wait_s'] / shared['wait_s']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
