"""The similarity service: CLIP class similarity (paper section 3), its temperature and the
user's overrides (pinned and excluded negatives), which generation and previews sample with."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from ..errors import UsageError
from .core import Core
from .data import DataService
from .jobs import Job, Progress
from .session import Session, SimilarityState
from .settings import SettingsService


class SimilarityService:
    """The similarity of the session's classes, valid for the data it was computed from."""

    def __init__(self, core: Core, data: DataService, settings: SettingsService):
        self.core, self.data, self.settings = core, data, settings

    def compute(self, session: Session, temperature: float | None = None) -> Iterator[Progress]:
        """Embed every image with CLIP and draw the heatmap, as a job; its result is the
        :class:`~dipsy_ui.similarity.SimilarityResult`. Refuses fewer than two classes now."""
        self.data.dataset(session).require_classes(2, purpose="class similarity")
        return self.core.run_job(
            session, "similarity", lambda job: self.compute_in(job, session, temperature)
        )

    def compute_in(self, job: Job, session: Session, temperature: float | None = None):
        """:meth:`compute`'s work, for a job that already holds the model lock (generation)."""
        from ..heatmap import save_similarity
        from ..similarity import compute_similarity

        session = self.core.session(session)
        dataset = self.data.dataset(session)
        dataset.require_classes(2, purpose="class similarity")
        _, clip = self.core.models(job)
        job.progress(0, 2, f"Embedding {len(dataset)} images with CLIP...")
        temperature = float(temperature or session.generation.temperature)
        state = self._state(session)
        result = compute_similarity(
            clip, dataset.image_lists(), temperature,
            allowed=state.allowed, excluded=state.excluded, cache_dir=self.core.workspace / "cache",
        )  # fmt: skip
        state.result, state.version = result, self.data.version(session)
        self.settings.update_generation(session, temperature=temperature)
        job.progress(1, 2, "Drawing the heatmap...")
        save_similarity(result, session.root)
        return result

    def current(self, session: Session):
        """The SimilarityResult of the current classes, or None when not computed for them."""
        return self._state(session).result

    def names(self, session: Session) -> list[str]:
        result = self.current(session)
        return list(result.names) if result is not None else []

    def heatmap_path(self, session: Session) -> str | None:
        path = self.core.session(session).root / "similarity.png"
        return str(path) if path.is_file() and self.current(session) is not None else None

    def set_temperature(self, session: Session, temperature: float) -> None:
        from ..similarity import apply_override, negative_probabilities

        session = self.core.session(session)
        state = self._state(session)
        result = self._require(state)
        base = negative_probabilities(result.similarity, temperature)
        probabilities = apply_override(base, result.names, state.allowed, state.excluded)
        state.result = replace(result, probabilities=probabilities, temperature=float(temperature),
                               allowed=dict(state.allowed), excluded=dict(state.excluded))  # fmt: skip
        self.settings.update_generation(session, temperature=float(temperature))

    def override(self, session: Session, name: str) -> tuple[list[str], list[str]]:
        """(pinned, excluded) negatives of one class."""
        state = self._state(session)
        return list(state.allowed.get(name, [])), list(state.excluded.get(name, []))

    def set_override(self, session: Session, name: str, pinned: list[str], excluded: list[str]) -> str:
        state = self._state(session)
        result = self._require(state)
        if name not in result.names:
            raise UsageError(f"choose a class to override (got {name!r})")
        allowed, blocked = dict(state.allowed), dict(state.excluded)
        allowed.pop(name, None), blocked.pop(name, None)
        if pinned:
            allowed[name] = list(pinned)
        if excluded:
            blocked[name] = list(excluded)
        old = state.allowed, state.excluded
        state.allowed, state.excluded = allowed, blocked
        try:
            self.set_temperature(session, result.temperature)
        except ValueError:
            state.allowed, state.excluded = old
            raise
        return f"Override for {name!r}: pinned {pinned or 'none'}, excluded {excluded or 'none'}."

    def probability_rows(self, session: Session, top: int = 3) -> list[list]:
        """Per class: its most likely negative classes with their probabilities, and overrides."""
        state = self._state(session)
        result = self._require(state)
        rows = []
        for i, name in enumerate(result.names):
            row = result.probabilities[i].tolist()
            best = sorted(range(len(row)), key=lambda j: -row[j])[:top]
            notes = [f"pinned {', '.join(state.allowed[name])}" if name in state.allowed else "",
                     f"excluded {', '.join(state.excluded[name])}" if state.excluded.get(name) else ""]  # fmt: skip
            rows.append([name, ", ".join(f"{result.names[j]} {row[j]:.2f}" for j in best if row[j] > 0),
                         "; ".join(filter(None, notes))])  # fmt: skip
        return rows

    def pinned(self, session: Session) -> dict[str, list[str]]:
        """Each class's pinned negative classes (only classes with a pin)."""
        return dict(self._state(session).allowed)

    def pin(self, session: Session, name: str, negative: str | None) -> str:
        """Make ``negative`` the only negative class of ``name`` (None: its negatives follow the
        rule again): the Similarity tab's override, set from the Guidance tab, and kept before a
        similarity exists (the one computed next applies it)."""
        state = self._state(session)
        if state.result is not None:
            return self.set_override(
                session, name, [negative] if negative else [], state.excluded.get(name, [])
            )
        names = self.data.class_names(session)
        if name not in names or (negative is not None and negative not in names):
            raise UsageError(f"choose classes of your data (got {name!r} -> {negative!r}); classes: {names}")
        if negative == name:
            raise UsageError(f"a class cannot be its own negative: {name!r}")
        state.allowed = {key: row for key, row in state.allowed.items() if key != name}
        if negative is not None:
            state.allowed[name] = [negative]
        return f"Override for {name!r}: pinned {negative or 'none'}."

    def _state(self, session: Session) -> SimilarityState:
        """The session's similarity state, emptied first when the classes changed since."""
        session = self.core.session(session)
        state = session.similarity
        if state.result is not None and state.version != self.data.version(session):
            session.similarity = state = SimilarityState()
        return state

    @staticmethod
    def _require(state: SimilarityState):
        if state.result is None:
            raise UsageError("compute the class similarity first (Similarity tab)")
        return state.result
