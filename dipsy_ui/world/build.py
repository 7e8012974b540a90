"""The digit world: a miniature SD1.5 + IP-Adapter + CLIP, trained here on scikit-learn's digits.

``python -m dipsy_ui train-world DIR`` writes, in exactly the ``--models DIR`` layout of the
real weights (``sd/``, ``ip-adapter/models/``, ``clip/``), models that really draw digits:

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
Only the pool of :func:`dipsy_ui.data.digits_split` is used; its held-out digits never are.
The run is deterministic for a seed on a given machine, and ``world.json`` records the
settings, the split, losses, wall times and the SHA-256 of every written file.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data import DIGIT_NAMES, digit_image, digits_split, load_digits
from ..diffusion.augment import augment_adapter_image
from ..files import write_atomic
from ..generate import generation_environment
from ..models import ModelSpec, load_clip, load_stock_pipeline, resolve_runtime
from ..tiny import Shapes, make_tiny_models

RECORD_NAME = "world.json"
PROGRESS_NAME = "stages.json"  # finished stages of an interrupted run, in <out>.partial
IMAGE_SIZE = 32
CAPTION_TEMPLATES = (  # {c}: the digit's name, {n}: its numeral
    "A photo of the handwritten digit {c}",
    "a handwritten {c}",
    "the digit {c}",
    "a photo of a {c}",
    "{c}",
    "the number {n}",
    "handwritten {n}",
)

WORLD_SHAPES = Shapes(
    cross_attention_dim=64,
    resampler_queries=4,
    resampler_dim=64,
    unet=dict(
        sample_size=8,  # 8x8 latents: 32x32 pixels at the VAE's factor 4
        block_out_channels=(48, 96),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=16,
    ),
    vae_channels=(16, 32, 32),
    text_layers=2,
    text_intermediate=128,
    image_encoder=dict(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=IMAGE_SIZE,
        patch_size=4,
        projection_dim=64,
    ),
    clip={
        "embed_dim": 64,
        "quick_gelu": True,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 3, "width": 64, "head_width": 16, "patch_size": 4},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    },
)


@dataclass(frozen=True)
class WorldConfig:
    """Training settings of the digit world; the defaults made the shipped ``assets/digit-world``."""

    seed: int = 0
    batch_size: int = 128  # images per step (U-Net, adapters, CLIP)
    vae_batch_size: int = 64
    vae_steps: int = 500  # autoencoder
    generator_clip_steps: int = 400  # text encoder + adapter image encoder (contrastive)
    unet_steps: int = 1400  # U-Net
    adapter_steps: int = 600  # IP-Adapter Plus
    plain_adapter_steps: int = 250  # plain IP-Adapter
    clip_steps: int = 500  # open_clip classifier backbone
    lr: float = 1e-3  # AdamW, cosine decay after a 5% warm-up, for every stage
    text_dropout: float = 0.1  # empty prompt share while training the U-Net (text CFG)
    adapter_text_dropout: float = 0.5  # empty prompt share while training the adapters
    # The CLIP backbone sees only these digits (named in captions); the curvy, mutually similar
    # 3, 5, 6, 8 and 9 stay unseen, as fine-grained classes are for real CLIP.
    clip_classes: tuple[str, ...] = ("zero", "one", "two", "four", "seven")

    @classmethod
    def quick(cls) -> WorldConfig:
        """A few steps per stage: exercises the whole command in seconds (tests, CI)."""
        return cls(batch_size=16, vae_batch_size=16, vae_steps=3, generator_clip_steps=2, unet_steps=3,
                   adapter_steps=3, plain_adapter_steps=2, clip_steps=3)  # fmt: skip


@dataclass
class Stage:
    """What one training stage did, for ``world.json``."""

    steps: int
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss of each tenth of the run

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "losses": self.losses}


@dataclass(frozen=True)
class Pool:
    """The pool digits (never the held-out ones) as the stages consume them."""

    images: list[Image.Image]  # 32x32 RGB, the demo data's rendering
    labels: torch.Tensor  # (N,) digit of each image
    pixels: torch.Tensor  # (N, 3, 32, 32) in [-1, 1]

    @classmethod
    def load(cls) -> Pool:
        digits, labels = load_digits()
        pool, _ = digits_split()
        indices = np.sort(np.concatenate(list(pool.values())))
        images = [digit_image(digits[i], IMAGE_SIZE) for i in indices]
        return cls(images, torch.as_tensor(labels[indices]), to_tensor(images))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1], the range the VAE works in."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1


def _schedule(optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
    )


def _train(
    name: str,
    parameters: list[torch.nn.Parameter],
    steps: int,
    lr: float,
    loss_at: Callable[[int], torch.Tensor],
) -> Stage:
    """Run ``steps`` AdamW steps of ``loss_at(step)`` with a progress bar; the stage's record."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    scheduler = _schedule(optimizer, steps)
    stage, losses, started = Stage(steps), [], time.perf_counter()
    with tqdm(total=steps, desc=name, file=sys.stderr, dynamic_ncols=True) as bar:
        for step in range(steps):
            loss = loss_at(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            bar.update()
    stage.seconds = time.perf_counter() - started
    stage.losses = [round(float(np.mean(chunk)), 5) for chunk in np.array_split(losses, min(10, steps))]
    return stage


def _batch(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(n, (size,), generator=generator)


# -- 1. autoencoder --------------------------------------------------------------------------------


def train_vae(vae, pixels: torch.Tensor, config: WorldConfig, generator: torch.Generator) -> Stage:
    """Reconstruction (MSE) + 1e-6 KL, SD's autoencoder objective without the adversarial term;
    then ``scaling_factor`` set to 1 / std of the pool's latents."""
    vae.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        x = pixels[_batch(len(pixels), config.vae_batch_size, generator)]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()

    stage = _train("autoencoder", list(vae.parameters()), config.vae_steps, config.lr, loss_at)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        std = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)]).std()
    vae.register_to_config(scaling_factor=round(float(1 / std), 5))
    return stage


