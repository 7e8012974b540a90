"""The app's engine facade (no Gradio): :class:`Studio`, a core and one service per concern.

:mod:`.core` holds what every service shares (workspace, models, the model lock, sessions and
:meth:`~.core.Core.run_job`), :mod:`.jobs` the event every long action yields, :mod:`.session`
the per-user state; one module per service: :mod:`.settings` (the one writer of the session's
preset and settings), :mod:`.data`, :mod:`.similarity`, :mod:`.guidance`, :mod:`.generation`,
:mod:`.curation`, :mod:`.training`, :mod:`.experiments`.
"""

from pathlib import Path

from ..models import ModelSpec, Runtime
from .core import Core
from .curation import CurationService
from .data import DataService
from .experiments import ExperimentService
from .generation import GenerationService
from .guidance import SAMPLE, WEIGHTS, GuidanceService, GuidanceSettings, parse_values
from .jobs import CANCELLED, DONE, FAILED, PROGRESS, STEP, Progress
from .session import Session
from .settings import SettingsService
from .similarity import SimilarityService
from .training import LABELS, RUNS, TrainingService


class Studio:
    """The core (models, workspace, sessions, jobs: shared by all users) and the services the
    tabs call, each given what it depends on: this constructor is the whole dependency graph."""

    def __init__(self, spec: ModelSpec | None, workspace: str | Path, demo: bool = False,
                 runtime: Runtime | None = None):  # fmt: skip
        self.core = Core(spec, workspace, demo, runtime)
        self.settings = SettingsService(self.core)
        self.data = DataService(self.core, self.settings)
        self.similarity = SimilarityService(self.core, self.data, self.settings)
        self.curation = CurationService(self.core, self.data)
        self.generation = GenerationService(
            self.core, self.data, self.settings, self.similarity, self.curation
        )
        self.guidance = GuidanceService(self.core, self.data, self.settings, self.similarity, self.generation)
        self.training = TrainingService(self.core, self.data, self.settings, self.curation)
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
        self.curation.restore(session, choices.get("run"))
        self.training.restore(session, choices.get("classifier"))
        return session


__all__ = ["CANCELLED", "DONE", "FAILED", "LABELS", "PROGRESS", "RUNS", "SAMPLE", "STEP", "WEIGHTS", "GuidanceSettings",
           "Progress", "Session", "Studio", "parse_values"]  # fmt: skip
