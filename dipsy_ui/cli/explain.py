"""The ``explain`` command: what each guidance term of Eq. 9 does to one image
(:mod:`dipsy_ui.explain`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import run_interruptible, runtime_of, spec_from_args
from .generation import add_generate_one_arguments


def cmd_explain(args: argparse.Namespace) -> int:
    import functools
    import json
    import threading

    from tqdm import tqdm

    from ..config import GenerationConfig
    from ..explain import RUNGS, explain
    from ..generate import native_size
    from ..images import open_image, save_png
    from ..models import load_pipeline

    positive = open_image(args.positive)
    negative = open_image(args.negative) if args.negative else None
    pipe = load_pipeline(spec_from_args(args), runtime_of(args))
    native = native_size(pipe)  # generate-one's default size
    config = GenerationConfig(
        w_text=args.w_text,
        w_pos=args.w_pos,
        w_neg=args.w_neg,
        ip_adapter_scale=args.scale,
        steps=args.steps,
        scheduler=args.scheduler,
        height=args.height or native,
        width=args.width or native,
        augment=False,  # as generate-one draws
    )
    cancel = threading.Event()
    bar = tqdm(total=config.steps, unit="step", desc="explaining")

    def on_event(event) -> None:
        if event.kind == "step":
            bar.total, bar.n = event.total, event.step
            bar.refresh()

    run = functools.partial(
        explain, pipe, args.prompt, positive, negative, config, args.seed, args.branch_steps
    )
    result = run_interruptible(run, on_event, cancel, bar, "nothing was written", "explain again")
    if result is None:
        return 130

    out = Path(args.out)
    (out / "branches").mkdir(parents=True, exist_ok=True)
    for rung in RUNGS:
        # Each rung says what drew it, as generate-one's image does.
        record = result.weights[rung] | {
            "prompt": args.prompt,
            "seed": args.seed,
            "ip_adapter_scale": config.ip_adapter_scale,
            "num_inference_steps": config.steps,
            "scheduler": config.scheduler,
            "height": config.height,
            "width": config.width,
        }
        save_png(result.rungs[rung], out / f"{rung}.png", {"dipsy": json.dumps(record, sort_keys=True)})
    for name, image in result.differences.items():
        save_png(image, out / f"{name}.png")
    digits = len(str(config.steps))
    for step, branches in result.branches.items():
        for branch, image in branches.items():
            save_png(image, out / "branches" / f"step-{step:0{digits}d}-{branch}.png")
    (out / "terms.json").write_text(json.dumps(result.terms, indent=1), encoding="utf-8")

    means = {
        name: sum(entry[name] for entry in result.terms) / len(result.terms)
        for name in result.terms[0]
        if name != "step"
    }
    print(
        f"Wrote {out}: {', '.join(f'{rung}.png' for rung in RUNGS)}, "
        f"{', '.join(f'{name}.png' for name in result.differences)}, "
        f"branches/ (steps {', '.join(map(str, result.branches))}), terms.json"
    )
    print(
        "mean term strength over the steps: "
        + ", ".join(f"{name} {value:.3f}" for name, value in means.items())
    )
    return 0


def register(commands) -> None:
    """Add ``explain`` to the ``python -m dipsy_ui`` subparsers."""
    explain = commands.add_parser(
        "explain",
        help="Eq. 9's ladder of one image: text only, + positive image, + negative image, and what each term did",
        description="Draws generate-one's image three times with the same seed, each rung adding one guidance "
        "term (text-only.png, with-positive.png, dipsy.png, one batched call), the differences they make "
        "(positive-added.png, negative-changed.png), the four branches' clean-image estimates at a few steps "
        "(branches/step-N-{u,t,tp,tpn}.png: unconditional, text, + positive, + negative) and each term's "
        "strength per step (terms.json).",
    )
    add_generate_one_arguments(explain)
    explain.add_argument("--out", required=True, type=Path, help="output folder")
    explain.add_argument(
        "--branch-steps",
        type=int,
        nargs="+",
        metavar="STEP",
        help="steps (from 1) at which to write the branches (default: 4 spread from the first to the last)",
    )
    explain.set_defaults(run=cmd_explain)
