"""Self-made tiny models in the exact on-disk layouts of the real ones.

``python -m dipsy_ui make-tiny-models OUT_DIR`` writes

- ``OUT_DIR/sd/``: an SD1.5-shaped diffusers pipeline folder (model_index.json, unet/, vae/,
  text_encoder/, tokenizer/, scheduler/, feature_extractor/) whose tokenizer is the real CLIP
  BPE tokenizer, derived from the vocabulary open_clip ships, so prompts tokenize exactly as
  with SD1.5;
- ``OUT_DIR/ip-adapter/models/``: IP-Adapter Plus and plain weight files in the original h94
  key layout (``image_proj.*``, ``ip_adapter.*``) plus ``image_encoder/``;
- ``OUT_DIR/clip/``: an open_clip folder (``open_clip_config.json`` +
  ``open_clip_model.safetensors``), the layout of the hub's open_clip repositories.

The models have random weights (their images are noise) but every shape convention of the real
ones, so :mod:`dipsy_ui.models` loads them with the same calls, and the whole product can be
exercised offline in seconds. Output is deterministic: the same bytes on every run.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

PLAIN_ADAPTER_TOKENS = 4


@dataclass(frozen=True)
class Shapes:
    """Sizes of the written models (keyword arguments of each model's config).

    Widths are tiny by default; everything the loaders infer from shapes follows the real
    models: the text encoder has CLIP's 49408-token vocabulary and 77 positions, its width is
    the U-Net's cross-attention width, the Resampler keeps 4 layers of 64-wide heads (what
    diffusers' h94 converter assumes). ``SD15_UNET`` swaps in the real SD1.5 U-Net architecture
    for benchmarks; :mod:`dipsy_ui.world.build` uses its own shapes for the trained digit world.
    """

    cross_attention_dim: int = 32  # text and image token width the U-Net attends to
    resampler_queries: int = 4  # image tokens per adapter image (16 in IP-Adapter Plus)
    resampler_dim: int = 64  # Resampler width (one 64-wide head in the tiny models)
    unet: dict = field(
        default_factory=lambda: dict(
            sample_size=8,  # latent side; 64x64 pixels at the VAE's factor 8
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
        )
    )
    vae_channels: tuple[int, ...] = (8, 8, 16, 16)  # one block per entry: downsampling 2**(n-1)
    text_layers: int = 2
    text_intermediate: int = 64
    image_encoder: dict = field(  # CLIPVisionConfig of the adapter's image encoder
        default_factory=lambda: dict(
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=224,
            patch_size=32,
            projection_dim=32,
        )
    )
    clip: dict = field(  # open_clip model_cfg of the classifier backbone
        default_factory=lambda: {
            "embed_dim": 32,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        }
    )

    @property
    def image_size(self) -> int:
        """The generator's native image side in pixels."""
        return self.unet["sample_size"] * 2 ** (len(self.vae_channels) - 1)


# diffusers' UNet2DConditionModel defaults are SD1.5's architecture (860M parameters).
SD15_UNET = Shapes(cross_attention_dim=768, resampler_queries=16, unet=dict(sample_size=64))


def _clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP BPE vocabulary exactly as OpenAI's tokenizer builds it, from open_clip's file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_sd15_tokenizer(folder: Path) -> None:
    """Write an SD1.5 ``tokenizer/`` folder (vocab.json, merges.txt, configs) from open_clip's BPE."""
    vocab, merges = _clip_bpe_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    config = {
        **special,
        "tokenizer_class": CLIPTokenizer.__name__,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        # Without it the tokenizer would not truncate/pad prompts to CLIP's 77 positions.
        "model_max_length": 77,
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _tiny_sd_components(shapes: Shapes) -> dict:
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=4, cross_attention_dim=shapes.cross_attention_dim, **shapes.unet
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=shapes.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(shapes.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(shapes.vae_channels),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=shapes.image_size,
    )
    # bos/eos/pad ids and the activation as in SD1.5's text_encoder/config.json (eos_token_id=2
    # selects the pooling rule of the original CLIP checkpoint).
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=shapes.cross_attention_dim,
            intermediate_size=shapes.text_intermediate,
            num_attention_heads=4,
            num_hidden_layers=shapes.text_layers,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            projection_dim=shapes.cross_attention_dim,
        )
    )
    # SD1.5's scheduler/scheduler_config.json.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    side = shapes.image_encoder["image_size"]
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        do_normalize=True,
        do_resize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        resample=3,
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        scheduler=scheduler,
        feature_extractor=feature_extractor,
    )


