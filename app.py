"""DIPSY Studio, the interactive app.

    python app.py            # the paper's models (loaded on first use; --models/--sd/... for local weights)
    python app.py --demo     # the shipped critter world and its data: offline, for trying the app
    python app.py --demo digits   # the shipped digit world and the digits data
    python app.py --demo --share --auth alice:secret   # a public link, signed in

Each browser (or API client) is served only the files the app gave it (``dipsy_ui.ui.access``).
Published beyond this machine (``--share``, a host other than loopback) the app asks for sign-in.
"""

import argparse
import getpass
import ipaddress
import os
import sys
from pathlib import Path

from dipsy_ui.config import MAX_UPLOAD_MB, QUEUE_SIZE, SESSION_QUOTA_MB
from dipsy_ui.errors import UsageError
from dipsy_ui.ui.signin import ENV, Credentials, hash_password, load_credentials


def parse_args(argv=None) -> argparse.Namespace:
    from dipsy_ui.cli import add_model_arguments

    parser = argparse.ArgumentParser(description="DIPSY Studio: the interactive app")
    parser.add_argument(
        "--demo",
        nargs="?",
        const="critters",
        choices=["critters", "digits"],
        help="a shipped world and its data, offline: critters (the default: look-alike species, where "
        "the negative image matters) or digits",
    )
    parser.add_argument("--workspace", default="dipsy-workspace", help="folder for all data, runs and models "
                        "the app writes; the only folder served to the browser (default: ./dipsy-workspace)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    access = parser.add_argument_group("sign-in and limits (see the README's 'Sharing the app')")
    access.add_argument("--auth", action="append", metavar="USER:PASSWORD", default=[],
                        help="a user who may sign in (repeatable); the password may be a hash from --hash-password")  # fmt: skip
    access.add_argument("--auth-file", action="append", metavar="FILE", default=[],
                        help=f"users, one USER:PASSWORD (or USER:HASH) a line; also ${ENV}=USER:PASSWORD,...")  # fmt: skip
    access.add_argument("--no-auth", action="store_true",
                        help="publish with --share or a non-loopback --host without sign-in, knowingly")  # fmt: skip
    access.add_argument("--hash-password", action="store_true",
                        help="print the hash of a password read from the terminal (for --auth-file), then exit")  # fmt: skip
    access.add_argument("--max-upload-mb", type=int, default=MAX_UPLOAD_MB,
                        help=f"largest upload request, in MB (default {MAX_UPLOAD_MB})")  # fmt: skip
    access.add_argument("--session-quota-mb", type=int, default=SESSION_QUOTA_MB,
                        help=f"disk space of one session's folder, in MB (default {SESSION_QUOTA_MB}); 0: none")  # fmt: skip
    access.add_argument("--queue-size", type=int, default=QUEUE_SIZE,
                        help=f"requests that may wait in the queue; beyond, 'the server is busy' (default {QUEUE_SIZE})")  # fmt: skip
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    for flag in ("max_upload_mb", "queue_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.session_quota_mb < 0:
        parser.error("--session-quota-mb must be 0 (no quota) or more")
    return args


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def sign_in(args: argparse.Namespace) -> Credentials | None:
    """The users who may sign in (None: no sign-in). Publishing the app (``--share``, a host
    other than loopback) without sign-in is refused unless ``--no-auth`` says so."""
    credentials = load_credentials(args.auth, args.auth_file)
    published = args.share or not is_loopback(args.host)
    if credentials and args.no_auth:
        raise UsageError(f"--no-auth contradicts the users given (--auth, --auth-file or ${ENV}); drop one")
    if published and not credentials:
        where = (
            "a public gradio.live link (--share)" if args.share else f"every address of --host {args.host}"
        )
        risk = (f"the app would be open to anyone who reaches {where}: they could run the models on this "
                "machine's GPU, upload files and use the disk, with no sign-in")  # fmt: skip
        if not args.no_auth:
            raise UsageError(f"{risk}. Add --auth USER:PASSWORD (or --auth-file FILE, or ${ENV}), "
                             "or pass --no-auth to publish it without sign-in knowingly")  # fmt: skip
        print(f"warning: {risk} (--no-auth).", file=sys.stderr)
    return credentials or None


def create_studio(args: argparse.Namespace):
    from dipsy_ui.cli import spec_from_args
    from dipsy_ui.models import resolve_runtime
    from dipsy_ui.studio import Studio

    model_flags = args.models or args.sd or args.ip_adapter or args.clip
    spec = None if args.demo and not model_flags else spec_from_args(args)
    return Studio(spec, args.workspace, demo=args.demo, runtime=resolve_runtime(args.device, args.dtype))


def launch(args: argparse.Namespace, **kwargs):
    """Build and launch; returns (app, studio). Extra ``kwargs`` go to ``Blocks.launch``."""
    credentials = sign_in(args)
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    # Uploads and Gradio's copies of outputs land inside the workspace too (read when gradio is
    # imported, hence before it).
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace / ".uploads"))
    from gradio.utils import get_upload_folder
    from starlette.middleware import Middleware

    from dipsy_ui.ui.access import MB, Access, FileGate
    from dipsy_ui.ui.app import CSS, build_app

    studio = create_studio(args)
    studio.core.quota_bytes = args.session_quota_mb * MB
    access = Access(os.path.abspath(get_upload_folder()), args.max_upload_mb * MB, studio.core.quota_refusal)
    app = build_app(studio, access)
    app.queue(default_concurrency_limit=4, max_size=args.queue_size)
    # The workspace must stay in allowed_paths: Gradio copies an output into its cache only from
    # there. The gate (outside Gradio's routes) serves each client the copies it was given only.
    app.launch(
        server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(studio.core.workspace)],
        auth=credentials, max_file_size=args.max_upload_mb * MB, css=CSS,
        app_kwargs={"middleware": [Middleware(FileGate, access=access)]}, **kwargs,
    )  # fmt: skip
    return app, studio


def main(argv=None) -> int:
    from dipsy_ui.errors import DipsyError

    args = parse_args(argv)
    if args.hash_password:
        print(hash_password(getpass.getpass("Password to hash: ")))
        return 0
    try:
        launch(args)
    except (DipsyError, OSError) as error:  # OSError: the port is taken, the workspace unwritable
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
