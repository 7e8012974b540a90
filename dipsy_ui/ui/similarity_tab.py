"""Tab 2, Similarity: CLIP class similarity, negative-class probabilities, overrides."""

import html

import gradio as gr

from ..config import GenerationConfig
from ..studio import DONE
from .common import JOBS, follow, readable_errors


def create(similarity, state):
    with gr.Tab("2. Similarity", id="similarity") as tab:
        gr.Markdown(
            "Each generated image of a class is steered **away** from a *negative* class. Negatives are drawn "
            "more often from classes that look similar (CLIP similarity, softmax with a temperature): a low "
            "temperature concentrates on the most similar classes, a high one spreads evenly."
        )
        with gr.Row():
            compute = gr.Button("Compute similarity", variant="primary")
            temperature = gr.Slider(
                *GenerationConfig.bounds("temperature"),
                value=GenerationConfig.temperature,
                step=0.01,
                label="Temperature",
            )
        with gr.Row():
            heatmap = gr.Image(
                elem_id="heatmap", label="Class similarity", type="filepath", interactive=False, height=420
            )
            with gr.Column():
                table = gr.Dataframe(headers=["class", "most likely negatives (probability)", "override"],
                                     label="Negative-class probabilities", interactive=False, wrap=True)  # fmt: skip
                with gr.Accordion("Override negatives for one class", open=False):
                    target = gr.Dropdown(label="Class", choices=[], allow_custom_value=True)
                    pinned = gr.Dropdown(
                        label="Only these negatives (pin)",
                        choices=[],
                        allow_custom_value=True,
                        multiselect=True,
                    )
                    excluded = gr.Dropdown(
                        label="Never these negatives (exclude)",
                        choices=[],
                        allow_custom_value=True,
                        multiselect=True,
                    )
                    apply = gr.Button("Apply override")
                status = gr.Markdown(label="Status", elem_id="similarity-status")

    def view(session, message=""):
        names = similarity.names(session)
        rows = similarity.probability_rows(session) if names else []
        choices = gr.update(choices=names)
        return similarity.heatmap_path(session), rows, choices, choices, choices, message

    outputs = [heatmap, table, target, pinned, excluded, status]

    @readable_errors
    def on_compute(session, temp):
        for event in follow(similarity.compute(session, temp)):
            if event.kind == DONE:
                yield view(
                    session, f"Similarity of {len(event.result.names)} classes at temperature {temp:g}."
                )
            else:
                yield (*[gr.skip()] * 5, event.message)

    @readable_errors
    def on_temperature(session, temp):
        if not similarity.names(session):
            return gr.skip(), "Compute the similarity first."
        similarity.set_temperature(session, temp)
        return similarity.probability_rows(session), f"Temperature {temp:g}."

    @readable_errors
    def on_override(session, name, pins, blocks):
        message = similarity.set_override(session, name, pins or [], blocks or [])
        return similarity.probability_rows(session), html.escape(message)

    def on_target(session, name):
        pins, blocks = similarity.override(session, name)
        return gr.update(value=pins), gr.update(value=blocks)

    compute.click(on_compute, [state, temperature], outputs, api_name="compute_similarity", **JOBS)
    temperature.change(on_temperature, [state, temperature], [table, status], api_name="set_temperature",
                       show_progress="hidden")  # fmt: skip
    apply.click(on_override, [state, target, pinned, excluded], [table, status], api_name="set_override")
    target.input(on_target, [state, target], [pinned, excluded], api_visibility="private")
    tab.select(lambda s: view(s)[:5], [state], outputs[:5], api_visibility="private")
