"""What a world is trained with: the settings (:class:`WorldConfig`), the model shapes
(:data:`WORLD_SHAPES`), the digits' caption templates, and a world's pool images as tensors
(:class:`Pool`). Which world is which is in :mod:`.worlds`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..tiny import Shapes

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
    """Training settings of a world; the defaults made the shipped ``assets/digit-world`` (each
    world's own are :attr:`.worlds.World.config`)."""

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
    # The CLIP backbone sees only these classes (captioned as the world captions them). In the
    # digit world the curvy, mutually similar 3, 5, 6, 8 and 9 stay unseen, as fine-grained
    # classes are for real CLIP.
    clip_classes: tuple[str, ...] = ("zero", "one", "two", "four", "seven")

    @classmethod
    def quick(cls) -> WorldConfig:
        """A few steps per stage: exercises the whole command in seconds (tests, CI)."""
        return cls(batch_size=16, vae_batch_size=16, vae_steps=3, generator_clip_steps=2, unet_steps=3,
                   adapter_steps=3, plain_adapter_steps=2, clip_steps=3)  # fmt: skip


@dataclass(frozen=True)
class Pool:
    """A world's pool images (never its held-out ones) as the stages consume them."""

    images: list[Image.Image]  # 32x32 RGB, the demo data's rendering
    labels: torch.Tensor  # (N,) class of each image
    pixels: torch.Tensor  # (N, 3, 32, 32) in [-1, 1]

    @classmethod
    def load(cls, world) -> Pool:
        """The pool of a :class:`.worlds.World`."""
        images, labels = world.load_pool()
        return cls(images, torch.as_tensor(labels), to_tensor(images))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1], the range the VAE works in."""
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1
