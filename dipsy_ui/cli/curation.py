"""Curation commands: ``curate-report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_arguments, load_dataset_reporting, run_interruptible, runtime_of, spec_from_args

MODEL_FLAGS = ("models", "sd", "ip_adapter", "clip")


def _encoder(args: argparse.Namespace):
    """(image encoder, what its features are): the trained classifier's with ``--adapter``, else
    CLIP from the model flags, else the CLIP the run recorded in its ``job.json``."""
    from ..curation import classifier_encoder
    from ..generate import recorded_run
    from ..models import load_clip

    runtime = runtime_of(args)
    if args.adapter:
        return classifier_encoder(args.adapter, runtime), "classifier"
    spec = (
        spec_from_args(args)
        if any(getattr(args, flag) for flag in MODEL_FLAGS)
        else recorded_run(args.run_dir)[1]
    )
    return load_clip(spec, runtime), "clip"


def cmd_curate_report(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    from tqdm import tqdm

    from ..config import CurationConfig
    from ..curation import FLAGS, REPORT_FILE, CurationJob, run_records

    overrides = {
        "near_copy": args.near_copy,
        "duplicate": args.duplicate,
        "copy_gap_share": args.copy_gap_share,
        "off_class_margin": args.off_class_margin,
        "nearest_k": args.nearest_k,
    }
    config = dataclasses.replace(CurationConfig(), **{k: v for k, v in overrides.items() if v is not None})
    dataset = load_dataset_reporting(args.data)
    run_records(args.run_dir, dataset)  # a missing run or a class the data lacks, before loading models
    encoder, features = _encoder(args)
    job = CurationJob(args.run_dir, dataset, encoder, config, features, args.batch_size)
    bar = tqdm(total=len(job.records), unit="img", desc="embedding")

    def on_event(event):
        bar.n = event.step
        bar.refresh()

    report = run_interruptible(
        job.run, on_event, threading.Event(), bar, "nothing was written", "start again"
    )
    if report is None:
        return 130
    print(f"{'class':<24} {'images':>6} {'fidelity':>8} {'coverage':>8} {'diversity':>9} {'flagged':>7}")
    for name, row in report["classes"].items():
        cells = [row[key] for key in ("fidelity", "coverage", "diversity", "flagged")]
        text = ["-" if value is None else f"{value:.2f}" for value in cells]
        print(f"{name[:24]:<24} {row['images']:>6} {text[0]:>8} {text[1]:>8} {text[2]:>9} {text[3]:>7}")
    counts = {flag: sum(flag in entry["flags"] for entry in report["images"]) for flag in FLAGS}
    print("flagged images: " + ", ".join(f"{flag} {count}" for flag, count in counts.items()))
    if report["unmatched_positives"]:
        print(
            f"{report['unmatched_positives']} image(s) name a positive image that is not in the real "
            "data: near_copy was not checked for them"
        )
    print(f"Wrote {args.run_dir / REPORT_FILE} ({features} features)")
    return 0


def register(commands) -> None:
    """Add this module's commands to the ``python -m dipsy_ui`` subparsers."""
    from ..config import CurationConfig

    defaults = CurationConfig()
    report = commands.add_parser(
        "curate-report",
        help="flag near copies, duplicates and off-class images of a run; per-class quality (read only)",
    )
    report.add_argument(
        "run_dir", metavar="RUN", type=Path, help="the run's output folder (with manifest.jsonl)"
    )
    report.add_argument(
        "--data", required=True, type=Path, help="the few-shot set the run was generated from"
    )
    report.add_argument(
        "--adapter",
        type=Path,
        help="a train output folder: use its classifier's image features instead of CLIP",
    )
    report.add_argument(
        "--near-copy",
        type=float,
        help=f"cosine to its positive image that flags a near copy (default {defaults.near_copy})",
    )
    report.add_argument(
        "--duplicate",
        type=float,
        help=f"cosine to an earlier image that flags a duplicate (default {defaults.duplicate})",
    )
    report.add_argument(
        "--copy-gap-share",
        type=float,
        help="near copies and duplicates also lie within this share of the usual gap between a "
        f"class's real images and their nearest real neighbours (default {defaults.copy_gap_share})",
    )
    report.add_argument(
        "--off-class-margin",
        type=float,
        help=f"how much closer another class must be to flag off_class (default {defaults.off_class_margin})",
    )
    report.add_argument(
        "--nearest-k", type=int, help=f"real neighbours compared per image (default {defaults.nearest_k})"
    )
    report.add_argument(
        "--batch-size", type=int, default=64, help="images embedded at once (default: %(default)s)"
    )
    add_model_arguments(report)
    report.set_defaults(run=cmd_curate_report)
