"""Tab 5, Curate: page through the generated images, reject/keep, rank, export the kept set."""

import gradio as gr

from ..errors import DipsyError, UsageError
from ..studio import DONE
from .common import JOBS, follow, readable_errors, refusal

PAGE_SIZE = 40


def create(runs, state):
    with gr.Tab("5. Curate", id="curate") as tab:
        pages_state = gr.State([])  # the files shown on the current page, in order (per session)
        gr.Markdown("Click an image to reject it (crossed out); click again to keep it. Rejected images are "
                    "never deleted and never used for training.")  # fmt: skip
        with gr.Row():
            run_pick = gr.Dropdown(
                label="Run (earlier runs of this session)", choices=[], elem_id="curate-run"
            )
            run_line = gr.Markdown(label="Run line", elem_id="curate-run-line")
        with gr.Row():
            class_name = gr.Dropdown(label="Class", choices=[], allow_custom_value=True, value=None)
            page = gr.Number(label="Page", value=1, precision=0, minimum=1)
            page_info = gr.Markdown(label="Page info")
            show = gr.Button("Show")
        gallery = gr.Gallery(
            elem_id="curate-gallery", label="Generated images", columns=10, height=420, allow_preview=False
        )
        status = gr.Markdown(label="Status", elem_id="curate-status")
        with gr.Row():
            rank = gr.Button("Rank (lowest score first)")
            threshold = gr.Slider(0, 1, value=0.2, step=0.01, label="Reject below")
            reject = gr.Button("Reject below threshold", variant="stop")
            restore = gr.Button("Restore all (keep every image again)")
        counts = gr.Dataframe(headers=["class", "kept", "rejected"], label="Counts", interactive=False)
        file_box = gr.Textbox(visible=False)  # the API's way to toggle one image by its manifest file
        with gr.Row():
            export = gr.Button("Export kept images (zip)")
            download = gr.File(label="Kept set", interactive=False)

    def page_view(session, name, number):
        if not runs.has_run(session):
            return [], [], "", [], gr.skip(), 1
        items, number, pages = runs.curate_page(session, name or None, number or 1, PAGE_SIZE)
        return ([(thumb, caption) for thumb, caption, _ in items], [file for _, _, file in items],
                f"page {number} of {pages}", runs.curate_counts(session), gr.skip(), number)  # fmt: skip

    outputs = [gallery, pages_state, page_info, counts, status, page]

    @readable_errors
    def on_show(session, name, number):
        return page_view(session, name, number)

    @readable_errors
    def on_select(session, files, name, number, evt: gr.SelectData):
        if evt.index is None or evt.index >= len(files):
            raise UsageError("that image is no longer on this page")
        message = runs.toggle(session, files[evt.index])
        view = page_view(session, name, number)
        return (*view[:4], message, view[5])

    @readable_errors
    def on_toggle(session, file, name, number):
        message = runs.toggle(session, file)
        view = page_view(session, name, number)
        return (*view[:4], message, view[5])

    @readable_errors
    def on_rank(session, name, number):
        for event in follow(runs.rank(session)):
            if event.kind == DONE:
                view = page_view(session, name, 1)
                yield (*view[:4], event.result, view[5])
            else:
                yield (*[gr.skip()] * 4, event.message, gr.skip())

    @readable_errors
    def on_reject(session, name, value, number):
        message = runs.reject_below(session, name or None, value)
        view = page_view(session, name, number)
        return (*view[:4], message, view[5])

    @readable_errors
    def on_restore(session, name, number):
        message = runs.restore_all(session, name or None)
        view = page_view(session, name, number)
        return (*view[:4], message, view[5])

    @readable_errors
    def on_export(session):
        return runs.export_kept(session)

    def on_open(session):
        names = [row[0] for row in runs.curate_counts(session)] if runs.has_run(session) else []
        return (gr.update(choices=runs.runs(session), value=runs.run_name(session)), runs.run_line(session),
                gr.update(choices=[("all classes", "")] + [(n, n) for n in names], value=""),
                *page_view(session, None, 1))  # fmt: skip

    @readable_errors
    def on_pick(session, name):
        try:
            runs.open_run(session, name)
        except DipsyError as error:
            return (gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * 4, refusal(error), gr.skip())
        return on_open(session)

    show.click(on_show, [state, class_name, page], outputs, api_name="curate_page")
    class_name.input(on_show, [state, class_name, page], outputs, api_visibility="private")
    gallery.select(on_select, [state, pages_state, class_name, page], outputs, api_visibility="private")
    file_box.submit(on_toggle, [state, file_box, class_name, page], outputs, api_name="curate_toggle")
    rank.click(on_rank, [state, class_name, page], outputs, api_name="curate_rank", **JOBS)
    reject.click(on_reject, [state, class_name, threshold, page], outputs, api_name="reject_below")
    export.click(on_export, [state], [download], api_name="export_kept")
    restore.click(on_restore, [state, class_name, page], outputs, api_name="restore_all")
    run_pick.input(
        on_pick, [state, run_pick], [run_pick, run_line, class_name, *outputs], api_name="open_run"
    )
    tab.select(on_open, [state], [run_pick, run_line, class_name, *outputs], api_visibility="private")
