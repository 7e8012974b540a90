"""Commands that make models and data: ``make-tiny-models``, ``train-world``, ``make-demo-data``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from ..tiny import make_tiny_models

    out = make_tiny_models(args.out_dir, seed=args.seed)
    print(
        f"Tiny models written to {out} (random weights: their images are noise). Use them with --models {out}"
    )
    return 0


def cmd_train_world(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from ..world.build import train_world
    from ..world.worlds import get_world

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    world = get_world(args.world)
    config = world.quick_config() if args.quick else world.config
    command = "python -m dipsy_ui " + shlex.join(args.argv)
    record = train_world(args.out_dir, config, command=command, world=world)
    print(
        f"The {world.name} world written to {args.out_dir} in {record['seconds']:.0f} s "
        f"(record: {args.out_dir}/world.json). Use it with --models {args.out_dir}"
    )
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from ..world.worlds import get_world

    world = get_world(args.world)
    test_per_class = world.test_per_class if args.test_per_class is None else args.test_per_class
    out = world.write_demo_data(args.out_dir, shots=args.shots, test_per_class=test_per_class)
    print(f"Demo {world.name} data written to {out}/train (few-shot) and {out}/test")
    return 0


def register(commands) -> None:
    """Add this module's commands to the ``python -m dipsy_ui`` subparsers."""
    tiny = commands.add_parser(
        "make-tiny-models", help="write tiny random models in the real models' layouts"
    )
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=cmd_make_tiny_models)

    world = commands.add_parser(
        "train-world", help="train a world: small models in the real layouts that draw digits or critters"
    )
    world.add_argument("out_dir", type=Path)
    world.add_argument(
        "--quick", action="store_true", help="a few steps per stage (checks the command, no quality)"
    )
    world.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    world.add_argument("--world", default="digits", help="which world: digits or critters (default: digits)")
    world.set_defaults(run=cmd_train_world)

    demo = commands.add_parser(
        "make-demo-data", help="write a few-shot dataset of a world, digits or critters (no download)"
    )
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--shots", type=int, default=8, help="few-shot images per class")
    demo.add_argument(
        "--test-per-class", type=int, help="held-out test images per class (default: all the world has)"
    )
    demo.add_argument("--world", default="digits", help="which world: digits or critters (default: digits)")
    demo.set_defaults(run=cmd_make_demo_data)
