"""Tab 6, Train: LoRA classifier on real (+ kept synthetic) images, live curves, evaluation."""

import gradio as gr
import pandas as pd

from .common import FREE, GPU, eta_text, progress_callback, readable_errors

RUNS = {"real_only": "real only", "real_synthetic": "real+synthetic"}


class Curves:
    """The live loss and accuracy curves of one or more training runs (one colour per run)."""

    def __init__(self):
        self.losses, self.accuracy = [], []

    def add(self, event, run: str = "train") -> None:
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

    @staticmethod
    def status(event) -> str:
        return (f"Epoch {event.epoch}/{event.epochs}, step {event.step}/{event.total_steps}, "
                f"loss {event.loss:.3f}, ETA {eta_text(event.eta_s)}")  # fmt: skip


def create(studio, state):
    with gr.Tab("6. Train", id="train"):
        gr.Markdown("Fine-tune CLIP with LoRA on your real images plus the kept synthetic images of the current "
                    "run, and see whether the synthetic images help.")  # fmt: skip
        gr.Markdown("Leave a setting blank to use the active preset's value (see the status line after "
                    "training for the settings used).")  # fmt: skip
        with gr.Row():
            # Blank by default: only what the user types overrides the preset (a widget default
            # would silently replace the preset's value on every run).
            epochs = gr.Number(elem_id="epochs", label="Epochs", value=None, precision=0, minimum=1)
            lambda_real = gr.Number(
                label="Lambda (weight of the real images' loss, 0..1)", value=None, minimum=0, maximum=1
            )
            rank = gr.Number(label="LoRA rank (alpha = 2 x rank)", value=None, precision=0, minimum=1)
            lr = gr.Number(label="Learning rate", value=None, minimum=0)
        with gr.Row():
            test = gr.File(
                elem_id="test-zip", label="Test set (.zip of class folders, optional)", file_types=[".zip"]
            )
            demo_test = gr.Checkbox(label="Use the demo test set", value=studio.demo)
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

    def config(ep, lam, r, rate) -> dict:
        """The settings the user typed; blank fields keep the preset's values."""
        given = {"epochs": ep, "lambda_real": lam, "lora_rank": r, "lr": rate}
        changes = {key: value for key, value in given.items() if value is not None}
        if r is not None:
            changes["lora_alpha"] = 2 * int(r)  # the recipe's alpha / rank = 2
        return changes

    @readable_errors
    def on_train(session, ep, lam, r, rate, test_file, use_demo, progress=gr.Progress()):  # noqa: B008
        session = studio.session(session)
        curves = Curves()
        # The plots get their first data with the first step: an empty first frame leaves the
        # line plot without series (no line is ever drawn) in Gradio 6.
        yield "Starting...", gr.update(), gr.update(), [], None, {}
        for event in studio.train(
            session, config(ep, lam, r, rate), test_file, use_demo, progress_callback(progress)
        ):
            if isinstance(event, tuple):
                result = event[1]
                epochs = result.metrics["epochs"]
                test = epochs[-1]["test"] if epochs else None
                rows = (
                    [[name, "-" if v is None else f"{100 * v:.1f}%"] for name, v in test["per_class"].items()]
                    if test
                    else []
                )
                image = (
                    str(result.out_dir / "confusion.png")
                    if test and (result.out_dir / "confusion.png").is_file()
                    else None
                )
                summary = {"cancelled": result.cancelled, "test_top1": result.test_top1,
                           "zero_shot_top1": result.zero_shot_top1, "epochs": len(epochs), "out_dir": str(result.out_dir),
                           "per_class": test["per_class"] if test else None, "confusion": test["confusion"] if test else None}  # fmt: skip
                word = "Cancelled" if result.cancelled else "Done"
                top1 = f", test top-1 {100 * result.test_top1:.1f}%" if result.test_top1 is not None else ""
                used = session.train
                settings = (f"epochs {used.epochs}, lr {used.lr:g}, lambda {used.lambda_real:g}, "
                            f"LoRA rank {used.lora_rank}")  # fmt: skip
                yield (f"{word}: {len(epochs)} epoch(s){top1}. Settings: {settings}.", gr.update(), gr.update(),
                       rows, image, summary)  # fmt: skip
                return
            curves.add(event)
            yield curves.status(event), *curves.frames(), gr.update(), gr.update(), gr.update()

    @readable_errors
    def on_compare(session, ep, lam, r, rate, test_file, use_demo):
        curves = Curves()
        yield "Comparing: training real-only first...", gr.update(), gr.update(), "", {}
        for name, value in studio.compare(
            studio.session(session), config(ep, lam, r, rate), test_file, use_demo
        ):
            if name == "result":
                word = "Comparison cancelled" if value["cancelled"] else "Comparison done"
                summary = {k: v for k, v in value.items() if k != "table"}
                yield f"{word}.", gr.update(), gr.update(), value["table"], summary
                return
            curves.add(value, RUNS[name])
            yield f"{RUNS[name]}: {curves.status(value)}", *curves.frames(), gr.update(), gr.update()

    @readable_errors
    def on_download(session):
        return studio.adapter_zip(session)

    inputs = [state, epochs, lambda_real, rank, lr, test, demo_test]
    train_event = start.click(on_train, inputs, [status, loss_plot, accuracy_plot, per_class, confusion, metrics],
                              api_name="train", **GPU)  # fmt: skip
    compare_event = compare.click(on_compare, inputs, [status, loss_plot, accuracy_plot, comparison, metrics],
                                  api_name="compare", **GPU)  # fmt: skip
    cancel.click(lambda s: studio.cancel(s), [state], [status], cancels=[train_event, compare_event],
                 api_name="cancel_training", **FREE)  # fmt: skip
    download_button.click(on_download, [state], [download], api_name="download_adapter")
