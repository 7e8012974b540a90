"""The one place that loads model weights.

Three sources, each a Hugging Face hub id or a local folder in the hub repo's layout:

- the Stable Diffusion 1.5 pipeline (diffusers folder layout),
- the IP-Adapter (h94 layout: ``<root>/models/<weight file>`` and ``<root>/models/image_encoder``),
- the CLIP classifier backbone (an open_clip model name + pretrained tag, an open_clip folder
  with ``open_clip_config.json``, or a checkpoint file).

Real weights and the self-made tiny models (:mod:`dipsy_ui.tiny`) go through the same
functions with the same arguments; only the source strings differ. Nothing else in the project
calls ``from_pretrained`` or ``open_clip.create_model_*``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError, SettingsError

SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER_HUB_ID = "h94/IP-Adapter"
# The digit world shipped with the repository (``python -m dipsy_ui train-world`` made it): small
# models in the ``--models DIR`` layout that draw 32x32 digits; what the demo runs on.
WORLD_DIR = Path(__file__).resolve().parent.parent / "assets" / "digit-world"
IP_ADAPTER_WEIGHTS = {
    "plus": "ip-adapter-plus_sd15.safetensors",  # Resampler on penultimate CLIP tokens (the paper's)
    "plain": "ip-adapter_sd15.safetensors",  # linear projection of the pooled embedding
}


@dataclass(frozen=True)
class ModelSpec:
    """Where each model comes from. The defaults are the paper's models on the hub."""

    sd: str = SD15_HUB_ID  # hub id or local diffusers pipeline folder
    ip_adapter: str = IP_ADAPTER_HUB_ID  # hub id or local folder holding `<subfolder>/<weight>`
    ip_adapter_subfolder: str = "models"
    ip_adapter_weight: str = IP_ADAPTER_WEIGHTS["plus"]
    clip: str = "ViT-B-16"  # open_clip model name, "hf-hub:<repo>", or a local open_clip folder
    clip_pretrained: str | None = "openai"  # open_clip tag or checkpoint file (unused for folders)

    @classmethod
    def from_models_dir(cls, root: str | Path, ip_adapter_variant: str = "plus") -> ModelSpec:
        """The spec for a folder holding ``sd/``, ``ip-adapter/`` and ``clip/`` (the layout
        written by ``make-tiny-models``, and how real weights can be kept locally)."""
        if ip_adapter_variant not in IP_ADAPTER_WEIGHTS:
            raise SettingsError(
                f"ip_adapter_variant must be one of {sorted(IP_ADAPTER_WEIGHTS)}, got {ip_adapter_variant!r}"
            )
        root = Path(root).expanduser().resolve()
        return cls(
            sd=str(root / "sd"),
            ip_adapter=str(root / "ip-adapter"),
            ip_adapter_weight=IP_ADAPTER_WEIGHTS[ip_adapter_variant],
            clip=str(root / "clip"),
            clip_pretrained=None,
        )

    def to_dict(self) -> dict:
        """The spec as plain data, for manifests."""
        return asdict(self)


@dataclass(frozen=True)
class Runtime:
    """Device and dtype the models run in."""

    device: torch.device
    dtype: torch.dtype


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the --dtype choices


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: how manifests and records name a dtype."""
    return str(dtype).removeprefix("torch.")


def resolve_runtime(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> Runtime:
    """CUDA + fp16 when available (GPU ``LOCAL_RANK`` in multi-process launches), else CPU +
    fp32; either can be overridden.

    fp16 on CPU is refused: many CPU kernels lack it and the rest are slower than fp32.
    """
    if device is None:
        # One GPU per process under `accelerate launch` / `torchrun`, which set LOCAL_RANK.
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("device='cuda' was requested but no CUDA GPU is available; use --device cpu")
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        names = DTYPES | {dtype_name(value): value for value in DTYPES.values()}
        if dtype not in names:
            raise SettingsError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if device.type == "cpu" and dtype == torch.float16:
        raise SettingsError("dtype=fp16 is not supported on the CPU; use fp32 (or bf16)")
    return Runtime(device=device, dtype=dtype)


def _is_local(source: str) -> bool:
    """A source names a local folder if it exists or is written as a path; else it is a hub id."""
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


def _where(source: str) -> str:
    if _is_local(source):
        path = Path(source).expanduser().resolve()
        return f"local folder {path}" + ("" if path.exists() else " (does not exist)")
    from huggingface_hub import constants

    offline = (
        " (HF_HUB_OFFLINE is set: only the local cache was searched)" if constants.HF_HUB_OFFLINE else ""
    )
    return f"Hugging Face hub repo '{source}', cache {constants.HF_HUB_CACHE}{offline}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def _explained(what: str, source: str, flag: str) -> Iterator[None]:
    """Turn a library's loading failure into a :class:`ModelLoadError` a user can act on."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        if isinstance(error, ModelLoadError):
            raise
        raise ModelLoadError(
            f"Could not load the {what}.\n"
            f"  Looked in: {_where(source)}\n"
            f"  Cause: {error.__class__.__name__}: {_first_line(error)}\n"
            "Ways forward:\n"
            f"  1. Use weights on disk: pass {flag} PATH, or --models DIR with a folder holding sd/, "
            "ip-adapter/models/ and clip/ in the hub layouts (see README, 'Models').\n"
            f"  2. Try the tool without real weights: pass --models {WORLD_DIR} (the digit world shipped "
            "with DIPSY Studio; the app's --demo uses it)."
        ) from error


