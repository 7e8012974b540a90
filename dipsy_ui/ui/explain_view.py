"""The Guidance tab's Explain view: what each weight of Eq. 9 does to the previewed image, in
plain words (the three rungs, the changes marked, the four branches at a chosen step, each
term's pull per step). Widgets and wiring only: the Studio draws and marks the images."""

import gradio as gr
import pandas as pd

from ..studio import CANCELLED, DONE, STEP
from ..studio.guidance import used_caption, weights_caption
from .common import JOBS, follow, readable_errors

RUNG_LABELS = {  # dipsy_ui.explain.RUNGS, as a person reads them
    "text-only": "1. The prompt only",
    "with-positive": "2. + the positive image",
    "dipsy": "3. + the negative image (DIPSY)",
}
MARK_LABELS = {  # dipsy_ui.explain.DIFFERENCES
    "positive-added": "What the positive image added (red)",
    "negative-changed": "What the negative image removed (red)",
}
BRANCH_LABELS = {  # the four branches of Eq. 9
    "u": "No prompt, no images",
    "t": "The prompt",
    "tp": "The prompt + the positive image",
    "tpn": "The prompt + both images",
}
TERM_LABELS = {
    "text": "text weight",
    "positive": "positive image weight",
    "negative": "negative image weight",
}
SHORT = {"w_text": "text", "w_pos": "positive", "w_neg": "negative"}  # the weights in a pane's label

HELP = """
**Explain** draws the preview's seed three times, each adding one weight: the prompt alone, then the pull
towards the positive image, then the push away from the negative image (the third is the preview's image).
"""
MARKS_HELP = """
Red marks where a weight changed the picture; grey is unchanged. Left: what pulling towards the positive
image changed. Right: what pushing away from the negative image removed or changed.
"""
PLOT_HELP = """
How hard each weight pulls at each step (how much it changes the model's guess of the noise). A line near
zero does little at that step; the largest line steers the picture most.
"""
BRANCHES_HELP = """
What the model would finish drawing from this step if asked with: no prompt and no images; the prompt;
the prompt and the positive image; the prompt and both images. Move the slider: once the four agree, the
picture's layout is decided and the weights only change details.
"""


