"""Tab 6, Train: LoRA classifier on real (+ kept synthetic) images, live curves, evaluation."""

import gradio as gr
import pandas as pd

from ..config import TrainConfig
from ..errors import DipsyError, UsageError
from ..studio import CANCELLED, DONE, LABELS, PROGRESS, RUNS
from .common import FREE, JOBS, cancel_reply, follow, readable_errors, refusal

# The settings a user may type (TrainConfig's field: label, type); blank keeps the preset's.
FIELDS = {
    "epochs": ("Epochs", int),
    "lambda_real": ("Lambda (weight of the real images' loss, 0..1)", float),
    "lora_rank": ("LoRA rank (alpha = 2 x rank)", int),
    "lr": ("Learning rate", float),
}


# One colour per run, the curves' series fixed up front: a plot that learns its series from its
# first data draws only the first run of a comparison.
COLOURS = dict(
    zip(LABELS, ("#1f77b4", "#1f77b4", "#ff7f0e"), strict=True)
)  # train, real only, real+synthetic
ACCURACY_CURVES = {"(training batches)": 0.55, "test": 1.0}  # curve -> opacity of the run's colour


class Curves:
    """The loss and accuracy curves of one or more training runs (one colour per run), live
    from training events or read back from a finished run's metrics."""

    def __init__(self, runs: tuple[str, ...] = ("train",)):
        self.runs = runs  # the runs drawn, in the order they train (LABELS' keys)
        self.losses, self.accuracy = [], []

    def add(self, event) -> None:
        """Add a training event (a job's progress detail: the engine's Event, whose payload
        :func:`~dipsy_ui.classifier.train.train` documents; a comparison's names its run)."""
        info = event.payload or {}
        run, step = LABELS[info.get("run", "train")], info.get("run_step", event.step)
        if info.get("phase") == "step":
            self.losses.append({"step": step, "loss": info["loss"], "run": run})
            self.accuracy.append(
                {"step": step, "accuracy": info["accuracy"], "set": f"{run} (training batches)"}
            )
        elif info.get("phase") == "epoch" and info.get("test_top1") is not None:
            self.accuracy.append({"step": step, "accuracy": info["test_top1"], "set": f"{run} test"})

    def add_metrics(self, run: str, metrics: dict) -> None:
        """Add a finished run's curves from its ``metrics.json`` (each step's loss, each epoch's
        training and test accuracy): a reopened comparison draws what the live one drew."""
        label = LABELS[run]
        self.losses += [
            {"step": i + 1, "loss": loss, "run": label} for i, loss in enumerate(metrics["step_loss"])
        ]
        for epoch in metrics["epochs"]:
            self.accuracy.append({"step": epoch["step"], "accuracy": epoch["train_accuracy"],
                                  "set": f"{label} (training batches)"})  # fmt: skip
            if epoch.get("test"):
                self.accuracy.append(
                    {"step": epoch["step"], "accuracy": epoch["test"]["top1"], "set": f"{label} test"}
                )

    def frames(self) -> tuple[gr.LinePlot, gr.LinePlot]:
        """Both plots' data, with every run's series and colour named from the first frame on."""
        # Typed columns even when empty: an untyped (object) empty frame makes the plot treat
        # step and value as categories, and it keeps that axis type for every later update.
        types = {"step": "int64", "loss": "float64", "accuracy": "float64", "run": "object", "set": "object"}
        losses = pd.DataFrame(self.losses, columns=["step", "loss", "run"])
        accuracy = pd.DataFrame(self.accuracy, columns=["step", "accuracy", "set"])
        loss_colours = {LABELS[run]: COLOURS[run] for run in self.runs}
        accuracy_colours = {f"{LABELS[run]} {curve}": mix(COLOURS[run], opacity)
                            for run in self.runs for curve, opacity in ACCURACY_CURVES.items()}  # fmt: skip
        return (gr.LinePlot(losses.astype({c: types[c] for c in losses.columns}), color_map=loss_colours),
                gr.LinePlot(accuracy.astype({c: types[c] for c in accuracy.columns}), color_map=accuracy_colours))  # fmt: skip


