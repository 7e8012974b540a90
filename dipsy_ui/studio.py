"""The engine facade the app calls: typed methods over the engine modules, no Gradio.

One :class:`Studio` per server process holds the models (loaded once, lazily, shared by every
user) and the workspace folder. Everything a user does lives in their own :class:`Session`
(kept by the UI in per-browser state) and their own workspace subfolder
``WORKSPACE/sessions/<id>/``. Long actions are generators of progress values so the UI, the
API and the tests drive them the same way; cancel goes through :meth:`Studio.cancel`.

Errors are raised as ``ValueError`` (or the engine's subclasses) with a message written for the
user; the UI shows them as they are.
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, ImageDraw

from .data import ImageReadError, class_slugs, load_dataset, resolve_inside, safe_slug, write_demo_data
from .images import image_digest, open_image, save_png
from .manifest import kept_images, read_manifest, set_status
from .models import ModelSpec, Runtime
from .presets import GenerationConfig, Preset, list_presets, load_preset, save_preset

WEIGHTS = ("w_text", "w_pos", "w_neg", "ip_adapter_scale")
SAMPLE = "sample"
MAX_SWEEP = 36  # images in one sweep call: a bigger grid would hold the GPU queue for minutes


def _check_name(name: str, what: str) -> str:
    """A user-given name, stripped; refused when empty or holding control characters."""
    name = (name or "").strip()
    if not name:
        raise ValueError(f"the {what} is empty; type a name")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in name):
        raise ValueError(f"the {what} {name!r} contains control characters")
    if len(name) > 200:
        raise ValueError(f"the {what} is longer than 200 characters")
    return name


@dataclass
class GuidanceSettings:
    """One preview: which images and which weights (the Guidance tab's controls)."""

    class_name: str
    positive_index: int = 0  # index into the class's images
    negative_class: str = SAMPLE  # a class name, or "sample" (drawn from the similarity)
    negative_index: int = -1  # index into the negative class's images; -1 draws one
    w_text: float = 7.5
    w_pos: float = 6.0
    w_neg: float = 6.0
    ip_adapter_scale: float = 0.6
    steps: int = 10
    seed: int = 0


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
    train_settings: dict = field(default_factory=dict)
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


def _in_thread(work: Callable[[Callable], object], cancel: threading.Event, poll: float = 0.1) -> Iterator:
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


class Studio:
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
        if self._spec is None:  # demo: the tiny models, written into the workspace on first use
            from .tiny import make_tiny_models

            folder = self.workspace / "models" / "tiny"
            if not (folder / "sd" / "model_index.json").is_file():
                make_tiny_models(folder)
            self._spec = ModelSpec.from_models_dir(folder)
        return self._spec

    @property
    def models_loaded(self) -> bool:
        return self._pipe is not None

    def model_status(self) -> str:
        if self.models_loaded:
            return f"Models loaded ({'demo tiny models' if self.demo else self.spec.sd})."
        if self.load_error:
            return self.load_error
        return "Models not loaded yet: they load on the first action that needs them."

    def load_models(self, progress: Callable[[float, str], None] = lambda f, m: None):
        """(pipeline, clip), loaded once; raises ModelLoadError with the loader's message."""
        from .models import ModelLoadError, load_clip, load_pipeline

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
            session.generation, session.train_settings = preset.generation, dict(preset.train)
        return session

    def cancel(self, session: Session) -> str:
        self.session(session).cancel_event.set()
        return "Cancelling..."

    def _start(self, session: Session) -> threading.Event:
        event = session.cancel_event
        event.clear()
        return event

    # -- data -----------------------------------------------------------------------------------

    def _slug(self, session: Session, name: str) -> str:
        if name not in session.slugs:
            session.slugs = class_slugs([*session.slugs, name])
        return session.slugs[name]

    def _store(self, session: Session, name: str, image: Image.Image) -> str | None:
        """Save one decoded image into the class folder; None when it is a duplicate."""
        folder = resolve_inside(session.root, "data", self._slug(session, name))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{image_digest(image)[:16]}.png"
        if str(path) in session.classes.setdefault(name, []):
            return None
        save_png(image, path)
        session.classes[name].append(str(path))
        return str(path)

    def _data_changed(self, session: Session) -> None:
        session.similarity = None
        session.allowed, session.excluded = {}, {}

    def add_images(self, session: Session, name: str, files: list[str]) -> str:
        """Add images to a class (created if new). Unreadable files are skipped and reported."""
        session = self.session(session)
        name = _check_name(name, "class name")
        if not files:
            raise ValueError(f"no images given for class {name!r}; drop one or more image files")
        added, notes = 0, []
        for file in files:
            try:
                image = open_image(file)
            except ImageReadError:
                notes.append(f"skipped {Path(file).name}: not a readable image")
                continue
            added += self._store(session, name, image) is not None
        if not session.classes.get(name):
            session.classes.pop(name, None)
            session.slugs.pop(name, None)
            raise ValueError(f"class {name!r} was not added: none of the {len(files)} file(s) is a readable image. "
                             + "; ".join(notes[:5]))  # fmt: skip
        self._data_changed(session)
        session.notes = notes
        message = f"Class {name!r}: added {added} image(s), {len(session.classes[name])} in total."
        return "\n".join([message, *notes])

    def load_source(self, session: Session, source: str | Path, replace_all: bool = True) -> str:
        """Load a class folder or zip (the engine validates it); its report is kept for the user."""
        session = self.session(session)
        dataset = load_dataset(source)
        if replace_all:
            self.clear(session)
        for cls in dataset.classes:
            for record in cls.images:
                self._store(session, cls.name, record.image)
        self._data_changed(session)
        session.report = dataset.report.summary()
        session.notes = []
        return session.report

    def demo_data_dir(self) -> Path:
        folder = self.workspace / "demo-data"
        if not (folder / "train").is_dir():
            write_demo_data(folder)
        return folder

    def load_demo(self, session: Session) -> str:
        report = self.load_source(session, self.demo_data_dir() / "train")
        session.preset = "demo"
        self.set_preset(session, "demo")
        return report

    def clear(self, session: Session) -> None:
        session.classes, session.slugs = {}, {}
        shutil.rmtree(session.root / "data", ignore_errors=True)
        self._data_changed(session)

    def remove_class(self, session: Session, name: str) -> str:
        session = self.session(session)
        if name not in session.classes:
            raise ValueError(f"there is no class {name!r}")
        shutil.rmtree(resolve_inside(session.root, "data", session.slugs[name]), ignore_errors=True)
        del session.classes[name], session.slugs[name]
        self._data_changed(session)
        return f"Removed class {name!r}."

    def remove_image(self, session: Session, path: str) -> str:
        session = self.session(session)
        for name, paths in session.classes.items():
            if path in paths:
                paths.remove(path)
                Path(path).unlink(missing_ok=True)
                if not paths:
                    del session.classes[name], session.slugs[name]
                self._data_changed(session)
                return f"Removed an image from {name!r}."
        raise ValueError("that image is not in your data (already removed?)")

    def class_table(self, session: Session) -> list[list]:
        return [[name, len(paths)] for name, paths in self.session(session).classes.items()]

    def thumbnails(self, session: Session) -> list[tuple[str, str]]:
        return [(p, name) for name, paths in self.session(session).classes.items() for p in paths]

    def dataset(self, session: Session):
        session = self.session(session)
        if not session.classes:
            raise ValueError("no data yet: add classes in the Data tab (or load the demo data)")
        return load_dataset({name: list(paths) for name, paths in session.classes.items()})

    def report(self, session: Session) -> str:
        session = self.session(session)
        count = sum(map(len, session.classes.values()))
        lines = [f"{len(session.classes)} classes, {count} images."]
        lines += [f"  - {note}" for note in session.notes]
        if session.report:
            lines += ["", "Last folder/zip loaded:", session.report]
        if session.classes and len(session.classes) < 2:
            lines.append("Note: negative guidance needs at least 2 classes.")
        return "\n".join(lines)

    # -- presets --------------------------------------------------------------------------------

    def preset_choices(self, session: Session) -> list[str]:
        folder = self.session(session).root / "presets"
        own = sorted(str(p) for p in folder.glob("*.json")) if folder.is_dir() else []
        return list_presets() + own

    def set_preset(self, session: Session, name: str) -> str:
        session = self.session(session)
        if name not in list_presets():
            # Only the user's own saved presets, whatever path a client sends.
            name = str(resolve_inside(session.root / "presets", Path(name).name))
        preset = load_preset(name)
        session.preset = name
        session.generation, session.train_settings = preset.generation, dict(preset.train)
        return f"Preset {preset.name}: {preset.description or 'no description'}"

    def save_preset(self, session: Session, name: str) -> str:
        session = self.session(session)
        slug = safe_slug(_check_name(name, "preset name"))
        folder = session.root / "presets"
        folder.mkdir(exist_ok=True)
        path = save_preset(
            Preset(slug, "saved from the app", session.generation, session.train_settings),
            folder / f"{slug}.json",
        )
        session.preset = str(path)
        return str(path)

    # -- similarity -----------------------------------------------------------------------------

    def compute_similarity(self, session: Session, temperature: float | None = None,
                           progress: Callable[[float, str], None] = lambda f, m: None):  # fmt: skip
        from .similarity import compute_similarity, save_heatmap

        session = self.session(session)
        dataset = self.dataset(session)
        dataset.require_classes(2, purpose="class similarity")
        _, clip = self.load_models(progress)
        progress(0.5, f"Embedding {len(dataset)} images with CLIP")
        temperature = temperature or session.generation.temperature
        with self.gpu:
            result = compute_similarity(
                clip, {c.name: [r.image for r in c.images] for c in dataset.classes}, temperature,
                allowed=session.allowed, excluded=session.excluded, cache_dir=self.workspace / "cache",
            )  # fmt: skip
        session.similarity = result
        session.generation = replace(session.generation, temperature=float(temperature))
        progress(0.9, "Drawing the heatmap")
        save_heatmap(session.root / "similarity.png", result.names, result.similarity)
        result.save(session.root)
        return result

    def heatmap_path(self, session: Session) -> str | None:
        path = self.session(session).root / "similarity.png"
        return str(path) if path.is_file() and session.similarity is not None else None

    def _require_similarity(self, session: Session):
        if session.similarity is None:
            raise ValueError("compute the class similarity first (Similarity tab)")
        return session.similarity

    def set_temperature(self, session: Session, temperature: float) -> None:
        from .similarity import apply_override, negative_probabilities

        session = self.session(session)
        result = self._require_similarity(session)
        base = negative_probabilities(result.similarity, temperature)
        probabilities = apply_override(base, result.names, session.allowed, session.excluded)
        session.similarity = replace(result, probabilities=probabilities, temperature=float(temperature),
                                     allowed=dict(session.allowed), excluded=dict(session.excluded))  # fmt: skip
        session.generation = replace(session.generation, temperature=float(temperature))

    def set_override(self, session: Session, name: str, pinned: list[str], excluded: list[str]) -> str:
        session = self.session(session)
        result = self._require_similarity(session)
        if name not in result.names:
            raise ValueError(f"choose a class to override (got {name!r})")
        allowed, blocked = dict(session.allowed), dict(session.excluded)
        allowed.pop(name, None), blocked.pop(name, None)
        if pinned:
            allowed[name] = list(pinned)
        if excluded:
            blocked[name] = list(excluded)
        old = session.allowed, session.excluded
        session.allowed, session.excluded = allowed, blocked
        try:
            self.set_temperature(session, result.temperature)
        except ValueError:
            session.allowed, session.excluded = old
            raise
        return f"Override for {name!r}: pinned {pinned or 'none'}, excluded {excluded or 'none'}."

    def probability_rows(self, session: Session, top: int = 3) -> list[list]:
        """Per class: its most likely negative classes with their probabilities."""
        result = self._require_similarity(self.session(session))
        rows = []
        for i, name in enumerate(result.names):
            row = result.probabilities[i].tolist()
            best = sorted(range(len(row)), key=lambda j: -row[j])[:top]
            pins = "pinned " + ", ".join(session.allowed[name]) if name in session.allowed else ""
            rows.append([name, ", ".join(f"{result.names[j]} {row[j]:.2f}" for j in best if row[j] > 0),
                         "; ".join(filter(None, [pins, ", ".join(session.excluded.get(name, []))
                                                 and "excluded " + ", ".join(session.excluded[name])]))])  # fmt: skip
        return rows

    # -- guidance -------------------------------------------------------------------------------

    @staticmethod
    def resolve_seed(seed: int | float | None, locked: bool) -> int:
        return int(seed or 0) if locked else random.randrange(2**31)

    def _images_for(self, session: Session, settings: GuidanceSettings):
        """(prompt, positive image, negative image or None) of a preview, with draws seeded."""
        import torch

        dataset = self.dataset(session)
        if settings.class_name not in dataset.class_names:
            raise ValueError(
                f"choose a class (got {settings.class_name!r}); classes: {list(dataset.class_names)}"
            )
        positives = dataset.images(settings.class_name)
        if not 0 <= settings.positive_index < len(positives):
            raise ValueError(
                f"positive image {settings.positive_index} does not exist; the class has {len(positives)}"
            )
        generator = torch.Generator().manual_seed(int(settings.seed))
        negative_class = settings.negative_class or SAMPLE
        if negative_class == SAMPLE:
            if len(dataset.class_names) < 2:
                negative_class = None
            else:
                from .similarity import NegativeSampler, uniform_probabilities

                sampler = (session.similarity.sampler() if session.similarity is not None
                           else NegativeSampler(list(dataset.class_names), uniform_probabilities(len(dataset.class_names))))  # fmt: skip
                negative_class = sampler.sample(settings.class_name, generator)
        negative = None
        if negative_class is not None and negative_class != "none":
            negatives = dataset.images(negative_class)
            index = settings.negative_index
            if index < 0:
                index = int(torch.randint(len(negatives), (), generator=generator))
            negative = negatives[min(index, len(negatives) - 1)].image
        prompt = session.generation.prompt(settings.class_name)
        return prompt, positives[settings.positive_index].image, negative, negative_class

    def _remember(self, session: Session, settings: GuidanceSettings) -> None:
        session.generation = replace(
            session.generation, w_text=float(settings.w_text), w_pos=float(settings.w_pos),
            w_neg=float(settings.w_neg), ip_adapter_scale=float(settings.ip_adapter_scale), steps=int(settings.steps),
        )  # fmt: skip

    def preview(self, session: Session, settings: GuidanceSettings) -> Iterator[tuple[str, object]]:
        """Yields ("step", (k, n, RGB uint8 array)) while denoising, then ("result", image path)."""
        import torch

        session = self.session(session)
        self._remember(session, settings)  # validates the weights too
        prompt, positive, negative, negative_class = self._images_for(session, settings)
        pipe, _ = self.load_models()
        cancel = self._start(session)
        config = session.generation

        def work(emit):
            def on_step(p, step, timestep, kwargs):
                if cancel.is_set():
                    p.request_interrupt()
                emit(("step", (step + 1, config.steps, kwargs["preview"][0])))
                return {}

            with self.gpu:
                pipe.use_scheduler(config.scheduler)
                out = pipe(prompt, positive, negative, w_text=settings.w_text, w_pos=settings.w_pos,
                           w_neg=settings.w_neg, ip_adapter_scale=settings.ip_adapter_scale,
                           num_inference_steps=config.steps, height=config.height, width=config.width,
                           generator=torch.Generator(pipe._execution_device).manual_seed(int(settings.seed)),
                           callback_on_step_end=on_step)  # fmt: skip
            return out.images[0] if out.images else None

        for kind, value in _in_thread(work, cancel):
            if kind == "result":
                if value is None:
                    raise ValueError("preview cancelled")
                folder = session.root / "previews"
                folder.mkdir(exist_ok=True)
                path = folder / f"{int(time.time() * 1000)}-{settings.seed}.png"
                save_png(
                    value, path, {"dipsy": json.dumps(settings.__dict__ | {"negative_class": negative_class})}
                )
                yield ("result", str(path))
            else:
                yield kind, value

    def sweep(self, session: Session, settings: GuidanceSettings, x_name: str, x_values: list[float],
              y_name: str, y_values: list[float]) -> str:  # fmt: skip
        """A labelled grid over two weights for one seed: one batched pipeline call."""
        import torch

        session = self.session(session)
        for name in (x_name, y_name):
            if name not in WEIGHTS:
                raise ValueError(f"sweep weights must be among {WEIGHTS}, got {name!r}")
        if x_name == y_name:
            raise ValueError("choose two different weights for the sweep")
        if not x_values or not y_values:
            raise ValueError("give at least one value for each sweep axis")
        if len(x_values) * len(y_values) > MAX_SWEEP:
            raise ValueError(f"the sweep grid has {len(x_values) * len(y_values)} cells; at most {MAX_SWEEP}")
        self._remember(session, settings)
        prompt, positive, negative, _ = self._images_for(session, settings)
        pipe, _ = self.load_models()
        config = session.generation
        cells = [(x, y) for y in y_values for x in x_values]
        weights = {name: [getattr(settings, name)] * len(cells) for name in WEIGHTS}
        weights[x_name] = [x for x, _ in cells]
        weights[y_name] = [y for _, y in cells]
        with self.gpu:
            pipe.use_scheduler(config.scheduler)
            device = pipe._execution_device
            out = pipe([prompt] * len(cells), [positive] * len(cells), [negative] * len(cells), **weights,
                       num_inference_steps=config.steps, height=config.height, width=config.width,
                       generator=[torch.Generator(device).manual_seed(int(settings.seed)) for _ in cells])  # fmt: skip
        grid = labelled_grid(out.images, x_name, x_values, y_name, y_values)
        folder = session.root / "sweeps"
        folder.mkdir(exist_ok=True)
        path = folder / f"{int(time.time() * 1000)}-{x_name}-{y_name}.png"
        save_png(grid, path)
        return str(path)

    # -- generation -----------------------------------------------------------------------------

    def run_dir(self, session: Session, folder: str) -> Path:
        name = safe_slug(_check_name(folder, "output folder name"))
        return resolve_inside(self.session(session).root, "runs", name)

    def generate(self, session: Session, images_per_class: int, batch_size: int, folder: str,
                 progress: Callable[[float, str], None] = lambda f, m: None) -> Iterator:  # fmt: skip
        """Run (or resume) the batch job into ``runs/<folder>``; yields JobEvents."""
        from .generate import GenerationJob

        session = self.session(session)
        dataset = self.dataset(session)
        config = replace(
            session.generation, images_per_class=int(images_per_class), batch_size=int(batch_size)
        )
        if config.negatives == "similarity" and session.similarity is None and len(dataset.class_names) > 1:
            self.compute_similarity(session, config.temperature, progress)
        if len(dataset.class_names) < 2:
            config = replace(config, negatives="none")
        pipe, _ = self.load_models(progress)
        out_dir = self.run_dir(session, folder)
        job = GenerationJob(pipe, dataset, config, out_dir, self.spec, session.similarity)
        session.run_dir = out_dir
        session.scores = {}
        cancel = self._start(session)

        def work(emit):
            with self.gpu:
                return job.run(lambda event: emit((event.kind, event)), cancel)

        for kind, value in _in_thread(work, cancel):
            if kind != "result":
                yield value

    def run_files(self, session: Session, limit: int = 48) -> list[tuple[str, str]]:
        """The newest images of the current run, for the live gallery."""
        session = self.session(session)
        if session.run_dir is None:
            return []
        records = list(read_manifest(session.run_dir).values())[-limit:]
        return [(str(session.run_dir / r["file"]), r["class_name"]) for r in reversed(records)]

    def runs(self, session: Session) -> list[str]:
        folder = self.session(session).root / "runs"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def open_run(self, session: Session, folder: str) -> str:
        session = self.session(session)
        path = self.run_dir(session, folder)
        if not path.is_dir():
            raise ValueError(f"there is no run {folder!r}")
        session.run_dir, session.scores = path, {}
        return f"{len(read_manifest(path))} images in {folder}"

    # -- curation -------------------------------------------------------------------------------

    def _run(self, session: Session) -> Path:
        session = self.session(session)
        if session.run_dir is None or not (session.run_dir / "manifest.jsonl").is_file():
            raise ValueError("no generated images yet: run the Generate tab first (or open a run)")
        return session.run_dir

    def curate_counts(self, session: Session) -> list[list]:
        counts: dict[str, list[int]] = {}
        for record in read_manifest(self._run(session)).values():
            entry = counts.setdefault(record["class_name"], [0, 0])
            entry[record["status"] == "rejected"] += 1
        return [[name, kept, rejected] for name, (kept, rejected) in counts.items()]

    def curate_page(self, session: Session, class_name: str | None, page: int, page_size: int = 40):
        """(thumbnail path, caption, manifest file) of one page; ranked when scores exist."""
        run = self._run(session)
        records = [r for r in read_manifest(run).values() if not class_name or r["class_name"] == class_name]
        if session.scores:
            records.sort(key=lambda r: session.scores.get(r["file"], 2.0))
        pages = max(1, -(-len(records) // page_size))
        page = min(max(int(page), 1), pages)
        items = []
        for record in records[(page - 1) * page_size : page * page_size]:
            score = session.scores.get(record["file"])
            caption = ("REJECTED" if record["status"] == "rejected" else "kept") + (
                f" {score:.2f}" if score is not None else "")  # fmt: skip
            items.append(
                (str(self._thumbnail(run, record["file"], record["status"])), caption, record["file"])
            )
        return items, page, pages

    @staticmethod
    def _thumbnail(run: Path, file: str, status: str, size: int = 128) -> Path:
        """A small cached copy (crossed out when rejected): pages of a big run stay light."""
        thumb = resolve_inside(run, ".thumbs", *f"{file}.{status}.png".split("/"))
        if not thumb.is_file():
            thumb.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(resolve_inside(run, *file.split("/"))) as image:
                small = image.convert("RGB")
                small.thumbnail((size, size))
                small = small.resize((size, size)) if max(small.size) < size else small
            if status == "rejected":
                small = Image.blend(small, Image.new("RGB", small.size, (255, 255, 255)), 0.6)
                draw = ImageDraw.Draw(small)
                w, h = small.size
                draw.line((0, 0, w, h), fill=(220, 0, 0), width=max(3, w // 20))
                draw.line((0, h, w, 0), fill=(220, 0, 0), width=max(3, w // 20))
            small.save(thumb)
        return thumb

    def toggle(self, session: Session, file: str) -> str:
        run = self._run(session)
        records = read_manifest(run)
        if file not in records:
            raise ValueError(f"{file} is not in the run's manifest")
        status = "kept" if records[file]["status"] == "rejected" else "rejected"
        set_status(run, [file], status)
        return f"{file}: {status}"

    def rank(self, session: Session, progress: Callable[[float, str], None] = lambda f, m: None) -> str:
        """Score every image: the trained classifier's confidence in its class, else the CLIP
        cosine similarity to its class's real images."""
        session = self.session(session)
        run = self._run(session)
        records = list(read_manifest(run).values())
        paths = [run / r["file"] for r in records]
        if session.classifier_dir is not None:
            from .evaluate import predict

            progress(0.3, "Classifying the synthetic images")
            with self.gpu:
                predictions = predict(session.classifier_dir, paths, runtime=self.runtime)
            scores = [p.probs.get(r["class_name"], 0.0) for p, r in zip(predictions, records, strict=True)]
            session.score_source = "classifier confidence"
        else:
            from .similarity import embed_images, similarity_matrix

            _, clip = self.load_models(progress)
            dataset = self.dataset(session)
            progress(0.3, "Embedding the synthetic images with CLIP")
            with self.gpu:
                real = {c.name: embed_images(clip, [r.image for r in c.images], cache_dir=self.workspace / "cache")
                        for c in dataset.classes}  # fmt: skip
                synthetic = embed_images(clip, [open_image(p) for p in paths])
            import torch

            scores = []
            for record, embedding in zip(records, synthetic, strict=True):
                # Cosine similarity to the class mean, via the engine's similarity matrix of the pair.
                mean = real[record["class_name"]].mean(dim=0)
                scores.append(float(similarity_matrix(torch.stack([mean, embedding]))[0, 1]))
            session.score_source = "CLIP similarity to the class's real images"
        session.scores = {r["file"]: float(s) for r, s in zip(records, scores, strict=True)}
        return f"Ranked {len(records)} images by {session.score_source} (lowest first)."

    def reject_below(self, session: Session, class_name: str | None, threshold: float) -> str:
        session = self.session(session)
        run = self._run(session)
        if not session.scores:
            raise ValueError("rank the images first")
        records = read_manifest(run)
        files = [f for f, s in session.scores.items() if s < threshold and f in records
                 and (not class_name or records[f]["class_name"] == class_name)]  # fmt: skip
        if files:
            set_status(run, files, "rejected")
        return f"Rejected {len(files)} image(s) scoring below {threshold:.2f}."

    def export_kept(self, session: Session) -> str:
        """A zip of the kept images as an ImageFolder tree (class folders = safe names)."""
        session = self.session(session)
        run = self._run(session)
        kept = kept_images(run)
        if not kept:
            raise ValueError("no kept images to export")
        slugs = class_slugs(sorted({name for _, name in kept}))
        path = session.root / "exports" / f"{run.name}-kept.zip"
        path.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for file, name in kept:
                archive.write(file, f"{run.name}/{slugs[name]}/{file.name}")
        return str(path)

    # -- training -------------------------------------------------------------------------------

    def real_dir(self, session: Session) -> Path:
        """The real images as a folder the trainer reads with the display class names (a
        manifest maps files to names, so any class name works, not only folder-safe ones)."""
        from .manifest import MANIFEST_NAME, append_lines

        session = self.session(session)
        folder = session.root / "data"
        if not session.classes:
            raise ValueError("no data yet: add classes in the Data tab")
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        append_lines(folder, ({"file": str(Path(p).relative_to(folder)).replace("\\", "/"), "class_name": name}
                              for name, paths in session.classes.items() for p in paths))  # fmt: skip
        return folder

    def test_dir(self, session: Session, upload: str | None, use_demo: bool) -> Path | None:
        if upload:
            path = Path(upload)
            if path.suffix.lower() == ".zip":
                target = session.root / "test" / safe_slug(path.stem)
                shutil.rmtree(target, ignore_errors=True)
                dataset = load_dataset(path)
                for cls in dataset.classes:
                    for i, record in enumerate(cls.images):
                        out = resolve_inside(target, cls.slug, f"{i:05d}.png")
                        out.parent.mkdir(parents=True, exist_ok=True)
                        save_png(record.image, out)
                from .manifest import MANIFEST_NAME, append_lines

                (target / MANIFEST_NAME).unlink(missing_ok=True)
                append_lines(target, ({"file": f"{c.slug}/{i:05d}.png", "class_name": c.name}
                                      for c in dataset.classes for i in range(len(c.images))))  # fmt: skip
                return target
            raise ValueError("the test set must be a .zip of class folders")
        if use_demo:
            return self.demo_data_dir() / "test"
        return None

    def train(self, session: Session, settings: dict, test_upload: str | None = None,
              use_demo_test: bool = False, progress: Callable[[float, str], None] = lambda f, m: None):  # fmt: skip
        """Train a LoRA classifier on real (+ kept synthetic) images; yields TrainProgress, then
        ("result", TrainResult)."""
        from .models import load_clip
        from .train import TrainConfig, iter_train

        session = self.session(session)
        config = TrainConfig.from_dict(session.train_settings | settings)
        session.train_settings = session.train_settings | settings
        real = self.real_dir(session)
        synthetic = session.run_dir if session.run_dir is not None and kept_images(session.run_dir) else None
        test = self.test_dir(session, test_upload, use_demo_test)
        out_dir = session.root / "classifiers" / time.strftime("%Y%m%d-%H%M%S")
        cancel = self._start(session)
        progress(0.0, "Loading CLIP for training")
        clip = load_clip(self.spec, self.runtime)  # a fresh copy: LoRA is injected in place
        run = iter_train(real, out_dir, self.spec, synthetic_dir=synthetic, test_dir=test, config=config,
                         runtime=self.runtime, should_stop=cancel, clip=clip)  # fmt: skip
        while True:
            try:
                # The lock per step, not across yields: an abandoned stream must not hold it.
                with self.gpu:
                    event = next(run)
            except StopIteration as done:
                result = done.value
                break
            yield event
        session.classifier_dir = out_dir
        session.scores = {}
        yield ("result", result)

    def compare(self, session: Session, settings: dict, test_upload: str | None = None,
                use_demo_test: bool = False) -> Iterator:  # fmt: skip
        """Real-only vs real+synthetic on the current run's kept images; yields ``(run name,
        TrainProgress)`` while training ("real_only", then "real_synthetic"), then ``("result",
        report)`` (:func:`dipsy_ui.train.compare`'s dict; ``report["cancelled"]`` after a cancel)."""
        from .train import TrainConfig, compare

        session = self.session(session)
        config = TrainConfig.from_dict(session.train_settings | settings)
        test = self.test_dir(session, test_upload, use_demo_test)
        if test is None:
            raise ValueError("the comparison needs a test set: upload one or use the demo test set")
        synthetic = self._run(session)
        real = self.real_dir(session)
        cancel = self._start(session)

        def work(emit):
            with self.gpu:
                return compare(real, synthetic, test, session.root / "comparisons" / synthetic.name, self.spec,
                               config=config, runtime=self.runtime, should_stop=cancel,
                               callback=lambda name, event: emit((name, event)))  # fmt: skip

        yield from _in_thread(work, cancel)

    def adapter_zip(self, session: Session) -> str:
        session = self.session(session)
        if session.classifier_dir is None:
            raise ValueError("train a classifier first")
        path = session.classifier_dir.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(session.classifier_dir.rglob("*")):
                if file.is_file():
                    archive.write(file, f"classifier/{file.relative_to(session.classifier_dir)}")
        return str(path)


def labelled_grid(images: list[Image.Image], x_name: str, x_values: list[float], y_name: str,
                  y_values: list[float], cell: int = 128) -> Image.Image:  # fmt: skip
    """Images (row-major, ``y`` rows by ``x`` columns) in a grid with axis labels."""
    margin_left, margin_top = 90, 40
    grid = Image.new("RGB", (margin_left + cell * len(x_values), margin_top + cell * len(y_values)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 4), f"x: {x_name}   y: {y_name}", fill="black")
    for i, x in enumerate(x_values):
        draw.text((margin_left + i * cell + 4, 22), f"{x_name}={x:g}", fill="black")
    for j, y in enumerate(y_values):
        draw.text((4, margin_top + j * cell + cell // 2), f"{y_name}={y:g}", fill="black")
        for i in range(len(x_values)):
            image = (
                images[j * len(x_values) + i].convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            )
            grid.paste(image, (margin_left + i * cell, margin_top + j * cell))
    return grid


def parse_values(text: str) -> list[float]:
    """``"2, 4, 6"`` -> ``[2.0, 4.0, 6.0]``; a readable error for anything else."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"sweep values must be numbers separated by commas, got {text!r}") from error
    if not values:
        raise ValueError("give at least one sweep value")
    return values
