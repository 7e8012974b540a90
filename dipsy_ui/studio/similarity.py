"""The similarity service: CLIP class similarity (paper section 3), its temperature and the
user's overrides, and the negative-class sampler the guidance and run services draw from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from ..errors import UsageError
from .core import Core
from .data import DataService
from .jobs import Job, Progress
from .session import Session, SimilarityState


class SimilarityService:
    """The similarity of the session's classes, valid for the data it was computed from."""

    def __init__(self, core: Core, data: DataService):
        self.core, self.data = core, data

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
        session.generation = replace(session.generation, temperature=temperature)
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
        session.generation = replace(session.generation, temperature=float(temperature))

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

    def sampler(self, session: Session, class_names: list[str]):
        """The negative-class sampler: the similarity's, or uniform before one is computed."""
        from ..similarity import NegativeSampler, uniform_probabilities

        result = self.current(session)
        if result is not None:
            return result.sampler()
        return NegativeSampler(list(class_names), uniform_probabilities(len(class_names)))

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
