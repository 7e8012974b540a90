"""One user's state (:class:`Session`): a part per service, each written by its service only,
and user-given names (:func:`check_name`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import GenerationConfig, TrainConfig
from ..data import FewShotDataset
from ..errors import UsageError
from .jobs import SessionJobs


def run_name(root: Path, run_dir: Path) -> str:
    """How a run is named on the page and in ``session.json``: its folder name for the session's
    own runs (``runs/run-1`` -> ``run-1``), its path in the session otherwise (an experiment's
    cell: ``experiments/<name>/runs/seed-0/shots-1/gen-...``). Never a server path."""
    relative = run_dir.relative_to(root)
    return relative.name if relative.parent == Path("runs") else relative.as_posix()


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
class DataState:
    """The data service's part: the user's classes and what the last upload said."""

    classes: dict[str, list[str]] = field(default_factory=dict)  # display name -> PNG paths
    slugs: dict[str, str] = field(default_factory=dict)  # display name -> folder under data/
    notes: list[str] = field(default_factory=list)  # what the last upload skipped and why
    report: str = ""  # the last loaded dataset's validation report
    dataset: FewShotDataset | None = None  # the classes decoded, kept until they change
    version: int = 0  # counts the changes, so what was computed from older classes is known


@dataclass
class SimilarityState:
    """The similarity service's part: the class similarity and the user's overrides."""

    result: object | None = None  # SimilarityResult, for the classes of data version ``version``
    version: int = -1
    allowed: dict[str, list[str]] = field(default_factory=dict)  # class -> pinned negatives
    excluded: dict[str, list[str]] = field(default_factory=dict)  # class -> excluded negatives


@dataclass
class GuidanceState:
    """The guidance service's part: the last two finished previews (``guidance.Rendered``: the
    image, its seed, weights and the images it used)."""

    latest: object | None = None
    previous: object | None = None


@dataclass
class RunState:
    """The run service's part: the current generation run and its curation ranking."""

    run_dir: Path | None = None
    scores: dict[str, float] = field(default_factory=dict)  # ranking score by manifest file
    score_source: str = ""


@dataclass
class Session:
    """One user's state. Plain data until first use (:meth:`~.core.Core.session` gives it a
    folder and the preset's settings)."""

    id: str = ""
    root: Path | None = None  # WORKSPACE/sessions/<id>
    preset: str = ""  # the active preset's name (or the path of the user's own)
    # The current settings: set by the preset, tuned in Guidance and Train, used by every service.
    generation: GenerationConfig | None = None
    train: TrainConfig | None = None
    data: DataState = field(default_factory=DataState)
    similarity: SimilarityState = field(default_factory=SimilarityState)
    guidance: GuidanceState = field(default_factory=GuidanceState)
    run: RunState = field(default_factory=RunState)
    classifier_dir: Path | None = None  # the last trained classifier (training writes, ranking reads)
    jobs: SessionJobs = field(default_factory=SessionJobs)

    def __deepcopy__(self, memo):
        # Gradio copies the State's default value once per browser; the default is never used,
        # and a session in use (its jobs, its folder) must never be shared.
        if self.id:
            raise TypeError("a session in use is never copied")
        return Session()