def _write_sd(folder: Path, shapes: Shapes) -> UNet2DConditionModel:
    components = _tiny_sd_components(shapes)
    vocab, merges = _clip_bpe_vocab_and_merges()
    pipe = StableDiffusionPipeline(
        tokenizer=CLIPTokenizer(
            vocab=vocab, merges=[tuple(merge.split()) for merge in merges], model_max_length=77
        ),
        safety_checker=None,
        image_encoder=None,
        requires_safety_checker=False,
        **components,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    # save_pretrained writes the tokenizer in its own format; keep the hub repo's files instead.
    tokenizer_dir = folder / "tokenizer"
    for stale in tokenizer_dir.iterdir():
        stale.unlink()
    write_sd15_tokenizer(tokenizer_dir)
    return components["unet"]


def _rand(*shape: int, std: float = 0.1) -> torch.Tensor:
    return torch.randn(*shape) * std


def _layer_norm(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1.0 + _rand(dim), f"{prefix}.bias": _rand(dim)}


def _ip_attention_weights(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """``ip_adapter.{i}.to_k_ip/to_v_ip`` for every cross-attention, ``i`` its position in
    ``unet.attn_processors`` (the numbering of the original h94 files)."""
    weights = {}
    for index, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        shape = attention.to_k.weight.shape
        weights[f"ip_adapter.{index}.to_k_ip.weight"] = _rand(*shape, std=0.2)
        weights[f"ip_adapter.{index}.to_v_ip.weight"] = _rand(*shape, std=0.2)
    return weights


def _plus_projection_weights(shapes: Shapes) -> dict[str, torch.Tensor]:
    """An h94 Resampler (IP-Adapter Plus) state dict: 4 layers, head dim 64, FF mult 4."""
    dim, ff = shapes.resampler_dim, shapes.resampler_dim * 4
    weights = {
        "image_proj.latents": _rand(1, shapes.resampler_queries, dim, std=dim**-0.5),
        "image_proj.proj_in.weight": _rand(dim, shapes.image_encoder["hidden_size"]),
        "image_proj.proj_in.bias": _rand(dim),
        "image_proj.proj_out.weight": _rand(shapes.cross_attention_dim, dim),
        "image_proj.proj_out.bias": _rand(shapes.cross_attention_dim),
        **_layer_norm("image_proj.norm_out", shapes.cross_attention_dim),
    }
    for layer in range(4):
        prefix = f"image_proj.layers.{layer}"
        weights |= _layer_norm(f"{prefix}.0.norm1", dim) | _layer_norm(f"{prefix}.0.norm2", dim)
        weights[f"{prefix}.0.to_q.weight"] = _rand(dim, dim)
        weights[f"{prefix}.0.to_kv.weight"] = _rand(2 * dim, dim)
        weights[f"{prefix}.0.to_out.weight"] = _rand(dim, dim)
        weights |= _layer_norm(f"{prefix}.1.0", dim)
        weights[f"{prefix}.1.1.weight"] = _rand(ff, dim)
        weights[f"{prefix}.1.3.weight"] = _rand(dim, ff)
    return weights


def _plain_projection_weights(shapes: Shapes) -> dict[str, torch.Tensor]:
    """An h94 ``ImageProjection`` state dict: pooled embedding -> 4 tokens."""
    width = shapes.cross_attention_dim
    return {
        "image_proj.proj.weight": _rand(width * PLAIN_ADAPTER_TOKENS, shapes.image_encoder["projection_dim"]),
        "image_proj.proj.bias": _rand(width * PLAIN_ADAPTER_TOKENS),
        **_layer_norm("image_proj.norm", width),
    }


def _write_ip_adapter(folder: Path, unet: UNet2DConditionModel, shapes: Shapes) -> None:
    models = folder / "models"
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**shapes.image_encoder, hidden_act="gelu"))
    encoder.save_pretrained(models / "image_encoder", safe_serialization=True)
    attention = _ip_attention_weights(unet)
    save_file(_plus_projection_weights(shapes) | attention, models / "ip-adapter-plus_sd15.safetensors")
    save_file(_plain_projection_weights(shapes) | attention, models / "ip-adapter_sd15.safetensors")


def _write_clip(folder: Path, model_cfg: dict) -> None:
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic"},
    }
    model = open_clip.model.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")


def make_tiny_models(out_dir: str | Path, seed: int = 0, shapes: Shapes | None = None) -> Path:
    """Write the tiny SD1.5 pipeline, IP-Adapter files and open_clip model under ``out_dir``.

    Deterministic for a seed; the global RNG state of the caller is left untouched.
    """
    out_dir = Path(out_dir)
    shapes = shapes or Shapes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _write_sd(out_dir / "sd", shapes)
        _write_ip_adapter(out_dir / "ip-adapter", unet, shapes)
        _write_clip(out_dir / "clip", shapes.clip)
    return out_dir
