"""A world: a miniature SD1.5 + IP-Adapter + CLIP, trained here on a world's images
(:mod:`.worlds`: scikit-learn's digits, or the procedurally drawn critters).

``python -m dipsy_ui train-world DIR [--world NAME]`` writes, in exactly the ``--models DIR``
layout of the real weights (``sd/``, ``ip-adapter/models/``, ``clip/``), models that really
draw the world's classes (the digits are the example below):

1. ``sd/vae``: an AutoencoderKL, 32x32 RGB -> 8x8x4 latents (reconstruction loss + SD's small
   KL term); its ``scaling_factor`` makes the latents unit-variance, as SD's 0.18215 does.
2. ``sd/text_encoder`` + ``ip-adapter/models/image_encoder``: the generator's own small CLIP
   (CLIPTextModel with the real CLIP BPE tokenizer, CLIPVisionModelWithProjection), trained with
   the contrastive loss (Radford et al. 2021) on every digit and captions such as "A photo of
   the handwritten digit three", as SD1.5 and IP-Adapter inherit theirs from CLIP.
3. ``sd/unet``: a UNet2DConditionModel cross-attending to the frozen text encoder's states,
   trained with the DDPM noise-prediction loss (Ho et al. 2020, Min-SNR weighted); the caption
   is dropped (empty prompt) 10% of the time so that text classifier-free guidance works.
4. ``ip-adapter/models``: IP-Adapter Plus (Resampler) and plain adapters in the h94 key layout,
   trained the IP-Adapter way (Ye et al. 2023): U-Net and encoders frozen, the image condition
   the target image itself or its adapter-input augmentation (what DIPSY feeds at generation
   time), the text dropped half of the time so that the image alone steers.
   "Adapter off" is the frozen base model exactly, so guidance separates text and image
   without an image-dropout term.
5. ``clip/``: an open_clip CLIP for similarity, curation and the classifier, trained with the
   same contrastive loss on only some digits (``WorldConfig.clip_classes``): like real CLIP on
   fine-grained classes, it knows some classes and has never seen the others, so few-shot
   classification has room to improve with synthetic images.

Every model starts as :mod:`dipsy_ui.tiny` writes it (random weights, real layouts) and is
loaded and trained through :mod:`dipsy_ui.models`, the loader the real weights go through.
Only a world's pool is used (for the digits that of :func:`dipsy_ui.digits.digits_split`);
its held-out images never are.
The run is deterministic for a seed on a given machine, and ``world.json`` records the
settings, the split, losses, wall times and the SHA-256 of every written file.

This module runs the stages (:data:`STAGES`, :func:`train_world`: resumable, recorded); the
settings, shapes and pool are in :mod:`.config`, the training functions in :mod:`.training`
and :mod:`.adapters`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import UsageError
from ..files import write_atomic
from ..models import ModelSpec, load_clip, load_stock_pipeline, resolve_runtime
from ..reproduce import generation_environment
from ..tiny import make_tiny_models
from .adapters import h94_state_dict, init_adapter_attention, train_adapter
from .config import IMAGE_SIZE, WORLD_SHAPES, Pool, WorldConfig
from .training import Stage, encode_latents, train_clip, train_generator_clip, train_unet, train_vae
from .worlds import World, get_world

RECORD_NAME = "world.json"
PROGRESS_NAME = "stages.json"  # finished stages of an interrupted run, in <out>.partial


def _save_fp16(model, folder: Path) -> None:
    """``save_pretrained`` of an fp16 copy (half the size; loaders cast to the runtime dtype).

    transformers loads a model in the dtype its config records, diffusers in fp32 unless told
    otherwise; the config keeps saying float32 so that a plain ``from_pretrained`` of the folder
    gives one dtype everywhere, as with the real SD1.5 weights.
    """
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(folder, safe_serialization=True)
    config = folder / "config.json"
    settings = json.loads(config.read_text(encoding="utf-8"))
    # diffusers records the folder the model was loaded from: here the temporary <out>.partial.
    kept = {key: value for key, value in settings.items() if key != "_name_or_path"}
    if "dtype" in kept:
        kept["dtype"] = "float32"
    if kept != settings:
        config.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != RECORD_NAME
    }


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / RECORD_NAME).is_file():
        raise UsageError(
            f"{out_dir} exists and is not empty or a world ({RECORD_NAME} missing); choose another folder"
        )


def _spec(work: Path, variant: str = "plus") -> ModelSpec:
    return ModelSpec.from_models_dir(work, variant)


def _stage_autoencoder(
    work: Path, world: World, pool: Pool, config: WorldConfig, generator, runtime
) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime, adapter_copies=0)
    stage = train_vae(pipe.vae, pool.pixels, config, generator)
    _save_fp16(pipe.vae, work / "sd" / "vae")
    return stage


def _stage_generator_clip(
    work: Path, world: World, pool: Pool, config: WorldConfig, generator, runtime
) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime)  # the adapter load brings the image encoder
    stage = train_generator_clip(pipe, pool.images, pool.labels, world, config, generator)
    _save_fp16(pipe.text_encoder, work / "sd" / "text_encoder")
    _save_fp16(pipe.image_encoder, work / "ip-adapter" / "models" / "image_encoder")
    return stage


def _stage_unet(work: Path, world: World, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime, adapter_copies=0)
    stage = train_unet(pipe, encode_latents(pipe.vae, pool.pixels), pool.labels, world, config, generator)
    _save_fp16(pipe.unet, work / "sd" / "unet")
    init_adapter_attention(work, pipe.unet)
    return stage


def _stage_adapter(variant: str) -> Callable:
    def run(work: Path, world: World, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
        spec = _spec(work, variant)
        pipe = load_stock_pipeline(spec, runtime)
        pipe.unet.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        steps = config.adapter_steps if variant == "plus" else config.plain_adapter_steps
        latents = encode_latents(pipe.vae, pool.pixels)
        stage = train_adapter(
            pipe, latents, pool.labels, pool.images, steps, variant == "plus", world, config, generator
        )
        weights = {
            key: value.to(torch.float16).contiguous() for key, value in h94_state_dict(pipe.unet).items()
        }
        save_file(weights, Path(spec.ip_adapter) / spec.ip_adapter_subfolder / spec.ip_adapter_weight)
        return stage

    return run


def _stage_clip(work: Path, world: World, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    clip = load_clip(_spec(work), runtime)
    stage = train_clip(clip, pool.images, pool.labels, world, config, generator)
    state = {key: value.to(torch.float16).contiguous() for key, value in clip.model.state_dict().items()}
    save_file(state, work / "clip" / "open_clip_model.safetensors")
    return stage


# In order; each loads what the previous ones saved, trains, and saves its models.
STAGES = {
    "autoencoder": _stage_autoencoder,
    "generator_clip": _stage_generator_clip,
    "unet": _stage_unet,
    "adapter_plus": _stage_adapter("plus"),
    "adapter_plain": _stage_adapter("plain"),
    "clip": _stage_clip,
}


def _finished_stages(work: Path, config: WorldConfig) -> dict[str, dict]:
    """Stages an interrupted run with the same settings finished in ``work`` (else none)."""
    path = work / PROGRESS_NAME
    if not path.is_file():
        return {}
    progress = json.loads(path.read_text(encoding="utf-8"))
    same = progress.get("config") == json.loads(json.dumps(asdict(config)))  # as JSON stores it
    return progress["stages"] if same else {}


def train_world(
    out_dir: str | Path, config: WorldConfig | None = None, command: str = "", world: World | str = "digits"
) -> dict:
    """Train every model of ``world`` into ``out_dir`` (the ``--models DIR`` layout); ``config``
    defaults to the world's own settings.

    The models are trained in ``<out_dir>.partial`` and moved into place at the end, so an
    interrupted run never leaves a half-trained world where a working one was; running the
    same command again resumes after the last finished stage (each stage draws from its own
    seed, so a resumed run trains what an uninterrupted one would). Returns the record also
    written to ``out_dir/world.json``.
    """
    world = get_world(world) if isinstance(world, str) else world
    config = config or world.config
    out_dir = Path(out_dir).expanduser().resolve()
    _check_target(out_dir)
    work = out_dir.with_name(out_dir.name + ".partial")
    done = _finished_stages(work, config)
    if not done:
        shutil.rmtree(work, ignore_errors=True)
        make_tiny_models(work, seed=config.seed, shapes=WORLD_SHAPES)
    started = time.perf_counter()
    runtime = resolve_runtime("cpu", "fp32")
    pool = Pool.load(world)
    for index, (name, run) in enumerate(STAGES.items()):
        if name in done:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * len(STAGES) + index)  # module init, dropout
            generator = torch.Generator().manual_seed(config.seed * len(STAGES) + index)
            done[name] = run(work, world, pool, config, generator, runtime).to_dict()
        progress = {"config": asdict(config), "stages": done}
        write_atomic(work / PROGRESS_NAME, json.dumps(progress, indent=1))
    (work / PROGRESS_NAME).unlink()

    record = {
        "command": command,
        "name": world.name,
        "preset": world.preset,
        **({"families": world.families} if world.families else {}),
        "config": asdict(config),
        "shapes": asdict(WORLD_SHAPES),
        "data": {
            "source": world.source,
            "image_size": IMAGE_SIZE,
            "pool_images": len(pool.images),
            "held_out_test": world.held_out(),
        },
        "stages": done,
        "seconds": round(sum(stage["seconds"] for stage in done.values()), 1),
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "environment": generation_environment(runtime.device, runtime.dtype)
        | {"open_clip": _open_clip_version()},
        "files": _file_hashes(work),
    }
    (work / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)
    return record


def _open_clip_version() -> str:
    import open_clip

    return open_clip.__version__
