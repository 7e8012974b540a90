"""Tab 3, Guidance: live previews of one image, the Explain view, weight sweeps, saving the settings
as a preset."""

import gradio as gr

from ..config import NEGATIVE_MODES, GenerationConfig
from ..errors import DipsyError
from ..studio import CANCELLED, DONE, SAMPLE, STEP, WEIGHTS, GuidanceSettings, parse_values
from ..studio.guidance import MAX_SEEDS, WORDS, used_caption, weights_caption
from . import explain_view
from .common import FREE, JOBS, cancel_reply, follow, readable_errors, refusal

HELP = """
**Text weight** pulls the image towards the class prompt ("A photo of a ..."); higher is more literal.
**Positive image weight** pulls it towards the chosen real image of the class (look, pose, colours).
**Negative image weight** pushes it away from an image of a look-alike class, so the model does not
drift into the wrong class. The **negative rule** decides which class that is for every image Generate
draws (similar classes first, as in the paper; uniform; dissimilar; none); picking a **negative class**
pins it for this class, in previews and in Generate alike. **Adapter scale** sets how strongly the images speak at all (0 = text only).
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
                negative_rule = gr.Dropdown(
                    label="Negative rule (previews and Generate)", choices=list(NEGATIVE_MODES),
                    value=DEFAULTS.negatives, elem_id="guidance-negative-rule",
                )  # fmt: skip
                negative_class = gr.Dropdown(
                    label="Negative class (sample: drawn by the rule)", choices=[SAMPLE],
                    allow_custom_value=True, value=SAMPLE, elem_id="guidance-negative-class",
                )  # fmt: skip
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
                    # Seeds stay below 2^53, so the browser keeps every digit of a manifest's seed.
                    seed = gr.Number(label="Seed", value=DEFAULTS.seed, precision=0, minimum=low, maximum=high,
                                     elem_id="guidance-seed")  # fmt: skip
                    lock = gr.Checkbox(label="Lock seed", value=True)
                with gr.Row():
                    run = gr.Button("Preview", variant="primary")
                    stop = gr.Button("Cancel", elem_id="guidance-cancel")
                gr.Markdown(HELP)
        with gr.Row():
            # PNG, not the default WebP: the enlarged step previews keep their sharp pixels.
            live = gr.Image(label="Preview (live)", type="filepath", interactive=False, height=300,
                            elem_id="preview", format="png", scale=2)  # fmt: skip
            previous = gr.Image(label="Previous result", type="filepath", interactive=False, height=300,
                                elem_id="previous", scale=2)  # fmt: skip
            used = gr.Gallery(label="Images the preview used", columns=1, height=300, allow_preview=False,
                              elem_id="preview-used", elem_classes=["dipsy-pixels"], scale=1)  # fmt: skip
        status = gr.Markdown(label="Status", elem_id="guidance-status")
        sliders = [w_text, w_pos, w_neg, scale, steps]
        controls = [class_name, positive, negative_class, negative, *sliders, seed, lock]
        explain_view.create(guidance, state, controls, seed, settings)
        with gr.Accordion("Open a generated image (redraw it here)", open=False), gr.Row():
            opened_file = gr.Textbox(label="Image of the current run, as its manifest names it",
                                     placeholder="one/00003.png", elem_id="open-file")  # fmt: skip
            open_button = gr.Button("Open in Guidance", elem_id="open-in-guidance")
        with gr.Accordion("Sweep: a grid over two weights", open=False):
            with gr.Row():
                x_name = gr.Dropdown(label="Columns", choices=weight_choices(), value="w_pos")
                x_values = gr.Textbox(label="Column values", value="2, 4, 6")
                y_name = gr.Dropdown(label="Rows", choices=weight_choices(), value="w_neg")
                y_values = gr.Textbox(label="Row values", value="0, 3, 6")
            with gr.Row():
                seeds = gr.Number(label="Seeds per cell (the seed and the next ones)", value=1, precision=0,
                                  minimum=1, maximum=MAX_SEEDS, elem_id="sweep-seeds")  # fmt: skip
                difference = gr.Checkbox(label="Mark in red what the negative image changed (each image against "
                                         "the same weights at negative image weight 0)", value=False)  # fmt: skip
            sweep = gr.Button("Render sweep")
            grid = gr.Image(label="Sweep", type="filepath", interactive=False)
        with gr.Row():
            preset_name = gr.Textbox(label="Preset name", placeholder="my-settings")
            save = gr.Button("Save the current settings as a preset")
            replace = gr.Button("Replace it", variant="stop", visible=False, elem_id="replace-preset")
        saved = gr.Markdown(label="Preset status", elem_id="preset-status")

    def refresh(session):
        names = guidance.class_names(session)
        config = guidance.settings.generation(session)
        first = names[0] if names else None
        return (gr.update(choices=names, value=first), *class_choices(session, first), config.negatives,
                gr.update(choices=[SAMPLE, *names], value=SAMPLE), config.w_text, config.w_pos, config.w_neg,
                config.ip_adapter_scale, config.steps)  # fmt: skip

    def image_choices(session, name):
        return [(f"image {i + 1}", i) for i in range(len(guidance.image_paths(session, name)))]

    def class_choices(session, name):
        return gr.update(choices=image_choices(session, name), value=0), guidance.image_paths(session, name)

    def negative_choices(session, name):
        paths = guidance.image_paths(session, name)
        return gr.update(
            choices=[(SAMPLE, -1)] + [(f"image {i + 1}", i) for i in range(len(paths))], value=-1
        )

    def show_preview(session, chosen, edit):
        """(live, previous, seed, status) as the preview job goes, each image labelled with the
        weights that made it; a cancelled preview puts back what was shown before it, and a
        superseded one shows nothing (a newer one is coming). The weights tried become the
        session's, which Generate uses."""
        latest, before = guidance.shown(session)
        guidance.use(session, chosen)
        for event in follow(guidance.preview(session, chosen, edit=edit)):
            if event.superseded:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            elif event.kind == STEP:
                yield event.preview, path(latest), gr.skip(), event.message
            elif event.kind == DONE:
                yield event.result.path, path(latest), event.result.seed, done_line(chosen, event.result)
            elif event.kind == CANCELLED:
                yield path(latest), path(before), gr.skip(), f"{event.message} The previous result is kept."
            else:  # waiting for the model, loading it, cancelling
                yield gr.skip(), gr.skip(), gr.skip(), event.message

    def show_made(session):
        """What made the shown previews, after a preview ends: the images the latest used, named
        (also a negative the rule drew), and each pane labelled with its weights and seed."""
        latest, before = guidance.shown(session)
        used_images = [(u.path, used_caption(u)) for u in latest.used] if latest is not None else []
        return used_images, made_label("Preview", latest), made_label("Previous result", before)

    @readable_errors
    def on_preview(session, class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps,
                   seed, lock):  # fmt: skip
        chosen = settings(
            class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps, seed, lock
        )
        yield from show_preview(session, chosen, edit=False)

    @readable_errors
    def on_edit(session, *values):
        """A preview for an edit; it labels its panes itself (a chained event would hold back the
        next edit until it ran, and the newest edit could no longer supersede the waiting ones)."""
        for shown in show_preview(session, settings(*values), edit=True):
            yield *shown, gr.skip()
        used_images, live_label, previous_label = show_made(session)
        yield live_label, previous_label, gr.skip(), gr.skip(), used_images

    @readable_errors
    def on_sweep(session, class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps,
                 seed, lock, x_weight, x_values, y_weight, y_values, seeds, difference):  # fmt: skip
        chosen = settings(class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps,
                          seed, lock)  # fmt: skip
        guidance.use(session, chosen)
        per_cell = 1 if seeds is None else int(seeds)
        sweep = guidance.sweep(session, chosen, x_weight, parse_values(x_values), y_weight, parse_values(y_values),
                               per_cell, bool(difference))  # fmt: skip
        for event in follow(sweep):
            if event.kind == DONE:
                fixed = {n: v for n, v in event.result.weights.items() if n not in (x_weight, y_weight)}
                label = f"Sweep of {WORDS[x_weight]} and {WORDS[y_weight]}: {weights_caption(fixed)}"
                yield event.result.path, event.result.seed, f"Sweep done (seed {event.result.seed}). {label}."
            else:  # the grid stays as it was until a sweep finishes
                yield gr.skip(), gr.skip(), f"Sweep: {event.message[:1].lower()}{event.message[1:]}"

    def save_preset(session, name, chosen, overwrite):
        """(status, Replace button): saved, refused, or asking before replacing the user's preset."""
        try:
            existing = None if overwrite else guidance.settings.existing_preset(session, name)
            if existing is not None:
                question = f"A preset named **{existing}** exists: click **Replace it** to save over it, or type another name."
                return question, gr.update(visible=True)
            guidance.use(session, chosen)
            saved_name = guidance.settings.save_preset(session, name, overwrite=overwrite)
        except DipsyError as error:
            return refusal(error), gr.update(visible=False)
        return f"Saved as preset **{saved_name}** (choose it in the Data tab's preset list).", gr.update(
            visible=False
        )

    @readable_errors
    def on_save(session, name, class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale,
                steps, seed, lock):  # fmt: skip
        return save_preset(
            session,
            name,
            settings(
                class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps, seed, lock
            ),
            overwrite=False,
        )

    @readable_errors
    def on_replace(session, name, class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale,
                   steps, seed, lock):  # fmt: skip
        return save_preset(
            session,
            name,
            settings(
                class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps, seed, lock
            ),
            overwrite=True,
        )

    @readable_errors
    def on_negative(session, name, rule, negative_name):
        """The negative rule or class changed: it is Generate's too."""
        return f"Negatives: {guidance.set_negative(session, name, rule, negative_name)}."

    @readable_errors
    def on_negative_class(session, name, rule, negative_name):
        line = on_negative(session, name, rule, negative_name)
        return negative_choices(session, None if negative_name == SAMPLE else negative_name), line

    @readable_errors
    def on_open(session, file):
        """A generated image's class, images, seed and settings as the preview's controls (plain
        values: an API client passes them on to /preview as they are)."""
        chosen, config = guidance.open_image(session, file)
        return (chosen.class_name, chosen.positive_index, chosen.negative_class, chosen.negative_index,
                chosen.w_text, chosen.w_pos, chosen.w_neg, chosen.ip_adapter_scale, chosen.steps, chosen.seed, True,
                config.negatives, f"Opened {file} (seed {chosen.seed}): Preview redraws it.")  # fmt: skip

    def opened_choices(session, name, negative_name, positive_index, negative_index):
        """The dropdowns' choices for an opened image's classes, keeping the values it set."""
        names = guidance.class_names(session)
        negative_paths = guidance.image_paths(session, negative_name) if negative_name != SAMPLE else []
        return (gr.update(choices=names, value=name),
                gr.update(choices=image_choices(session, name), value=positive_index),
                guidance.image_paths(session, name), gr.update(choices=[SAMPLE, *names], value=negative_name),
                gr.update(choices=[(SAMPLE, -1)] + [(f"image {i + 1}", i) for i in range(len(negative_paths))],
                          value=negative_index))  # fmt: skip

    def on_example(evt: gr.SelectData):
        return gr.update(value=evt.index)  # clicking a thumbnail makes it the positive image

    outputs = [live, previous, seed, status]
    # A finished preview's panes are labelled afterwards, so /preview returns plain values.
    made = (show_made, [state], [used, live, previous])
    run.click(on_preview, [state, *controls], outputs, api_name="preview", **JOBS).then(
        *made, api_visibility="private"
    )
    # Every edit reaches the Studio at once ("multiple"), where the newest wins; a slider's number
    # box fires "release" when it loses focus, so an edit that changed nothing is dropped there.
    gr.on([slider.release for slider in sliders], on_edit, [state, *controls], [*outputs, used],
          api_visibility="private", trigger_mode="multiple", **JOBS)  # fmt: skip
    sweep.click(on_sweep, [state, *controls, x_name, x_values, y_name, y_values, seeds, difference],
                [grid, seed, status], api_name="sweep", **JOBS)  # fmt: skip
    stop.click(
        lambda s: cancel_reply(guidance.cancel(s)), [state], [status], api_name="cancel_preview", **FREE
    )
    save.click(on_save, [state, preset_name, *controls], [saved, replace], api_name="save_preset")
    replace.click(on_replace, [state, preset_name, *controls], [saved, replace], api_name="replace_preset")
    examples.select(on_example, None, [positive], api_visibility="private")
    class_name.input(class_choices, [state, class_name], [positive, examples], api_visibility="private")
    negatives = [state, class_name, negative_rule, negative_class]
    negative_rule.input(on_negative, negatives, [status], api_name="set_negative_rule")
    negative_class.input(on_negative_class, negatives, [negative, status], api_name="set_negative_class")
    opened = [*controls, negative_rule, status]  # /preview's inputs first
    choices = ([state, class_name, negative_class, positive, negative],
               [class_name, positive, examples, negative_class, negative])  # fmt: skip
    open_button.click(on_open, [state, opened_file], opened, api_name="open_in_guidance").then(
        opened_choices, *choices, api_visibility="private"
    )
    tab.select(refresh, [state], [class_name, positive, examples, negative_rule, negative_class, *sliders],
               api_visibility="private")  # fmt: skip
    # Another tab opens an image here: it fills the box, then runs this event (see app.py).
    return {
        "open_file": opened_file,
        "open": (on_open, [state, opened_file], opened),
        "choices": (opened_choices, *choices),
    }


