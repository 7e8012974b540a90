"""Classifier commands: ``train``, ``compare``, ``evaluate``, ``predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_model_arguments, add_runtime_arguments, runtime_of, spec_from_args


def _train_config(args: argparse.Namespace):
    import dataclasses

    from ..presets import load_preset

    overrides = {
        "epochs": args.epochs,
        "lambda_real": args.lambda_real,
        "lr": args.lr,
        "lora_rank": args.lora_rank,
        "seed": args.seed,
    }
    return dataclasses.replace(
        load_preset(args.preset).train, **{k: v for k, v in overrides.items() if v is not None}
    )


def _train_bar():
    """A progress bar over optimisation steps and the callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(unit="step", desc="training")

    def on_progress(event) -> None:
        info = event.payload or {}
        if not info:  # the run's end: its result says how it went
            return
        bar.total, bar.n = info.get("run_total", event.total), info.get("run_step", event.step)
        bar.set_description(f"training {info.get('run', '')}".strip())
        postfix = f"epoch {info['epoch']}/{info['epochs']} loss {info['loss']:.3f} acc {info['accuracy']:.2f}"
        top1 = info.get("test_top1")
        bar.set_postfix_str(postfix + (f" test {top1:.3f}" if top1 is not None else ""))

    return bar, on_progress


def cmd_train(args: argparse.Namespace) -> int:
    import threading

    from ..classifier.train import train

    config, stop = _train_config(args), threading.Event()
    bar, on_progress = _train_bar()
    try:
        result = train(
            args.real,
            args.out,
            spec_from_args(args),
            synthetic=args.synthetic,
            test=args.test,
            config=config,
            runtime=runtime_of(args),
            on_event=on_progress,
            cancel=stop,
        )
    except KeyboardInterrupt:
        stop.set()
        print(
            "\ninterrupted: the adapter of the last finished epoch is in the output folder", file=sys.stderr
        )
        return 130
    finally:
        bar.close()
    if result.test_top1 is not None:
        print(f"test top-1: zero-shot {result.zero_shot_top1:.3f} -> fine-tuned {result.test_top1:.3f}")
    print(f"Wrote the adapter, metrics.json and plots to {args.out}")
    return 1 if result.cancelled else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..classifier.train import compare

    bar, on_progress = _train_bar()
    try:
        report = compare(
            args.real,
            args.synthetic,
            args.test,
            args.out,
            spec_from_args(args),
            config=_train_config(args),
            runtime=runtime_of(args),
            on_event=on_progress,
        )
    finally:
        bar.close()
    print(report["text"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..classifier.evaluate import evaluate

    results = evaluate(args.adapter, args.test, runtime_of(args))
    for name, result in results.items():
        print(f"{name}: top-1 {result.top1:.3f} on {result.count} images")
    print(
        "per class (fine-tuned): "
        + ", ".join(f"{c} {a:.2f}" for c, a in results["fine_tuned"].per_class.items())
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..classifier.evaluate import predict

    for prediction in predict(args.adapter, args.images, runtime=runtime_of(args)):
        print(f"{prediction.path}\t{prediction.label}\t{prediction.confidence:.3f}")
    return 0


def register(commands) -> None:
    """Add this module's commands to the ``python -m dipsy_ui`` subparsers."""
    for name, run, text in (
        ("train", cmd_train, "LoRA fine-tuning of CLIP on real (+ synthetic) images"),
        ("compare", cmd_compare, "real-only vs real+synthetic training, same seed and budget"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--real", required=True, type=Path, help="few-shot real images (one subfolder per class)"
        )
        sub.add_argument(
            "--synthetic", type=Path, required=name == "compare", help="synthetic set (manifest honoured)"
        )
        sub.add_argument(
            "--test", type=Path, required=name == "compare", help="test images (one subfolder per class)"
        )
        sub.add_argument(
            "--preset", required=True, help="preset name or .json (its 'train' section and template)"
        )
        sub.add_argument("--out", required=True, type=Path)
        # No defaults here: an unset flag keeps the preset's value (dipsy_ui.config's when the preset has none).
        sub.add_argument("--epochs", type=int, help="passes over the synthetic set (default: the preset's)")
        sub.add_argument(
            "--lambda-real", type=float, help="weight of the real-image loss (default: the preset's)"
        )
        sub.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
        sub.add_argument("--lora-rank", type=int, help="LoRA rank (default: the preset's)")
        sub.add_argument("--seed", type=int, help="(default: the preset's)")
        add_model_arguments(sub)
        sub.set_defaults(run=run)

    ev = commands.add_parser(
        "evaluate", help="top-1 of a trained classifier (and zero-shot) on a test folder"
    )
    ev.add_argument("--adapter", required=True, type=Path, help="a train output folder")
    ev.add_argument("--test", required=True, type=Path)
    add_runtime_arguments(ev)
    ev.set_defaults(run=cmd_evaluate)

    pr = commands.add_parser("predict", help="classify images with a trained classifier")
    pr.add_argument("--adapter", required=True, type=Path, help="a train output folder")
    pr.add_argument("images", nargs="+", type=Path)
    add_runtime_arguments(pr)
    pr.set_defaults(run=cmd_predict)