def create(guidance, state, controls, seed, settings):
    """The view's widgets (inside the Guidance tab, below the live preview) and its events;
    ``controls`` are ``/preview``'s inputs, ``settings`` makes them a ``GuidanceSettings``, and
    ``seed`` is the seed box (a drawn seed is shown there)."""
    with gr.Accordion("Explain: what each weight does to this image", open=False, elem_id="explain-view"):
        with gr.Row():
            gr.Markdown(HELP)
            run = gr.Button("Explain", variant="primary", scale=0, elem_id="explain")
        status = gr.Markdown(label="Explain status", elem_id="explain-status")
        with gr.Row():
            rungs = {name: picture(label, f"rung-{name}") for name, label in RUNG_LABELS.items()}
            used = gr.Gallery(label="Images used", columns=2, height=240, allow_preview=False,
                              elem_id="explain-used", elem_classes=["dipsy-pixels"])  # fmt: skip
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row():
                    marked = {name: picture(label, f"mark-{name}") for name, label in MARK_LABELS.items()}
                gr.Markdown(MARKS_HELP)
            with gr.Column(scale=1):
                plot = gr.LinePlot(x="step", y="strength", color="term", title="Each weight's pull per step",
                                   height=240, label="Each weight's pull per step", elem_id="terms-plot",
                                   show_label=False)  # fmt: skip
                gr.Markdown(PLOT_HELP)
        step = gr.Slider(1, 2, value=1, step=1, label="Step of the branches", elem_id="branch-step")
        with gr.Row():
            branches = {name: picture(label, f"branch-{name}") for name, label in BRANCH_LABELS.items()}
        gr.Markdown(BRANCHES_HELP)
        explained = gr.State(None)  # the last Explained shown: the slider picks its branches

    @readable_errors
    def on_explain(session, class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps,
                   seed, lock):  # fmt: skip
        chosen = settings(class_name, positive, negative_class, negative, w_text, w_pos, w_neg, scale, steps,
                          seed, lock)  # fmt: skip
        guidance.use(session, chosen)
        keep = [gr.skip()] * (len(outputs) - 1)
        for event in follow(guidance.explain(session, chosen)):
            if event.superseded:
                yield *keep, gr.skip()
            elif event.kind == DONE:
                yield shown(event.result)
            elif event.kind == CANCELLED:
                yield (
                    *keep,
                    f"Explain: {event.message[:1].lower()}{event.message[1:]} The previous explanation is kept.",
                )
            else:  # steps, waiting for the model, loading it, cancelling
                yield *keep, f"Explain: {event.message}" if event.kind == STEP else event.message

    def shown(result) -> list:
        """The API's outputs for a finished explanation: plain values (:func:`labels` follows)."""
        middle = nearest(result, result.settings["steps"] / 2)
        return [
            *(result.rungs[name] for name in RUNG_LABELS),
            [(u.path, used_caption(u)) for u in result.used],
            *(result.marked[name] for name in MARK_LABELS),
            terms_frame(result.terms),
            *(result.branches[middle].get(name) for name in BRANCH_LABELS),
            result,
            result.seed,
            f"Explained (seed {result.seed}; {weights_caption(result.settings)}; "
            + "; ".join(used_caption(u) for u in result.used)
            + ").",
        ]

    def labels(result) -> list:
        """After an explanation: each pane labelled with the weights that made it, the slider over
        the steps whose branches were drawn, at the step the branch panes show."""
        if result is None:
            return [gr.skip()] * (len(RUNG_LABELS) + len(MARK_LABELS) + 1 + len(BRANCH_LABELS))
        drawn = sorted(result.branches)
        middle = nearest(result, result.settings["steps"] / 2)
        return [
            *(gr.update(label=f"{label} · {short(result.weights[name])}") for name, label in RUNG_LABELS.items()),
            *(gr.update(label=f"{label} · {short({weight: result.weights['dipsy'][weight]})}")
              for (_, label), weight in zip(MARK_LABELS.items(), ("w_pos", "w_neg"), strict=True)),
            gr.update(minimum=drawn[0], maximum=drawn[-1], value=middle,
                      step=drawn[1] - drawn[0] if len(drawn) > 1 else 1,
                      label=f"Step of the branches ({len(result.terms)} steps in all)"),
            *branch_images(result, middle),
        ]  # fmt: skip

    def on_step(result, value):
        """The branches at the decoded step nearest the slider's value."""
        if result is None:
            return [gr.skip()] * len(branches)
        return branch_images(result, nearest(result, value))

    outputs = [*rungs.values(), used, *marked.values(), plot, *branches.values(), explained, seed, status]
    relabelled = [*rungs.values(), *marked.values(), step, *branches.values()]
    # The panes are labelled after the job, so /explain returns plain values.
    run.click(on_explain, [state, *controls], outputs, api_name="explain", **JOBS).then(
        labels, [explained], relabelled, api_visibility="private"
    )
    step.release(on_step, [explained, step], list(branches.values()), api_visibility="private")


def short(weights: dict) -> str:
    """Weights in a pane's label: "text 7.5, positive 6"."""
    return ", ".join(f"{SHORT[name]} {value:g}" for name, value in weights.items())


def picture(label: str, elem_id: str) -> gr.Image:
    # PNG keeps a small image's pixels; the class enlarges it sharply (see app.py's CSS).
    return gr.Image(label=label, type="filepath", interactive=False, height=200, format="png", elem_id=elem_id,
                    elem_classes=["dipsy-pixels"])  # fmt: skip


def nearest(result, value: float) -> int:
    """The step nearest ``value`` whose branches were decoded."""
    return min(result.branches, key=lambda step: abs(step - value))


def branch_images(result, step: int) -> list:
    """The four branch panels at ``step``; a branch no weight uses was not computed and says so."""
    row = result.branches[step]
    return [
        gr.Image(
            row.get(name), label=f"Step {step}: {label}" if name in row else f"{label} (not used: weight 0)"
        )
        for name, label in BRANCH_LABELS.items()
    ]


def terms_frame(terms: list[dict]) -> pd.DataFrame:
    """One row per step and term, for the plot: ``step``, ``term`` (in words) and ``strength``."""
    rows = [(term["step"], TERM_LABELS[name], term[name]) for term in terms for name in TERM_LABELS]
    return pd.DataFrame(rows, columns=["step", "term", "strength"])
