"""The authors' formulation of DIPSY guidance, on stock diffusers components.

Their code release computes Eq. 9 with THREE U-Net calls per step, each on a batch of two: the
IP-Adapter is loaded twice (one copy for the positive, one for the negative image) and the
global adapter scales are switched between calls; half of two of the outputs is thrown away
(6 evaluations per step, 4 used). It is kept here as an independent reference: the tests check
that :class:`~dipsy_ui.diffusion.pipeline.DipsyPipeline` reproduces it, and the generation benchmark
measures what the single batched call saves.
"""

from __future__ import annotations

import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.embeddings import ImageProjection
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

from .pipeline import dipsy_guidance


def _image_embeds(pipe: StableDiffusionPipeline, image: PIL.Image.Image) -> torch.Tensor:
    """Adapter features of one image, shaped (batch of 2, 1 image, ...) as diffusers expects."""
    plus = not isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
    embeds, _ = pipe.encode_image(image, pipe._execution_device, 1, output_hidden_states=plus)
    return torch.stack([embeds, embeds])


@torch.no_grad()
def three_call_dipsy(
    pipe: StableDiffusionPipeline,
    prompt: str,
    positive_image: PIL.Image.Image,
    negative_image: PIL.Image.Image,
    *,
    w_text: float,
    w_pos: float,
    w_neg: float,
    ip_adapter_scale: float,
    num_inference_steps: int = 50,
    height: int | None = None,
    width: int | None = None,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
):
    """One image with the authors' three-call loop.

    ``pipe`` is a stock ``StableDiffusionPipeline`` with the same adapter loaded twice
    (``weight_name=[w, w]``): adapter 0 carries the positive image, adapter 1 the negative.
    """
    device = pipe._execution_device
    height = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
    width = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
    prompt_embeds, empty_embeds = pipe.encode_prompt(prompt, device, 1, True)
    text_pair = torch.cat([empty_embeds, prompt_embeds])
    image_embeds = [_image_embeds(pipe, positive_image), _image_embeds(pipe, negative_image)]
    timesteps, _ = retrieve_timesteps(pipe.scheduler, num_inference_steps, device)
    latents = pipe.prepare_latents(
        1, pipe.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, None
    )

    def two_rows(sample: torch.Tensor, t, scales: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        pipe.set_ip_adapter_scale(scales)
        out = pipe.unet(
            sample,
            t,
            encoder_hidden_states=text_pair,
            added_cond_kwargs={"image_embeds": image_embeds},
            return_dict=False,
        )[0]
        return out.chunk(2)

    for t in timesteps:
        sample = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        eps_u, eps_t = two_rows(sample, t, [0.0, 0.0])
        _, eps_tp = two_rows(sample, t, [ip_adapter_scale, 0.0])
        _, eps_tpn = two_rows(sample, t, [ip_adapter_scale, ip_adapter_scale])
        noise_pred = dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg)
        latents = pipe.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

    if output_type == "latent":
        return latents
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[
        0
    ]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True])
