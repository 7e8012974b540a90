"""Headless command line over the engine: ``python -m dipsy_ui <command> ...``.

Every command that needs models takes ``--models DIR`` (a folder with ``sd/``, ``ip-adapter/``
and ``clip/``) or the individual sources; without them the paper's models are used from the
Hugging Face hub. Errors a user can fix are printed as one clear message (exit code 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import DipsyError
from . import classifier, curation, experiment, explain, generation, setup
from .common import add_model_arguments, spec_from_args

__all__ = ["add_model_arguments", "build_parser", "main", "spec_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dipsy_ui", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (setup, generation, explain, classifier, curation, experiment):
        module.register(commands)
    return parser


def _quiet_libraries() -> None:
    """Library loading chatter (per-file progress bars, dtype notes) would bury our own
    progress and messages; errors still surface through exceptions."""
    import diffusers
    import transformers

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~dipsy_ui.errors.DipsyError` (something the user can fix)
    becomes one line on stderr and exit code 2; any other exception is a bug and propagates
    with its traceback."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        return args.run(args)
    except DipsyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
