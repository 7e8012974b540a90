"""DIPSY Studio, the interactive app.

    python app.py            # the paper's models (loaded on first use; --models/--sd/... for local weights)
    python app.py --demo     # the shipped digit world and the digits data: offline, for trying the app

Only the workspace folder (``--workspace``) is served to the browser.
"""

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from dipsy_ui.cli import add_model_arguments

    parser = argparse.ArgumentParser(description="DIPSY Studio: the interactive app")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the digit world (small models trained on digits, shipped in assets/) + digits data (offline)",
    )
    parser.add_argument("--workspace", default="dipsy-workspace", help="folder for all data, runs and models "
                        "the app writes; the only folder served to the browser (default: ./dipsy-workspace)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def create_studio(args: argparse.Namespace):
    from dipsy_ui.cli import spec_from_args
    from dipsy_ui.models import resolve_runtime
    from dipsy_ui.studio import Studio

    model_flags = args.models or args.sd or args.ip_adapter or args.clip
    spec = None if args.demo and not model_flags else spec_from_args(args)
    return Studio(spec, args.workspace, demo=args.demo, runtime=resolve_runtime(args.device, args.dtype))


def launch(args: argparse.Namespace, **kwargs):
    """Build and launch; returns (app, studio). Extra ``kwargs`` go to ``Blocks.launch``."""
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    # Uploads land inside the workspace too (read when gradio is imported, hence before it).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace / ".uploads"))
    from dipsy_ui.ui.app import CSS, build_app

    studio = create_studio(args)
    app = build_app(studio)
    app.queue(default_concurrency_limit=4)
    app.launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(studio.core.workspace)],
        css=CSS, **kwargs,
    )  # fmt: skip
    return app, studio


def main(argv=None) -> int:
    from dipsy_ui.errors import DipsyError

    args = parse_args(argv)
    try:
        launch(args)
    except (DipsyError, OSError) as error:  # OSError: the port is taken, the workspace unwritable
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
