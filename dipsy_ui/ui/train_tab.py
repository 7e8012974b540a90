"""Tab 6, Train: LoRA classifier on real (+ kept synthetic) images, live curves, evaluation."""

import gradio as gr
import pandas as pd

from ..errors import UsageError
from ..studio import CANCELLED, DONE, PROGRESS
from .common import FREE, JOBS, cancel_reply, follow, readable_errors

# The settings a user may type (TrainConfig's field: label, type); blank keeps the preset's.
FIELDS = {
    "epochs": ("Epochs", int),
    "lambda_real": ("Lambda (weight of the real images' loss, 0..1)", float),
    "lora_rank": ("LoRA rank (alpha = 2 x rank)", int),
    "lr": ("Learning rate", float),
}


class Curves:
    """The live loss and accuracy curves of one or more training runs (one colour per run)."""

    def __init__(self):
        self.losses, self.accuracy = [], []

    def add(self, step) -> None:
        """Add a :class:`~dipsy_ui.studio.training.TrainingStep` (a job's progress detail)."""
        event, run = step.event, step.label
        if event.phase == "step":
            self.losses.append({"step": event.step, "loss": event.loss, "run": run})
            self.accuracy.append({"step": event.step, "accuracy": event.accuracy, "set": f"{run} (running)"})
        elif event.phase == "epoch" and event.test_top1 is not None:
            self.accuracy.append({"step": event.step, "accuracy": event.test_top1, "set": f"{run} test"})

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        # Typed columns even when empty: an untyped (object) empty frame makes the plot treat
        # step and value as categories, and it keeps that axis type for every later update.
        types = {"step": "int64", "loss": "float64", "accuracy": "float64", "run": "object", "set": "object"}
        losses = pd.DataFrame(self.losses, columns=["step", "loss", "run"])
        accuracy = pd.DataFrame(self.accuracy, columns=["step", "accuracy", "set"])
        return (losses.astype({c: types[c] for c in losses.columns}),
                accuracy.astype({c: types[c] for c in accuracy.columns}))  # fmt: skip


