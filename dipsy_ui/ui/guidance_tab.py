"""Tab 3, Guidance: live previews of one image, weight sweeps, saving the settings as a preset."""

import gradio as gr

from ..config import GenerationConfig
from ..studio import SAMPLE, WEIGHTS, GuidanceSettings, parse_values
from .common import FREE, GPU, readable_errors

HELP = """
**Text weight** pulls the image towards the class prompt ("A photo of a ..."); higher is more literal.
**Positive image weight** pulls it towards the chosen real image of the class (look, pose, colours).
**Negative image weight** pushes it away from an image of a look-alike class, so the model does not
drift into the wrong class. **Adapter scale** sets how strongly the images speak at all (0 = text only).
More **steps** are slower and cleaner. The same **seed** gives the same image; lock it to compare weights.
"""
DEFAULTS = GenerationConfig()


def create(studio, state):
    with gr.Tab("3. Guidance", id="guidance") as tab:
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Dropdown(
                    label="Class", choices=[], allow_custom_value=True, elem_id="guidance-class"
                )
                positive = gr.Dropdown(
                    label="Positive image", choices=[], allow_custom_value=True, value=None
                )
                negative_class = gr.Dropdown(
                    label="Negative class", choices=[SAMPLE], allow_custom_value=True, value=SAMPLE
                )
                negative = gr.Dropdown(
                    label="Negative image", choices=[(SAMPLE, -1)], allow_custom_value=True, value=-1
                )
                examples = gr.Gallery(label="The class's images", columns=6, height=140, allow_preview=False)
            with gr.Column(scale=1):
                # Initial values only: selecting the tab shows the session's settings.
                w_text = gr.Slider(0, 20, value=DEFAULTS.w_text, step=0.5, label="Text weight")
                w_pos = gr.Slider(0, 20, value=DEFAULTS.w_pos, step=0.5, label="Positive image weight")
                w_neg = gr.Slider(0, 20, value=DEFAULTS.w_neg, step=0.5, label="Negative image weight")
                scale = gr.Slider(0, 1.5, value=DEFAULTS.ip_adapter_scale, step=0.05, label="Adapter scale")
                steps = gr.Slider(1, 100, elem_id="steps", value=DEFAULTS.steps, step=1, label="Steps")
                with gr.Row():
                    seed = gr.Number(label="Seed", value=0, precision=0)
                    lock = gr.Checkbox(label="Lock seed", value=True)
                with gr.Row():
                    run = gr.Button("Preview", variant="primary")
                    stop = gr.Button("Cancel")
                gr.Markdown(HELP)
        with gr.Row():
            live = gr.Image(
                label="Preview (live)", type="filepath", interactive=False, height=300, elem_id="preview"
            )
            previous = gr.Image(
                label="Previous result", type="filepath", interactive=False, height=300, elem_id="previous"
            )
        status = gr.Markdown(elem_id="guidance-status")
        with gr.Accordion("Sweep: a grid over two weights (same seed)", open=False):
            with gr.Row():
                x_name = gr.Dropdown(label="Columns", choices=list(WEIGHTS), value="w_pos")
                x_values = gr.Textbox(label="Column values", value="2, 4, 6")
                y_name = gr.Dropdown(label="Rows", choices=list(WEIGHTS), value="w_neg")
                y_values = gr.Textbox(label="Row values", value="0, 3, 6")
            sweep = gr.Button("Render sweep")
            grid = gr.Image(label="Sweep", type="filepath", interactive=False)
        with gr.Row():
            preset_name = gr.Textbox(label="Preset name", placeholder="my-settings")
            save = gr.Button("Save the current settings as a preset")
            saved = gr.Markdown()

    controls = [
        class_name,
        positive,
        negative_class,
        negative,
        w_text,
        w_pos,
        w_neg,
        scale,
        steps,
        seed,
        lock,
    ]

    def settings(name, pos, neg_class, neg, wt, wp, wn, s, n, sd):
        return GuidanceSettings(name or "", int(pos or 0), neg_class or SAMPLE, -1 if neg is None else int(neg),
                                float(wt), float(wp), float(wn), float(s), int(n), int(sd or 0))  # fmt: skip

    def refresh(session):
        session = studio.session(session)
        names = list(session.classes)
        config = session.generation
        first = names[0] if names else None
        return (gr.update(choices=names, value=first), *class_choices(session, first),
                gr.update(choices=[SAMPLE, "none", *names]), config.w_text, config.w_pos, config.w_neg,
                config.ip_adapter_scale, config.steps)  # fmt: skip

    def class_choices(session, name):
        paths = studio.session(session).classes.get(name, [])
        return gr.update(choices=[(f"image {i + 1}", i) for i in range(len(paths))], value=0), paths

    def negative_choices(session, name):
        paths = studio.session(session).classes.get(name, [])
        return gr.update(
            choices=[(SAMPLE, -1)] + [(f"image {i + 1}", i) for i in range(len(paths))], value=-1
        )

    @readable_errors
    def on_preview(session, *values):
        *rest, sd, locked = values
        session = studio.session(session)
        sd = studio.resolve_seed(sd, locked)
        previous_path = session.last_preview
        for kind, value in studio.preview(session, settings(*rest, sd)):
            if kind == "step":
                step, total, pixels = value
                yield pixels.repeat(8, axis=0).repeat(8, axis=1), previous_path, sd, f"Step {step}/{total}..."
            else:
                session.last_preview = value
                yield value, previous_path, sd, f"Done (seed {sd})."

    @readable_errors
    def on_sweep(session, *values):
        *rest, sd, locked, xn, xv, yn, yv = values
        session = studio.session(session)
        sd = studio.resolve_seed(sd, locked)
        for kind, value in studio.sweep(
            session, settings(*rest, sd), xn, parse_values(xv), yn, parse_values(yv)
        ):
            if kind == "step":
                yield gr.update(), sd, f"Sweep: step {value[0]}/{value[1]}..."
            else:
                yield value, sd, f"Sweep done (seed {sd})."

    @readable_errors
    def on_save(session, name, *values):
        *rest, sd, locked = values
        session = studio.session(session)
        studio.remember_guidance(session, settings(*rest, sd))
        return f"Saved to `{studio.save_preset(session, name)}` (choose it in the Data tab's preset list)."

    def on_example(evt: gr.SelectData):
        return gr.update(value=evt.index)  # clicking a thumbnail makes it the positive image

    outputs = [live, previous, seed, status]
    preview_event = run.click(on_preview, [state, *controls], outputs, api_name="preview", **GPU)
    for slider in (w_text, w_pos, w_neg, scale, steps):
        slider.release(on_preview, [state, *controls], outputs, api_visibility="private", **GPU)
    sweep_event = sweep.click(
        on_sweep,
        [state, *controls, x_name, x_values, y_name, y_values],
        [grid, seed, status],
        api_name="sweep",
        **GPU,
    )
    stop.click(
        lambda s: studio.cancel(s),
        [state],
        [status],
        cancels=[preview_event, sweep_event],
        api_name="cancel_preview",
        **FREE,
    )
    save.click(on_save, [state, preset_name, *controls], [saved], api_name="save_preset")
    examples.select(on_example, None, [positive], api_visibility="private")
    class_name.input(class_choices, [state, class_name], [positive, examples], api_visibility="private")
    negative_class.input(negative_choices, [state, negative_class], [negative], api_visibility="private")
    tab.select(refresh, [state], [class_name, positive, examples, negative_class, w_text, w_pos, w_neg, scale, steps],
               api_visibility="private")  # fmt: skip
