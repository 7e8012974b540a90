"""The one loader: tiny models load through the hub-layout code path; failures are explained."""

import hashlib
from dataclasses import replace

import pytest
import torch
from PIL import Image

from dipsy_ui.diffusion.ip_attention import DualIPAttnProcessor
from dipsy_ui.diffusion.pipeline import DipsyPipeline
from dipsy_ui.models import ModelLoadError, ModelSpec, load_clip, load_pipeline, resolve_runtime
from dipsy_ui.tiny import make_tiny_models


def test_models_dir_spec_points_at_the_three_layouts(tiny_models, tiny_spec):
    assert (tiny_models / "sd" / "model_index.json").is_file()
    assert (tiny_models / "ip-adapter" / "models" / tiny_spec.ip_adapter_weight).is_file()
    assert (tiny_models / "ip-adapter" / "models" / "image_encoder" / "config.json").is_file()
    assert (tiny_models / "clip" / "open_clip_config.json").is_file()
    assert tiny_spec.sd.endswith("sd") and tiny_spec.clip_pretrained is None


def test_pipeline_loads_with_adapter_routing_installed(tiny_pipe):
    assert isinstance(tiny_pipe, DipsyPipeline)
    assert tiny_pipe.image_encoder is not None and tiny_pipe.safety_checker is None
    processors = tiny_pipe.unet.attn_processors
    cross = [p for name, p in processors.items() if name.endswith("attn2.processor")]
    assert cross and all(isinstance(p, DualIPAttnProcessor) for p in cross)


def test_tokenizer_is_the_real_clip_bpe(tiny_pipe, tiny_clip):
    prompts = [
        "A photo of a Bombay cat",
        "A satellite photo of a Pasture, with rivers!",
        "3 cafés & a naïve dog",
    ]
    ours = tiny_pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    reference = tiny_clip.tokenizer(prompts)  # open_clip's own SimpleTokenizer
    for row, ref in zip(ours, reference, strict=True):
        length = int((ref != 0).sum())
        assert torch.equal(row[:length], ref[:length])
    assert ours.shape == (3, 77)


def test_clip_loads_from_an_open_clip_folder(tiny_clip):
    image = tiny_clip.preprocess(Image.new("RGB", (50, 70), (200, 10, 10))).unsqueeze(0)
    with torch.no_grad():
        features = tiny_clip.model.encode_image(image)
    assert features.shape == (1, 32)
    assert tiny_clip.image_size == 64 and len(tiny_clip.mean) == 3


@pytest.mark.determinism
def test_make_tiny_models_is_deterministic(tmp_path):
    def digests(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*")
            if p.is_file()
        }

    first, second = make_tiny_models(tmp_path / "a"), make_tiny_models(tmp_path / "b")
    assert digests(first) == digests(second)
    assert len(digests(first)) >= 15


def test_missing_local_model_is_explained(tmp_path, tiny_spec):
    missing = tmp_path / "nowhere" / "sd"
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline(replace(tiny_spec, sd=str(missing)))
    message = str(caught.value)
    assert "Stable Diffusion" in message and str(missing) in message
    assert "--models" in message and "digit-world" in message
    assert "Traceback" not in message


def test_missing_adapter_weight_is_explained(tiny_spec):
    with pytest.raises(ModelLoadError, match="IP-Adapter"):
        load_pipeline(replace(tiny_spec, ip_adapter_weight="ip-adapter-missing.safetensors"))


def test_offline_hub_is_explained():
    # conftest sets HF_HUB_OFFLINE=1: the hub is never contacted and the cache has no such repo.
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline(ModelSpec(sd="dipsy-test/not-a-real-repo"))
    assert "hub repo 'dipsy-test/not-a-real-repo'" in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value)


def test_missing_clip_folder_is_explained(tmp_path, tiny_spec):
    with pytest.raises(ModelLoadError, match="CLIP"):
        load_clip(replace(tiny_spec, clip=str(tmp_path / "no-clip")))


def test_runtime_defaults_and_refusals():
    runtime = resolve_runtime("cpu")
    assert runtime.dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        resolve_runtime("cpu", "fp16")
    with pytest.raises(ValueError, match="dtype"):
        resolve_runtime("cpu", "int8")
