"""Tab 4, Generate: the batch job (start, cancel, resume) with progress, ETA and a live gallery."""

import html

import gradio as gr

from ..config import GenerationConfig
from ..errors import JobConflictError
from ..studio import DONE, PROGRESS, STEP
from .common import FREE, JOBS, cancel_reply, follow, progress_html, readable_errors, refusal


def number(name: str, label: str, **kwargs) -> gr.Number:
    """A whole-number box limited to the range GenerationConfig allows, starting at its default."""
    low, high = GenerationConfig.bounds(name)
    return gr.Number(label=label, value=getattr(GenerationConfig, name), precision=0,
                     minimum=low, maximum=high, **kwargs)  # fmt: skip


def create(runs, state):
    """The tab over the generation service; returns the image picked in its gallery and the
    button that opens it in the Guidance tab (wired by app.py)."""
    with gr.Tab("4. Generate", id="generate") as tab:
        settings = gr.Markdown(label="Settings")
        with gr.Row():
            per_class = number("images_per_class", "Images per class", elem_id="per-class")
            batch_size = number("batch_size", "Batch size", elem_id="batch-size")
            folder = gr.Textbox(
                label="Output folder (inside your workspace)", value="run-1", elem_id="generate-folder"
            )
        with gr.Row():
            start = gr.Button("Start", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
            resume = gr.Button("Resume")
        progress_bar = gr.HTML(label="Progress", elem_id="generate-progress")
        # Offered only when Start is refused because the folder holds a run made with other settings.
        with gr.Row():
            use_recorded = gr.Button(
                "Resume with the recorded settings", visible=False, elem_id="use-recorded"
            )
            new_folder = gr.Button("New folder", visible=False, elem_id="new-folder")
        with gr.Row():
            gallery = gr.Gallery(
                elem_id="generate-gallery",
                label="Generated (newest first)",
                columns=8,
                height=360,
                allow_preview=True,
            )
            preview = gr.Image(label="Current batch (denoising)", interactive=False, height=200)
        with gr.Row():
            picked = gr.Textbox(label="Picked image (click one in the gallery)", interactive=False,
                                elem_id="generate-picked")  # fmt: skip
            open_picked = gr.Button("Open in Guidance (redraw it there)", elem_id="generate-open", scale=0)

    describe = runs.describe

    def on_pick(session, evt: gr.SelectData):
        """The manifest name of the gallery image clicked (the gallery lists the newest first)."""
        files = runs.run_files(session)
        return runs.manifest_file(session, files[evt.index][0]) if evt.index < len(files) else ""

    hidden = gr.update(visible=False)

    def show(session, events):
        """A generation job's events as (bar, gallery, preview, the two conflict buttons): the bar
        and ETA from the job's own events, the gallery filling batch by batch."""
        for event in follow(events):
            bar = progress_html(event.done, event.total, event.message)
            if event.kind == STEP:
                yield bar, gr.skip(), event.preview, gr.skip(), gr.skip()
            elif event.kind == PROGRESS:
                yield (
                    bar,
                    runs.run_files(session) if written(event) else gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
            else:
                summary = event.result
                if event.kind == DONE:
                    bar = progress_html(summary.done, summary.total,
                                        f"Done: {summary.done} / {summary.total} images in {summary.name}")  # fmt: skip
                elif summary is not None:
                    bar = progress_html(summary.done, summary.total, event.message)
                yield bar, runs.run_files(session), None, gr.skip(), gr.skip()

    def on_start(session, count, size, name):
        """Start (or resume) a generation and follow it; a refused or failed start writes its
        reason into the bar (the tab's status), keeping the gallery."""
        yield progress_html(0, 1, "Starting..."), gr.skip(), None, hidden, hidden
        try:
            yield from show(session, runs.generate(session, count or 1, size or 1, name))
        except Exception as error:  # noqa: BLE001 - refusal() logs what is not the user's to fix
            offer = gr.update(visible=isinstance(error, JobConflictError))
            yield progress_html(0, 1, html.escape(refusal(error), quote=False)), gr.skip(), None, offer, offer

    def on_follow(session):
        """A page opening (a refresh, a second tab) finds the session's running generation: the
        form it was started with, then its progress to the end. Without one, the form names the
        current run, so Resume continues it."""
        attached = runs.attach(session)
        if attached is None:
            yield gr.skip(), gr.skip(), runs.current_folder(session) or gr.skip(), *(gr.skip(),) * 5
            return
        request, events = attached
        yield request["per_class"], request["batch_size"], request["folder"], *(gr.skip(),) * 5
        for shown in show(session, events):
            yield gr.skip(), gr.skip(), gr.skip(), *shown

    def on_use_recorded(session, count, size, name):
        """Load the folder's recorded generation settings into the session, then resume it."""
        try:
            runs.use_recorded(session, name)
        except Exception as error:  # noqa: BLE001
            yield (
                progress_html(0, 1, html.escape(refusal(error), quote=False)),
                gr.skip(),
                None,
                hidden,
                hidden,
            )
            return
        yield from on_start(session, count, size, name)

    @readable_errors
    def on_new_folder(session, name):
        return runs.free_folder(session, name), "", hidden, hidden

    inputs = [state, per_class, batch_size, folder]
    outputs = [progress_bar, gallery, preview, use_recorded, new_folder]
    start.click(on_start, inputs, outputs, api_name="generate", **JOBS)
    resume.click(on_start, inputs, outputs, api_name="resume", **JOBS)
    use_recorded.click(on_use_recorded, inputs, outputs, api_name="resume_recorded", **JOBS).then(
        describe, [state], [settings], api_visibility="private"
    )
    new_folder.click(on_new_folder, [state, folder], [folder, progress_bar, use_recorded, new_folder],
                     api_name="new_folder")  # fmt: skip
    cancel.click(lambda s: cancel_reply(runs.cancel(s)), [state], [progress_bar], api_name="cancel_generation",
                 **FREE)  # fmt: skip
    gallery.select(on_pick, [state], [picked], api_visibility="private")
    tab.select(describe, [state], [settings], api_visibility="private")
    tab.select(lambda s: runs.run_files(s), [state], [gallery], api_visibility="private")
    # Wired by app.py after the page's session is known.
    follow_run = (on_follow, [state], [per_class, batch_size, folder, *outputs])
    return {"picked": picked, "open": open_picked, "follow": follow_run}


def written(event) -> bool:
    """Whether a job's progress event reports images written (the gallery then refreshes)."""
    return event.detail is not None and "files" in (event.detail.payload or {})
