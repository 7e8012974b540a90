"""Tab 1, Data: classes and their images, the validation report, the preset."""

import gradio as gr

from ..errors import UsageError
from .common import readable_errors


def create(data, state):
    with gr.Tab("1. Data", id="data") as tab:
        gr.Markdown(
            "Give a few images per class. Add a class by name and drop its images, upload a **.zip** of "
            "class folders (`<class>/<image>`), or load the demo digits."
        )
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
                add = gr.Button("Add class / add images", variant="primary")
                archive = gr.File(
                    elem_id="dataset-zip",
                    label="Or a .zip of class folders (replaces your data)",
                    file_count="single",
                )
                upload = gr.Button("Load the zip")
                demo = gr.Button("Load the demo digits")
                preset = gr.Dropdown(label="Preset", choices=data.preset_choices(), allow_custom_value=False)
                preset_info = gr.Markdown()
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
                report = gr.Textbox(
                    elem_id="data-report", label="Validation report", lines=6, interactive=False
                )

    def view(session, message=None):
        text = data.report(session) if message is None else message + "\n\n" + data.report(session)
        return (
            data.class_table(session), data.thumbnails(session), text, gr.update(choices=data.class_names(session), value=None),
            gr.update(choices=data.preset_choices(session), value=data.preset(session)),
        )  # fmt: skip

    outputs = [table, gallery, report, remove_name, preset]

    @readable_errors
    def on_add(session, name, paths):
        message = data.add_images(session, name, paths or [])
        return (*view(session, message), None, "")

    @readable_errors
    def on_upload(session, path):
        if not path:
            raise UsageError("choose a .zip file first")
        data.load_source(session, path)
        return view(session)

    @readable_errors
    def on_demo(session):
        data.load_demo(session)
        return view(session)

    @readable_errors
    def on_remove_class(session, name):
        if not name:
            raise UsageError("choose a class to remove")
        return view(session, data.remove_class(session, name))

    def on_select(session, evt: gr.SelectData):
        items = data.thumbnails(session)
        return items[evt.index][0] if evt.index is not None and evt.index < len(items) else ""

    @readable_errors
    def on_remove_image(session, path):
        if not path:
            raise UsageError("click an image first")
        return (*view(session, data.remove_image(session, path)), "")

    @readable_errors
    def on_preset(session, name):
        if not name:
            return ""
        return data.set_preset(session, name)

    add.click(on_add, [state, class_name, files], [*outputs, files, class_name], api_name="add_class")
    upload.click(on_upload, [state, archive], outputs, api_name="upload_dataset")
    demo.click(on_demo, [state], outputs, api_name="load_demo")
    remove_class.click(on_remove_class, [state, remove_name], outputs, api_name="remove_class")
    gallery.select(on_select, [state], [selected], api_visibility="private")
    remove_image.click(on_remove_image, [state, selected], [*outputs, selected], api_name="remove_image")
    preset.input(on_preset, [state, preset], [preset_info], api_name="set_preset")
    tab.select(lambda s: view(s), [state], outputs, api_visibility="private")
    return {"refresh": (lambda s: view(s), [state], outputs)}