def encode_latents(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior mean and std of every image (sampled per step while training the U-Net)."""
    with torch.no_grad():
        posteriors = [vae.encode(chunk).latent_dist for chunk in pixels.split(256)]
    factor = vae.config.scaling_factor
    return torch.cat([p.mean for p in posteriors]) * factor, torch.cat([p.std for p in posteriors]) * factor


# -- 2. U-Net + text encoder -----------------------------------------------------------------------


def _token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids exactly as StableDiffusionPipeline.encode_prompt makes them (77, padded)."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _diffusion_loss(unet, noise_schedule, latents, text_states, generator, **unet_kwargs) -> torch.Tensor:
    """DDPM's noise-prediction loss at a uniformly drawn timestep (Ho et al. 2020), weighted by
    min(SNR, 5) / SNR (Min-SNR, Hang et al. 2023), which converges several times faster by not
    letting the nearly clean timesteps dominate."""
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(noise_schedule.config.num_train_timesteps, (len(latents),), generator=generator)
    noisy = noise_schedule.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states=text_states, **unet_kwargs).sample
    alphas = noise_schedule.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    weight = snr.clamp(max=5.0) / snr
    return (weight * F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))).mean()


class CaptionStates:
    """The frozen text encoder's states of every caption (and of the empty prompt), computed once."""

    def __init__(self, pipe):
        self.texts = [""] + [
            t.format(c=name, n=d) for d, name in enumerate(DIGIT_NAMES) for t in CAPTION_TEMPLATES
        ]
        with torch.no_grad():
            self.states = pipe.text_encoder(_token_ids(pipe.tokenizer, self.texts))[0]

    def sample(self, labels: torch.Tensor, dropout: float, generator: torch.Generator) -> torch.Tensor:
        """One random caption of each label's digit, or the empty prompt with probability ``dropout``."""
        template = torch.randint(len(CAPTION_TEMPLATES), (len(labels),), generator=generator)
        index = 1 + labels * len(CAPTION_TEMPLATES) + template
        index[torch.rand(len(labels), generator=generator) < dropout] = 0
        return self.states[index]


def train_unet(pipe, latents, labels, config: WorldConfig, generator: torch.Generator) -> Stage:
    """The U-Net on captioned pool latents, the text encoder frozen (as in SD1.5)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    captions = CaptionStates(pipe)
    mean, std = latents
    pipe.unet.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = _batch(len(mean), config.batch_size, generator)
        x0 = mean[batch] + std[batch] * torch.randn(mean[batch].shape, generator=generator)
        text = captions.sample(labels[batch], config.text_dropout, generator)
        return _diffusion_loss(pipe.unet, noise_schedule, x0, text, generator)

    stage = _train("U-Net", list(pipe.unet.parameters()), config.unet_steps, config.lr, loss_at)
    pipe.unet.eval().requires_grad_(False)
    return stage


# -- 3. IP-Adapters ----------------------------------------------------------------------------------


def _adapter_modules(unet) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """The loaded adapter's image projection and its attention processors, in
    ``unet.attn_processors`` order (the numbering of the h94 files)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    projection = unet.encoder_hid_proj.image_projection_layers[0]
    processors = list(unet.attn_processors.items())
    return projection, [
        (i, p) for i, (_, p) in enumerate(processors) if isinstance(p, IPAdapterAttnProcessor2_0)
    ]


def h94_state_dict(unet) -> dict[str, torch.Tensor]:
    """The loaded adapter's weights in the original h94 key layout: the inverse of diffusers'
    ``_convert_ip_adapter_image_proj_to_diffusers`` (Plus Resampler or plain ImageProjection)
    plus ``ip_adapter.{i}.to_k_ip/to_v_ip`` keyed by attention-processor position."""
    projection, processors = _adapter_modules(unet)
    state = {key: value.detach() for key, value in projection.state_dict().items()}
    weights = {}
    for key, value in state.items():
        if key.startswith("image_embeds."):  # plain: ImageProjection
            weights[f"image_proj.{key.replace('image_embeds.', 'proj.', 1)}"] = value
            continue
        parts = key.split(".")
        if parts[0] != "layers":
            weights[f"image_proj.{key}"] = value
            continue
        prefix, rest = f"image_proj.layers.{parts[1]}", ".".join(parts[2:])
        renamed = {
            "ln0": "0.norm1",
            "ln1": "0.norm2",
            "attn.to_q": "0.to_q",
            "attn.to_out.0": "0.to_out",
            "ff.0": "1.0",
            "ff.1.net.0.proj": "1.1",
            "ff.1.net.2": "1.3",
        }
        module, leaf = rest.rsplit(".", 1)
        if module == "attn.to_k":  # h94 keeps keys and values in one to_kv matrix
            weights[f"{prefix}.0.to_kv.{leaf}"] = torch.cat([value, state[key.replace("to_k", "to_v")]])
        elif module != "attn.to_v":
            weights[f"{prefix}.{renamed[module]}.{leaf}"] = value
    for index, processor in processors:
        weights[f"ip_adapter.{index}.to_k_ip.weight"] = processor.to_k_ip[0].weight.detach()
        weights[f"ip_adapter.{index}.to_v_ip.weight"] = processor.to_v_ip[0].weight.detach()
    return weights


def init_adapter_attention(folder: Path, unet) -> None:
    """Start every ``to_k_ip``/``to_v_ip`` from the U-Net's own ``to_k``/``to_v``, as IP-Adapter
    training does, in both adapter files (the rest keeps tiny's random initialisation)."""
    from safetensors.torch import load_file

    for weight in ("ip-adapter-plus_sd15.safetensors", "ip-adapter_sd15.safetensors"):
        path = folder / "ip-adapter" / "models" / weight
        state = load_file(path)
        for index, name in enumerate(unet.attn_processors):
            if name.endswith("attn2.processor"):
                attention = unet.get_submodule(name.removesuffix(".processor"))
                state[f"ip_adapter.{index}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
                state[f"ip_adapter.{index}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
        save_file(state, path)


def adapter_view(image: Image.Image, generator: torch.Generator) -> Image.Image:
    """The image condition of one training example: half of the time the image itself, half of
    the time the adapter-input augmentation of it, so that generation works with the batch job's
    augmentation on (the authors' default) and off (previews of the image as it is)."""
    if float(torch.rand((), generator=generator)) < 0.5:
        return image
    return augment_adapter_image(image, generator)


def train_adapter(pipe, latents, labels, images: list[Image.Image], steps: int, plus: bool,
                  config: WorldConfig, generator: torch.Generator) -> Stage:  # fmt: skip
    """Train the loaded adapter (image projection and ``to_k_ip``/``to_v_ip``) with everything
    else frozen, as IP-Adapter does; Plus reads the encoder's penultimate hidden states, plain
    its projected embedding (what diffusers feeds each at generation time)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    captions = CaptionStates(pipe)
    mean, std = latents
    projection, processors = _adapter_modules(pipe.unet)
    modules = [projection, *(p for _, p in processors)]
    for module in modules:
        module.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = _batch(len(mean), config.batch_size, generator)
        x0 = mean[batch] + std[batch] * torch.randn(mean[batch].shape, generator=generator)
        views = [adapter_view(images[int(i)], generator) for i in batch]
        with torch.no_grad():
            pixels = pipe.feature_extractor(views, return_tensors="pt").pixel_values
            if plus:
                features = pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
            else:
                features = pipe.image_encoder(pixels).image_embeds
        text = captions.sample(labels[batch], config.adapter_text_dropout, generator)
        image_embeds = {"image_embeds": [features[:, None]]}
        return _diffusion_loss(pipe.unet, noise_schedule, x0, text, generator, added_cond_kwargs=image_embeds)

    parameters = [p for module in modules for p in module.parameters()]
    name = "IP-Adapter Plus" if plus else "IP-Adapter (plain)"
    stage = _train(name, parameters, steps, config.lr, loss_at)
    for module in modules:
        module.eval().requires_grad_(False)
    return stage


# -- 4. CLIP classifier backbone -------------------------------------------------------------------


def contrastive_loss(image_features, text_features, logit_scale, targets) -> torch.Tensor:
    """CLIP's symmetric contrastive loss (Radford et al. 2021) with one caption per class:
    image -> caption over the classes, and caption -> image over the batch, where every image
    of the caption's class is a positive (so same-class images are never pushed apart)."""
    image_features, text_features = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.T
    present = torch.unique(targets)
    positives = (targets[None] == present[:, None]).float()
    return F.cross_entropy(logits, targets) + F.cross_entropy(
        logits.T[present], positives / positives.sum(1, keepdim=True)
    )


def _class_captions(step: int, classes: list[int]) -> list[str]:
    template = CAPTION_TEMPLATES[step % len(CAPTION_TEMPLATES)]
    return [template.format(c=DIGIT_NAMES[d], n=d) for d in classes]


def train_generator_clip(pipe, images: list[Image.Image], labels: torch.Tensor, config: WorldConfig,
                         generator: torch.Generator) -> Stage:  # fmt: skip
    """The generator's own CLIP, as SD1.5 and IP-Adapter inherit theirs: the text encoder and
    the adapter's image encoder trained together with the contrastive loss on every digit. The
    image side sees what it will see when conditioning generation (:func:`adapter_view`)."""
    classes = list(range(len(DIGIT_NAMES)))
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    modules = [pipe.text_encoder, pipe.image_encoder]
    for module in modules:
        module.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = _batch(len(images), config.batch_size, generator)
        views = [adapter_view(images[int(i)], generator) for i in batch]
        pixels = pipe.feature_extractor(views, return_tensors="pt").pixel_values
        ids = _token_ids(pipe.tokenizer, _class_captions(step, classes))
        return contrastive_loss(
            pipe.image_encoder(pixels).image_embeds,
            pipe.text_encoder(ids).pooler_output,
            logit_scale,
            labels[batch],
        )

    parameters = [p for module in modules for p in module.parameters()] + [logit_scale]
    stage = _train("text + image encoders", parameters, config.generator_clip_steps, config.lr * 0.5, loss_at)
    for module in modules:
        module.eval().requires_grad_(False)
    return stage


def train_clip(clip, images: list[Image.Image], labels: torch.Tensor, config: WorldConfig,
               generator: torch.Generator) -> Stage:  # fmt: skip
    """The classifier backbone: open_clip's two towers with the contrastive loss, on the seen
    digits only (``config.clip_classes``)."""
    import torchvision.transforms.v2 as T

    seen = [DIGIT_NAMES.index(name) for name in config.clip_classes]
    keep = torch.isin(labels, torch.tensor(seen))
    pixels = to_tensor([image for image, kept in zip(images, keep, strict=True) if kept]) * 0.5 + 0.5
    targets = torch.tensor([seen.index(int(label)) for label in labels[keep]])
    mean, std = torch.tensor(clip.mean).view(3, 1, 1), torch.tensor(clip.std).view(3, 1, 1)
    augment = T.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.85, 1.1), fill=1.0)
    model = clip.model.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = _batch(len(pixels), config.batch_size, generator)
        torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))  # torchvision's draws
        views = torch.stack([(augment(pixels[i]) - mean) / std for i in batch])
        text = clip.tokenizer(_class_captions(step, seen))
        return contrastive_loss(
            model.encode_image(views), model.encode_text(text), model.logit_scale, targets[batch]
        )

    stage = _train("CLIP backbone", list(model.parameters()), config.clip_steps, config.lr * 0.5, loss_at)
    model.eval().requires_grad_(False)
    return stage


