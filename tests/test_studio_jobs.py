"""Long actions through ``Core.run_job`` (no browser): one terminal event each, the model lock
free again however a job ends, Cancel and "the newest preview wins", and the few-shot set
decoded once per data change."""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path

import pytest

from dipsy_ui.studio import CANCELLED, DONE, FAILED, PROGRESS, STEP, GuidanceSettings, Studio
from dipsy_ui.studio.core import Core
from dipsy_ui.studio.jobs import TERMINAL, Cancelled

CLASSES = ("zero", "one", "two")


def terminal(events: list) -> object:
    """The one terminal event of a job's stream, checked to be its last."""
    ends = [event for event in events if event.kind in TERMINAL]
    assert len(ends) == 1 and events[-1] is ends[0], [event.kind for event in events]
    return ends[0]


# -- run_job with stand-in work (no models) ---------------------------------------------------


@pytest.fixture
def core(tmp_path) -> Core:
    return Core(None, tmp_path, demo=True)


def counting(steps: int, release: threading.Event | None = None):
    """Work that reports ``steps`` steps, waiting for ``release`` after the first; it stops early
    (Cancelled) when its job is cancelled, and returns how many steps it ran."""

    def work(job):
        for step in range(1, steps + 1):
            if job.cancelled:
                raise Cancelled()
            job.step(step, steps, f"Step {step}/{steps}...")
            if release is not None and step == 1:
                release.wait(10)
        return steps

    return work


def batches(count: int, log: list, name: str, started: threading.Event | None = None,
            go: threading.Event | None = None):  # fmt: skip
    """Long work of ``count`` units that logs each unit and reports it as progress (where it
    offers the models to waiting jobs); after its first unit it sets ``started`` and waits for
    ``go``."""

    def work(job):
        for unit in range(1, count + 1):
            log.append((name, unit))
            job.progress(unit, count, f"{name}: unit {unit}/{count}")
            if unit == 1 and started is not None:
                started.set()
                go.wait(10)
        return count

    return work


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_preview_waits_for_one_unit_of_a_long_job_not_for_all_of_it(core):
    """Fair use of the models: a long job offers them between its units of work, interactive
    jobs go first, and long jobs of two users take turns instead of one waiting for the other."""
    log, results = [], {}
    started, go = threading.Event(), threading.Event()
    lock = core.model_lock

    def run(name, session, kind, work):
        thread = threading.Thread(
            target=lambda: results.update({name: terminal(list(core.run_job(session, kind, work)))})
        )
        thread.start()
        return thread

    threads = [run("a", core.session(None), "generate", batches(6, log, "a", started, go))]
    assert started.wait(10)
    # A second user's long job, then a third user's preview, arrive while the first job runs.
    threads.append(run("b", core.session(None), "train", batches(3, log, "b")))
    wait_for(lambda: len(lock._waiting) == 1)
    threads.append(run("preview", core.session(None), "preview", lambda job: log.append(("preview", 1)) or 1))
    wait_for(lambda: len(lock._waiting) == 2)
    go.set()
    for thread in threads:
        thread.join(30)
    assert {name: end.kind for name, end in results.items()} == {"a": DONE, "b": DONE, "preview": DONE}
    order = [name for name, _ in log]
    last_of_a = max(i for i, name in enumerate(order) if name == "a")
    # The preview ran after one more unit of the first job, before the job waiting longer than it;
    # the two long jobs took turns.
    assert order[:3] == ["a", "a", "preview"] and order.index("b") < last_of_a
    assert not lock.held


def test_an_interactive_job_goes_before_long_jobs_that_waited_longer(core):
    lock, order = core.model_lock, []
    assert lock.acquire(give_up=lambda: False)
    threads = [threading.Thread(target=lambda name=name, interactive=interactive: (
        lock.acquire(give_up=lambda: False, interactive=interactive), order.append(name), lock.release()))
        for name, interactive in (("long", False), ("preview", True))]  # fmt: skip
    for queued, thread in enumerate(threads, start=1):
        thread.start()
        wait_for(lambda queued=queued: len(lock._waiting) == queued)  # the long job queues first
    lock.release()
    for thread in threads:
        thread.join(10)
    assert order == ["preview", "long"]


def test_a_finished_job_ends_done_with_its_result_and_frees_the_lock(core):
    session = core.session(None)
    events = list(core.run_job(session, "preview", counting(3)))
    end = terminal(events)
    assert end.kind == DONE and end.result == 3 and (end.done, end.total) == (3, 3)
    assert not core.model_lock.held


