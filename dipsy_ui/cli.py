"""Headless command line over the engine: ``python -m dipsy_ui <command> ...``.

Every command that needs models takes ``--models DIR`` (a folder with ``sd/``, ``ip-adapter/``
and ``clip/``) or the individual sources; without them the paper's models are used from the
Hugging Face hub. Errors a user can fix are printed as one clear message (exit code 2), never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import DipsyError, UsageError
from .models import DTYPES, IP_ADAPTER_WEIGHTS, ModelSpec


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model-source and device flags shared by every command that loads models."""
    group = parser.add_argument_group("models")
    group.add_argument(
        "--models", metavar="DIR", help="folder with sd/, ip-adapter/ and clip/ (e.g. from make-tiny-models)"
    )
    group.add_argument(
        "--sd", metavar="SOURCE", help=f"SD1.5 hub id or diffusers folder (default {ModelSpec.sd})"
    )
    group.add_argument(
        "--ip-adapter", metavar="SOURCE", help=f"IP-Adapter hub id or folder (default {ModelSpec.ip_adapter})"
    )
    group.add_argument(
        "--ip-adapter-variant",
        choices=sorted(IP_ADAPTER_WEIGHTS),
        default="plus",
        help="Plus (the paper's) or plain",
    )
    group.add_argument(
        "--clip", metavar="SOURCE", help="open_clip model name or folder (default ViT-B-16/openai)"
    )
    add_runtime_arguments(group)


def add_runtime_arguments(parser) -> None:
    """--device and --dtype, for every command that runs a model."""
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    """A ModelSpec from ``--models`` and/or the individual source flags (flags win)."""
    if args.models:
        spec = ModelSpec.from_models_dir(args.models, args.ip_adapter_variant)
    else:
        spec = ModelSpec(ip_adapter_weight=IP_ADAPTER_WEIGHTS[args.ip_adapter_variant])
    overrides = {"sd": args.sd, "ip_adapter": args.ip_adapter}
    if args.clip:
        overrides |= {
            "clip": args.clip,
            "clip_pretrained": None if Path(args.clip).exists() else spec.clip_pretrained,
        }
    return ModelSpec(**(spec.to_dict() | {key: value for key, value in overrides.items() if value}))


def _runtime(args: argparse.Namespace):
    from .models import resolve_runtime

    return resolve_runtime(args.device, args.dtype)


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_models

    out = make_tiny_models(args.out_dir, seed=args.seed)
    print(
        f"Tiny models written to {out} (random weights: their images are noise). Use them with --models {out}"
    )
    return 0


def cmd_train_world(args: argparse.Namespace) -> int:
    import shlex

    import torch

    from .world.build import WorldConfig, train_world

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    config = WorldConfig.quick() if args.quick else WorldConfig()
    command = "python -m dipsy_ui " + shlex.join(args.argv)
    record = train_world(args.out_dir, config, command=command)
    print(
        f"Digit world written to {args.out_dir} in {record['seconds']:.0f} s "
        f"(record: {args.out_dir}/world.json). Use it with --models {args.out_dir}"
    )
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from .digits import write_demo_data

    out = write_demo_data(args.out_dir, shots=args.shots, test_per_class=args.test_per_class)
    print(f"Demo digits data written to {out}/train (few-shot) and {out}/test")
    return 0


