"""What every command shares: the model and device flags, and reading a few-shot set with its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..models import DTYPES, IP_ADAPTER_WEIGHTS, ModelSpec


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-source and device flags shared by every command that loads models."""
    group = parser.add_argument_group("models")
    group.add_argument(
        "--models", metavar="DIR", help="folder with sd/, ip-adapter/ and clip/ (e.g. from make-tiny-models)"
    )
    group.add_argument(
        "--sd", metavar="SOURCE", help=f"SD1.5 hub id or diffusers folder (default {ModelSpec.sd})"
    )
    group.add_argument(
        "--ip-adapter", metavar="SOURCE", help=f"IP-Adapter hub id or folder (default {ModelSpec.ip_adapter})"
    )
    group.add_argument(
        "--ip-adapter-variant",
        choices=sorted(IP_ADAPTER_WEIGHTS),
        default="plus",
        help="Plus (the paper's) or plain",
    )
    group.add_argument(
        "--clip", metavar="SOURCE", help="open_clip model name or folder (default ViT-B-16/openai)"
    )
    add_runtime_arguments(group)


def add_runtime_arguments(parser) -> None:
    """--device and --dtype, for every command that runs a model."""
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """A ModelSpec from ``--models`` and/or the individual source flags (flags win)."""
    if args.models:
        spec = ModelSpec.from_models_dir(args.models, args.ip_adapter_variant)
    else:
        spec = ModelSpec(ip_adapter_weight=IP_ADAPTER_WEIGHTS[args.ip_adapter_variant])
    overrides = {"sd": args.sd, "ip_adapter": args.ip_adapter}
    if args.clip:
        overrides |= {
            "clip": args.clip,
            "clip_pretrained": None if Path(args.clip).exists() else spec.clip_pretrained,
        }
    return ModelSpec(**(spec.to_dict() | {key: value for key, value in overrides.items() if value}))


def run_interruptible(run, on_event, cancel, bar, kept: str, again: str):
    """Drive a resumable job's ``run(on_event, cancel)`` under a progress bar. Ctrl-C cancels it
    and says what is kept; then None is returned (the command exits with 130)."""
    try:
        final = run(on_event, cancel)
    except KeyboardInterrupt:
        cancel.set()
        final = None
    bar.close()
    if final is None:
        print(f"\ninterrupted: {kept}; run the same command to {again}", file=sys.stderr)
    return final


def runtime_of(args: argparse.Namespace):
    from ..models import resolve_runtime

    return resolve_runtime(args.device, args.dtype)


def load_dataset_reporting(path: Path):
    from ..data import load_dataset

    dataset = load_dataset(path)
    print(dataset.report.summary(), file=sys.stderr)
    return dataset
