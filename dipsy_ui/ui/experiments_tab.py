"""Tab 7, Experiments: arms (built-in and the Guidance settings) compared over shots and seeds,
run and resumed as one job, with a state per cell, the results table, the plot and the verdict."""

import gradio as gr

from ..studio import DONE
from ..studio.experiments import (
    BUILT_IN,
    DEFAULT_ARMS,
    DEFAULT_HELD_OUT,
    DEFAULT_SEEDS,
    DEFAULT_SHOTS,
    HELD_OUT,
    ExperimentSettings,
    parse_numbers,
    parse_optional,
)
from .common import FREE, JOBS, cancel_reply, follow, progress_html, readable_errors

CELL_HEADERS = ["arm", "shots", "seed", "state"]


def create(experiments, state):
    with gr.Tab("7. Experiments", id="experiments") as tab:
        gr.Markdown(
            "Does synthetic data help on your data, and which guidance helps most? Each arm is a way of "
            "making the training set; every (arm, shots, seed) cell draws a few-shot subset of your images, "
            "generates with the arm's settings and trains a classifier. Run the same experiment again to "
            "continue it: finished cells are kept."
        )
        arms = gr.Dataframe(
            headers=["arm", "what it does"], label="Arms", interactive=False, elem_id="experiment-arms"
        )
        with gr.Row():
            built_in = gr.Dropdown(list(BUILT_IN), value=BUILT_IN[0], label="Built-in arm")
            add_built_in = gr.Button("Add the built-in arm")
            arm_name = gr.Textbox(
                label="Name of the Guidance arm (blank: named by its settings)", elem_id="arm-name"
            )
            add_guidance = gr.Button("Add the Guidance settings as an arm", variant="secondary")
        with gr.Row():
            remove_choice = gr.Dropdown(
                list(DEFAULT_ARMS), label="Arm to remove", elem_id="remove-arm", allow_custom_value=True
            )
            remove = gr.Button("Remove the arm")
        with gr.Row():
            name = gr.Textbox(
                value=ExperimentSettings.name, label="Experiment name", elem_id="experiment-name"
            )
            shots = gr.Textbox(value=DEFAULT_SHOTS, label="Shots per class", elem_id="experiment-shots")
            seeds = gr.Textbox(value=DEFAULT_SEEDS, label="Seeds", elem_id="experiment-seeds")
            per_class = gr.Textbox(label="Synthetic images per class", elem_id="experiment-per-class")
            epochs = gr.Textbox(label="Epochs", elem_id="experiment-epochs")
        with gr.Row():
            choices = experiments.test_choices()
            test = gr.Radio(choices, value=choices[0], label="Test set", elem_id="experiment-test")
            held_out = gr.Number(
                value=DEFAULT_HELD_OUT, precision=0, minimum=1, label="Test images held out per class"
            )
        with gr.Row():
            run = gr.Button("Run", variant="primary", elem_id="experiment-run")
            cancel = gr.Button("Cancel", variant="stop", elem_id="experiment-cancel")
        status = gr.Markdown(label="Status", elem_id="experiment-status")
        bar = gr.HTML(label="Progress", elem_id="experiment-progress")
        cells = gr.Dataframe(
            headers=CELL_HEADERS, label="Cells", interactive=False, elem_id="experiment-cells"
        )
        table = gr.Dataframe(
            label="Results (mean over seeds)", interactive=False, elem_id="experiment-results"
        )
        with gr.Row():
            plot = gr.Image(label="Accuracy", type="filepath", interactive=False, elem_id="experiment-plot")
            verdict = gr.Markdown(label="Verdict", elem_id="experiment-verdict")
        summary = gr.JSON(label="Summary", visible=False)  # the results as data, for API clients

    def arm_list(session, message=""):
        names = experiments.arm_names(session)
        return experiments.arms_table(session), gr.update(choices=names, value=None), message

    @readable_errors
    def on_add_built_in(session, arm):
        return arm_list(session, experiments.add_built_in(session, arm))

    @readable_errors
    def on_add_guidance(session, arm):
        return arm_list(session, experiments.add_guidance(session, arm))

    @readable_errors
    def on_remove(session, arm):
        return arm_list(session, experiments.remove(session, arm))

    def placeholders(session):
        """The blank boxes show the preset's values they stand for."""
        generation, train = experiments.preset_values(session)
        return (
            *arm_list(session, gr.skip()),
            gr.update(placeholder=f"{generation} (preset)"),
            gr.update(placeholder=f"{train} (preset)"),
        )

    def view(update):
        """(cells, table, plot, verdict, summary) of an :class:`ExperimentUpdate`."""
        results = update.results
        if results is None:
            return update.cells, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        frame = {"headers": results.headers, "data": results.rows}
        note = f"\n\n{results.finished} of {results.planned} cells finished."
        return update.cells, frame, results.plot, results.verdict + note, results.to_dict()

    @readable_errors
    def on_run(session, name, shots, seeds, images_per_class, epochs, test, held_out):  # named for the API
        settings = ExperimentSettings(
            name=name,
            shots=parse_numbers(shots, "Shots per class", 1),
            seeds=parse_numbers(seeds, "Seeds", 0),
            images_per_class=parse_optional(images_per_class, "Synthetic images per class"),
            epochs=parse_optional(epochs, "Epochs"),
            test=test or HELD_OUT,
            held_out_per_class=int(held_out or DEFAULT_HELD_OUT),
        )
        yield "Starting...", progress_html(0, 1, "Starting..."), *[gr.skip()] * 5
        for event in follow(experiments.run(session, settings)):
            update = event.detail if event.detail is not None else event.result
            bar = progress_html(event.done, event.total, f"{event.done} / {event.total} cells")
            message = event.message
            if event.kind == DONE:
                message = f"Done: {event.done} / {event.total} cells finished."
            if update is None:
                yield message, bar, *[gr.skip()] * 5
            else:
                yield message, bar, *view(update)

    outputs = [arms, remove_choice, status]
    add_built_in.click(on_add_built_in, [state, built_in], outputs, api_name="experiment_add_arm")
    add_guidance.click(on_add_guidance, [state, arm_name], outputs, api_name="experiment_add_guidance")
    remove.click(on_remove, [state, remove_choice], outputs, api_name="experiment_remove_arm")
    run.click(
        on_run,
        [state, name, shots, seeds, per_class, epochs, test, held_out],
        [status, bar, cells, table, plot, verdict, summary],
        api_name="experiment_run",
        **JOBS,
    )
    cancel.click(
        lambda s: cancel_reply(experiments.cancel(s)), [state], [status], api_name="cancel_experiment", **FREE
    )
    tab.select(
        placeholders, [state], [arms, remove_choice, status, per_class, epochs], api_visibility="private"
    )
