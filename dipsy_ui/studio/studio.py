"""The object the app builds: the :class:`~.core.Core` and one service per concern, each given
what it depends on, so the constructor below is the whole dependency graph."""

from __future__ import annotations

from pathlib import Path

from ..models import ModelSpec, Runtime
from .core import Core
from .data import DataService
from .guidance import GuidanceService
from .runs import RunService
from .similarity import SimilarityService
from .training import TrainingService


class Studio:
    """The core (models, workspace, sessions, jobs: shared by all users) and the services the
    tabs call, one per concern."""

    def __init__(self, spec: ModelSpec | None, workspace: str | Path, demo: bool = False,
                 runtime: Runtime | None = None):  # fmt: skip
        self.core = Core(spec, workspace, demo, runtime)
        self.data = DataService(self.core)
        self.similarity = SimilarityService(self.core, self.data)
        self.guidance = GuidanceService(self.core, self.data, self.similarity)
        self.runs = RunService(self.core, self.data, self.similarity)
        self.training = TrainingService(self.core, self.data, self.runs)
