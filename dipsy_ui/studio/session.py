"""One user's state (:class:`Session`), user-given names, and running long work in a thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import GenerationConfig, TrainConfig
from ..errors import UsageError


def check_name(name: str, what: str) -> str:
    """A user-given name, stripped; refused when empty or holding control characters."""
    name = (name or "").strip()
    if not name:
        raise UsageError(f"the {what} is empty; type a name")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise UsageError(f"the {what} {name!r} contains control characters")
    if len(name) > 200:
        raise UsageError(f"the {what} is longer than 200 characters")
    return name


@dataclass
class Session:
    """One user's state. Plain data until first use, so the UI can deep-copy the default."""

    id: str = ""
    root: Path | None = None  # WORKSPACE/sessions/<id>
    classes: dict[str, list[str]] = field(default_factory=dict)  # display name -> PNG paths
    slugs: dict[str, str] = field(default_factory=dict)  # display name -> folder under data/
    notes: list[str] = field(default_factory=list)  # what the last upload skipped and why
    report: str = ""  # the last loaded dataset's validation report
    preset: str = "demo"
    generation: GenerationConfig | None = None  # the current generation settings
    train: TrainConfig | None = None  # the current classifier-training settings
    similarity: object | None = None  # SimilarityResult for the current classes
    allowed: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    last_preview: str | None = None  # path of the previous preview, for comparison
    run_dir: Path | None = None  # the current generation run
    classifier_dir: Path | None = None  # the last trained classifier
    scores: dict[str, float] = field(default_factory=dict)  # curation ranking, by manifest file
    score_source: str = ""
    _cancel: threading.Event | None = None

    @property
    def cancel_event(self) -> threading.Event:
        if self._cancel is None:
            self._cancel = threading.Event()
        return self._cancel

    def __deepcopy__(self, memo):
        # The UI copies the default session once per browser; an event is never shared.
        copy = replace(self, classes={}, slugs={}, notes=[], allowed={}, excluded={}, scores={})
        copy._cancel = None
        return copy


def in_thread(work: Callable[[Callable], object], cancel: threading.Event, poll: float = 0.1) -> Iterator:
    """Run ``work(emit)`` in a thread and yield what it emits; its result comes last as
    ``("result", value)``. Closing the generator sets ``cancel`` and waits for the thread."""
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work(events.put)
        except BaseException as error:  # re-raised in the consumer's thread
            outcome["error"] = error
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while True:
            item = events.get()
            if item is _DONE:
                break
            if item[0] == "step" and not events.empty():
                continue  # a newer event is waiting: only the latest preview matters to a viewer
            yield item
    finally:
        cancel.set()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("result", outcome.get("value"))


_DONE = object()
