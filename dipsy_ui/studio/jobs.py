"""Long actions: the one event they all yield (:class:`Progress`), what a running action sees
(:class:`Job`), the model lock (:class:`ModelLock`) and a session's actions in flight
(:class:`SessionJobs`). :meth:`dipsy_ui.studio.core.Core.run_job` puts them together."""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

STEP = "step"  # a denoising step, with a preview image; a newer one replaces one not yet read
PROGRESS = "progress"  # a unit of work done (a batch written, a training step); each is delivered
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"
TERMINAL = (DONE, CANCELLED, FAILED)
PREVIEW_SIZE = 256  # step previews are enlarged (nearest neighbour) to at least this many pixels


@dataclass(frozen=True)
class Progress:
    """One event of a long action (preview, sweep, generation, ranking, training, comparison).

    An action yields any number of "step" and "progress" events, then exactly one terminal
    event: "done" (with its result), "cancelled" (with what it kept, if anything) or "failed"
    (with the error)."""

    kind: str
    done: int = 0  # units finished: denoising steps, images, training steps
    total: int = 0  # units in the whole action (0: not known yet)
    message: str = ""  # what to show the user, written for them
    preview: object | None = None  # "step": uint8 RGB array (H, W, 3), enlarged for display
    result: object | None = None  # "done": the action's result; "cancelled": what it kept
    detail: object | None = None  # "progress": the engine's Event (dipsy_ui.events), for views that plot it
    error: BaseException | None = None  # "failed": the exception, for the view to report
    superseded: bool = False  # "cancelled" because a newer or identical request answers it

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL


