"""Commands that generate: ``generate-one``, ``similarity``, ``generate``, ``regenerate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_model_arguments, load_dataset_reporting, run_interruptible, runtime_of, spec_from_args


def cmd_generate_one(args: argparse.Namespace) -> int:
    import torch

    from ..images import open_image, save_png
    from ..models import load_pipeline
    from ..reproduce import generation_environment

    positive = open_image(args.positive)
    negative = open_image(args.negative) if args.negative else None
    spec = spec_from_args(args)
    runtime = runtime_of(args)
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


def _similarity(dataset, spec, runtime, temperature: float, mode: str, out: Path):
    """Class similarity of ``dataset`` (embeddings cached under OUT/.cache)."""
    from ..models import load_clip
    from ..similarity import compute_similarity

    dataset.require_classes(2, purpose="class similarity")
    clip = load_clip(spec, runtime)
    return compute_similarity(
        clip, dataset.image_lists(), temperature=temperature, mode=mode, cache_dir=out / ".cache"
    )


def cmd_similarity(args: argparse.Namespace) -> int:
    from ..heatmap import save_similarity
    from ..similarity import top_similar

    dataset = load_dataset_reporting(args.data)
    result = _similarity(
        dataset, spec_from_args(args), runtime_of(args), args.temperature, "similarity", args.out
    )
    save_similarity(result, args.out)

    for name, neighbours in top_similar(result.names, result.similarity, k=3):
        print(f"{name}: " + ", ".join(f"{other} ({value:.2f})" for other, value in neighbours))
    print(f"Wrote {args.out / 'similarity.json'} and {args.out / 'similarity.png'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import dataclasses
    import threading

    from tqdm import tqdm

    from ..generate import GenerationJob, Shard, needs_similarity
    from ..models import load_pipeline
    from ..presets import load_preset

    preset = load_preset(args.preset)
    overrides = {
        "images_per_class": args.per_class,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "negatives": args.negatives,
    }
    config = dataclasses.replace(preset.generation, **{k: v for k, v in overrides.items() if v is not None})
    dataset = load_dataset_reporting(args.data)
    spec, runtime = spec_from_args(args), runtime_of(args)
    similarity = None
    if needs_similarity(config.negatives):
        similarity = _similarity(dataset, spec, runtime, config.temperature, config.negatives, args.out)
    job = GenerationJob(
        load_pipeline(spec, runtime), dataset, config, args.out, spec, similarity, Shard.from_env()
    )
    if job.note:
        print(f"note: {job.note}")
    cancel = threading.Event()
    bar = tqdm(total=sum(len(batch) for batch in job.batches()), unit="img", desc="generating")

    def on_event(event):
        bar.n = event.step
        info = event.payload or {}
        steps = f"step {info['denoising_step']}/{info['denoising_steps']}" if "denoising_step" in info else ""
        bar.set_postfix_str(steps or event.kind)

    final = run_interruptible(job.run, on_event, cancel, bar, "everything written so far is kept", "resume")
    if final is None:
        return 130
    print(f"{final.step}/{final.total} images in {args.out} (manifest: {args.out / 'manifest.jsonl'})")
    return 0 if final.kind == "done" else 1


def cmd_regenerate(args: argparse.Namespace) -> int:
    from ..generate import GenerationJob, recorded_run
    from ..images import save_png
    from ..models import load_pipeline

    _, spec = recorded_run(args.out)
    if args.models or args.sd or args.ip_adapter:
        spec = spec_from_args(args)  # the same weights stored elsewhere
    pipe = load_pipeline(spec, runtime_of(args))
    job = GenerationJob.from_folder(pipe, load_dataset_reporting(args.data), args.out, spec)
    report = job.regenerate(args.file, batch_size=args.batch_size)
    if args.save:
        save_png(report.image, args.save)
    print(f"{args.file}: regenerated, {report.summary()}")
    return 1 if report.verdict == "different" else 0


def add_generate_one_arguments(parser: argparse.ArgumentParser) -> None:
    """``generate-one``'s inputs (prompt, images, seed, weights, sampler, size, models), shared
    with ``explain``, which draws the same image; each command adds its own ``--out``."""
    from ..config import SCHEDULER_NAMES, GenerationConfig

    authors = GenerationConfig()  # the authors' defaults: generate-one takes no preset
    parser.add_argument("--prompt", required=True, help='e.g. "A photo of a Bombay cat"')
    parser.add_argument("--positive", required=True, type=Path, help="image of the class to generate")
    parser.add_argument("--negative", type=Path, help="image of a confusable class to steer away from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--w-text", type=float, default=authors.w_text, help="text guidance weight (default: %(default)s)"
    )
    parser.add_argument(
        "--w-pos",
        type=float,
        default=authors.w_pos,
        help="positive image guidance weight (default: %(default)s)",
    )
    parser.add_argument(
        "--w-neg",
        type=float,
        default=authors.w_neg,
        help="negative image guidance weight, subtracted (default: %(default)s)",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=authors.ip_adapter_scale,
        help="IP-Adapter scale (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=authors.steps, help="denoising steps (default: %(default)s)"
    )
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default=authors.scheduler)
    parser.add_argument("--height", type=int, help="default: the model's native size (512 for SD1.5)")
    parser.add_argument("--width", type=int)
    add_model_arguments(parser)


def register(commands) -> None:
    """Add this module's commands to the ``python -m dipsy_ui`` subparsers."""
    from ..config import NEGATIVE_MODES, GenerationConfig

    authors = GenerationConfig()  # the authors' defaults, where a command takes no preset
    one = commands.add_parser("generate-one", help="generate one image with dual IP-Adapter guidance")
    add_generate_one_arguments(one)
    one.add_argument("--out", required=True, type=Path, help="output PNG")
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
