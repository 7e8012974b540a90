"""The one event of long engine work, and the protocol it belongs to.

Every long piece of engine work (a generation run, a training run, a comparison, an experiment,
an explain ladder, a curation report) is called as ``run(..., on_event=None, cancel=None) ->
result``: it calls ``on_event`` with an :class:`Event` as it goes, stops at its next step once
``cancel`` (a :class:`threading.Event`) is set, and ends with exactly one "done" or "cancelled"
event before it returns. The CLI, the app's job machinery and the tests drive all of them the
same way; like k-diffusion's callbacks, what a kind of work reports besides its counters is a
dict (``payload``), documented by the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STEP = "step"  # a denoising step: payload["preview"] holds an (B, h, w, 3) uint8 latent preview
PROGRESS = "progress"  # a unit of work done (images written, an optimisation step, a cell)
NOTE = "note"  # something to tell the user (a warning, a setting adjusted), in ``message``
DONE, CANCELLED = "done", "cancelled"  # the last event of a run

OnEvent = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    """One event of a long run: its kind, how far it is and what it reports."""

    kind: str  # STEP, PROGRESS, NOTE, DONE or CANCELLED
    step: int = 0  # units of the work done so far (images, optimisation steps, cells, ...)
    total: int = 0  # units in the whole work (0: not known)
    message: str = ""  # for a person
    payload: dict[str, Any] | None = None  # what the work reports with it (see the work's docstring)

    @property
    def last(self) -> bool:
        """Whether this event ends its run."""
        return self.kind in (DONE, CANCELLED)


def protocol(on_event: OnEvent | None, cancel: threading.Event | None) -> tuple[OnEvent, threading.Event]:
    """The ``(on_event, cancel)`` a run uses when its caller gave none."""
    return on_event or (lambda event: None), cancel or threading.Event()
