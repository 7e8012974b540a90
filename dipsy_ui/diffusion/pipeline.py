"""DIPSY generation: Stable Diffusion 1.5 + one IP-Adapter with dual image guidance.

``DipsyPipeline`` is a ``StableDiffusionPipeline``: load it and its adapter with the usual
diffusers calls, then call it with a prompt, a positive image and optionally a negative image:

    pipe = DipsyPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_ip_adapter("h94/IP-Adapter", subfolder="models", weight_name="ip-adapter-plus_sd15.safetensors")
    image = pipe("A photo of a Bombay cat", positive_image=cat, negative_image=black_panther).images[0]

Every step evaluates the four branches of the guidance rule (``dipsy_guidance``) for every image
in ONE U-Net call, with the adapter switched on or off per row (``ip_attention``). With
``trace_every`` the call also returns Eq. 9 taken apart (``GuidanceStep``: each term and each
branch's clean-image estimate), from the predictions it computes anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from diffusers.models.embeddings import (
    ImageProjection,
    IPAdapterFaceIDImageProjection,
    IPAdapterFaceIDPlusImageProjection,
)
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils import BaseOutput

from ..config import GenerationConfig
from ..images import image_digest, to_rgb
from .augment import augment_adapter_image
from .ip_attention import (
    DualIPImageProjection,
    IPRouting,
    install_dual_ip_attention,
    plain_attn_processors,
    remove_dual_ip_attention,
)
from .preview import latent_preview, predicted_x0

SCHEDULERS = {
    "dpm-solver": DPMSolverMultistepScheduler,  # the authors' choice
    "ddim": DDIMScheduler,
    "pndm": PNDMScheduler,  # SD1.5's default
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

# Rows of the batched U-Net call, in order; a branch is left out when no weight uses it.
BRANCHES = ("u", "t", "tp", "tpn")
# The weighted differences of Eq. 9, in order; the rule adds the first two and subtracts the last.
TERMS = ("text", "positive", "negative")

ImageArg = PIL.Image.Image | Sequence[PIL.Image.Image | None] | None
WeightArg = float | Sequence[float]


def guidance_terms(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg) -> dict[str, Any]:
    """The three weighted differences of Eq. 9 (arXiv 2509.22635), named as in ``TERMS``:
    ``text = w_text (eps_t - eps_u)``, ``positive = w_pos (eps_tp - eps_t)`` and
    ``negative = w_neg (eps_tpn - eps_tp)`` (positive; the rule subtracts it)."""
    return {
        "text": w_text * (eps_t - eps_u),
        "positive": w_pos * (eps_tp - eps_t),
        "negative": w_neg * (eps_tpn - eps_tp),
    }


def combine_terms(eps_u, terms: dict[str, Any]):
    """Eq. 9 from its parts: ``eps_u + text + positive - negative``."""
    return eps_u + terms["text"] + terms["positive"] - terms["negative"]


def dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg):
    """DIPSY's extended classifier-free guidance (Boudier et al. 2025, arXiv 2509.22635, Eq. 9):
    ``eps_u + w_text (eps_t - eps_u) + w_pos (eps_tp - eps_t) - w_neg (eps_tpn - eps_tp)``.

    ``eps_u``: no condition; ``eps_t``: text; ``eps_tp``: text + positive image; ``eps_tpn``:
    text + positive + negative image. ``w_neg`` is given as a positive number and subtracted.
    With ``w_pos = w_neg = 0`` this is plain text CFG (Ho & Salimans 2022) with scale ``w_text``.
    Weights may be floats or tensors broadcastable to the predictions (one weight per image).
    """
    # Summed left to right from the named terms: the very operations of the one-line formula, so
    # a call that keeps the terms (trace_every) steps with the same bits as one that does not.
    return combine_terms(eps_u, guidance_terms(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg))


@dataclass
class GuidanceStep:
    """Eq. 9 taken apart at one denoising step, for every image of a call (``trace_every``).

    The prediction the sampler stepped with is ``combine_terms(eps_u, terms)`` bit for bit: the
    call computes it from these very tensors. Latent-sized tensors are (B, 4, h/8, w/8).
    """

    step: int  # 0-based, counted as callback_on_step_end counts
    timestep: int
    eps_u: torch.Tensor  # the unconditional noise prediction
    terms: dict[str, torch.Tensor]  # "text", "positive", "negative" -> the weighted difference
    # evaluated branch ("u", "t", "tp", "tpn") -> the clean-latent estimate (x0) its own noise
    # prediction implies; a branch no weight of the call uses is not evaluated, so it is absent
    x0: dict[str, torch.Tensor]

    def strengths(self) -> dict[str, torch.Tensor]:
        """Each term's strength, one per image: its root mean square over the latent (the L2
        norm divided by the square root of the element count), so strengths compare across
        image sizes; a noise prediction's own RMS is about 1."""
        return {name: term.float().pow(2).mean(dim=(1, 2, 3)).sqrt() for name, term in self.terms.items()}


