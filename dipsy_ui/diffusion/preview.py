"""Cheap step-by-step previews: the current clean-image estimate mapped to RGB without the VAE."""

from __future__ import annotations

import numpy as np
import torch

# A fixed linear map from SD1.5's 4 latent channels to RGB in [-1, 1], the approximation WebUIs
# call "approx cheap": a 4x3 matmul per pixel instead of a VAE decode, good enough to watch
# composition and colour emerge while the image denoises.
SD15_LATENT_TO_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def predicted_x0(scheduler, model_input: torch.Tensor, model_output: torch.Tensor, timestep) -> torch.Tensor:
    """The clean-latent estimate implied by a noise prediction at ``timestep``.

    ``model_input`` is the scheduler-scaled U-Net input, which for every SD1.5 scheduler is the
    variance-preserving ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` (DDPM, Ho et al. 2020, Eq. 4), so
    ``x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)``; v-prediction models are handled too.
    Schedulers without ``alphas_cumprod`` get the input back unchanged.
    """
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        return model_input
    alpha = alphas[int(round(float(timestep)))].to(model_input.device, torch.float32)
    x_t, out = model_input.float(), model_output.float()
    if scheduler.config.get("prediction_type", "epsilon") == "v_prediction":
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * out
    return (x_t - (1 - alpha).sqrt() * out) / alpha.sqrt()


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """Map latents (B, 4, h, w) to uint8 RGB previews (B, h, w, 3) at latent resolution."""
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), SD15_LATENT_TO_RGB.to(latents.device))
    return ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
