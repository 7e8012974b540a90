"""The Studio's core: the workspace, the models (loaded once, lazily, shared by every user),
the model lock, the users' sessions, and :meth:`Core.run_job`, the one way long work runs.

Every long action (preview, sweep, generation, ranking, training, comparison, similarity) is a
``work(job)`` function handed to :meth:`Core.run_job`, which registers it with the session (so
Cancel reaches it while it waits or runs), waits for the model lock (interactive jobs first, then
in arrival order), runs it in a worker thread and yields its :class:`~.jobs.Progress` events,
ending in exactly one of done, cancelled or failed. A long job offers the models to waiting jobs
each time it reports progress, between its units of work (:meth:`~.jobs.ModelLock.share`), so a
preview waits for one batch, not for a whole run. Nothing else takes the model lock.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

from ..config import SESSION_QUOTA_MB
from ..errors import DipsyError, UsageError
from ..files import write_atomic
from ..models import ModelSpec, Runtime
from ..presets import load_preset
from ..world.worlds import demo_world
from .jobs import (
    CANCELLED,
    DETACHED,
    DONE,
    FAILED,
    INTERACTIVE,
    PROGRESS,
    STEP,
    Cancelled,
    Job,
    ModelLock,
    Progress,
    SessionJobs,
)
from .session import Session, run_name
from .settings import apply_preset

RESULTS = (
    "runs",
    "classifiers",
    "comparisons",
    "experiments",
    "exports",
    "presets",
)  # kept after the session
SCRATCH = ("previews", "sweeps", "test")  # session folders nothing refers to once it has ended
SESSION_ID = re.compile(r"[0-9a-f]{12}")  # what Core.session names a session folder
SESSION_FILE = "session.json"  # the session's choices: preset, current run, current classifier
OWNER_FILE = "owner"  # the signed-in user a session belongs to (absent: made without sign-in)
MB = 2**20


class Core:
    """What every service shares: workspace, models, the model lock, sessions and jobs."""

    def __init__(self, spec: ModelSpec | None, workspace: str | Path, demo: bool | str = False,
                 runtime: Runtime | None = None):  # fmt: skip
        self.workspace = Path(workspace).expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.demo = demo
        self.runtime = runtime
        self.model_lock = ModelLock()  # one U-Net / CLIP job at a time, whatever the entry point
        self.load_error: str | None = None
        self._spec = spec
        self._pipe = self._clip = None
        self._load_lock = threading.Lock()
        self._open: dict[str, int] = {}  # session id -> live Session objects using its folder
        self._jobs: dict[str, SessionJobs] = {}  # session id -> its jobs, shared by all its pages
        self.quota_bytes = SESSION_QUOTA_MB * MB  # a session folder's disk space (0: no quota)

    # -- models ---------------------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:  # demo: a world shipped with the repository
            self._spec = ModelSpec.from_models_dir(demo_world(self.demo).directory)
        return self._spec

    @property
    def demo_text(self) -> str:
        """What the demo runs on, in plain words ("" when not a demo)."""
        return demo_world(self.demo).demo_text if self.demo else ""

    @property
    def models_loaded(self) -> bool:
        return self._pipe is not None

    def model_status(self) -> str:
        if self.models_loaded:
            return f"Models loaded ({'demo models' if self.demo else self.spec.sd})."
        if self.load_error:
            return self.load_error
        return "Models not loaded yet: they load on the first action that needs them."

    def load_models(self, progress: Callable[[float, str], None] = lambda f, m: None):
        """(pipeline, clip), loaded once; raises ModelLoadError with the loader's message."""
        from ..models import ModelLoadError, load_clip, load_pipeline

        with self._load_lock:
            if self._pipe is None:
                try:
                    progress(0.05, "Preparing model files")
                    spec = self.spec
                    progress(0.2, f"Loading Stable Diffusion + IP-Adapter from {spec.sd}")
                    pipe = load_pipeline(spec, self.runtime)
                    progress(0.7, f"Loading CLIP from {spec.clip}")
                    self._clip = load_clip(spec, self.runtime)
                    self._pipe = pipe
                    self.load_error = None
                    progress(1.0, "Models loaded")
                except ModelLoadError as error:
                    self.load_error = str(error)
                    raise
        return self._pipe, self._clip

    def models(self, job: Job) -> tuple:
        """(pipeline, clip) for a running job, saying so while they load the first time."""
        if not self.models_loaded:
            job.progress(job.done, job.total, "Loading the models (first use)...")
        return self.load_models()

    # -- sessions -------------------------------------------------------------------------------

    def session(self, session: Session | None) -> Session:
        """The user's session, given a folder and the default preset's settings on first use."""
        session = session if session is not None else Session()
        if not session.id:
            session.id = uuid.uuid4().hex[:12]
            session.root = self.workspace / "sessions" / session.id
            session.root.mkdir(parents=True, exist_ok=True)
            self._defaults(session)
            self._opened(session)
        return session

    def reopen(self, session_id: object) -> tuple[Session, dict] | None:
        """A session folder of an earlier visit (``WORKSPACE/sessions/<id>/``) as a fresh
        :class:`Session` with its saved choices (the preset applied; the rest, ``{"run": name,
        "classifier": name}``, returned for the services to restore), or None. Only an id of the
        shape :meth:`session` makes, naming an existing folder, is accepted: a browser sends an
        id, never a path."""
        if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
            return None
        root = self.workspace / "sessions" / session_id
        if root.is_symlink() or not root.is_dir():
            return None
        session = Session(id=session_id, root=root)
        self._defaults(session)
        try:
            saved = json.loads((root / SESSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        saved = saved if isinstance(saved, dict) else {}
        if isinstance(saved.get("preset"), str):
            with contextlib.suppress(DipsyError):  # a preset deleted since: the default one stays
                apply_preset(session, load_preset(saved["preset"], user_folder=root / "presets"))
        self._opened(session)
        return session, {k: v for k, v in saved.items() if k in ("run", "classifier") and isinstance(v, str)}

    def admits(self, session_id: object, user: str | None) -> bool:
        """Whether ``user`` (None: no sign-in) may reopen ``session_id``: a session a signed-in
        user made reopens for that user only; one made without sign-in, for the browser holding
        its id (as it always did). An id naming no session is admitted: it opens a new one."""
        if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
            return True
        try:
            owner = (self.workspace / "sessions" / session_id / OWNER_FILE).read_text(encoding="utf-8")
        except OSError:
            return True
        return owner == user

    def claim(self, session: Session, user: str | None) -> None:
        """Make ``session`` the signed-in ``user``'s (see :meth:`admits`); no-op without sign-in
        or when it has an owner already."""
        owner = session.root / OWNER_FILE if session.root is not None else None
        if user and owner is not None and not owner.exists():
            write_atomic(owner, user)

    def quota_refusal(self, session_id: str) -> UsageError | None:
        """Why nothing more may be written to the session's folder (its size has reached
        :attr:`quota_bytes`), or None."""
        root = self.workspace / "sessions" / session_id
        if not self.quota_bytes or not SESSION_ID.fullmatch(session_id or "") or not root.is_dir():
            return None
        used = sum(
            file.stat().st_size for file in root.rglob("*") if file.is_file() and not file.is_symlink()
        )
        if used < self.quota_bytes:
            return None
        return UsageError(f"this session's folder holds {used / MB:.0f} MB, its limit is "
                          f"{self.quota_bytes / MB:.0f} MB, so nothing new is made; everything made so far is kept. "
                          "Remove classes you no longer need (Data), or ask whoever runs the app to raise "
                          "--session-quota-mb")  # fmt: skip

    def save_choices(self, session: Session) -> None:
        """Record the session's choices (preset, current run and classifier, by name) in its
        folder, for :meth:`reopen`."""
        if session.root is None:
            return
        choices = {"preset": session.preset,
                   "run": run_name(session.root, session.run.run_dir) if session.run.run_dir is not None else None,
                   "classifier": session.classifier_dir.name if session.classifier_dir is not None else None}  # fmt: skip
        write_atomic(session.root / SESSION_FILE, json.dumps(choices, indent=1))

    def _defaults(self, session: Session) -> None:
        apply_preset(session, load_preset(demo_world(self.demo).preset if self.demo else "pets"))

    def _opened(self, session: Session) -> None:
        """Count a page on the session's folder and give it the session's jobs (those of its
        other pages: a refresh or a second tab sees and cancels them)."""
        with self._load_lock:
            self._open[session.id] = self._open.get(session.id, 0) + 1
            session.jobs = self._jobs.setdefault(session.id, session.jobs)

    def end_session(self, session: Session) -> None:
        """Tidy up after a browser session has ended (the UI's state ``delete_callback``, which
        Gradio calls an hour after the tab closes). The browser keeps the session's id and
        reopens the folder on its next visit (:meth:`reopen`), so a folder holding the user's
        data or results (runs, classifiers, comparisons, exports, saved presets) is kept, minus
        its scratch files; one holding nothing of the user's is deleted. A folder still open in
        another tab is left alone, with its jobs running."""
        if not session.id or session.root is None:
            session.jobs.cancel()
            return
        with self._load_lock:
            left = self._open[session.id] = self._open.get(session.id, 1) - 1
        if left > 0:
            return  # the folder is open in another tab (or the same browser, refreshed): so are its jobs
        session.jobs.cancel()  # the session's last page is gone: its jobs stop
        with self._load_lock:
            self._jobs.pop(session.id, None)
        results = [session.root / name for name in ("data", *RESULTS)]
        if any(folder.is_dir() and any(folder.iterdir()) for folder in results):
            for name in SCRATCH:
                shutil.rmtree(session.root / name, ignore_errors=True)
        else:
            shutil.rmtree(session.root, ignore_errors=True)

    # -- jobs -----------------------------------------------------------------------------------

    def cancel(self, session: Session, kinds: tuple[str, ...]) -> bool:
        """Cancel the session's requests of these kinds, running or waiting; False when there
        was none. A cancelled job's own stream reports "Cancelling..." and how it ended."""
        return self.session(session).jobs.cancel(kinds) > 0

    def run_job(self, session: Session, kind: str, work: Callable[[Job], object], *,
                key: Hashable | None = None, changed_only: bool = False,
                request: dict | None = None) -> Iterator[Progress]:  # fmt: skip
        """Run ``work(job)`` under the model lock in a worker thread; yield its events.

        ``work`` returns the result ("done"), raises :class:`~.jobs.Cancelled` when it stopped
        early ("cancelled") or anything else ("failed"). ``key`` and ``changed_only`` make the
        newest request of a kind win (see :meth:`~.jobs.SessionJobs.open`). ``request`` is what
        the page asked (its form), for a page that follows the job again (:meth:`attach`).

        A job of a :data:`~.jobs.DETACHED` kind (a generation, a training run) belongs to the
        session: closing its stream (a refresh, a closed tab) leaves it running, and any page of
        the session can follow it again. Closing the stream of any other job cancels it and waits
        for its thread, which releases the lock itself, so an abandoned preview never keeps the model.
        """
        session = self.session(session)
        refusal = self.quota_refusal(session.id)
        if refusal is not None:  # refused before it starts: nothing already made is touched
            yield Progress(FAILED, 0, 0, str(refusal), error=refusal)
            return
        jobs = session.jobs
        ticket = jobs.open(kind, key, changed_only)
        ticket.request = dict(request or {})
        detached = kind in DETACHED
        events = ticket.feed.reader()  # before the job starts: no event is missed
        interactive, holding = kind in INTERACTIVE, threading.Event()
        # A long job holding the models offers them to waiting ones between its units of work.
        job = Job(ticket.cancel, ticket.feed.publish,
                  between=lambda: holding.is_set() and not interactive and self.model_lock.share())  # fmt: skip

        def target():
            try:
                if ticket.cancel.is_set():  # superseded on arrival: never waits, never runs
                    raise Cancelled(message="Cancelled before it started.")
                if self.model_lock.busy:
                    job.progress(0, 0, "Waiting for the model: another job is running...")
                if not self.model_lock.acquire(give_up=ticket.cancel.is_set, interactive=interactive):
                    raise Cancelled(message="Cancelled before it started.")
                holding.set()
                jobs.start(ticket)
                try:
                    result = work(job)
                finally:
                    holding.clear()
                    self.model_lock.release()  # before the terminal event: its reader may run next
                ticket.feed.publish(Progress(DONE, job.done, job.total, "Done.", result=result))
            except Cancelled as stop:
                message = stop.message or job.stopped_message()
                ticket.feed.publish(Progress(CANCELLED, job.done, job.total, message, result=stop.result,
                                             superseded=ticket.superseded))  # fmt: skip
            except BaseException as error:  # handed to the reader, who reports it
                ticket.feed.publish(Progress(FAILED, job.done, job.total, str(error), error=error))
            finally:
                if detached:  # nobody may be reading any more: the job closes its own ticket
                    jobs.close(ticket)

        thread = threading.Thread(target=target, name=f"job-{kind}", daemon=True)
        thread.start()
        try:
            yield from self._follow(ticket, events)
        finally:
            if not detached:
                ticket.cancel.set()  # no-op after the terminal event; stops an abandoned job
                thread.join()
                jobs.close(ticket)

    def attach(self, session: Session, kinds: tuple[str, ...]) -> tuple[dict, Iterator[Progress]] | None:
        """Follow the session's running job of these kinds again (after a refresh, in a second
        tab): what its page asked, and its events from where it stands now; None when none runs."""
        ticket = self.session(session).jobs.running(kinds)
        if ticket is None:
            return None
        return ticket.request, self._follow(ticket, ticket.feed.reader())

    @staticmethod
    def _follow(ticket, events) -> Iterator[Progress]:
        """A job's events from a feed reader, up to its terminal event."""
        told = False
        try:
            while True:
                try:
                    event = events.get(timeout=0.1)
                except queue.Empty:
                    if ticket.cancel.is_set() and not ticket.superseded and not told:
                        # The job stops at its next step; the stream says so meanwhile, in order,
                        # so no reply to the Cancel button can land after the terminal event.
                        told = True
                        latest = ticket.feed.latest
                        done, total = (latest.done, latest.total) if latest is not None else (0, 0)
                        yield Progress(PROGRESS, done, total, "Cancelling...")
                    continue
                if event.kind == STEP and not events.empty():
                    continue  # a newer event is waiting: only the latest preview matters to a viewer
                yield event
                if event.terminal:
                    return
        finally:
            ticket.feed.leave(events)
