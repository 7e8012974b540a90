"""``experiment``: the paper's ablations as one resumable command (see :mod:`dipsy_ui.experiment`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_model_arguments, run_interruptible, runtime_of, spec_from_args


def cmd_experiment(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from ..experiment.runner import Experiment, cell_state
    from ..experiment.spec import ExperimentSpec

    spec = ExperimentSpec.load(args.spec)
    # Model flags name the same models stored elsewhere (or others); without them, the spec's.
    flagged = args.models or args.sd or args.ip_adapter or args.clip
    experiment = Experiment(spec, args.out, spec_from_args(args) if flagged else None, runtime_of(args))
    bar = tqdm(total=len(experiment.cells), unit="cell", desc="experiment")
    cancel = threading.Event()

    def on_event(event) -> None:
        bar.n = event.step
        if event.kind == "note":
            bar.write(f"warning: {event.message}")
        elif event.payload:
            arm, shots, seed = event.payload["cell"]
            bar.set_postfix_str(f"{arm}, {shots} shots, seed {seed}: {cell_state(event)}")
        bar.refresh()

    final = run_interruptible(
        experiment.run, on_event, cancel, bar, "finished cells are kept in results.jsonl", "continue"
    )
    if final is None:
        return 130
    if final.step:
        summary = json.loads((args.out / "summary.json").read_text(encoding="utf-8"))
        print(f"{summary['table']}\n\n{summary['verdict']}\n")
    print(f"{final.step}/{final.total} cells in {args.out} (results.jsonl, summary.md, plots)")
    return 0 if final.kind == "done" else 1


def register(commands) -> None:
    """Add this module's commands to the ``python -m dipsy_ui`` subparsers."""
    exp = commands.add_parser(
        "experiment",
        help="compare ways of making the training set over shots and seeds (resumable)",
    )
    exp.add_argument("spec", type=Path, help="experiment spec .json (e.g. presets/experiments/digits.json)")
    exp.add_argument("--out", required=True, type=Path, help="experiment folder (rerun to continue)")
    add_model_arguments(exp)
    exp.set_defaults(run=cmd_experiment)
