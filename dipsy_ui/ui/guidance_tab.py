"""Tab 3, Guidance: live previews of one image, weight sweeps, saving the settings as a preset."""

import gradio as gr

from ..config import GenerationConfig
from ..errors import DipsyError
from ..studio import CANCELLED, DONE, SAMPLE, STEP, WEIGHTS, GuidanceSettings, parse_values
from .common import FREE, JOBS, cancel_reply, follow, readable_errors, refusal

HELP = """
**Text weight** pulls the image towards the class prompt ("A photo of a ..."); higher is more literal.
**Positive image weight** pulls it towards the chosen real image of the class (look, pose, colours).
**Negative image weight** pushes it away from an image of a look-alike class, so the model does not
drift into the wrong class. **Adapter scale** sets how strongly the images speak at all (0 = text only).
More **steps** are slower and cleaner. The same **seed** gives the same image; lock it to compare weights.
"""
DEFAULTS = GenerationConfig()


def slider(name: str, step: float, label: str, **kwargs) -> gr.Slider:
    """A slider over the whole range GenerationConfig allows for ``name`` (initial value only:
    selecting the tab shows the session's settings)."""
    low, high = GenerationConfig.bounds(name)
    return gr.Slider(low, high, value=getattr(DEFAULTS, name), step=step, label=label, **kwargs)


