"""The app: header (demo notice, model status) and the seven tabs, each given its Studio service."""

import gradio as gr

from ..studio import Session
from . import access as file_access
from . import curate_tab, data_tab, experiments_tab, generate_tab, guidance_tab, similarity_tab, train_tab
from .common import JOBS, progress_callback, readable_errors

# Previews fill their box (a 32x32 demo image would otherwise show as a speck), pixels kept sharp.
CSS = (
    ".dipsy-demo {background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:6px}\n"
    "#preview img, #previous img, .dipsy-pixels img {width:100%;height:100%;object-fit:contain;"
    "image-rendering:pixelated}\n"
    # Gradio's gallery grid gives every column at least 100 px, so a gallery narrower than its
    # columns overflows and clips the last one: thumbnails wrap into as many columns as fit instead.
    ".grid-container {grid-template-columns:repeat(auto-fill, minmax(80px, 1fr)) !important}"
)


def build_app(studio, access: file_access.Access | None = None) -> gr.Blocks:
    """The app over a :class:`~dipsy_ui.studio.Studio`: each tab gets its service only.
    ``access`` (the file gate's state) learns which session each browser holds, for its upload
    quota."""
    core = studio.core
    with gr.Blocks(title="DIPSY Studio") as app:
        # One copy per browser session (see Session.__deepcopy__). No time_to_live: long jobs
        # mutate the session in place, which would not renew it.
        state = gr.State(Session(), delete_callback=core.end_session)
        # The browser keeps its session's id (never a path) across refreshes and restarts, one per
        # signed-in user ({user: id}, "" without sign-in); the page reopens that session's folder
        # when it loads.
        browser = gr.BrowserState({}, storage_key="dipsy-session")
        gr.Markdown("# DIPSY Studio\nSynthetic training images for few-shot classification "
                    "([DIPSY, arXiv 2509.22635](https://arxiv.org/abs/2509.22635)).")  # fmt: skip
        if core.demo:
            gr.Markdown(f"**Demo mode**: {core.demo_text}. Everything works offline; the method and the "
                        "controls are those used with the real models.", elem_classes=["dipsy-demo"])  # fmt: skip
        with gr.Row():
            model_status = gr.Markdown(core.model_status(), label="Model status")
            load = gr.Button("Load models", scale=0)
        with gr.Tabs() as tabs:
            data_view = data_tab.create(studio.data, studio.settings, state)
            similarity_tab.create(studio.similarity, state)
            guidance_view = guidance_tab.create(studio.guidance, state)
            generate_view = generate_tab.create(studio.generation, state)
            curate_tab.create(studio.curation, state)
            train_tab.create(studio.training, state)
            experiments_tab.create(studio.experiments, state)

        # "Open in Guidance" from the Generate tab: the picked image into the Guidance tab's box,
        # its settings into the controls, then the Guidance tab shown.
        generate_view["open"].click(lambda file: file, [generate_view["picked"]], [guidance_view["open_file"]],
                                    api_visibility="private").then(
            *guidance_view["open"], api_visibility="private").success(
            *guidance_view["choices"], api_visibility="private").success(
            lambda: gr.Tabs(selected="guidance"), None, [tabs], api_visibility="private")  # fmt: skip

        @readable_errors
        def on_load(progress=gr.Progress()):  # noqa: B008
            core.load_models(progress_callback(progress))
            return core.model_status()

        load.click(on_load, None, [model_status], api_name="load_models", **JOBS)
        app.load(core.model_status, None, [model_status], api_name="model_status")
        # Any job may load the models (Similarity, a preview, Generate...): the line follows them.
        # (Named apart, so that the public endpoint keeps the name "model_status".)
        tabs.select(core.model_status, None, [model_status], api_name="model_status_on_tab",
                    api_visibility="private")  # fmt: skip
        gr.Timer(3).tick(core.model_status, None, [model_status], api_name="model_status_on_timer",
                         api_visibility="private", show_progress="hidden", queue=False)  # fmt: skip

        def on_open(kept, session: Session, request: gr.Request):
            # An id kept before sign-in existed is a plain string: the session without sign-in.
            ids = dict(kept) if isinstance(kept, dict) else {"": kept}
            user = request.username
            # A signed-in user reopens only their own sessions: an id another user left in this
            # browser (or forged) opens a new session instead.
            wanted = ids.get(user or "", "")
            wanted = wanted if core.admits(wanted, user) else ""
            # An event that ran before this one (the Data tab's first select, a first click) may
            # have given the page a new session already: kept when no earlier session is wanted,
            # else it gives way (its folder goes, unless something was made in it). The opened
            # session fills the page's State object in place: every event of this page holds that
            # very object (Gradio keeps one State value per page), so none goes on working in a
            # session the page left.
            if not session.id or (wanted and wanted != session.id):
                opened = studio.open_session(wanted)
                if session.id:
                    core.end_session(Session(id=session.id, root=session.root))
                vars(session).update(vars(opened))
            core.claim(session, user)
            if access is not None:
                access.bind(request.cookies.get(file_access.COOKIE), session.id)
            return session, {**ids, user or "": session.id}

        app.load(on_open, [browser, state], [state, browser], api_visibility="private").then(
            *data_view["refresh"], api_visibility="private"
        ).then(*generate_view["follow"], api_visibility="private", **JOBS)
    return app