def test_a_failing_job_ends_failed_with_its_error_and_frees_the_lock(core):
    def work(job):
        job.step(1, 4, "Step 1/4...")
        raise RuntimeError("boom")

    events = list(core.run_job(core.session(None), "generate", work))
    end = terminal(events)
    assert end.kind == FAILED and isinstance(end.error, RuntimeError) and str(end.error) == "boom"
    assert not core.model_lock.held


def test_cancel_stops_a_running_job_at_its_step_and_frees_the_lock(core):
    session = core.session(None)
    release = threading.Event()
    stream = core.run_job(session, "preview", counting(10, release))
    first = next(stream)
    assert first.kind == STEP and first.done == 1
    assert core.cancel(session, ("preview",))
    release.set()
    events = [first, *stream]
    end = terminal(events)
    assert end.kind == CANCELLED and end.message == "Cancelled at step 1/10." and not end.superseded
    assert not core.model_lock.held
    assert not core.cancel(session, ("preview",))  # nothing left: "Nothing to cancel"


def test_cancel_reaches_only_its_own_kinds(core):
    session = core.session(None)
    release = threading.Event()
    stream = core.run_job(session, "train", counting(2, release))
    next(stream)
    assert not core.cancel(session, ("preview", "sweep"))
    release.set()
    assert terminal(list(stream)).kind == DONE


def test_an_abandoned_preview_stops_and_frees_the_lock(core):
    release = threading.Event()
    stream = core.run_job(core.session(None), "preview", counting(10, release))
    next(stream)
    assert core.model_lock.held
    release.set()
    stream.close()
    assert not core.model_lock.held


def test_a_generation_belongs_to_the_session_not_to_the_page(core):
    """A refresh closes the page's stream and reopens the session by its id: the generation goes
    on, the new page follows it from where it stands, with what the first page asked, and its
    Cancel reaches it."""
    session, release = core.session(None), threading.Event()
    stream = core.run_job(session, "generate", counting(10, release), request={"folder": "run-1"})
    assert next(stream).kind == STEP
    stream.close()  # the page went away
    assert core.model_lock.held  # the job did not

    again, _ = core.reopen(session.id)
    request, events = core.attach(again, ("generate",))
    first = next(events)
    assert request == {"folder": "run-1"} and first.kind == STEP and first.done == 1
    assert core.cancel(again, ("generate",))
    release.set()
    assert terminal([first, *events]).kind == CANCELLED
    wait_for(lambda: not core.model_lock.held)
    assert core.attach(again, ("generate",)) is None and core.attach(session, ("generate",)) is None


class Blocker:
    """A job of another user holding the model lock until released."""

    def __init__(self, core: Core):
        self.release = threading.Event()
        self.stream = core.run_job(core.session(None), "generate", counting(1, self.release))
        assert next(self.stream).kind == STEP  # it holds the lock now

    def finish(self) -> None:
        self.release.set()
        assert terminal(list(self.stream)).kind == DONE


def waiting(core: Core, session, key, ran: list, changed_only: bool = False):
    """A preview request, registered and (unless dropped at once) waiting for the model."""

    def work(job):
        ran.append(key)
        return key

    stream = core.run_job(session, "preview", work, key=key, changed_only=changed_only)
    first = next(stream)
    return [first], stream


def test_a_newer_preview_supersedes_waiting_ones_and_cancel_drops_the_rest(core):
    session = core.session(None)
    blocker = Blocker(core)
    ran: list = []
    requests = [waiting(core, session, key, ran) for key in (1, 2, 3)]
    for seen, _ in requests:
        assert seen[0].kind == PROGRESS and seen[0].message.startswith("Waiting for the model")
    for seen, stream in requests[:2]:
        end = terminal(seen + list(stream))
        assert end.kind == CANCELLED and end.superseded
    blocker.finish()
    seen, stream = requests[2]
    assert terminal(seen + list(stream)).result == 3 and ran == [3]

    # Cancel drops a waiting request too: it never runs.
    blocker = Blocker(core)
    seen, stream = waiting(core, session, 4, ran)
    assert core.cancel(session, ("preview",))
    end = terminal(seen + list(stream))
    assert end.kind == CANCELLED and end.message == "Cancelled before it started." and not end.superseded
    blocker.finish()
    assert ran == [3] and not core.model_lock.held