def create(guidance, state):
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
                w_text = slider("w_text", 0.5, "Text weight", elem_id="guidance-w-text")
                w_pos = slider("w_pos", 0.5, "Positive image weight")
                w_neg = slider("w_neg", 0.5, "Negative image weight")
                scale = slider("ip_adapter_scale", 0.05, "Adapter scale")
                steps = slider("steps", 1, "Steps", elem_id="steps")
                with gr.Row():
                    low, high = GenerationConfig.bounds("seed")
                    seed = gr.Number(
                        label="Seed", value=DEFAULTS.seed, precision=0, minimum=low, maximum=high
                    )
                    lock = gr.Checkbox(label="Lock seed", value=True)
                with gr.Row():
                    run = gr.Button("Preview", variant="primary")
                    stop = gr.Button("Cancel", elem_id="guidance-cancel")
                gr.Markdown(HELP)
        with gr.Row():
            # PNG, not the default WebP: the enlarged step previews keep their sharp pixels.
            live = gr.Image(label="Preview (live)", type="filepath", interactive=False, height=300,
                            elem_id="preview", format="png")  # fmt: skip
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
            replace = gr.Button("Replace it", variant="stop", visible=False, elem_id="replace-preset")
        saved = gr.Markdown(elem_id="preset-status")

    sliders = [w_text, w_pos, w_neg, scale, steps]
    controls = [class_name, positive, negative_class, negative, *sliders, seed, lock]

    def settings(name, pos, neg_class, neg, wt, wp, wn, s, n, sd, locked):
        return GuidanceSettings(name or "", int(pos or 0), neg_class or SAMPLE, -1 if neg is None else int(neg),
                                float(wt), float(wp), float(wn), float(s), int(n),
                                int(sd or 0) if locked else None)  # fmt: skip

    def refresh(session):
        names = guidance.class_names(session)
        config = guidance.settings(session)
        first = names[0] if names else None
        return (gr.update(choices=names, value=first), *class_choices(session, first),
                gr.update(choices=[SAMPLE, "none", *names]), config.w_text, config.w_pos, config.w_neg,
                config.ip_adapter_scale, config.steps)  # fmt: skip

    def class_choices(session, name):
        paths = guidance.image_paths(session, name)
        return gr.update(choices=[(f"image {i + 1}", i) for i in range(len(paths))], value=0), paths

    def negative_choices(session, name):
        paths = guidance.image_paths(session, name)
        return gr.update(
            choices=[(SAMPLE, -1)] + [(f"image {i + 1}", i) for i in range(len(paths))], value=-1
        )

    def show_preview(session, values, edit):
        """(live, previous, seed, status) as the preview job goes; a cancelled preview puts back
        what was shown before it, and a superseded one shows nothing (a newer one is coming)."""
        latest, before = guidance.shown(session)
        for event in follow(guidance.preview(session, settings(*values), edit=edit)):
            if event.superseded:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif event.kind == STEP:
                yield event.preview, latest, gr.skip(), event.message
            elif event.kind == DONE:
                yield event.result.path, latest, event.result.seed, f"Done (seed {event.result.seed})."
            elif event.kind == CANCELLED:
                yield latest, before, gr.skip(), f"{event.message} The previous result is kept."
            else:  # waiting for the model, loading it, cancelling
                yield gr.skip(), gr.skip(), gr.skip(), event.message

    @readable_errors
    def on_preview(session, *values):
        yield from show_preview(session, values, edit=False)

    @readable_errors
    def on_edit(session, *values):
        yield from show_preview(session, values, edit=True)

    @readable_errors
    def on_sweep(session, *values):
        *rest, xn, xv, yn, yv = values
        for event in follow(
            guidance.sweep(session, settings(*rest), xn, parse_values(xv), yn, parse_values(yv))
        ):
            if event.kind == DONE:
                yield event.result.path, event.result.seed, f"Sweep done (seed {event.result.seed})."
            else:  # the grid stays as it was until a sweep finishes
                yield gr.skip(), gr.skip(), f"Sweep: {event.message[:1].lower()}{event.message[1:]}"

    def save_preset(session, name, values, overwrite):
        """(status, Replace button): saved, refused, or asking before replacing the user's preset."""
        try:
            existing = None if overwrite else guidance.existing_preset(session, name)
            if existing is not None:
                question = f"A preset named **{existing}** exists: click **Replace it** to save over it, or type another name."
                return question, gr.update(visible=True)
            saved_name = guidance.save_preset(session, name, settings(*values), overwrite=overwrite)
        except DipsyError as error:
            return refusal(error), gr.update(visible=False)
        return f"Saved as preset **{saved_name}** (choose it in the Data tab's preset list).", gr.update(
            visible=False
        )

    @readable_errors
    def on_save(session, name, *values):
        return save_preset(session, name, values, overwrite=False)

    @readable_errors
    def on_replace(session, name, *values):
        return save_preset(session, name, values, overwrite=True)

    def on_example(evt: gr.SelectData):
        return gr.update(value=evt.index)  # clicking a thumbnail makes it the positive image

    outputs = [live, previous, seed, status]
    run.click(on_preview, [state, *controls], outputs, api_name="preview", **JOBS)
    # Every edit reaches the Studio at once ("multiple"), where the newest wins; a slider's number
    # box fires "release" when it loses focus, so an edit that changed nothing is dropped there.
    gr.on([slider.release for slider in sliders], on_edit, [state, *controls], outputs,
          api_visibility="private", trigger_mode="multiple", **JOBS)  # fmt: skip
    sweep.click(on_sweep, [state, *controls, x_name, x_values, y_name, y_values], [grid, seed, status],
                api_name="sweep", **JOBS)  # fmt: skip
    stop.click(
        lambda s: cancel_reply(guidance.cancel(s)), [state], [status], api_name="cancel_preview", **FREE
    )
    save.click(on_save, [state, preset_name, *controls], [saved, replace], api_name="save_preset")
    replace.click(on_replace, [state, preset_name, *controls], [saved, replace], api_name="replace_preset")
    examples.select(on_example, None, [positive], api_visibility="private")
    class_name.input(class_choices, [state, class_name], [positive, examples], api_visibility="private")
    negative_class.input(negative_choices, [state, negative_class], [negative], api_visibility="private")
    tab.select(refresh, [state], [class_name, positive, examples, negative_class, *sliders],
               api_visibility="private")  # fmt: skip