def _load_sd(pipeline_class, spec: ModelSpec, runtime: Runtime | None, adapter_copies: int):
    runtime = runtime or resolve_runtime()
    with _explained("Stable Diffusion 1.5 pipeline", spec.sd, "--sd"):
        pipe = pipeline_class.from_pretrained(
            spec.sd, dtype=runtime.dtype, safety_checker=None, requires_safety_checker=False
        )
    if adapter_copies:
        weights = spec.ip_adapter_weight if adapter_copies == 1 else [spec.ip_adapter_weight] * adapter_copies
        with _explained(
            f"IP-Adapter ({spec.ip_adapter_subfolder}/{spec.ip_adapter_weight})",
            spec.ip_adapter,
            "--ip-adapter",
        ):
            pipe.load_ip_adapter(spec.ip_adapter, subfolder=spec.ip_adapter_subfolder, weight_name=weights)
    pipe.to(runtime.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(spec: ModelSpec, runtime: Runtime | None = None):
    """Load SD1.5 into a :class:`~dipsy_ui.diffusion.pipeline.DipsyPipeline` and attach the IP-Adapter.

    Exactly the public diffusers calls: ``DipsyPipeline.from_pretrained(spec.sd)`` then
    ``pipe.load_ip_adapter(spec.ip_adapter, subfolder=..., weight_name=...)``. The safety
    checker is not loaded (as in the authors' setup; it would also block synthetic data).
    """
    from .diffusion.pipeline import DipsyPipeline

    return _load_sd(DipsyPipeline, spec, runtime, adapter_copies=1)


def load_stock_pipeline(spec: ModelSpec, runtime: Runtime | None = None, adapter_copies: int = 1):
    """The same models in diffusers' own ``StableDiffusionPipeline``, with the adapter loaded
    ``adapter_copies`` times (0: none). The reference that parity tests and benchmarks compare
    against; generation itself always uses :func:`load_pipeline`."""
    from diffusers import StableDiffusionPipeline

    return _load_sd(StableDiffusionPipeline, spec, runtime, adapter_copies)


@dataclass
class ClipBundle:
    """An open_clip model with what is needed to feed it."""

    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor (open_clip's eval transform)
    tokenizer: Callable  # list[str] -> LongTensor of token ids
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str  # identifies the weights (for caches and manifests)


def load_clip(spec: ModelSpec, runtime: Runtime | None = None) -> ClipBundle:
    """Load the CLIP classifier backbone (open_clip ``ViT-B-16``/``openai`` by default).

    A folder source is read as an open_clip hub repo on disk (``open_clip_config.json`` +
    weights); weights load through safetensors or ``torch.load(weights_only=True)``.
    """
    import open_clip

    runtime = runtime or resolve_runtime()
    local = Path(spec.clip).expanduser().resolve()
    if _is_local(spec.clip):
        name, pretrained, source = f"local-dir:{local}", None, str(local)
    else:
        name, pretrained = spec.clip, spec.clip_pretrained
        source = f"{spec.clip}/{pretrained}" if pretrained else spec.clip
    with _explained("CLIP classifier backbone", spec.clip, "--clip"):
        if name.startswith("local-dir:") and not (local / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"{local} is not a folder with open_clip_config.json")
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, weights_only=True
        )
        tokenizer = open_clip.get_tokenizer(name)
    model = model.to(runtime.device).eval()
    config = model.visual.preprocess_cfg
    size = config["size"]
    return ClipBundle(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        image_size=size if isinstance(size, int) else size[0],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        source=source,
    )


def load_lora_adapter(model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Attach a trained LoRA adapter (peft folder, safetensors weights) to ``model``, frozen."""
    from peft import PeftModel

    with _explained("LoRA adapter", str(folder), "--adapter"):
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
