"""The app's engine facade (no Gradio): :class:`Studio`, a core and one service per concern.

:mod:`.core` holds what every service shares (workspace, models, the model lock, sessions and
:meth:`~.core.Core.run_job`), :mod:`.jobs` the event every long action yields, :mod:`.session`
the per-user state; one module per service: :mod:`.data`, :mod:`.similarity`, :mod:`.guidance`,
:mod:`.runs` (generation and curation), :mod:`.training`.
"""

from pathlib import Path

from ..models import ModelSpec, Runtime
from .core import Core
from .data import DataService
from .experiments import ExperimentService
from .guidance import SAMPLE, WEIGHTS, GuidanceService, GuidanceSettings, parse_values
from .jobs import CANCELLED, DONE, FAILED, PROGRESS, STEP, Progress
from .runs import RunService
from .session import Session
from .similarity import SimilarityService
from .training import TrainingService


class Studio:
    """The core (models, workspace, sessions, jobs: shared by all users) and the services the
    tabs call, each given what it depends on: this constructor is the whole dependency graph."""

    def __init__(self, spec: ModelSpec | None, workspace: str | Path, demo: bool = False,
                 runtime: Runtime | None = None):  # fmt: skip
        self.core = Core(spec, workspace, demo, runtime)
        self.data = DataService(self.core)
        self.similarity = SimilarityService(self.core, self.data)
        self.guidance = GuidanceService(self.core, self.data, self.similarity)
        self.runs = RunService(self.core, self.data, self.similarity)
        self.training = TrainingService(self.core, self.data, self.runs)
        self.experiments = ExperimentService(self.core, self.data)

    def open_session(self, session_id: object) -> Session:
        """The session a browser comes back with (its id, kept by the browser): the folder of an
        earlier visit reopened with its data, current run and classifier; a new session when the
        id names no session folder."""
        reopened = self.core.reopen(session_id)
        if reopened is None:
            return self.core.session(None)
        session, choices = reopened
        self.data.restore(session)
        self.runs.restore(session, choices.get("run"))
        self.training.restore(session, choices.get("classifier"))
        return session


__all__ = ["CANCELLED", "DONE", "FAILED", "PROGRESS", "SAMPLE", "STEP", "WEIGHTS", "GuidanceSettings",
           "Progress", "Session", "Studio", "parse_values"]  # fmt: skip
