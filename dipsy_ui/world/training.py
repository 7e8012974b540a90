"""The training of a world's models, as pure functions of models and tensors: the
shared AdamW loop (:func:`train_steps`, one :class:`Stage` record per run), the autoencoder
(:func:`train_vae`), the U-Net on the frozen text encoder's caption states (:func:`train_unet`),
and the two CLIPs with the contrastive loss (:func:`train_generator_clip`, :func:`train_clip`).
The IP-Adapters are trained in :mod:`.adapters`; :mod:`.build` runs the stages in order."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..diffusion.augment import augment_adapter_image
from .config import WorldConfig, to_tensor

# -- the training loop -----------------------------------------------------------------------------


@dataclass
class Stage:
    """What one training stage did, for ``world.json``."""

    steps: int
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss of each tenth of the run

    def to_dict(self) -> dict:
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "losses": self.losses}


def _schedule(optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps)),
    )


def train_steps(
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


def random_batch(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` indices drawn uniformly (with replacement) from ``range(n)``."""
    return torch.randint(n, (size,), generator=generator)


# -- autoencoder -----------------------------------------------------------------------------------


def train_vae(vae, pixels: torch.Tensor, config: WorldConfig, generator: torch.Generator) -> Stage:
    """Reconstruction (MSE) + 1e-6 KL, SD's autoencoder objective without the adversarial term;
    then ``scaling_factor`` set to 1 / std of the pool's latents."""
    vae.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        x = pixels[random_batch(len(pixels), config.vae_batch_size, generator)]
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(reconstruction, x) + 1e-6 * posterior.kl().mean()

    stage = train_steps("autoencoder", list(vae.parameters()), config.vae_steps, config.lr, loss_at)
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


# -- U-Net on the frozen text encoder --------------------------------------------------------------


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids exactly as StableDiffusionPipeline.encode_prompt makes them (77, padded)."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def diffusion_loss(unet, noise_schedule, latents, text_states, generator, **unet_kwargs) -> torch.Tensor:
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

    def __init__(self, pipe, world):
        self.templates = len(world.templates)
        self.texts = [""] + [
            world.caption(label, t) for label in range(len(world.classes)) for t in range(self.templates)
        ]
        with torch.no_grad():
            self.states = pipe.text_encoder(token_ids(pipe.tokenizer, self.texts))[0]

    def sample(self, labels: torch.Tensor, dropout: float, generator: torch.Generator) -> torch.Tensor:
        """One random caption of each label's class, or the empty prompt with probability ``dropout``."""
        template = torch.randint(self.templates, (len(labels),), generator=generator)
        index = 1 + labels * self.templates + template
        index[torch.rand(len(labels), generator=generator) < dropout] = 0
        return self.states[index]


def train_unet(pipe, latents, labels, world, config: WorldConfig, generator: torch.Generator) -> Stage:
    """The U-Net on captioned pool latents, the text encoder frozen (as in SD1.5)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    captions = CaptionStates(pipe, world)
    mean, std = latents
    pipe.unet.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = random_batch(len(mean), config.batch_size, generator)
        x0 = mean[batch] + std[batch] * torch.randn(mean[batch].shape, generator=generator)
        text = captions.sample(labels[batch], config.text_dropout, generator)
        return diffusion_loss(pipe.unet, noise_schedule, x0, text, generator)

    stage = train_steps("U-Net", list(pipe.unet.parameters()), config.unet_steps, config.lr, loss_at)
    pipe.unet.eval().requires_grad_(False)
    return stage


# -- the two CLIPs (contrastive) -------------------------------------------------------------------


def adapter_view(image: Image.Image, generator: torch.Generator) -> Image.Image:
    """The image condition of one training example: half of the time the image itself, half of
    the time the adapter-input augmentation of it, so that generation works with the batch job's
    augmentation on (the authors' default) and off (previews of the image as it is). The
    generator's image encoder trains on it here, and the adapters in :mod:`.adapters`."""
    if float(torch.rand((), generator=generator)) < 0.5:
        return image
    return augment_adapter_image(image, generator)


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


def _group_captions(world, step: int, groups: list[dict]) -> list[str]:
    """One caption per contrastive target, the template cycling with the step."""
    template = world.templates[step % len(world.templates)]
    return [template.format(**fields) for fields in groups]


def train_generator_clip(pipe, images: list[Image.Image], labels: torch.Tensor, world, config: WorldConfig,
                         generator: torch.Generator) -> Stage:  # fmt: skip
    """The generator's own CLIP, as SD1.5 and IP-Adapter inherit theirs: the text encoder and
    the adapter's image encoder trained together with the contrastive loss on every image and
    the world's captions (classes captioned alike are one target). The image side sees what it
    will see when conditioning generation (:func:`adapter_view`)."""
    groups, of_label = world.caption_groups(world.classes)
    targets = torch.as_tensor(of_label)[labels]
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    modules = [pipe.text_encoder, pipe.image_encoder]
    for module in modules:
        module.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = random_batch(len(images), config.batch_size, generator)
        views = [adapter_view(images[int(i)], generator) for i in batch]
        pixels = pipe.feature_extractor(views, return_tensors="pt").pixel_values
        ids = token_ids(pipe.tokenizer, _group_captions(world, step, groups))
        return contrastive_loss(
            pipe.image_encoder(pixels).image_embeds,
            pipe.text_encoder(ids).pooler_output,
            logit_scale,
            targets[batch],
        )

    parameters = [p for module in modules for p in module.parameters()] + [logit_scale]
    stage = train_steps(
        "text + image encoders", parameters, config.generator_clip_steps, config.lr * 0.5, loss_at
    )
    for module in modules:
        module.eval().requires_grad_(False)
    return stage


def train_clip(clip, images: list[Image.Image], labels: torch.Tensor, world, config: WorldConfig,
               generator: torch.Generator) -> Stage:  # fmt: skip
    """The classifier backbone: open_clip's two towers with the contrastive loss, on the seen
    classes only (``config.clip_classes``), captioned as the world captions them."""
    import torchvision.transforms.v2 as T

    groups, of_label = world.caption_groups(config.clip_classes)
    group = torch.as_tensor(of_label)[labels]
    keep = group >= 0
    pixels = to_tensor([image for image, kept in zip(images, keep, strict=True) if kept]) * 0.5 + 0.5
    targets = group[keep]
    mean, std = torch.tensor(clip.mean).view(3, 1, 1), torch.tensor(clip.std).view(3, 1, 1)
    augment = T.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.85, 1.1), fill=1.0)
    model = clip.model.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = random_batch(len(pixels), config.batch_size, generator)
        torch.manual_seed(int(torch.randint(2**31, (), generator=generator)))  # torchvision's draws
        views = torch.stack([(augment(pixels[i]) - mean) / std for i in batch])
        text = clip.tokenizer(_group_captions(world, step, groups))
        return contrastive_loss(
            model.encode_image(views), model.encode_text(text), model.logit_scale, targets[batch]
        )

    stage = train_steps(
        "CLIP backbone", list(model.parameters()), config.clip_steps, config.lr * 0.5, loss_at
    )
    model.eval().requires_grad_(False)
    return stage