# -- the whole run -----------------------------------------------------------------------------------


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
    if "dtype" in settings:
        settings["dtype"] = "float32"
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != RECORD_NAME
    }


def _check_target(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / RECORD_NAME).is_file():
        raise FileExistsError(
            f"{out_dir} exists and is not empty or a digit world ({RECORD_NAME} missing); choose another folder"
        )


def _spec(work: Path, variant: str = "plus") -> ModelSpec:
    return ModelSpec.from_models_dir(work, variant)


def _stage_autoencoder(work: Path, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime, adapter_copies=0)
    stage = train_vae(pipe.vae, pool.pixels, config, generator)
    _save_fp16(pipe.vae, work / "sd" / "vae")
    return stage


def _stage_generator_clip(work: Path, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime)  # the adapter load brings the image encoder
    stage = train_generator_clip(pipe, pool.images, pool.labels, config, generator)
    _save_fp16(pipe.text_encoder, work / "sd" / "text_encoder")
    _save_fp16(pipe.image_encoder, work / "ip-adapter" / "models" / "image_encoder")
    return stage


def _stage_unet(work: Path, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    pipe = load_stock_pipeline(_spec(work), runtime, adapter_copies=0)
    stage = train_unet(pipe, encode_latents(pipe.vae, pool.pixels), pool.labels, config, generator)
    _save_fp16(pipe.unet, work / "sd" / "unet")
    init_adapter_attention(work, pipe.unet)
    return stage


def _stage_adapter(variant: str) -> Callable:
    def run(work: Path, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
        spec = _spec(work, variant)
        pipe = load_stock_pipeline(spec, runtime)
        pipe.unet.requires_grad_(False)
        pipe.text_encoder.requires_grad_(False)
        steps = config.adapter_steps if variant == "plus" else config.plain_adapter_steps
        latents = encode_latents(pipe.vae, pool.pixels)
        stage = train_adapter(
            pipe, latents, pool.labels, pool.images, steps, variant == "plus", config, generator
        )
        weights = {
            key: value.to(torch.float16).contiguous() for key, value in h94_state_dict(pipe.unet).items()
        }
        save_file(weights, Path(spec.ip_adapter) / spec.ip_adapter_subfolder / spec.ip_adapter_weight)
        return stage

    return run


def _stage_clip(work: Path, pool: Pool, config: WorldConfig, generator, runtime) -> Stage:
    clip = load_clip(_spec(work), runtime)
    stage = train_clip(clip, pool.images, pool.labels, config, generator)
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


def train_world(out_dir: str | Path, config: WorldConfig | None = None, command: str = "") -> dict:
    """Train every model of the digit world into ``out_dir`` (the ``--models DIR`` layout).

    The models are trained in ``<out_dir>.partial`` and moved into place at the end, so an
    interrupted run never leaves a half-trained world where a working one was; running the
    same command again resumes after the last finished stage (each stage draws from its own
    seed, so a resumed run trains what an uninterrupted one would). Returns the record also
    written to ``out_dir/world.json``.
    """
    config = config or WorldConfig()
    out_dir = Path(out_dir).expanduser().resolve()
    _check_target(out_dir)
    work = out_dir.with_name(out_dir.name + ".partial")
    done = _finished_stages(work, config)
    if not done:
        shutil.rmtree(work, ignore_errors=True)
        make_tiny_models(work, seed=config.seed, shapes=WORLD_SHAPES)
    started = time.perf_counter()
    runtime = resolve_runtime("cpu", "fp32")
    pool = Pool.load()
    for index, (name, run) in enumerate(STAGES.items()):
        if name in done:
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * len(STAGES) + index)  # module init, dropout
            generator = torch.Generator().manual_seed(config.seed * len(STAGES) + index)
            done[name] = run(work, pool, config, generator, runtime).to_dict()
        progress = {"config": asdict(config), "stages": done}
        write_atomic(work / PROGRESS_NAME, json.dumps(progress, indent=1))
    (work / PROGRESS_NAME).unlink()

    _, test = digits_split()
    record = {
        "command": command,
        "config": asdict(config),
        "shapes": asdict(WORLD_SHAPES),
        "data": {
            "source": "sklearn.datasets.load_digits",
            "image_size": IMAGE_SIZE,
            "pool_images": len(pool.images),
            "held_out_test": {DIGIT_NAMES[label]: indices.tolist() for label, indices in test.items()},
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
