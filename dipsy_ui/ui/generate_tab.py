"""Tab 4, Generate: the batch job (start, cancel, resume) with progress, ETA and a live gallery."""

import gradio as gr

from .common import FREE, GPU, eta_text, progress_callback, progress_html, readable_errors


def create(studio, state):
    with gr.Tab("4. Generate", id="generate") as tab:
        settings = gr.Markdown()
        with gr.Row():
            per_class = gr.Number(
                elem_id="per-class", label="Images per class", value=8, precision=0, minimum=1
            )
            batch_size = gr.Number(elem_id="batch-size", label="Batch size", value=4, precision=0, minimum=1)
            folder = gr.Textbox(label="Output folder (inside your workspace)", value="run-1")
        with gr.Row():
            start = gr.Button("Start", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
            resume = gr.Button("Resume")
        progress_bar = gr.HTML(elem_id="generate-progress")
        with gr.Row():
            gallery = gr.Gallery(
                elem_id="generate-gallery",
                label="Generated (newest first)",
                columns=8,
                height=360,
                allow_preview=True,
            )
            preview = gr.Image(label="Current batch (denoising)", interactive=False, height=200)

    def describe(session):
        session = studio.session(session)
        c = session.generation
        return (f"**Settings** (from the preset `{session.preset}` and the Guidance tab): prompt `{c.template}`, "
                f"weights text {c.w_text:g} / positive {c.w_pos:g} / negative {c.w_neg:g}, adapter scale "
                f"{c.ip_adapter_scale:g}, {c.steps} steps, {c.width}x{c.height}, negatives `{c.negatives}` "
                f"(T={c.temperature:g}), seed {c.seed}.")  # fmt: skip

    @readable_errors
    def on_start(session, count, size, name, progress=gr.Progress()):  # noqa: B008
        session = studio.session(session)
        # The bar and ETA come from the job's own events; gr.Progress covers the model loading.
        yield progress_html(0, 1, "Starting..."), gr.update(), None
        for event in studio.generate(session, count or 1, size or 1, name, progress_callback(progress)):
            label = f"{event.done} / {event.total} images - ETA {eta_text(event.eta_seconds)}"
            if event.kind == "step":
                strip = studio.preview_strip(event)
                yield (
                    progress_html(event.done, event.total, f"{label} (step {event.step}/{event.steps})"),
                    gr.update(),
                    strip,
                )
            elif event.kind == "batch":
                yield progress_html(event.done, event.total, label), studio.run_files(session), gr.update()
            else:
                word = "Done" if event.kind == "done" else "Cancelled (Resume continues where it stopped)"
                yield (progress_html(event.done, event.total, f"{word}: {event.done} / {event.total} images in "
                                     f"{session.run_dir.name}"), studio.run_files(session), None)  # fmt: skip

    inputs = [state, per_class, batch_size, folder]
    outputs = [progress_bar, gallery, preview]
    start_event = start.click(on_start, inputs, outputs, api_name="generate", **GPU)
    resume_event = resume.click(on_start, inputs, outputs, api_name="resume", **GPU)
    cancel.click(lambda s: studio.cancel(s), [state], [progress_bar], cancels=[start_event, resume_event],
                 api_name="cancel_generation", **FREE)  # fmt: skip
    tab.select(describe, [state], [settings], api_visibility="private")
    tab.select(lambda s: studio.run_files(s), [state], [gallery], api_visibility="private")
