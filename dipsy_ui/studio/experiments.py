"""The experiment service: the session's draft experiment (arms, shots, seeds, test set), written
as a spec into ``<session>/experiments/<name>/`` and run by :mod:`dipsy_ui.experiment` as one job
(Experiments tab); a rerun of the same experiment resumes it. Its table, verdict and plot are read
back from the experiment folder as cells finish."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..data import load_dataset, safe_slug
from ..errors import JobConflictError, UsageError
from ..experiment.report import PLOTS
from ..experiment.runner import EXPERIMENT_FILE, Experiment, cell_state, plan, read_results
from ..experiment.spec import DIGIT_WORLD, REAL_ONLY, TEXT_ONLY, ExperimentSpec
from ..experiment.stats import CONFIDENCE, summarize, verdict
from ..experiment.subsets import write_image_folder
from ..files import write_atomic
from ..presets import load_preset
from .core import Core
from .data import DataService
from .jobs import Cancelled, Job, Progress
from .session import Session, check_name

BUILT_IN = (REAL_ONLY, TEXT_ONLY)
# What "add the Guidance settings as an arm" takes from the session's generation settings.
GUIDANCE_KEYS = ("w_text", "w_pos", "w_neg", "ip_adapter_scale", "negatives")
DEMO_TEST, HELD_OUT = "demo test set", "held out"  # the test set choices
# A new draft: the miniature reproduction's shots and seeds (presets/experiments/digits.json).
DEFAULT_ARMS = (REAL_ONLY, TEXT_ONLY)
DEFAULT_SHOTS, DEFAULT_SEEDS, DEFAULT_HELD_OUT = "1, 2, 4", "0, 1, 2", 2
SPEC_FILE = "spec.json"
LEVEL = f"{100 * CONFIDENCE:.0f}% CI"


def parse_numbers(text: str, what: str, minimum: int) -> tuple[int, ...]:
    """``"1, 2, 4"`` as whole numbers >= ``minimum``; a UsageError naming ``what`` otherwise."""
    parts = [part for part in str(text or "").replace(";", ",").replace(" ", ",").split(",") if part]
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if not values or min(values) < minimum or len(set(values)) < len(values):
        raise UsageError(
            f"{what} must be different whole numbers >= {minimum} separated by commas, e.g. "
            f"{minimum}, {minimum + 1}; got {text!r}"
        )
    return values


def parse_optional(text, what: str) -> int | None:
    """A whole number typed in a box, or None for a blank box (the preset's value)."""
    text = "" if text is None else str(text).strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{what} must be a whole number (or blank for the preset's), got {text!r}") from None


@dataclass(frozen=True)
class ExperimentSettings:
    """What a run asks for besides the arms (the Experiments tab's boxes)."""

    name: str = "experiment-1"  # the folder under <session>/experiments/ (rerun it to resume)
    shots: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    images_per_class: int | None = None  # synthetic images per class; None: the preset's
    epochs: int | None = None  # None: the preset's
    test: str = HELD_OUT  # DEMO_TEST (demo mode) or HELD_OUT
    held_out_per_class: int = DEFAULT_HELD_OUT


@dataclass(frozen=True)
class Results:
    """What an experiment shows so far: one row per (arm, shots), the verdict and the plot."""

    reference: str
    headers: list[str]
    rows: list[list]  # arm, shots, seeds, top-1 %, its CI, difference to the reference, its CI
    verdict: str
    plot: str | None  # accuracy_by_shots.png (several shots) or accuracy_by_arm.png
    finished: int
    planned: int

    def to_dict(self) -> dict:
        return {"reference": self.reference, "headers": self.headers, "rows": self.rows,
                "verdict": self.verdict, "finished": self.finished, "planned": self.planned}  # fmt: skip


@dataclass(frozen=True)
class ExperimentUpdate:
    """A "progress" event's detail: every cell's state (arm, shots, seed, state) and the results."""

    cells: list[list]
    results: Results | None


@dataclass
class Draft:
    """A session's experiment being built: its arms as spec entries."""

    arms: list = field(default_factory=lambda: list(DEFAULT_ARMS))


class ExperimentService:
    """Drafts (one per session, kept here by session id), runs under ``<session>/experiments/``."""

    def __init__(self, core: Core, data: DataService):
        self.core, self.data = core, data
        self._drafts: dict[str, Draft] = {}
        self._lock = threading.Lock()

    @property
    def demo(self) -> bool:
        return self.core.demo

    def preset_values(self, session: Session) -> tuple[int, int]:
        """(synthetic images per class, epochs) of the active preset: what a blank box runs with."""
        preset = load_preset(self.core.session(session).preset)
        return preset.generation.images_per_class, preset.train.epochs

    def test_choices(self) -> list[str]:
        return [DEMO_TEST, HELD_OUT] if self.core.demo else [HELD_OUT]

    # -- the draft ------------------------------------------------------------------------------

    def draft(self, session: Session) -> Draft:
        session = self.core.session(session)
        with self._lock:
            return self._drafts.setdefault(session.id, Draft())

    def arm_names(self, session: Session) -> list[str]:
        return [_name(entry) for entry in self.draft(session).arms]

    def arms_table(self, session: Session) -> list[list[str]]:
        """(name, what it does) per arm, in the order they run."""
        return [[_name(entry), _describe(entry)] for entry in self.draft(session).arms]

    def add_built_in(self, session: Session, name: str) -> str:
        if name not in BUILT_IN:
            raise UsageError(f"the built-in arms are {list(BUILT_IN)}, got {name!r}")
        return self._add(session, name)

    def add_guidance(self, session: Session, name: str = "") -> str:
        """The session's current generation weights, adapter scale and negative mode (what the
        Guidance tab last previewed) as an arm; a blank name names it by its settings."""
        generation = self.core.session(session).generation
        settings = {key: getattr(generation, key) for key in GUIDANCE_KEYS}
        if not str(name or "").strip():
            name = (f"guidance {settings['w_text']:g}/{settings['w_pos']:g}/{settings['w_neg']:g}, "
                    f"scale {settings['ip_adapter_scale']:g}, {settings['negatives']}")  # fmt: skip
        name = check_name(name, "arm name")
        if name in BUILT_IN:
            raise UsageError(f"{name!r} is a built-in arm; give the Guidance settings another name")
        return self._add(session, {"name": name, "generation": settings})

    def remove(self, session: Session, name: str) -> str:
        draft = self.draft(session)
        names = [_name(entry) for entry in draft.arms]
        if name not in names:
            raise UsageError(f"there is no arm {name!r}; the arms are {names}")
        del draft.arms[names.index(name)]
        return f"Removed the arm {name!r}."

    def _add(self, session: Session, entry) -> str:
        draft = self.draft(session)
        if _name(entry) in self.arm_names(session):
            raise UsageError(
                f"there is already an arm named {_name(entry)!r}; remove it first or choose another name"
            )
        draft.arms.append(entry)
        return f"Added the arm {_name(entry)!r}: {_describe(entry)}."

    # -- the spec -------------------------------------------------------------------------------

    def folder(self, session: Session, name: str) -> Path:
        session = self.core.session(session)
        return session.root / "experiments" / safe_slug(check_name(name, "experiment name"))

    def spec(self, session: Session, settings: ExperimentSettings) -> tuple[ExperimentSpec, Path]:
        """The draft and ``settings`` as a validated spec, written to ``<folder>/spec.json``
        (refused when the folder holds results of another spec); (spec, folder)."""
        session = self.core.session(session)
        self.data.labelled_images(session)  # "no data yet" before anything is written
        arms = self.draft(session).arms
        if not arms:
            raise UsageError(
                "the experiment has no arms: add one (e.g. 'real only' and the Guidance settings)"
            )
        folder = self.folder(session, settings.name)
        data = {
            "description": f"Built in the Experiments tab from the preset {Path(session.preset).stem!r}.",
            "preset": session.preset,
            "data": str(session.root / "data"),
            "test": self._test(session, settings),
            "shots": list(settings.shots),
            "seeds": list(settings.seeds),
            "generation": {} if settings.images_per_class is None else {"images_per_class": settings.images_per_class},
            "train": {} if settings.epochs is None else {"epochs": settings.epochs},
            "arms": list(arms),
        }  # fmt: skip
        if self.core.demo:
            data["models"] = DIGIT_WORLD
        spec = ExperimentSpec.from_dict(data, folder)
        written = folder / SPEC_FILE
        if (folder / EXPERIMENT_FILE).is_file() and written.is_file():
            before = json.loads(written.read_text(encoding="utf-8"))
            if before != data:
                changed = sorted(
                    key for key in data.keys() | before.keys() if data.get(key) != before.get(key)
                )
                raise UsageError(
                    f"the experiment {settings.name!r} already holds results with other {', '.join(changed)}; "
                    "give this one another name (running the same settings again continues that one)"
                )
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(written, json.dumps(data, indent=1, ensure_ascii=False))
        return spec, folder

    def _test(self, session: Session, settings: ExperimentSettings) -> str | dict:
        if settings.test == HELD_OUT:
            return {"held_out_per_class": int(settings.held_out_per_class)}
        if settings.test != DEMO_TEST or not self.core.demo:
            raise UsageError(f"the test set is one of {self.test_choices()}, got {settings.test!r}")
        # The demo's held-out digits, of the session's classes only (train and test classes match).
        slugs = sorted(self.data.slugs(session).values())
        demo = load_dataset(self.data.demo_data_dir() / "test")
        missing = sorted(set(slugs) - set(demo.class_names))
        if missing:
            raise UsageError(
                f"the demo test set has no images of {missing}; hold test images out of your data instead"
            )
        key = hashlib.sha256("\n".join(slugs).encode()).hexdigest()[:12]
        classes = {c.name: c.images for c in demo.classes if c.name in slugs}
        return str(write_image_folder(session.root / "experiments" / ".demo-test" / key, classes))

    # -- running --------------------------------------------------------------------------------

    def cancel(self, session: Session) -> bool:
        return self.core.cancel(session, ("experiment",))

    def run(self, session: Session, settings: ExperimentSettings) -> Iterator[Progress]:
        """Run (or resume) the draft as a job: "progress" events carry an
        :class:`ExperimentUpdate` (each cell's state, the results so far), the end the last one."""
        session = self.core.session(session)
        spec, folder = self.spec(session, settings)

        def work(job: Job) -> ExperimentUpdate:
            cells = {cell.key: "waiting" for cell in plan(spec)}
            for record in read_results(folder):
                cells[(record["arm"], record["shots"], record["seed"])] = (
                    f"done earlier: top-1 {_percent(record)}"
                )
            results = self.results(spec, folder)

            def update() -> ExperimentUpdate:
                return ExperimentUpdate([[*key, state] for key, state in cells.items()], results)

            job.progress(len(read_results(folder)), len(cells), "Starting...", update())
            pipe, clip = self.core.models(job)

            def on_event(event) -> None:
                nonlocal results
                payload = event.payload or {}
                inner = payload.get("event")
                if event.last or (inner is not None and inner.kind == "step"):
                    return  # the job's own end says it; the view follows images written, not steps
                if event.kind == "note":
                    message = f"Note: {event.message}"
                elif payload["stage"] == "result":
                    cells[payload["cell"]] = f"done: top-1 {_percent(payload['record'])}"
                    results = self.results(spec, folder)
                    message = f"{_cell(payload['cell'])}: {cells[payload['cell']]}"
                else:
                    cells[payload["cell"]] = cell_state(event)
                    message = f"{_cell(payload['cell'])}: {cells[payload['cell']]}"
                job.progress(
                    event.step, event.total, f"{event.step}/{event.total} cells finished. {message}", update()
                )

            experiment = Experiment(spec, folder, self.core.spec, self.core.runtime, pipeline=pipe, clip=clip)
            try:
                final = experiment.run(on_event, job.cancel)
            except JobConflictError:
                raise UsageError(
                    f"the experiment {settings.name!r} holds results of other data or models; give this one another name"
                ) from None
            for key, state in cells.items():
                if not state.startswith("done"):
                    cells[key] = "not run (cancelled)" if final.kind == "cancelled" else state
            results = self.results(spec, folder)
            if final.kind == "cancelled":
                raise Cancelled(update(), f"Cancelled: {final.step}/{final.total} cells finished; "
                                          "Run continues where it stopped (finished cells are kept).")  # fmt: skip
            return update()

        return self.core.run_job(session, "experiment", work)

    def results(self, spec: ExperimentSpec, folder: Path) -> Results | None:
        """The finished cells of ``folder`` as the table, the verdict and a plot (None before any)."""
        records = read_results(folder)
        if not records:
            return None
        reference = spec.reference
        rows = summarize(records, [arm.name for arm in spec.arms], list(spec.shots), reference)
        table = []
        for row in rows:
            top1, difference = row["top1"], row["difference"]
            versus, versus_ci = "reference", ""
            if row["arm"] != reference:
                versus, versus_ci = (
                    ("no paired seeds", "") if difference is None else _split(difference, True)
                )
            table.append(
                [row["arm"], row["shots"], len(row["seeds"]), *_split(top1, False), versus, versus_ci]
            )
        plot = folder / PLOTS[1 if len(spec.shots) > 1 else 0]
        return Results(
            reference=reference,
            headers=["arm", "shots", "seeds", "top-1 %", LEVEL, f"vs {reference} (points)", LEVEL],
            rows=table,
            verdict=verdict(rows, reference),
            plot=str(plot) if plot.is_file() else None,
            finished=len(records),
            planned=len(spec.arms) * len(spec.shots) * len(spec.seeds),
        )


def _name(entry) -> str:
    return entry if isinstance(entry, str) else entry["name"]


def _describe(entry) -> str:
    if entry == REAL_ONLY:
        return "the real images only (trained for as many steps as the arms with synthetic images)"
    if entry == TEXT_ONLY:
        return "synthetic images from text guidance only (no image guidance, no negative class)"
    g = entry["generation"]
    return (f"synthetic images: text {g['w_text']:g}, positive {g['w_pos']:g}, negative {g['w_neg']:g}, "
            f"adapter scale {g['ip_adapter_scale']:g}, negatives {g['negatives']}")  # fmt: skip


def _split(interval, signed: bool) -> tuple[str, str]:
    """(mean, interval) in points: ``("55.2", "51.0..59.4")``; no interval from one seed."""
    form = "{:+.1f}" if signed else "{:.1f}"
    if interval.low is None:
        return form.format(100 * interval.mean), "one seed"
    return form.format(
        100 * interval.mean
    ), f"{form.format(100 * interval.low)}..{form.format(100 * interval.high)}"


def _percent(record: dict) -> str:
    return "-" if record.get("top1") is None else f"{100 * record['top1']:.1f}%"


def _cell(key: tuple[str, int, int]) -> str:
    arm, shots, seed = key
    return f"{arm}, {shots} shot{'s' if shots != 1 else ''}, seed {seed}"
