"""The engine facade the app calls: typed methods over the engine modules, no Gradio.

One :class:`Studio` per server process holds the models (loaded once, lazily, shared by every
user) and the workspace folder. Everything a user does lives in their own :class:`Session`
(kept by the UI in per-browser state) and their own workspace subfolder
``WORKSPACE/sessions/<id>/``. Long actions are generators of progress values so the UI, the
API and the tests drive them the same way; cancel goes through :meth:`Studio.cancel`.

The methods are grouped by tab in sibling modules, combined here as mixins over the shared
state (``workspace``, ``gpu``, ``load_models``, ``session``): :mod:`.studio_data` (classes,
images, presets), :mod:`.studio_guidance` (similarity, previews, sweeps), :mod:`.studio_generate`
(the batch job, curation), :mod:`.studio_train` (classifier, comparison); :mod:`.studio_session`
holds the per-user :class:`Session`.

Errors are raised as ``ValueError`` (or the engine's subclasses) with a message written for the
user; the UI shows them as they are.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from ..models import WORLD_DIR, ModelSpec, Runtime
from ..presets import load_preset
from .data import DataMixin
from .generate import GenerateMixin
from .guidance import SAMPLE, WEIGHTS, GuidanceMixin, GuidanceSettings, parse_values
from .session import Session
from .train import TrainMixin

# What the UI imports from here; the tab-specific methods live in the mixins' modules.
__all__ = ["SAMPLE", "WEIGHTS", "GuidanceSettings", "Session", "Studio", "parse_values"]

RESULTS = ("runs", "classifiers", "comparisons", "exports", "presets")  # kept after the session
SCRATCH = ("previews", "sweeps", "test")  # session folders nothing refers to once it has ended


class Studio(DataMixin, GuidanceMixin, GenerateMixin, TrainMixin):
    """Models and workspace shared by all users; methods take the user's :class:`Session`."""

    def __init__(self, spec: ModelSpec | None, workspace: str | Path, demo: bool = False,
                 runtime: Runtime | None = None):  # fmt: skip
        self.workspace = Path(workspace).expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.demo = demo
        self._spec = spec
        self.runtime = runtime
        self._pipe = self._clip = None
        self._load_lock = threading.Lock()
        self.gpu = threading.Lock()  # one U-Net / CLIP job at a time, whatever the entry point
        self.load_error: str | None = None

    # -- models ---------------------------------------------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:  # demo: the digit world shipped with the repository
            self._spec = ModelSpec.from_models_dir(WORLD_DIR)
        return self._spec

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

    # -- sessions -------------------------------------------------------------------------------

    def session(self, session: Session | None) -> Session:
        """The user's session, given a folder on first use."""
        session = session if session is not None else Session()
        if not session.id:
            session.id = uuid.uuid4().hex[:12]
            session.root = self.workspace / "sessions" / session.id
            session.root.mkdir(parents=True, exist_ok=True)
            session.preset = "demo" if self.demo else "pets"
            preset = load_preset(session.preset)
            session.generation, session.train = preset.generation, preset.train
        return session

    def cancel(self, session: Session) -> str:
        self.session(session).cancel_event.set()
        return "Cancelling..."

    def end_session(self, session: Session) -> None:
        """Tidy up after a browser session has ended (the UI's state ``delete_callback``, which
        Gradio calls an hour after the tab closes). A new tab is a new session and cannot reach
        an old folder, so a folder holding no results is deleted; one holding results (runs,
        classifiers, comparisons, exports, saved presets: GPU time or the user's own choices)
        is kept for the user to find on disk, minus its scratch files."""
        if not session.id or session.root is None:
            return
        session.cancel_event.set()  # a job still running for the closed tab stops
        results = [session.root / name for name in RESULTS]
        if any(folder.is_dir() and any(folder.iterdir()) for folder in results):
            for name in SCRATCH:
                shutil.rmtree(session.root / name, ignore_errors=True)
        else:
            shutil.rmtree(session.root, ignore_errors=True)

    def _start(self, session: Session) -> threading.Event:
        event = session.cancel_event
        event.clear()
        return event