def mix(colour: str, opacity: float) -> str:
    """``colour`` (#rrggbb) blended with white: the lighter shade of a run's colour."""
    channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 - opacity * (255 - c)):02x}" for c in channels)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def allowed(key: str) -> str:
    """A box's allowed range, as TrainConfig declares it ("1 to 1000")."""
    low, high = TrainConfig.bounds(key)
    return f"{low:g} to {high:g}"


def create(training, state):
    with gr.Tab("6. Train", id="train") as tab:
        gr.Markdown("Fine-tune CLIP with LoRA on your real images plus the kept synthetic images of the current "
                    "run, and see whether the synthetic images help.")  # fmt: skip
        gr.Markdown("Leave a setting blank to use the active preset's value (see the status line after "
                    "training for the settings used).")  # fmt: skip
        with gr.Row():
            run_line = gr.Markdown(label="Run line", elem_id="train-run")
            # Any name is passed on (API clients name a result directly); the service refuses unknown ones.
            classifier_pick = gr.Dropdown(label="Earlier classifier", choices=[], allow_custom_value=True,
                                          elem_id="classifier-pick")  # fmt: skip
            comparison_pick = gr.Dropdown(label="Earlier comparison", choices=[], allow_custom_value=True,
                                          elem_id="comparison-pick")  # fmt: skip
        with gr.Row():
            # Text boxes, blank by default: only what the user types overrides the preset (a number
            # box always holds a number, and its 0 would silently replace the preset's value).
            boxes = {
                key: gr.Textbox(label=label, elem_id=key.replace("_", "-"), info=allowed(key))
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
        status = gr.Markdown(label="Status", elem_id="train-status")
        with gr.Row():
            loss_plot = gr.LinePlot(
                x="step",
                y="loss",
                color="run",
                title="Training loss",
                height=260,
                elem_id="loss-plot",
                label="Training loss",
                show_label=False,
            )
            accuracy_plot = gr.LinePlot(
                x="step",
                y="accuracy",
                color="set",
                title="Accuracy",
                height=260,
                y_lim=[0, 1],
                label="Accuracy",
                show_label=False,
            )
        with gr.Row():
            per_class = gr.Dataframe(
                headers=["class", "test accuracy"],
                label="Per-class accuracy",
                interactive=False,
                elem_id="per-class-results",
            )
            confusion = gr.Image(label="Confusion matrix", type="filepath", interactive=False)
        # The engine's verdict above its aligned table: monospace keeps the columns aligned.
        comparison = gr.Code(label="Comparison", language=None, interactive=False, elem_id="comparison")
        with gr.Row():
            download_button = gr.Button("Download the adapter")
            download = gr.File(
                label="Adapter(s)", interactive=False, file_count="multiple", elem_id="adapter"
            )
        metrics = gr.JSON(label="Metrics", visible=False)  # the run's numbers, for API clients

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
        return changes

    def placeholders(session):
        """Each blank box shows the preset's value it stands for."""
        used = training.settings.train(session)
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
        used = training.settings.train(session)
        settings = (
            f"epochs {used.epochs}, lr {used.lr:g}, lambda {used.lambda_real:g}, LoRA rank {used.lora_rank}"
        )
        return f"{word}: {len(epochs)} epoch(s){top1}. Settings: {settings}.", rows, image, summary

    def compared(session, report) -> tuple:
        """(comparison text, per-class rows of both runs, both adapters, the confusion matrix of
        the last run that finished) of a comparison report."""
        runs = [report.get(run) or {} for run in ("zero_shot", "real_only", "real_synthetic")]
        rows = [
            [name, *(pct(run.get("per_class", {}).get(name)) for run in runs)]
            for name in report["class_names"]
        ]
        frame = pd.DataFrame(rows, columns=["class", "zero-shot", "real only", "real+synthetic"])
        files = training.comparison_files(session, report, "confusion.png")
        confusion_image = files.get("real_synthetic") or files.get("real_only")
        return report["text"], frame, training.comparison_zips(session, report), confusion_image

    def on_open(session):
        """What the tab shows of the session: the run it trains on, the earlier results to reopen."""
        return (training.run_line(session),
                gr.update(choices=training.classifiers(session), value=training.classifier_name(session)),
                gr.update(choices=training.comparisons(session), value=None), *placeholders(session))  # fmt: skip

    @readable_errors
    def on_classifier(session, name):
        try:
            metrics = training.open_classifier(session, name)
        except DipsyError as error:
            return refusal(error), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        test = metrics["epochs"][-1]["test"] if metrics.get("epochs") else None
        rows = [[c, pct(v)] for c, v in test["per_class"].items()] if test else []
        frame = pd.DataFrame(rows, columns=["class", "test accuracy"])
        image = training.classifier_file(session, "confusion.png")
        top1 = f", test top-1 {pct(test['top1'])}" if test else ""
        return f"Classifier {name}{top1} (Curate ranks with it; Download zips it).", frame, image, None, ""

    @readable_errors
    def on_comparison(session, name):
        try:
            report = training.open_comparison(session, name)
        except DipsyError as error:
            return refusal(error), *(gr.skip(),) * 6
        text, frame, zips, confusion_image = compared(session, report)
        curves = Curves(RUNS)
        for run, metrics in training.comparison_metrics(session, report).items():
            curves.add_metrics(run, metrics)
        return f"Comparison of {name}.", frame, confusion_image, zips, text, *curves.frames()

    def on_train(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):  # named for the API
        """Train with live curves; a refused or failed run writes its reason into the status."""
        try:
            yield from train_events(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo)
        except Exception as error:  # noqa: BLE001 - refusal() logs what is not the user's to fix
            yield refusal(error), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def train_events(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):
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

    def on_compare(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):  # named for the API
        """Real-only vs real+synthetic; a refused or failed comparison writes its reason into the status."""
        try:
            yield from compare_events(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo)
        except Exception as error:  # noqa: BLE001
            yield refusal(error), *(gr.skip(),) * 7

    def compare_events(session, epochs, lambda_real, lora_rank, lr, test_file, use_demo):
        curves = Curves(RUNS)
        # What an earlier Train run showed (its per-class results, confusion matrix, adapter) goes.
        yield "Comparing: training real-only first...", gr.skip(), gr.skip(), "", {}, [], None, None
        skip = (gr.skip(),) * 3
        for event in follow(
            training.compare(session, config(epochs, lambda_real, lora_rank, lr), test_file, use_demo)
        ):
            if event.kind == PROGRESS and event.detail is not None:
                curves.add(event.detail)
                yield event.message, *curves.frames(), gr.skip(), gr.skip(), *skip
            elif event.result is not None:
                word = "Comparison done" if event.kind == DONE else "Comparison cancelled"
                summary = {k: v for k, v in event.result.items() if k not in ("table", "text", "folders")}
                text, frame, zips, confusion_image = compared(session, event.result)
                yield f"{word}.", gr.skip(), gr.skip(), text, summary, frame, confusion_image, zips
            else:
                prefix = "Comparison: " if event.kind == CANCELLED else ""
                yield prefix + event.message, gr.skip(), gr.skip(), gr.skip(), gr.skip(), *skip

    @readable_errors
    def on_download(session):
        return [training.adapter_zip(session)]

    inputs = [state, *boxes.values(), test, demo_test]
    start.click(on_train, inputs, [status, loss_plot, accuracy_plot, per_class, confusion, metrics],
                api_name="train", **JOBS).then(on_open, [state], [run_line, classifier_pick, comparison_pick, *boxes.values()],
                                               api_visibility="private")  # fmt: skip
    compare.click(on_compare, inputs, [status, loss_plot, accuracy_plot, comparison, metrics, per_class, confusion, download],
                  api_name="compare", **JOBS)  # fmt: skip
    classifier_pick.input(on_classifier, [state, classifier_pick], [status, per_class, confusion, download, comparison],
                          api_name="open_classifier")  # fmt: skip
    comparison_pick.input(on_comparison, [state, comparison_pick],
                          [status, per_class, confusion, download, comparison, loss_plot, accuracy_plot],
                          api_name="open_comparison")  # fmt: skip
    cancel.click(
        lambda s: cancel_reply(training.cancel(s)), [state], [status], api_name="cancel_training", **FREE
    )
    download_button.click(on_download, [state], [download], api_name="download_adapter")
    tab.select(on_open, [state], [run_line, classifier_pick, comparison_pick, *boxes.values()],
               api_visibility="private")  # fmt: skip
