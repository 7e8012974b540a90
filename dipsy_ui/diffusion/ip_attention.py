"""Per-row, dual-image IP-Adapter attention for one batched U-Net call.

DIPSY needs four noise predictions per step (REFERENCE section 1): unconditional, text, text +
positive image, text + positive + negative image. They differ only in which image-token sets
each batch row attends to. diffusers' ``IPAdapterAttnProcessor2_0`` applies one global scale
per adapter to the whole batch, which is why the authors' code makes three U-Net calls per step
and switches scales between them. Here the routing is explicit per row:

    out[row] = TextAttention(q[row]) + sum over pairs (row, image) of s * Attention(q[row], K_ip(image), V_ip(image))

Each (row, image) pair is its own decoupled cross-attention (its own softmax), exactly as an
adapter with that image would compute it, and all pairs of a layer run in one SDPA call. The
positive and the negative image go through the *same* ``to_k_ip``/``to_v_ip`` weights: the
adapter is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    Attention,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from torch import nn


@dataclass(frozen=True)
class IPRouting:
    """Which rows of the U-Net batch attend to which adapter image, and how strongly.

    ``pairs`` are grouped in ``groups`` (sizes of consecutive runs); within a group every query
    row appears at most once, so adding a group's outputs is an order-independent scatter even
    on CUDA (no atomics over duplicate rows). Groups are added in order (positive, then
    negative), like a sequence of adapters.
    """

    embeds: torch.Tensor  # (M, ...) image-encoder features of the M distinct adapter images
    token_index: torch.Tensor  # (K,) long: image used by each pair
    query_rows: torch.Tensor  # (K,) long: batch row each pair adds to
    scale: torch.Tensor  # (K,) adapter scale s of each pair
    groups: tuple[int, ...]  # sizes of the consecutive pair groups, summing to K
    tokens: torch.Tensor | None = None  # (M, N, D) projected image tokens, set by the projection

    @property
    def num_pairs(self) -> int:
        return int(self.query_rows.numel())


class DualIPImageProjection(MultiIPAdapterImageProjection):
    """The adapter's image projection (Resampler for Plus, linear for plain) applied to the
    distinct images of an :class:`IPRouting`, once: projecting an already projected routing
    returns it unchanged, so the pipeline projects before the loop and the U-Net's per-step call
    costs nothing.

    It also keeps ``plain_processors``, the U-Net's attention processors from before the adapter
    was loaded, for :func:`remove_dual_ip_attention`: they travel with the installed adapter
    (a plain dict, so they are neither submodules nor state-dict entries).
    """

    def __init__(self, image_projection_layers: nn.ModuleList, plain_processors: dict):
        super().__init__(image_projection_layers)
        self.plain_processors = dict(plain_processors)

    def forward(self, image_embeds: IPRouting) -> IPRouting:  # type: ignore[override]
        if not isinstance(image_embeds, IPRouting):
            raise TypeError(
                "DualIPImageProjection expects an IPRouting; call the U-Net through DipsyPipeline"
            )
        if image_embeds.tokens is not None or image_embeds.num_pairs == 0:
            return image_embeds
        return replace(image_embeds, tokens=self.image_projection_layers[0](image_embeds.embeds))


class DualIPAttnProcessor(nn.Module):
    """Cross-attention processor: text attention plus the routed IP-Adapter pairs.

    Holds the adapter's own ``to_k_ip``/``to_v_ip`` modules (not copies), under the same names
    as diffusers' processor, so the U-Net's state dict is unchanged.
    """

    def __init__(self, to_k_ip: nn.ModuleList, to_v_ip: nn.ModuleList):
        super().__init__()
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, IPRouting] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not isinstance(encoder_hidden_states, tuple):
            raise TypeError("DualIPAttnProcessor expects (text_states, IPRouting) as encoder_hidden_states")
        text_states, routing = encoder_hidden_states
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = text_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            text_states = attn.norm_encoder_hidden_states(text_states)
        key = attn.to_k(text_states)
        value = attn.to_v(text_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, inner_dim).to(query.dtype)

        if routing.num_pairs:
            hidden_states = self._add_image_attention(attn, query, hidden_states, routing, head_dim)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _add_image_attention(
        self,
        attn: Attention,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        routing: IPRouting,
        head_dim: int,
    ) -> torch.Tensor:
        # Project each distinct image once, then gather per pair.
        num_images = routing.tokens.shape[0]
        ip_key = self.to_k_ip[0](routing.tokens).view(num_images, -1, attn.heads, head_dim).transpose(1, 2)
        ip_value = self.to_v_ip[0](routing.tokens).view(num_images, -1, attn.heads, head_dim).transpose(1, 2)
        pair_out = F.scaled_dot_product_attention(
            query[routing.query_rows], ip_key[routing.token_index], ip_value[routing.token_index]
        )
        pair_out = (
            pair_out.transpose(1, 2).reshape(routing.num_pairs, -1, attn.heads * head_dim).to(query.dtype)
        )
        pair_out = pair_out * routing.scale.to(pair_out.dtype).view(-1, 1, 1)
        for rows, out in zip(
            routing.query_rows.split(routing.groups), pair_out.split(routing.groups), strict=True
        ):
            hidden_states = hidden_states.index_add(0, rows, out)
        return hidden_states


def plain_attn_processors(unet: nn.Module) -> dict:
    """The attention processors the U-Net has without an adapter: the remembered ones while
    DIPSY's adapter is installed (loading another one replaces it), else the current ones."""
    if isinstance(unet.encoder_hid_proj, DualIPImageProjection):
        return unet.encoder_hid_proj.plain_processors
    return unet.attn_processors


def install_dual_ip_attention(unet: nn.Module, plain_processors: dict) -> None:
    """Swap diffusers' IP-Adapter processors and image projection for the per-row ones.

    Called after ``load_ip_adapter``; reuses the loaded modules, so no weight is duplicated.
    Exactly one adapter must be loaded: it serves both the positive and the negative image.
    ``plain_processors`` (:func:`plain_attn_processors` from before the load) are kept for
    :func:`remove_dual_ip_attention`.
    """
    projection = unet.encoder_hid_proj
    if not isinstance(projection, MultiIPAdapterImageProjection):
        raise ValueError("no IP-Adapter is loaded into the U-Net; call load_ip_adapter first")
    if len(projection.image_projection_layers) != 1:
        raise ValueError(
            f"DIPSY uses one IP-Adapter for both the positive and the negative image; "
            f"{len(projection.image_projection_layers)} are loaded"
        )
    processors = {}
    for name, processor in unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0):
            processor = DualIPAttnProcessor(processor.to_k_ip, processor.to_v_ip)
        processors[name] = processor
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = DualIPImageProjection(projection.image_projection_layers, plain_processors)


def remove_dual_ip_attention(unet: nn.Module) -> None:
    """Undo the adapter's load and :func:`install_dual_ip_attention`: the U-Net gets back its
    plain attention processors, loses the image projection, and its state dict and
    ``encoder_hid_dim_type`` are those of a U-Net that never had an adapter."""
    plain_processors = unet.encoder_hid_proj.plain_processors
    # The projection goes first: while it is there, the U-Net's processors include the
    # Resampler's own attention layers, which the plain processors do not name.
    unet.encoder_hid_proj = None
    # Assigned like diffusers' loader and unloader do (an attribute of the frozen config).
    unet.config.encoder_hid_dim_type = None
    # The adapter processors hold to_k_ip / to_v_ip as submodules; the plain ones replace them,
    # and with them those weights.
    unet.set_attn_processor(plain_processors)
