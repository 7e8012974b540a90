"""``python -m dipsy_ui.bench {generation,training,world,explain}``: the benchmarks, run as scripts
(never as timed tests). See :mod:`dipsy_ui.bench.generation`, :mod:`dipsy_ui.bench.training`,
:mod:`dipsy_ui.world.report` and :mod:`dipsy_ui.bench.explain`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .generation import VARIANTS, bench_generation, run_variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dipsy_ui.bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    generation = commands.add_parser(
        "generation", help="(a) diffusers CFG vs (b) authors' loop vs (c) DipsyPipeline"
    )
    generation.add_argument("--size", type=int, default=256, help="image side in pixels")
    generation.add_argument("--steps", type=int, default=4)
    generation.add_argument("--repeats", type=int, default=2)
    generation.add_argument(
        "--models", type=Path, help="models folder (default: SD1.5 U-Net, random weights)"
    )
    commands.add_parser(
        "training", help="LoRA vs full fine-tuning throughput (dipsy_ui.bench.training)", add_help=False
    )
    commands.add_parser(
        "curation", help="the curation report on planted defects (dipsy_ui.bench.curation)", add_help=False
    )
    world = commands.add_parser("world", help="what a world's models can do, read back by the world's judge")
    world.add_argument("--world", default="digits", help="which world: digits or critters (default: digits)")
    world.add_argument("--models", type=Path, help="models folder (default: the world's shipped folder)")
    world.add_argument(
        "--preset", help="preset whose generation settings are measured (default: the world's)"
    )
    world.add_argument("--per-class", type=int, default=20, help="images per class and measure")
    world.add_argument("--shots", type=int, default=4, help="few-shot images per class")
    world.add_argument("--no-classifier", action="store_true", help="skip the zero-shot / real-only training")
    world.add_argument("--out", type=Path, help="also write the report as JSON here")
    explain = commands.add_parser("explain", help="one explain (Eq. 9's ladder) vs one preview")
    explain.add_argument("--models", type=Path, help="models folder (default: the digit world)")
    explain.add_argument("--preset", default="demo", help="preset whose generation settings are used")
    explain.add_argument("--repeats", type=int, default=5)
    variant = commands.add_parser("_variant")  # internal: one variant in a fresh process
    variant.add_argument("variant", choices=sorted(VARIANTS))
    variant.add_argument("models", type=Path)
    variant.add_argument("out", type=Path)
    variant.add_argument("--size", type=int, required=True)
    variant.add_argument("--steps", type=int, required=True)
    variant.add_argument("--repeats", type=int, required=True)
    args, rest = parser.parse_known_args(argv)
    if args.command == "training":
        from . import training

        return training.main(rest)
    if args.command == "curation":
        from . import curation

        return curation.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "explain":
        from .explain import bench_explain

        bench_explain(args.models, args.preset, args.repeats)
        return 0
    if args.command == "world":
        from ..world import report

        return report.main(
            args.models, args.preset, args.per_class, args.shots, not args.no_classifier, args.out, args.world
        )
    if args.command == "_variant":
        print(
            json.dumps(run_variant(args.variant, args.models, args.size, args.steps, args.repeats, args.out))
        )
    else:
        bench_generation(args.size, args.steps, args.repeats, args.models)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