def done_line(chosen: GuidanceSettings, result) -> str:
    """What a finished preview says: its seed and the negative image it was pushed away from
    (also when the rule drew it)."""
    if result.negative_class is None:
        negative = "no negative image"
    else:
        how = (
            "drawn by the rule" if chosen.negative_class == SAMPLE or chosen.negative_index < 0 else "chosen"
        )
        negative = f"negative: {result.negative_class} image {result.negative_index + 1} ({how})"
    return f"Done (seed {result.seed}; {negative})."


def path(result) -> str | None:
    return result.path if result is not None else None


def made_label(label: str, result):
    """An image pane's label naming the weights and seed that made its result (if any)."""
    if result is None:
        return gr.update(label=label)
    return gr.update(label=f"{label}: {weights_caption(result.weights)}, seed {result.seed}")


def weight_choices() -> list[tuple[str, str]]:
    """The weights a sweep may vary, named in words."""
    return [(WORDS[name].capitalize(), name) for name in WEIGHTS]


def settings(class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps, seed, lock):
    """The preview's controls, in the order of ``/preview``'s inputs, as GuidanceSettings (an
    unlocked seed: a new one for each preview)."""
    return GuidanceSettings(
        class_name or "", int(positive or 0), negative_class or SAMPLE, -1 if negative is None else int(negative),
        float(w_text), float(w_pos), float(w_neg), float(scale), int(steps), int(seed or 0) if lock else None,
    )  # fmt: skip