@dataclass
class DipsyPipelineOutput(BaseOutput):
    """``images``: PIL list, numpy/torch array, or latents; ``None`` if the call was interrupted.
    ``trace``: the recorded steps in order, with ``trace_every`` (else ``None``)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    interrupted: bool = False
    trace: list[GuidanceStep] | None = None


@dataclass
class _Rows:
    """Validated per-image inputs of one call."""

    prompts: list[str]
    positives: list[PIL.Image.Image]
    negatives: list[PIL.Image.Image | None]
    weights: dict[str, list[float]]  # w_text, w_pos, w_neg, ip_adapter_scale -> one per image


def _as_list(name: str, value, size: int | None) -> list:
    if isinstance(value, list | tuple):
        if size is not None and len(value) != size:
            raise ValueError(f"{name} has {len(value)} entries but the batch has {size} images")
        return list(value)
    return [value] * (size or 1)


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _check_image(name: str, image, optional: bool = False) -> PIL.Image.Image | None:
    if image is None and optional:
        return None
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"{name} must be a PIL image, got {type(image).__name__}")
    return to_rgb(image)


class DipsyPipeline(StableDiffusionPipeline):
    """Stable Diffusion 1.5 with DIPSY dual IP-Adapter guidance (arXiv 2509.22635).

    Components, loading, saving and offloading are those of ``StableDiffusionPipeline``; this
    class adds the per-row adapter routing (installed by :meth:`load_ip_adapter`) and a
    ``__call__`` implementing the four-branch guidance rule.

    The inherited IP-Adapter methods either work on the DIPSY adapter (``load_ip_adapter``,
    ``set_ip_adapter_scale``, ``unload_ip_adapter``, ``encode_image``) or raise an error that
    names what to use instead (``prepare_ip_adapter_image_embeds``; the ``ip_adapter_image`` and
    ``ip_adapter_image_embeds`` call arguments).
    """

    # The adapter scale s of calls that pass none: the authors' value until set_ip_adapter_scale.
    _default_ip_adapter_scale = GenerationConfig.ip_adapter_scale

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict,
        subfolder,
        weight_name,
        image_encoder_folder: str | None = "image_encoder",
        **kwargs,
    ):
        """diffusers' ``load_ip_adapter`` (same arguments), then per-row routing installed on
        the loaded weights. One adapter serves both the positive and the negative image; loading
        another one replaces it.

        Refused (``ValueError``): several adapters (lists of weight names), no image encoder
        (DIPSY encodes its images itself), and FaceID adapters, which take face-recognition
        embeddings instead of images (the pipeline is then left without an adapter).
        """
        if isinstance(weight_name, list | tuple) and len(weight_name) != 1:
            raise ValueError(
                "DipsyPipeline loads exactly one IP-Adapter (it serves positive and negative images): "
                "pass one weight_name"
            )
        if image_encoder_folder is None and self.image_encoder is None:
            raise ValueError(
                "DipsyPipeline encodes its adapter images itself and needs the image encoder: leave "
                "image_encoder_folder at its default, or pass image_encoder= to from_pretrained"
            )
        plain_processors = plain_attn_processors(self.unet)
        loras = set(getattr(self.unet, "peft_config", {}))
        super().load_ip_adapter(
            pretrained_model_name_or_path_or_dict,
            subfolder,
            weight_name,
            image_encoder_folder=image_encoder_folder,
            **kwargs,
        )
        install_dual_ip_attention(self.unet, plain_processors)
        projection = self.unet.encoder_hid_proj.image_projection_layers[0]
        if isinstance(projection, IPAdapterFaceIDImageProjection | IPAdapterFaceIDPlusImageProjection):
            # Only the loaded weights tell the variant. Undo the load, including the LoRA that
            # diffusers attaches to the U-Net for FaceID adapters: with no other LoRA, unloading
            # them all also unwraps the layers PEFT wrapped; else only the added ones go.
            self.unload_ip_adapter()
            if added := sorted(set(getattr(self.unet, "peft_config", {})) - loras):
                if loras:
                    self.delete_adapters(added)
                else:
                    self.unload_lora_weights()
            raise ValueError(
                "FaceID IP-Adapters take face-recognition embeddings, not images; DipsyPipeline "
                "needs an image IP-Adapter (ip-adapter-plus_sd15, ip-adapter_sd15 or "
                "ip-adapter-full-face_sd15). No adapter is loaded now."
            )

    def set_ip_adapter_scale(self, scale: float) -> None:
        """Set the adapter scale ``s`` that calls without ``ip_adapter_scale`` use (0.6 until
        set; it stays set when the adapter is unloaded or replaced). A call's own
        ``ip_adapter_scale`` still overrides it.

        One number, applied to both images in every cross-attention layer: the routing has one
        scale per image, so diffusers' per-block dicts (InstantStyle) and per-adapter lists are
        refused (``ValueError``).
        """
        if isinstance(scale, dict | list | tuple):
            raise ValueError(
                "set_ip_adapter_scale takes one number: DIPSY's one adapter serves both images with "
                "one scale in every layer, so per-block (InstantStyle) or per-adapter scales cannot "
                f"be honoured, got {scale!r}. Pass a float; for one scale per image, pass a list as "
                "the call's ip_adapter_scale."
            )
        self._default_ip_adapter_scale = _check_weight("ip_adapter_scale", scale)

    def unload_ip_adapter(self) -> None:
        """Remove the adapter and return to a plain ``StableDiffusionPipeline`` state: the U-Net
        gets back the attention processors it had before ``load_ip_adapter``, and loses the image
        projection and the adapter weights (its state dict is that of a U-Net that never had an
        adapter); the image encoder is removed. As in diffusers, the feature extractor stays (the
        safety checker uses it), and without an adapter only the image encoder is removed."""
        # diffusers' own unload rebuilds every processor with ``value.__class__()``, which cannot
        # build the per-row processors (they hold the adapter's weights).
        if isinstance(self.unet.encoder_hid_proj, DualIPImageProjection):
            remove_dual_ip_attention(self.unet)
        # The pipeline's __setattr__ also records the removal in its config (for save_pretrained).
        self.image_encoder = None

    def prepare_ip_adapter_image_embeds(self, *args, **kwargs):
        """Refused (``NotImplementedError``): DipsyPipeline's call encodes and routes its images
        itself and takes no precomputed embeddings; pass PIL images as ``positive_image`` /
        ``negative_image`` (:meth:`encode_adapter_images` gives the features the adapter sees)."""
        raise NotImplementedError(
            "DipsyPipeline takes no precomputed IP-Adapter embeddings: pass PIL images as "
            "positive_image / negative_image (encode_adapter_images gives the features the adapter sees)"
        )

    def use_scheduler(self, name: str) -> None:
        """Switch the sampler, keeping the model's noise schedule (scheduler config)."""
        if name not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {name!r}")
        self.scheduler = SCHEDULERS[name].from_config(self.scheduler.config)

    def request_interrupt(self) -> None:
        """Stop the running call at the start of its next step (safe from another thread)."""
        self._interrupt = True

    # -- inputs ----------------------------------------------------------------------------

    def _check_rows(
        self, prompt, positive_image, negative_image, generator, weights: dict[str, Any]
    ) -> _Rows:
        if positive_image is None:
            raise ValueError(
                "positive_image is required: the image (or list of images) of the class to generate"
            )
        sized = {
            "prompt": prompt,
            "positive_image": positive_image,
            "negative_image": negative_image,
            "generator": generator,
        }
        sized |= weights
        sizes = {name: len(value) for name, value in sized.items() if isinstance(value, list | tuple)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"list arguments must have the same length, got {sizes}")
        size = next(iter(sizes.values()), 1)
        if size == 0:
            raise ValueError(f"list arguments must not be empty, got {sizes}")
        prompts = _as_list("prompt", prompt, size)
        if not all(isinstance(text, str) for text in prompts):
            raise ValueError(f"prompt must be a string or a list of strings, got {prompt!r}")
        return _Rows(
            prompts=prompts,
            positives=[
                _check_image("positive_image", image)
                for image in _as_list("positive_image", positive_image, size)
            ],
            negatives=[
                _check_image("negative_image", image, optional=True)
                for image in _as_list("negative_image", negative_image, size)
            ],
            weights={
                name: [_check_weight(name, w) for w in _as_list(name, value, size)]
                for name, value in weights.items()
            },
        )

    def _check_call_args(
        self, height: int, width: int, num_inference_steps: int, output_type: str, trace_every: int | None
    ) -> None:
        if not hasattr(self.unet, "encoder_hid_proj") or not isinstance(
            self.unet.encoder_hid_proj, DualIPImageProjection
        ):
            raise ValueError(
                "no IP-Adapter is loaded: call pipe.load_ip_adapter(...) before generating (text-only "
                "generation: StableDiffusionPipeline.from_pipe(pipe))"
            )
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % self.vae_scale_factor:
                raise ValueError(
                    f"{name} must be a positive multiple of {self.vae_scale_factor}, got {value!r}"
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if trace_every is not None and (
            isinstance(trace_every, bool) or not isinstance(trace_every, int) or trace_every < 1
        ):
            raise ValueError(f"trace_every must be None or an integer >= 1, got {trace_every!r}")

    # -- adapter images ---------------------------------------------------------------------

    def encode_adapter_images(self, images: list[PIL.Image.Image]) -> torch.Tensor:
        """Image-encoder features the adapter projects: the penultimate hidden states for
        IP-Adapter Plus, the pooled image embedding for the plain adapter (as diffusers does)."""
        pixels = self.feature_extractor(images, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self._execution_device, dtype=self.image_encoder.dtype)
        if isinstance(self.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection):
            return self.image_encoder(pixels).image_embeds
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]

    def _route_adapter_images(
        self, rows: _Rows, branches: tuple[str, ...], generators: list, augment: bool
    ) -> IPRouting:
        """Encode every distinct adapter image once and route it to the rows that attend to it."""
        size = len(rows.prompts)
        positives, negatives = list(rows.positives), list(rows.negatives)
        if augment:
            for i in range(size):
                positives[i] = augment_adapter_image(positives[i], generators[i])
                if negatives[i] is not None:
                    negatives[i] = augment_adapter_image(negatives[i], generators[i])
        distinct: dict[str, int] = {}
        images: list[PIL.Image.Image] = []

        def image_id(image: PIL.Image.Image) -> int:
            key = image_digest(image)
            if key not in distinct:
                distinct[key] = len(images)
                images.append(image)
            return distinct[key]

        groups: list[list[tuple[int, int, float]]] = [[], []]  # (row, image, scale): positive, negative
        for i in range(size):
            scale = rows.weights["ip_adapter_scale"][i]
            if scale == 0:
                continue
            for branch in ("tp", "tpn"):
                if branch in branches:
                    groups[0].append((branches.index(branch) * size + i, image_id(positives[i]), scale))
            if "tpn" in branches and negatives[i] is not None:
                groups[1].append((branches.index("tpn") * size + i, image_id(negatives[i]), scale))
        pairs = groups[0] + groups[1]
        device = self._execution_device
        embeds = self.encode_adapter_images(images) if images else torch.empty(0, device=device)
        return IPRouting(
            embeds=embeds,
            query_rows=torch.tensor([row for row, _, _ in pairs], dtype=torch.long, device=device),
            token_index=torch.tensor([image for _, image, _ in pairs], dtype=torch.long, device=device),
            scale=torch.tensor([scale for _, _, scale in pairs], dtype=torch.float32, device=device),
            groups=tuple(len(group) for group in groups if group),
        )

    # -- outputs ----------------------------------------------------------------------------

    @torch.no_grad()
    def latents_to_images(self, latents: torch.Tensor, output_type: str = "pil", generator=None):
        """Decode latents (B, 4, h/8, w/8) through the VAE into images of ``output_type`` ("pil",
        "np" or "pt"), as a call's last step does; e.g. a traced step's clean-latent estimates."""
        decoded = self.vae.decode(
            latents.to(self.vae.dtype) / self.vae.config.scaling_factor,
            return_dict=False,
            generator=generator,
        )[0]
        return self.image_processor.postprocess(
            decoded, output_type=output_type, do_denormalize=[True] * len(latents)
        )

    def _trace_step(self, step: int, timestep, model_input: torch.Tensor, eps: dict, terms: dict, branches):
        """One ``GuidanceStep``: the terms as computed, and each evaluated branch's clean estimate."""
        return GuidanceStep(
            step=step,
            timestep=int(timestep),
            eps_u=eps["u"].clone(),  # a view would keep the whole batched U-Net output alive
            terms=terms,
            x0={
                branch: predicted_x0(self.scheduler, model_input, eps[branch], timestep)
                for branch in branches
            },
        )

    # -- call --------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        positive_image: ImageArg = None,
        negative_image: ImageArg = None,
        w_text: WeightArg = GenerationConfig.w_text,
        w_pos: WeightArg = GenerationConfig.w_pos,
        w_neg: WeightArg = GenerationConfig.w_neg,
        ip_adapter_scale: WeightArg | None = None,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
        augment: bool = False,
        trace_every: int | None = None,
        return_dict: bool = True,
        ip_adapter_image: Any = None,
        ip_adapter_image_embeds: Any = None,
    ):
        """Generate one image per row.

        Args:
            prompt: class prompt, or one per image.
            positive_image: image of the class (PIL), or one per image. Any mode; converted to RGB.
                Required (its default only lets a stock-style call be told what to pass).
            negative_image: image of a confusable class, one per image, or ``None`` (no negative
                term; ``None`` entries in a list switch it off for that image).
            w_text, w_pos, w_neg: guidance weights of Eq. 9 (``w_neg`` positive, subtracted); a
                float or one per image (a weight sweep is one batched call).
            ip_adapter_scale: adapter scale ``s`` for both images; float or one per image.
                ``None``: the pipeline's default (:meth:`set_ip_adapter_scale`, initially 0.6).
            num_inference_steps, height, width: as in diffusers; sizes must be multiples of 8.
            generator: one generator, or one per image (then each image depends on its own
                generator only, and equals the single call with that generator).
            latents: optional initial noise (B, 4, height/8, width/8).
            output_type: "pil", "np", "pt" or "latent".
            callback_on_step_end: ``f(pipe, step, timestep, kwargs)`` after every step; ``kwargs``
                holds ``latents``, ``x0`` (clean-latent estimate) and ``preview`` (uint8 RGB,
                (B, h/8, w/8, 3)). A returned dict may replace ``latents``.
            augment: apply the adapter-input augmentation to both images, drawn from each row's
                generator (the batch job turns it on).
            trace_every: record Eq. 9 taken apart every k-th step (steps 0, k, 2k, ... and the
                last): the output's ``trace`` holds one :class:`GuidanceStep` per recorded step,
                with each term, ``eps_u`` and each evaluated branch's clean-latent estimate, for
                every image. No extra U-Net call, and the images are the same bit for bit as
                without it. Decode an estimate cheaply with ``preview.latent_preview`` or through
                the VAE with :meth:`latents_to_images`. ``None``: no trace.
            ip_adapter_image, ip_adapter_image_embeds: StableDiffusionPipeline's adapter inputs,
                refused (``ValueError``): pass PIL images as ``positive_image`` / ``negative_image``.

        Returns a :class:`DipsyPipelineOutput`; with ``return_dict=False`` the tuple ``(images,)``,
        or ``(images, trace)`` with ``trace_every``.
        """
        # 0. Default size: the U-Net's native resolution (512 for SD1.5).
        native = self.unet.config.sample_size * self.vae_scale_factor
        height = native if height is None else height
        width = native if width is None else width

        # 1. Check inputs. The stock adapter inputs first: a stock-style call has no positive_image.
        for name, value in (
            ("ip_adapter_image", ip_adapter_image),
            ("ip_adapter_image_embeds", ip_adapter_image_embeds),
        ):
            if value is not None:
                raise ValueError(
                    f"{name} is StableDiffusionPipeline's adapter input; DipsyPipeline encodes its "
                    "images itself: pass the class image as positive_image (PIL) and optionally a "
                    "confusable class's image as negative_image"
                )
        self._check_call_args(height, width, num_inference_steps, output_type, trace_every)
        if ip_adapter_scale is None:
            ip_adapter_scale = self._default_ip_adapter_scale
        weights = {"w_text": w_text, "w_pos": w_pos, "w_neg": w_neg, "ip_adapter_scale": ip_adapter_scale}
        rows = self._check_rows(prompt, positive_image, negative_image, generator, weights)
        size = len(rows.prompts)
        generators = list(generator) if isinstance(generator, list | tuple) else [generator] * size
        device = self._execution_device
        self._interrupt = False

        # 2. Branches: evaluate a branch only if some image's weights use it; leaving one out is
        # exact, because its difference term is then multiplied by zero.
        adapter_on = [s > 0 for s in rows.weights["ip_adapter_scale"]]
        need_tpn = any(
            on and w > 0 and neg is not None
            for on, w, neg in zip(adapter_on, rows.weights["w_neg"], rows.negatives, strict=True)
        )
        need_tp = need_tpn or any(
            on and w > 0 for on, w in zip(adapter_on, rows.weights["w_pos"], strict=True)
        )
        branches = BRANCHES[: 2 + need_tp + need_tpn]

        # 3. Text: class prompts and the empty prompt, encoded once for all steps.
        prompt_embeds, empty_embeds = self.encode_prompt(rows.prompts, device, 1, True)
        text_states = torch.cat([empty_embeds] + [prompt_embeds] * (len(branches) - 1))

        # 4. Timesteps.
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)

        # 5. Initial noise, drawn before any augmentation so that switching augmentation on or
        # off keeps the same noise for the same generator.
        if latents is not None:
            expected = (
                size,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
        latents = self.prepare_latents(
            size, self.unet.config.in_channels, height, width, prompt_embeds.dtype, device, generator, latents
        )

        # 6. Adapter images: encoded and projected once per call, not per step.
        routing = self._route_adapter_images(rows, branches, generators, augment)
        routing = self.unet.encoder_hid_proj(routing)
        w = {
            name: torch.tensor(values, dtype=latents.dtype, device=device).view(-1, 1, 1, 1)
            for name, values in rows.weights.items()
        }
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)
        trace = [] if trace_every is not None else None

        # 7. Denoising loop: all branches of all images in one U-Net call per step.
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self._interrupt:
                    break
                model_input = self.scheduler.scale_model_input(torch.cat([latents] * len(branches)), t)
                noise = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=text_states,
                    added_cond_kwargs={"image_embeds": routing},
                    return_dict=False,
                )[0]
                eps = dict(zip(branches, noise.chunk(len(branches)), strict=True))
                eps.setdefault("tp", eps["t"])
                eps.setdefault("tpn", eps["tp"])
                # Eq. 9 as dipsy_guidance computes it, with its terms kept for the trace.
                terms = guidance_terms(
                    eps["u"], eps["t"], eps["tp"], eps["tpn"], w["w_text"], w["w_pos"], w["w_neg"]
                )
                noise_pred = combine_terms(eps["u"], terms)
                if trace is not None and (i % trace_every == 0 or i == len(timesteps) - 1):
                    trace.append(self._trace_step(i, t, model_input[:size], eps, terms, branches))
                if callback_on_step_end is not None:
                    x0 = predicted_x0(self.scheduler, model_input[:size], noise_pred, t)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[
                    0
                ]
                if callback_on_step_end is not None:
                    callback_kwargs = {"latents": latents, "x0": x0, "preview": latent_preview(x0)}
                    latents = (callback_on_step_end(self, i, t, callback_kwargs) or {}).get(
                        "latents", latents
                    )
                progress_bar.update()

        if self._interrupt:
            self.maybe_free_model_hooks()
            return DipsyPipelineOutput(images=None, interrupted=True) if return_dict else (None,)

        # 8. Decode.
        images = (
            latents if output_type == "latent" else self.latents_to_images(latents, output_type, generator)
        )
        self.maybe_free_model_hooks()
        if return_dict:
            return DipsyPipelineOutput(images=images, trace=trace)
        return (images,) if trace is None else (images, trace)