def cmd_generate_one(args: argparse.Namespace) -> int:
    import torch

    from .images import open_image, save_png
    from .models import load_pipeline
    from .reproduce import generation_environment

    positive = open_image(args.positive)
    negative = open_image(args.negative) if args.negative else None
    spec = spec_from_args(args)
    runtime = _runtime(args)
    pipe = load_pipeline(spec, runtime)
    pipe.use_scheduler(args.scheduler)
    settings = {
        "prompt": args.prompt,
        "w_text": args.w_text,
        "w_pos": args.w_pos,
        "w_neg": args.w_neg if negative is not None else 0.0,
        "ip_adapter_scale": args.scale,
        "num_inference_steps": args.steps,
        "height": args.height,
        "width": args.width,
    }
    generator = torch.Generator(runtime.device).manual_seed(args.seed)
    image = pipe(positive_image=positive, negative_image=negative, generator=generator, **settings).images[0]
    # The same environment fields as a manifest line, so a single image is as reproducible.
    record = (
        settings
        | generation_environment(runtime.device, runtime.dtype)
        | {
            "seed": args.seed,
            "scheduler": args.scheduler,
            "positive": str(args.positive),
            "negative": str(args.negative) if args.negative else None,
            "models": spec.to_dict(),
        }
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, out, {"dipsy": json.dumps(record, sort_keys=True)})
    print(f"Wrote {out} ({image.width}x{image.height}); settings are stored in its 'dipsy' PNG text chunk")
    return 0


def _load_dataset(path: Path):
    from .data import load_dataset

    dataset = load_dataset(path)
    print(dataset.report.summary(), file=sys.stderr)
    return dataset


def _similarity(args, dataset, spec, runtime, temperature: float, mode: str, out: Path):
    """Class similarity of ``dataset`` (embeddings cached under OUT/.cache), saved with its heatmap."""
    from .heatmap import save_similarity
    from .models import load_clip
    from .similarity import compute_similarity

    dataset.require_classes(2, purpose="class similarity")
    clip = load_clip(spec, runtime)
    result = compute_similarity(
        clip, dataset.image_lists(), temperature=temperature, mode=mode, cache_dir=out / ".cache"
    )
    save_similarity(result, out)
    return result