def test_a_preview_asking_what_one_in_flight_asks_is_answered_by_it(core):
    session = core.session(None)
    blocker = Blocker(core)
    ran: list = []
    first, first_stream = waiting(core, session, "same", ran)
    second, second_stream = waiting(core, session, "same", ran)
    assert second[0].kind == CANCELLED and second[0].superseded  # dropped at once
    assert list(second_stream) == []
    blocker.finish()
    assert terminal(first + list(first_stream)).kind == DONE and ran == ["same"]

    # An edit that changed nothing since the last request is no request; a button press is.
    seen, stream = waiting(core, session, "same", ran, changed_only=True)
    assert seen[0].superseded and list(stream) == []
    seen, stream = waiting(core, session, "same", ran)
    assert terminal(seen + list(stream)).kind == DONE and ran == ["same", "same"]


# -- the Studio's actions on the digit world --------------------------------------------------


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    return Studio(None, tmp_path_factory.mktemp("workspace"), demo=True)


@pytest.fixture(scope="module")
def session(studio):
    """A session with three demo classes, a generated run of one image per class and a similarity."""
    session = studio.core.session(None)
    studio.data.load_demo(session)
    for name in studio.data.class_names(session):
        if name not in CLASSES:
            studio.data.remove_class(session, name)
    assert terminal(list(studio.similarity.compute(session, 0.4))).kind == DONE
    assert terminal(list(studio.generation.generate(session, 1, 1, "run-1"))).kind == DONE
    return session


def three_class_zip(studio, folder: Path) -> str:
    """The demo test images of CLASSES (two each), zipped as class folders."""
    path = folder / "test.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in CLASSES:
            for file in sorted((studio.data.demo_data_dir() / "test" / name).iterdir())[:2]:
                archive.write(file, f"test/{name}/{file.name}")
    return str(path)


def test_every_long_action_ends_in_exactly_one_terminal_event(studio, session, tmp_path):
    settings = GuidanceSettings("one", steps=2, seed=0)
    test_set = three_class_zip(studio, tmp_path)
    actions = {
        "preview": lambda: studio.guidance.preview(session, settings),
        "sweep": lambda: studio.guidance.sweep(session, settings, "w_pos", [0.0, 6.0], "w_neg", [3.0]),
        "generation": lambda: studio.generation.generate(session, 1, 1, "run-2"),
        "ranking": lambda: studio.curation.rank(session),
        "training": lambda: studio.training.train(session, {"epochs": 1}),
        "comparison": lambda: studio.training.compare(session, {"epochs": 1}, test_set),
        "similarity": lambda: studio.similarity.compute(session, 0.4),
    }
    for name, action in actions.items():
        end = terminal(list(action()))
        assert end.kind == DONE and end.result is not None, (name, end)
        assert not studio.core.model_lock.held, name


@pytest.mark.parametrize("action", ["preview", "generation", "training"])
def test_a_cancelled_action_ends_cancelled_once_and_frees_the_lock(studio, session, action):
    start = {
        "preview": lambda: studio.guidance.preview(session, GuidanceSettings("two", steps=100, seed=7)),
        "generation": lambda: studio.generation.generate(session, 20, 1, "run-cancel"),
        "training": lambda: studio.training.train(session, {"epochs": 50}),
    }[action]
    studio.curation.open_run(session, "run-1")  # a complete run: training's synthetic set
    events = []
    for event in start():
        events.append(event)
        if event.kind in (STEP, PROGRESS) and event.done >= 1:
            studio.core.cancel(session, ("preview", "generate", "train"))
    end = terminal(events)
    assert end.kind == CANCELLED and end.message.startswith("Cancelled"), end
    assert not studio.core.model_lock.held


def test_the_few_shot_set_is_decoded_once_until_the_data_changes(studio, session, monkeypatch, tmp_path):
    import dipsy_ui.studio.data as data_module

    decoded = []
    real = data_module.load_dataset

    def counting_loader(source):
        decoded.append(source)
        return real(source)

    monkeypatch.setattr(data_module, "load_dataset", counting_loader)
    path = studio.data.image_paths(session, "two")[0]
    kept = tmp_path / "two.png"
    kept.write_bytes(Path(path).read_bytes())
    studio.data.remove_image(session, path)  # a change: the next use decodes again
    for seed in range(3):
        assert (
            terminal(list(studio.guidance.preview(session, GuidanceSettings("one", steps=1, seed=seed)))).kind
            == DONE
        )
    assert len(decoded) == 1
    studio.data.add_images(session, "two", [str(kept)])
    assert (
        terminal(list(studio.guidance.preview(session, GuidanceSettings("one", steps=1, seed=0)))).kind
        == DONE
    )
    assert len(decoded) == 2
