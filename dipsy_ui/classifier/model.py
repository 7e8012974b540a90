"""The CLIP + LoRA classifier: the model, its LoRA targets, and loading a trained one.

It follows the DataDream / DISEF recipe the DIPSY paper uses (REFERENCE.md section 4): CLIP with
LoRA on the attention of every block of both encoders, and a zero-shot style head,
``logits = logit_scale * cos(image, text(prompt(c)))``. With the LoRA weights at their initial
value (B = 0) or the adapter disabled it *is* the zero-shot classifier.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TrainDataError
from ..models import ClipBundle, ModelSpec, Runtime, load_clip, load_lora_adapter

ADAPTER_DIR = "adapter"  # peft adapter (adapter_config.json + adapter_model.safetensors)
CONFIG_NAME = "train_config.json"  # TrainConfig, class names, template and the ModelSpec


class SplitAttention(torch.nn.Module):
    """``nn.MultiheadAttention`` (self-attention) with its fused ``in_proj`` split into
    ``q_proj``/``k_proj``/``v_proj`` Linear layers; same weights, same call signature.

    LoRA then attaches to four plain Linear layers through peft's standard, exact code path.
    peft's own MultiheadAttention LoRA (0.21) merges the deltas into the weights around every
    forward pass: the frozen weights drift by float rounding at each call, the ``out_proj``
    delta is applied twice (W + 2 dW, huggingface/peft PR 3774) and LoRA dropout has no effect.
    The split is also how CLIP-LoRA, the recipe's LoRA for CLIP, applies it.
    """

    def __init__(self, mha: torch.nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "only plain self-attention (shared q/k/v width, no bias_k/zero_attn) can be split"
            )
        bias = mha.in_proj_bias is not None
        self.num_heads, self.batch_first, self.dropout = mha.num_heads, mha.batch_first, mha.dropout
        weights = mha.in_proj_weight.detach().chunk(3)
        biases = mha.in_proj_bias.detach().chunk(3) if bias else (None,) * 3
        for name, weight, b in zip(("q_proj", "k_proj", "v_proj"), weights, biases, strict=True):
            setattr(self, name, _linear(weight, b))
        out = mha.out_proj
        self.out_proj = _linear(out.weight.detach(), out.bias.detach() if out.bias is not None else None)

    def forward(self, query, key, value, need_weights=False, attn_mask=None, key_padding_mask=None, **_):
        if need_weights or key_padding_mask is not None:
            raise NotImplementedError("SplitAttention supports need_weights=False and no key_padding_mask")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, width = query.shape
        heads = [
            proj(x).view(batch, -1, self.num_heads, width // self.num_heads).transpose(1, 2)
            for proj, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        ]
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention: True = masked out; SDPA: True = attend
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(*heads, attn_mask=attn_mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    layer = torch.nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.requires_grad_(weight.requires_grad)
    return layer


def split_attention(model: torch.nn.Module) -> list[str]:
    """Replace every transformer block's ``attn`` (both encoders) by :class:`SplitAttention`,
    in place; returns the names replaced. Idempotent."""
    names = [
        name
        for name, module in model.named_modules()
        if name.endswith(".attn") and "resblocks" in name and isinstance(module, torch.nn.MultiheadAttention)
    ]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SplitAttention(model.get_submodule(name)))
    return names


# LoRA targets: the four attention projections of every block of the image and text encoders.
LORA_TARGETS = r".*resblocks\.\d+\.attn\.(q_proj|k_proj|v_proj|out_proj)"


def prompts(class_names: Sequence[str], template: str) -> list[str]:
    """One prompt per class: ``{c}`` in the template replaced by the class name."""
    return [template.replace("{c}", name) for name in class_names]


class ClipClassifier(torch.nn.Module):
    """CLIP (optionally with a peft LoRA adapter) as a classifier over fixed class prompts."""

    def __init__(self, clip: ClipBundle, class_names: Sequence[str], template: str, peft_model=None):
        super().__init__()
        self.clip = clip
        self.class_names = tuple(class_names)
        self.template = template
        # The peft wrapper injects its layers into clip.model in place; keep one of the two as the
        # submodule so parameters are not registered twice.
        self.net = peft_model if peft_model is not None else clip.model
        device = next(clip.model.parameters()).device
        self.register_buffer(
            "tokens", clip.tokenizer(prompts(class_names, template)).to(device), persistent=False
        )

    @property
    def model(self):
        """The open_clip model (LoRA layers included when an adapter is attached)."""
        return self.clip.model

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def text_features(self) -> torch.Tensor:
        """Normalised class embeddings; recomputed on each call since the text LoRA trains."""
        return self.model.encode_text(self.tokens, normalize=True)

    def forward(self, images: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``logit_scale * cos(image, class text)``, one column per class."""
        text = self.text_features() if text_features is None else text_features
        image = self.model.encode_image(images, normalize=True)
        return self.model.logit_scale.exp() * image @ text.float().T

    def adapter_disabled(self):
        """Context manager: run as the base (zero-shot) model."""
        return self.net.disable_adapter() if self.net is not self.clip.model else contextlib.nullcontext()


def load_classifier(folder: str | Path, runtime: Runtime | None = None) -> ClipClassifier:
    """Rebuild a trained classifier: base CLIP through :func:`load_clip`, then its LoRA weights
    (safetensors) from ``folder/adapter``."""
    folder = Path(folder)
    config_file, adapter = folder / CONFIG_NAME, folder / ADAPTER_DIR
    if not config_file.is_file() or not (adapter / "adapter_model.safetensors").is_file():
        raise TrainDataError(
            f"{folder} is not a trained classifier folder: expected {CONFIG_NAME} and "
            f"{ADAPTER_DIR}/adapter_model.safetensors (written by train)"
        )
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    clip = load_clip(ModelSpec(**saved["model_spec"]), runtime)
    split_attention(clip.model)
    peft_model = load_lora_adapter(clip.model, adapter)
    return ClipClassifier(clip, saved["class_names"], saved["template"], peft_model).eval()