def cmd_similarity(args: argparse.Namespace) -> int:
    dataset = _load_dataset(args.data)
    result = _similarity(
        args, dataset, spec_from_args(args), _runtime(args), args.temperature, "similarity", args.out
    )
    from .similarity import top_similar

    for name, neighbours in top_similar(result.names, result.similarity, k=3):
        print(f"{name}: " + ", ".join(f"{other} ({value:.2f})" for other, value in neighbours))
    print(f"Wrote {args.out / 'similarity.json'} and {args.out / 'similarity.png'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    from tqdm import tqdm

    from .generate import GenerationJob, Shard
    from .models import load_pipeline
    from .presets import load_preset
    from .similarity import SIMILARITY_MODES

    preset = load_preset(args.preset)
    overrides = {
        "images_per_class": args.per_class,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "negatives": args.negatives,
    }
    config = dataclasses.replace(preset.generation, **{k: v for k, v in overrides.items() if v is not None})
    dataset = _load_dataset(args.data)
    spec, runtime = spec_from_args(args), _runtime(args)
    similarity = None
    if config.negatives in SIMILARITY_MODES:
        similarity = _similarity(args, dataset, spec, runtime, config.temperature, config.negatives, args.out)
    job = GenerationJob(
        load_pipeline(spec, runtime), dataset, config, args.out, spec, similarity, Shard.from_env()
    )
    cancel = threading.Event()
    bar = tqdm(total=sum(len(batch) for batch in job.batches()), unit="img", desc="generating")

    def on_event(event):
        bar.n = event.done
        bar.set_postfix_str(f"step {event.step}/{event.steps}" if event.kind == "step" else event.kind)

    try:
        final = job.run(on_event, cancel)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        print(
            "\ninterrupted: everything written so far is kept; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    bar.close()
    print(f"{final.done}/{final.total} images in {args.out} (manifest: {args.out / 'manifest.jsonl'})")
    return 0 if final.kind == "done" else 1


def cmd_regenerate(args: argparse.Namespace) -> int:
    from .generate import GenerationJob, recorded_run
    from .images import save_png
    from .models import load_pipeline
    from .similarity import SIMILARITY_MODES, SimilarityResult

    config, spec = recorded_run(args.out)
    if args.models or args.sd or args.ip_adapter:
        spec = spec_from_args(args)  # the same weights stored elsewhere
    similarity = SimilarityResult.load(args.out) if config.negatives in SIMILARITY_MODES else None
    job = GenerationJob(
        load_pipeline(spec, _runtime(args)), _load_dataset(args.data), config, args.out, spec, similarity
    )
    report = job.regenerate(args.file, batch_size=args.batch_size)
    if args.save:
        save_png(report.image, args.save)
    print(f"{args.file}: regenerated, {report.summary()}")
    return 1 if report.verdict == "different" else 0


def _train_config(args: argparse.Namespace):
    import dataclasses

    from .presets import load_preset

    overrides = {
        "epochs": args.epochs,
        "lambda_real": args.lambda_real,
        "lr": args.lr,
        "lora_rank": args.lora_rank,
        "seed": args.seed,
    }
    return dataclasses.replace(
        load_preset(args.preset).train, **{k: v for k, v in overrides.items() if v is not None}
    )


def _train_bar():
    """A progress bar over optimisation steps and the callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(unit="step", desc="training")

    def on_progress(event, run: str = "") -> None:
        bar.total = event.total_steps
        bar.set_description(f"training {run}".strip())
        bar.n = event.step
        postfix = f"epoch {event.epoch}/{event.epochs} loss {event.loss:.3f} acc {event.accuracy:.2f}"
        bar.set_postfix_str(postfix + (f" test {event.test_top1:.3f}" if event.test_top1 is not None else ""))

    return bar, on_progress


def cmd_train(args: argparse.Namespace) -> int:
    import threading

    from .classifier.train import train

    config, stop = _train_config(args), threading.Event()
    bar, on_progress = _train_bar()
    try:
        result = train(
            args.real,
            args.out,
            spec_from_args(args),
            synthetic=args.synthetic,
            test=args.test,
            config=config,
            runtime=_runtime(args),
            should_stop=stop,
            callback=on_progress,
        )
    except KeyboardInterrupt:
        stop.set()
        print(
            "\ninterrupted: the adapter of the last finished epoch is in the output folder", file=sys.stderr
        )
        return 130
    finally:
        bar.close()
    if result.test_top1 is not None:
        print(f"test top-1: zero-shot {result.zero_shot_top1:.3f} -> fine-tuned {result.test_top1:.3f}")
    print(f"Wrote the adapter, metrics.json and plots to {args.out}")
    return 1 if result.cancelled else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .classifier.train import compare

    bar, on_progress = _train_bar()
    try:
        report = compare(
            args.real,
            args.synthetic,
            args.test,
            args.out,
            spec_from_args(args),
            config=_train_config(args),
            runtime=_runtime(args),
            callback=lambda run, event: on_progress(event, run),
        )
    finally:
        bar.close()
    print(report["text"])
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .classifier.evaluate import evaluate

    results = evaluate(args.adapter, args.test, _runtime(args))
    for name, result in results.items():
        print(f"{name}: top-1 {result.top1:.3f} on {result.count} images")
    print(
        "per class (fine-tuned): "
        + ", ".join(f"{c} {a:.2f}" for c, a in results["fine_tuned"].per_class.items())
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .classifier.evaluate import predict

    for prediction in predict(args.adapter, args.images, runtime=_runtime(args)):
        print(f"{prediction.path}\t{prediction.label}\t{prediction.confidence:.3f}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from .experiment.runner import Experiment
    from .experiment.spec import ExperimentSpec

    spec = ExperimentSpec.load(args.spec)
    # Model flags name the same models stored elsewhere (or others); without them, the spec's.
    flagged = args.models or args.sd or args.ip_adapter or args.clip
    experiment = Experiment(spec, args.out, spec_from_args(args) if flagged else None, _runtime(args))
    bar = tqdm(total=len(experiment.cells), unit="cell", desc="experiment")
    cancel = threading.Event()

    def on_event(event) -> None:
        bar.n = event.done
        if event.kind == "note":
            bar.write(f"warning: {event.message}")
        elif event.cell is not None:
            arm, shots, seed = event.cell
            detail = ""
            if event.generation is not None:
                detail = f", generating {event.generation.done}/{event.generation.total}"
            elif event.training is not None:
                detail = f", training step {event.training.step}/{event.training.total_steps}"
            bar.set_postfix_str(f"{arm}, {shots} shots, seed {seed}{detail}")
        bar.refresh()

    try:
        final = experiment.run(on_event, cancel)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        print(
            "\ninterrupted: finished cells are kept in results.jsonl; run the same command to continue",
            file=sys.stderr,
        )
        return 130
    bar.close()
    if final.done:
        summary = json.loads((args.out / "summary.json").read_text(encoding="utf-8"))
        print(f"{summary['table']}\n\n{summary['verdict']}\n")
    print(f"{final.done}/{final.total} cells in {args.out} (results.jsonl, summary.md, plots)")
    return 0 if final.kind == "done" else 1


def build_parser() -> argparse.ArgumentParser:
    from .config import NEGATIVE_MODES, SCHEDULER_NAMES, GenerationConfig

    authors = GenerationConfig()  # the authors' defaults, where a command takes no preset
    from .digits import DIGIT_TEST_PER_CLASS

    parser = argparse.ArgumentParser(prog="python -m dipsy_ui", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tiny = commands.add_parser(
        "make-tiny-models", help="write tiny random models in the real models' layouts"
    )
    tiny.add_argument("out_dir", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=cmd_make_tiny_models)

    world = commands.add_parser(
        "train-world", help="train the digit world: small models in the real layouts that draw digits"
    )
    world.add_argument("out_dir", type=Path)
    world.add_argument(
        "--quick", action="store_true", help="a few steps per stage (checks the command, no quality)"
    )
    world.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    world.set_defaults(run=cmd_train_world)

    demo = commands.add_parser("make-demo-data", help="write a few-shot digits dataset (no download)")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--shots", type=int, default=8, help="few-shot images per class")
    demo.add_argument(
        "--test-per-class", type=int, default=DIGIT_TEST_PER_CLASS, help="held-out test digits per class"
    )
    demo.set_defaults(run=cmd_make_demo_data)

    one = commands.add_parser("generate-one", help="generate one image with dual IP-Adapter guidance")
    one.add_argument("--prompt", required=True, help='e.g. "A photo of a Bombay cat"')
    one.add_argument("--positive", required=True, type=Path, help="image of the class to generate")
    one.add_argument("--negative", type=Path, help="image of a confusable class to steer away from")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--out", required=True, type=Path, help="output PNG")
    one.add_argument(
        "--w-text", type=float, default=authors.w_text, help="text guidance weight (default: %(default)s)"
    )
    one.add_argument(
        "--w-pos",
        type=float,
        default=authors.w_pos,
        help="positive image guidance weight (default: %(default)s)",
    )
    one.add_argument(
        "--w-neg",
        type=float,
        default=authors.w_neg,
        help="negative image guidance weight, subtracted (default: %(default)s)",
    )
    one.add_argument(
        "--scale",
        type=float,
        default=authors.ip_adapter_scale,
        help="IP-Adapter scale (default: %(default)s)",
    )
    one.add_argument(
        "--steps", type=int, default=authors.steps, help="denoising steps (default: %(default)s)"
    )
    one.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=authors.scheduler)
    one.add_argument("--height", type=int, help="default: the model's native size (512 for SD1.5)")
    one.add_argument("--width", type=int)
    add_model_arguments(one)
    one.set_defaults(run=cmd_generate_one)

    sim = commands.add_parser("similarity", help="class similarity matrix and heatmap of a few-shot set")
    sim.add_argument("data", type=Path, help="folder (or .zip) with one subfolder of images per class")
    sim.add_argument("--out", required=True, type=Path)
    sim.add_argument(
        "--temperature",
        type=float,
        default=authors.temperature,
        help="softmax temperature (default: %(default)s)",
    )
    add_model_arguments(sim)
    sim.set_defaults(run=cmd_similarity)

    gen = commands.add_parser(
        "generate", help="generate the synthetic set (resumable; shards across processes)"
    )
    gen.add_argument("data", type=Path, help="folder (or .zip) with one subfolder of images per class")
    gen.add_argument("--preset", required=True, help="preset name (see presets/) or a preset .json file")
    gen.add_argument("--out", required=True, type=Path)
    gen.add_argument("--per-class", type=int, help="images per class (default: the preset's)")
    gen.add_argument("--batch-size", type=int, help="images per U-Net call (default: the preset's)")
    gen.add_argument("--seed", type=int, help="base seed (default: the preset's)")
    gen.add_argument(
        "--negatives", choices=NEGATIVE_MODES, help="negative-class sampling (default: the preset's)"
    )
    add_model_arguments(gen)
    gen.set_defaults(run=cmd_generate)

    regen = commands.add_parser("regenerate", help="recompute one image of a run from its manifest line")
    regen.add_argument("out", type=Path, help="the run's output folder (with job.json and manifest.jsonl)")
    regen.add_argument("file", help="the image, relative to the folder (e.g. cat/00012.png)")
    regen.add_argument("--data", required=True, type=Path, help="the few-shot set the run was generated from")
    regen.add_argument("--save", type=Path, help="also write the regenerated image here")
    regen.add_argument(
        "--batch-size",
        type=int,
        help="recompute the image in the batch a run with this batch size would have used (1: alone) "
        "instead of its recorded batch",
    )
    add_model_arguments(regen)
    regen.set_defaults(run=cmd_regenerate)

    for name, run, text in (
        ("train", cmd_train, "LoRA fine-tuning of CLIP on real (+ synthetic) images"),
        ("compare", cmd_compare, "real-only vs real+synthetic training, same seed and budget"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--real", required=True, type=Path, help="few-shot real images (one subfolder per class)"
        )
        sub.add_argument(
            "--synthetic", type=Path, required=name == "compare", help="synthetic set (manifest honoured)"
        )
        sub.add_argument(
            "--test", type=Path, required=name == "compare", help="test images (one subfolder per class)"
        )
        sub.add_argument(
            "--preset", required=True, help="preset name or .json (its 'train' section and template)"
        )
        sub.add_argument("--out", required=True, type=Path)
        # No defaults here: an unset flag keeps the preset's value (dipsy_ui.config's when the preset has none).
        sub.add_argument("--epochs", type=int, help="passes over the synthetic set (default: the preset's)")
        sub.add_argument(
            "--lambda-real", type=float, help="weight of the real-image loss (default: the preset's)"
        )
        sub.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
        sub.add_argument("--lora-rank", type=int, help="LoRA rank (default: the preset's)")
        sub.add_argument("--seed", type=int, help="(default: the preset's)")
        add_model_arguments(sub)
        sub.set_defaults(run=run)

    exp = commands.add_parser(
        "experiment",
        help="compare ways of making the training set over shots and seeds (resumable)",
    )
    exp.add_argument("spec", type=Path, help="experiment spec .json (e.g. presets/experiments/digits.json)")
    exp.add_argument("--out", required=True, type=Path, help="experiment folder (rerun to continue)")
    add_model_arguments(exp)
    exp.set_defaults(run=cmd_experiment)

    ev = commands.add_parser(
        "evaluate", help="top-1 of a trained classifier (and zero-shot) on a test folder"
    )
    ev.add_argument("--adapter", required=True, type=Path, help="a train output folder")
    ev.add_argument("--test", required=True, type=Path)
    add_runtime_arguments(ev)
    ev.set_defaults(run=cmd_evaluate)

    pr = commands.add_parser("predict", help="classify images with a trained classifier")
    pr.add_argument("--adapter", required=True, type=Path, help="a train output folder")
    pr.add_argument("images", nargs="+", type=Path)
    add_runtime_arguments(pr)
    pr.set_defaults(run=cmd_predict)
    return parser


def _quiet_libraries() -> None:
    """Library loading chatter (per-file progress bars, dtype notes) would bury our own
    progress and messages; errors still surface through exceptions."""
    import diffusers
    import transformers

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~dipsy_ui.errors.DipsyError` (something the user can fix)
    becomes one line on stderr and exit code 2; any other exception is a bug and propagates
    with its traceback."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    try:
        return args.run(args)
    except DipsyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