def enlarge(pixels, size: int = PREVIEW_SIZE):
    """An (H, W, 3) uint8 array enlarged by a whole factor (nearest neighbour) to at least ``size``
    pixels high: a 4x4 latent preview stays a grid of sharp squares in the browser."""
    factor = max(1, -(-size // pixels.shape[0]))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def eta_text(seconds: float | None) -> str:
    """Seconds left, as a person reads them ("estimating..." before there is a rate)."""
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Cancelled(Exception):
    """Raised by an action's work when it stopped early because its job was cancelled."""

    def __init__(self, result: object | None = None, message: str = ""):
        super().__init__(message or "cancelled")
        self.result, self.message = result, message


class Job:
    """What a running action sees: its cancel flag, and calls that report its progress."""

    def __init__(self, cancel: threading.Event, emit: Callable[[Progress], None],
                 between: Callable[[], object] = lambda: None):  # fmt: skip
        self.cancel = cancel
        self.done = self.total = 0  # the counters of the last event, for how a stop is reported
        self._emit = emit
        self._between = between  # called between units of work (the model lock's share)

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def step(self, done: int, total: int, message: str, preview=None) -> None:
        """Report a denoising step and its preview (an unread one is replaced by the next)."""
        self.done, self.total = done, total
        self._emit(Progress(STEP, done, total, message, preview=preview))

    def progress(self, done: int, total: int, message: str, detail=None) -> None:
        """Report work done (every such event reaches the reader). Work reports progress between
        its units (never inside a pipeline call), so the models are idle here: a long job offers
        them to waiting jobs now (:meth:`ModelLock.share`)."""
        self.done, self.total = done, total
        self._emit(Progress(PROGRESS, done, total, message, detail=detail))
        self._between()

    def relay(self, event, message: str | None = None) -> None:
        """Report an engine :class:`~dipsy_ui.events.Event` as this job's progress, the event
        itself as the detail (a view reads its payload); a denoising step's previews are shown side
        by side, enlarged. Its last event is not relayed: the job's own end says how it ended."""
        from ..events import NOTE

        if event.last:
            return
        message = message or event.message
        if event.kind == STEP:
            preview = event.payload["preview"]  # (B, h, w, 3)
            strip = preview.transpose(1, 0, 2, 3).reshape(preview.shape[1], -1, 3)
            self.step(event.step, event.total, message, enlarge(strip))
        else:
            self.progress(
                event.step, event.total, f"Note: {message}" if event.kind == NOTE else message, event
            )

    def stopped_message(self) -> str:
        return f"Cancelled at step {self.done}/{self.total}." if self.total else "Cancelled."


INTERACTIVE = ("preview", "sweep", "explain")  # job kinds a person waits for, looking at the page
# Job kinds that belong to the session, not to the page that started them: they go on when the
# page goes away (a refresh, a closed tab) and any page of the session can follow them again.
DETACHED = ("generate", "experiment", "train", "compare")


class ModelLock:
    """The models, one job at a time. Interactive jobs (a preview, a sweep) go before waiting
    long jobs; otherwise jobs are served in the order they asked. A long job holding the lock
    offers it (:meth:`share`) between its units of work, so an interactive job waits at most one
    unit (a batch of images, a training step) and long jobs of several users take turns."""

    def __init__(self, poll: float = 0.1):
        self._changed = threading.Condition()
        self._waiting: deque = deque()  # (interactive, turn) in arrival order
        self._held = False
        self._poll = poll  # how often a waiter checks whether to give up

    @property
    def held(self) -> bool:
        return self._held

    @property
    def busy(self) -> bool:
        """True when a new job would have to wait."""
        with self._changed:
            return self._held or bool(self._waiting)

    def _next(self):
        """The waiter served next: the first interactive one, else the first."""
        return next((turn for interactive, turn in self._waiting if interactive), None) or (
            self._waiting[0][1] if self._waiting else None
        )

    def acquire(self, give_up: Callable[[], bool], interactive: bool = False) -> bool:
        """Wait for the lock; False (without it) once ``give_up()`` says so."""
        turn = object()
        entry = (interactive, turn)
        with self._changed:
            self._waiting.append(entry)
            try:
                while True:
                    if give_up():
                        return False
                    if not self._held and self._next() is turn:
                        self._held = True
                        return True
                    self._changed.wait(self._poll)
            finally:
                self._waiting.remove(entry)
                self._changed.notify_all()

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    def share(self) -> bool:
        """Called by the holder between two units of its work: when another job waits, let it
        run (interactive ones first) and take the lock back after it, behind the long jobs that
        were already waiting. Whether the lock was handed over."""
        with self._changed:
            if not self._waiting:
                return False
            self._held = False
            self._changed.notify_all()
        self.acquire(give_up=lambda: False)  # the holder's work is half done: it always comes back
        return True


class Feed:
    """A job's events for every page following it: each reader gets every event from when it
    started to read, the latest one first (a late reader sees where the job stands)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._readers: list[queue.Queue] = []
        self.latest: Progress | None = None

    def publish(self, event: Progress) -> None:
        with self._lock:
            self.latest = event
            for reader in self._readers:
                reader.put(event)

    def reader(self) -> queue.Queue:
        """A new reader's queue, holding the latest event already."""
        with self._lock:
            events: queue.Queue = queue.Queue()
            if self.latest is not None:
                events.put(self.latest)
            self._readers.append(events)
            return events

    def leave(self, events: queue.Queue) -> None:
        with self._lock:
            self._readers.remove(events)


@dataclass(eq=False)
class Ticket:
    """One request of a session for a long action, from its arrival to its terminal event."""

    kind: str  # "preview", "sweep", "generate", "rank", "train", ...
    key: Hashable | None = None  # what it asks for (requests with a key replace each other)
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # holds the model lock (or has held it)
    superseded: bool = False
    feed: Feed = field(default_factory=Feed)  # its events, for the pages following it
    request: dict = field(default_factory=dict)  # what the page asked (a form to fill again)


class SessionJobs:
    """A session's requests in flight: what Cancel stops, and the "newest request wins" rules.
    One per session id (:meth:`~.core.Core.session`), shared by every page of the session."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active: list[Ticket] = []
        self._last_key: dict[str, Hashable] = {}

    def __deepcopy__(self, memo):
        # Gradio copies the State's default value (an unused Session): requests are never shared.
        return SessionJobs()

    def open(self, kind: str, key: Hashable | None = None, changed_only: bool = False) -> Ticket:
        """Register a request. With a ``key`` (previews): a request asking what one in flight
        already asks for, or (``changed_only``: an edit rather than a button) what the last
        request asked for, is answered by that one and comes back superseded; any other
        supersedes the requests of its kind still waiting for the model."""
        ticket = Ticket(kind, key)
        with self._lock:
            if key is not None:
                same = [t for t in self._active if t.kind == kind and t.key == key and not t.cancel.is_set()]
                if same or (changed_only and self._last_key.get(kind) == key):
                    ticket.superseded = True
                    ticket.cancel.set()
                else:
                    for other in self._active:
                        if other.kind == kind and not other.started:
                            other.superseded = True
                            other.cancel.set()
                    self._last_key[kind] = key
            self._active.append(ticket)
        return ticket

    def start(self, ticket: Ticket) -> None:
        with self._lock:
            ticket.started = True

    def close(self, ticket: Ticket) -> None:
        with self._lock:
            self._active.remove(ticket)

    def running(self, kinds: tuple[str, ...]) -> Ticket | None:
        """The oldest request in flight of these kinds, or None."""
        with self._lock:
            return next((t for t in self._active if t.kind in kinds and not t.cancel.is_set()), None)

    def cancel(self, kinds: tuple[str, ...] | None = None) -> int:
        """Cancel the requests in flight of these kinds (all when None); how many there were."""
        with self._lock:
            hit = [t for t in self._active if (kinds is None or t.kind in kinds) and not t.cancel.is_set()]
            for ticket in hit:
                ticket.cancel.set()
        return len(hit)
