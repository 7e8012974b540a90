"""Tab 4, Generate: the batch job (start, cancel, resume) with progress, ETA and a live gallery."""

import gradio as gr

from ..config import GenerationConfig
from ..studio import DONE, PROGRESS, STEP
from .common import FREE, JOBS, cancel_reply, follow, progress_html, readable_errors


def number(name: str, label: str, **kwargs) -> gr.Number:
    """A whole-number box limited to the range GenerationConfig allows, starting at its default."""
    low, high = GenerationConfig.bounds(name)
    return gr.Number(label=label, value=getattr(GenerationConfig, name), precision=0,
                     minimum=low, maximum=high, **kwargs)  # fmt: skip


def create(runs, state):
    with gr.Tab("4. Generate", id="generate") as tab:
        settings = gr.Markdown()
        with gr.Row():
            per_class = number("images_per_class", "Images per class", elem_id="per-class")
            batch_size = number("batch_size", "Batch size", elem_id="batch-size")
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
        preset, c = runs.settings(session)
        return (f"**Settings** (from the preset `{preset}` and the Guidance tab): prompt `{c.template}`, "
                f"weights text {c.w_text:g} / positive {c.w_pos:g} / negative {c.w_neg:g}, adapter scale "
                f"{c.ip_adapter_scale:g}, {c.steps} steps, {c.width}x{c.height}, negatives `{c.negatives}` "
                f"(T={c.temperature:g}), seed {c.seed}.")  # fmt: skip

    @readable_errors
    def on_start(session, count, size, name):
        # The bar and ETA come from the job's own events; the gallery fills batch by batch.
        yield progress_html(0, 1, "Starting..."), gr.skip(), None
        for event in follow(runs.generate(session, count or 1, size or 1, name)):
            bar = progress_html(event.done, event.total, event.message)
            if event.kind == STEP:
                yield bar, gr.skip(), event.preview
            elif event.kind == PROGRESS:
                yield bar, runs.run_files(session) if event.detail else gr.skip(), gr.skip()
            else:
                summary = event.result
                if event.kind == DONE:
                    bar = progress_html(summary.done, summary.total,
                                        f"Done: {summary.done} / {summary.total} images in {summary.name}")  # fmt: skip
                elif summary is not None:
                    bar = progress_html(summary.done, summary.total, event.message)
                yield bar, runs.run_files(session), None

    inputs = [state, per_class, batch_size, folder]
    outputs = [progress_bar, gallery, preview]
    start.click(on_start, inputs, outputs, api_name="generate", **JOBS)
    resume.click(on_start, inputs, outputs, api_name="resume", **JOBS)
    cancel.click(lambda s: cancel_reply(runs.cancel(s)), [state], [progress_bar], api_name="cancel_generation",
                 **FREE)  # fmt: skip
    tab.select(describe, [state], [settings], api_visibility="private")
    tab.select(lambda s: runs.run_files(s), [state], [gallery], api_visibility="private")
