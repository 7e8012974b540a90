"""The IP-Adapters of a world: their weights in the h94 file layout
(:func:`h94_state_dict`), the start of their attention from the U-Net's own
(:func:`init_adapter_attention`), and their training with everything else frozen
(:func:`train_adapter`, Ye et al. 2023)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from .config import WorldConfig
from .training import CaptionStates, Stage, adapter_view, diffusion_loss, random_batch, train_steps


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


def train_adapter(pipe, latents, labels, images: list[Image.Image], steps: int, plus: bool, world,
                  config: WorldConfig, generator: torch.Generator) -> Stage:  # fmt: skip
    """Train the loaded adapter (image projection and ``to_k_ip``/``to_v_ip``) with everything
    else frozen, as IP-Adapter does; Plus reads the encoder's penultimate hidden states, plain
    its projected embedding (what diffusers feeds each at generation time)."""
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    captions = CaptionStates(pipe, world)
    mean, std = latents
    projection, processors = _adapter_modules(pipe.unet)
    modules = [projection, *(p for _, p in processors)]
    for module in modules:
        module.train().requires_grad_(True)

    def loss_at(step: int) -> torch.Tensor:
        batch = random_batch(len(mean), config.batch_size, generator)
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
        return diffusion_loss(pipe.unet, noise_schedule, x0, text, generator, added_cond_kwargs=image_embeds)

    parameters = [p for module in modules for p in module.parameters()]
    name = "IP-Adapter Plus" if plus else "IP-Adapter (plain)"
    stage = train_steps(name, parameters, steps, config.lr, loss_at)
    for module in modules:
        module.eval().requires_grad_(False)
    return stage