def create(training, state):
    with gr.Tab("6. Train", id="train") as tab:
        gr.Markdown("Fine-tune CLIP with LoRA on your real images plus the kept synthetic images of the current "
                    "run, and see whether the synthetic images help.")  # fmt: skip
        gr.Markdown("Leave a setting blank to use the active preset's value (see the status line after "
                    "training for the settings used).")  # fmt: skip
        with gr.Row():
            # Text boxes, blank by default: only what the user types overrides the preset (a number
            # box always holds a number, and its 0 would silently replace the preset's value).
            boxes = {
                key: gr.Textbox(label=label, elem_id=key.replace("_", "-"))
                for key, (label, _) in FIELDS.items()
            }
        with gr.Row():
            test = gr.File(
                elem_id="test-zip", label="Test set (.zip of class folders, optional)", file_types=[".zip"]
            )
            demo_test = gr.Checkbox(label="Use the demo test set", value=training.demo)
        with gr.Row():
            start = gr.Button("Train", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
            compare = gr.Button("Compare real-only vs real+synthetic")
        status = gr.Markdown(elem_id="train-status")
        with gr.Row():
            loss_plot = gr.LinePlot(
                x="step", y="loss", color="run", title="Training loss", height=260, elem_id="loss-plot"
            )
            accuracy_plot = gr.LinePlot(
                x="step", y="accuracy", color="set", title="Accuracy", height=260, y_lim=[0, 1]
            )
        with gr.Row():
            per_class = gr.Dataframe(
                headers=["class", "test accuracy"], label="Per-class accuracy", interactive=False
            )
            confusion = gr.Image(label="Confusion matrix", type="filepath", interactive=False)
        comparison = gr.Textbox(label="Comparison", lines=8, interactive=False)
        with gr.Row():
            download_button = gr.Button("Download the adapter")
            download = gr.File(label="Adapter", interactive=False)
        metrics = gr.JSON(visible=False)  # the run's numbers, for API clients

    def config(*typed) -> dict:
        """The settings the user typed; blank fields keep the preset's values."""
        changes = {}
        for (key, (label, kind)), text in zip(FIELDS.items(), typed, strict=True):
            text = "" if text is None else str(text).strip()
            if text:
                try:
                    changes[key] = kind(text)
                except ValueError:
                    what = "a whole number" if kind is int else "a number"
                    raise UsageError(
                        f"{label} must be {what} (or blank for the preset's), got {text!r}"
                    ) from None
        if "lora_rank" in changes:
            changes["lora_alpha"] = 2 * changes["lora_rank"]  # the recipe's alpha / rank = 2
        return changes

    def placeholders(session):
        """Each blank box shows the preset's value it stands for."""
        used = training.settings(session)
        return [gr.update(placeholder=f"{getattr(used, key):g} (preset)") for key in FIELDS]

    def outcome(session, result, word) -> tuple:
        """(status, per-class rows, confusion image, metrics) of a finished or cancelled run."""
        epochs = result.metrics["epochs"]
        test = epochs[-1]["test"] if epochs else None
        rows = (
            [[name, "-" if v is None else f"{100 * v:.1f}%"] for name, v in test["per_class"].items()]
            if test
            else []
        )
        confusion = result.out_dir / "confusion.png"
        image = str(confusion) if test and confusion.is_file() else None
        summary = {"cancelled": result.cancelled, "test_top1": result.test_top1,
                   "zero_shot_top1": result.zero_shot_top1, "epochs": len(epochs), "out_dir": str(result.out_dir),
                   "per_class": test["per_class"] if test else None, "confusion": test["confusion"] if test else None}  # fmt: skip
        top1 = f", test top-1 {100 * result.test_top1:.1f}%" if result.test_top1 is not None else ""
        used = training.settings(session)
        settings = (
            f"epochs {used.epochs}, lr {used.lr:g}, lambda {used.lambda_real:g}, LoRA rank {used.lora_rank}"
        )
        return f"{word}: {len(epochs)} epoch(s){top1}. Settings: {settings}.", rows, image, summary

    @readable_errors
    def on_train(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):  # named for the API
        curves = Curves()
        # The plots get their first data with the first step: an empty first frame leaves the
        # line plot without series (no line is ever drawn) in Gradio 6.
        yield "Starting...", gr.skip(), gr.skip(), [], None, {}
        for event in follow(
            training.train(session, config(epochs, lambda_real, lora_rank, lr), test_file, use_demo)
        ):
            if event.kind == PROGRESS and event.detail is not None:
                curves.add(event.detail)
                yield event.message, *curves.frames(), gr.skip(), gr.skip(), gr.skip()
            elif event.result is not None:  # done, or cancelled after training began
                status, rows, image, summary = outcome(
                    session, event.result, "Done" if event.kind == DONE else "Cancelled"
                )
                yield status, gr.skip(), gr.skip(), rows, image, summary
            else:
                yield event.message, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    @readable_errors
    def on_compare(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):  # named for the API
        curves = Curves()
        yield "Comparing: training real-only first...", gr.skip(), gr.skip(), "", {}
        for event in follow(
            training.compare(session, config(epochs, lambda_real, lora_rank, lr), test_file, use_demo)
        ):
            if event.kind == PROGRESS and event.detail is not None:
                curves.add(event.detail)
                yield event.message, *curves.frames(), gr.skip(), gr.skip()
            elif event.result is not None:
                word = "Comparison done" if event.kind == DONE else "Comparison cancelled"
                summary = {k: v for k, v in event.result.items() if k != "table"}
                yield f"{word}.", gr.skip(), gr.skip(), event.result["table"], summary
            else:
                prefix = "Comparison: " if event.kind == CANCELLED else ""
                yield prefix + event.message, gr.skip(), gr.skip(), gr.skip(), gr.skip()

    @readable_errors
    def on_download(session):
        return training.adapter_zip(session)

    inputs = [state, *boxes.values(), test, demo_test]
    start.click(on_train, inputs, [status, loss_plot, accuracy_plot, per_class, confusion, metrics],
                api_name="train", **JOBS)  # fmt: skip
    compare.click(on_compare, inputs, [status, loss_plot, accuracy_plot, comparison, metrics],
                  api_name="compare", **JOBS)  # fmt: skip
    cancel.click(
        lambda s: cancel_reply(training.cancel(s)), [state], [status], api_name="cancel_training", **FREE
    )
    download_button.click(on_download, [state], [download], api_name="download_adapter")
    tab.select(placeholders, [state], list(boxes.values()), api_visibility="private")
