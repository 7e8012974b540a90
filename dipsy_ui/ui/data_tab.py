"""Tab 1, Data: classes and their images, the validation report, the preset."""

import html

import gradio as gr

from ..errors import DipsyError, UsageError
from .common import readable_errors, refusal


def create(data, settings, state):
    with gr.Tab("1. Data", id="data") as tab:
        with gr.Row():
            gr.Markdown(
                "Give a few images per class. Add a class by name and drop its images, upload a **.zip** of "
                f"class folders (`<class>/<image>`), or start with the demo {data.demo_name()}."
            )
            # The first thing a demo's visitor clicks: at the top, the page's one primary button.
            demo = gr.Button(f"Load the demo {data.demo_name()}", variant="primary" if data.core.demo else "secondary",
                             elem_id="load-demo", scale=0, min_width=240)  # fmt: skip
        with gr.Row():
            with gr.Column(scale=1):
                class_name = gr.Textbox(
                    elem_id="class-name", label="Class name", placeholder="e.g. Bombay cat"
                )
                files = gr.File(
                    elem_id="class-files",
                    label="Images of this class",
                    file_count="multiple",
                    file_types=None,
                )
                add = gr.Button("Add class / add images")
                archive = gr.File(
                    elem_id="dataset-zip",
                    label="Or a .zip of class folders (replaces your data)",
                    file_count="single",
                )
                upload = gr.Button("Load the zip")
                # Custom values reach the service, which takes a preset name only (a built-in or the user's own).
                preset = gr.Dropdown(
                    label="Preset", choices=settings.preset_choices(), allow_custom_value=True
                )
                preset_info = gr.Markdown(label="Preset description")
            with gr.Column(scale=2):
                table = gr.Dataframe(
                    elem_id="data-table", headers=["class", "images"], label="Classes", interactive=False
                )
                gallery = gr.Gallery(label="Images (click one to select it)", columns=8, height=320,
                                     allow_preview=False)  # fmt: skip
                with gr.Row():
                    selected = gr.Textbox(label="Selected image", interactive=False)
                    remove_image = gr.Button("Remove selected image")
                with gr.Row():
                    remove_name = gr.Dropdown(label="Class", choices=[], allow_custom_value=True)
                    remove_class = gr.Button("Remove class", variant="stop")
                with gr.Row(visible=False) as confirm_row:  # removing a class asks first
                    confirm_text = gr.Markdown(label="Question")
                    confirm = gr.Button("Yes, remove it", variant="stop", elem_id="confirm-remove")
                    keep = gr.Button("Keep it")
                report = gr.Textbox(
                    elem_id="data-report", label="Validation report", lines=6, interactive=False
                )

    def view(session, message=None):
        text = data.report(session) if message is None else message + "\n\n" + data.report(session)
        return (
            data.class_table(session), data.thumbnails(session), text, gr.update(choices=data.class_names(session), value=None),
            gr.update(choices=settings.preset_choices(session), value=settings.preset(session)),
        )  # fmt: skip

    outputs = [table, gallery, report, remove_name, preset]

    def refused(session, error) -> tuple:
        """A refused action: the reason in the report (the tab's status), every input as it was."""
        text = refusal(error) + "\n\n" + data.report(session)
        return data.class_table(session), data.thumbnails(session), text, gr.skip(), gr.skip()

    @readable_errors
    def on_add(session, name, paths):
        # The upload box is emptied either way: its files were consumed or refused.
        try:
            message = data.add_images(session, name, paths or [])
        except DipsyError as error:
            return (*refused(session, error), None, name)
        return (*view(session, message), None, "")

    @readable_errors
    def on_upload(session, path):
        try:
            if not path:
                raise UsageError("choose a .zip file first")
            data.load_source(session, path)
        except DipsyError as error:
            return (*refused(session, error), None)
        return (*view(session), None)

    @readable_errors
    def on_demo(session):
        data.load_demo(session)
        return view(session)

    def on_ask_remove(session, name):
        if not name or name not in data.class_names(session):
            return gr.update(visible=False), "", "Choose a class to remove first.\n\n" + data.report(session)
        count = len(data.image_paths(session, name))
        question = f"Remove class **{html_text(name)}** and its {count} image(s)?"
        return gr.update(visible=True), question, gr.skip()

    @readable_errors
    def on_remove_class(session, name):
        try:
            if not name:
                raise UsageError("choose a class to remove")
            message = data.remove_class(session, name)
        except DipsyError as error:
            return (*refused(session, error), gr.update(visible=False))
        return (*view(session, message), gr.update(visible=False))

    def on_select(session, evt: gr.SelectData):
        items = data.thumbnails(session)
        return items[evt.index][0] if evt.index is not None and evt.index < len(items) else ""

    @readable_errors
    def on_remove_image(session, path):
        try:
            if not path:
                raise UsageError("click an image first")
            message = data.remove_image(session, path)
        except DipsyError as error:
            return (*refused(session, error), gr.skip())
        return (*view(session, message), "")

    @readable_errors
    def on_preset(session, name):
        if not name:
            return ""
        try:
            return settings.set_preset(session, name)
        except DipsyError as error:
            return refusal(error)

    add.click(on_add, [state, class_name, files], [*outputs, files, class_name], api_name="add_class")
    upload.click(on_upload, [state, archive], [*outputs, archive], api_name="upload_dataset")
    demo.click(on_demo, [state], outputs, api_name="load_demo")
    remove_class.click(on_ask_remove, [state, remove_name], [confirm_row, confirm_text, report],
                       api_visibility="private")  # fmt: skip
    confirm.click(on_remove_class, [state, remove_name], [*outputs, confirm_row], api_name="remove_class")
    keep.click(lambda: gr.update(visible=False), None, [confirm_row], api_visibility="private")
    gallery.select(on_select, [state], [selected], api_visibility="private")
    remove_image.click(on_remove_image, [state, selected], [*outputs, selected], api_name="remove_image")
    preset.input(on_preset, [state, preset], [preset_info], api_name="set_preset")
    tab.select(lambda s: view(s), [state], outputs, api_visibility="private")
    return {"refresh": (lambda s: view(s), [state], outputs)}


def html_text(text: str) -> str:
    """User text inside Markdown, shown as typed (never as HTML or Markdown)."""
    return html.escape(text).replace("*", "&#42;").replace("_", "&#95;")
