"""DipsyPipeline on tiny models: parity with diffusers and the authors' loop, row independence,
reproducibility, one U-Net call per step, previews, interrupt, the trace of Eq. 9's parts, input
validation, and the inherited IP-Adapter methods (honoured or refused)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor
from PIL import Image
from safetensors.torch import load_file

from dipsy_ui.diffusion.pipeline import SCHEDULERS
from dipsy_ui.diffusion.reference import three_call_dipsy
from dipsy_ui.models import load_pipeline, load_stock_pipeline

STEPS = 4


def noise_image(seed: int, size=(64, 64), mode="RGB") -> Image.Image:
    array = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array).convert(mode)


@pytest.fixture(scope="module")
def images():
    return {
        "pos": noise_image(1, (80, 64)),
        "neg": noise_image(2),
        "pos2": noise_image(3),
        "neg2": noise_image(4),
    }


def run(pipe, images, seed=0, **kwargs):
    kwargs.setdefault("negative_image", images["neg"])
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(
        kwargs.pop("prompt", "A photo of a cat"),
        kwargs.pop("positive_image", images["pos"]),
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


@pytest.mark.determinism
@pytest.mark.parametrize("scheduler", ["pndm", "dpm-solver", "euler-ancestral"])
def test_zero_image_weights_reproduce_diffusers_text_cfg(tiny_spec, tiny_pipe, images, scheduler):
    stock = load_stock_pipeline(tiny_spec, adapter_copies=0)
    stock.scheduler = SCHEDULERS[scheduler].from_config(stock.scheduler.config)
    tiny_pipe.use_scheduler(scheduler)
    try:
        ours = run(tiny_pipe, images, w_text=5.0, w_pos=0.0, w_neg=0.0)
    finally:
        tiny_pipe.use_scheduler("pndm")
    theirs = stock(
        "A photo of a cat",
        guidance_scale=5.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    # Our attention processor and diffusers' do the same math in different operations: equal up
    # to float32 rounding, not bit for bit.
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.determinism
def test_matches_authors_three_call_formulation(tiny_spec, tiny_pipe, images):
    stock = load_stock_pipeline(tiny_spec, adapter_copies=2)
    weights = dict(w_text=6.0, w_pos=4.0, w_neg=3.0, ip_adapter_scale=0.7)
    ours = run(tiny_pipe, images, **weights)
    theirs = three_call_dipsy(
        stock,
        "A photo of a cat",
        images["pos"],
        images["neg"],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **weights,
    )
    assert np.abs(ours - run(tiny_pipe, images, w_text=6.0, w_pos=0.0, w_neg=0.0)).max() > 1e-3
    # One U-Net call on 4 branches vs three calls on 2, with two adapter copies: the same math on
    # other batch shapes, which kernels may round differently.
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.determinism
def test_rows_are_independent(tiny_pipe, images):
    prompts = ["A photo of a cat", "A photo of a dog", "A photo of a car"]
    positives = [images["pos"], images["pos2"], images["neg2"]]
    negatives = [images["neg"], None, images["pos"]]
    seeds = [11, 12, 13]
    batch = tiny_pipe(
        prompts,
        positives,
        negatives,
        w_pos=[6.0, 3.0, 5.0],
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="np",
    ).images
    for i in range(3):
        single = tiny_pipe(
            prompts[i],
            positives[i],
            negatives[i],
            w_pos=[6.0, 3.0, 5.0][i],
            num_inference_steps=STEPS,
            generator=torch.Generator().manual_seed(seeds[i]),
            output_type="np",
        ).images
        # A batch of 3 vs a batch of 1: kernels may round differently with the batch shape.
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)


@pytest.mark.determinism
def test_seed_determines_output(tiny_pipe, images):
    first, again, other = (
        run(tiny_pipe, images, seed=5),
        run(tiny_pipe, images, seed=5),
        run(tiny_pipe, images, seed=6),
    )
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2


@pytest.mark.determinism
def test_adapter_scale_zero_makes_image_weights_irrelevant(tiny_pipe, images):
    # Both calls skip the image branches (scale 0 turns the adapter off): the same computation.
    base = run(tiny_pipe, images, ip_adapter_scale=0.0, w_pos=0.0, w_neg=0.0)
    assert np.array_equal(base, run(tiny_pipe, images, ip_adapter_scale=0.0, w_pos=6.0, w_neg=6.0))
    assert np.abs(base - run(tiny_pipe, images, ip_adapter_scale=0.6, w_pos=6.0, w_neg=0.0)).max() > 1e-3


@pytest.mark.determinism
def test_negative_weight_acts_only_with_a_negative_image(tiny_pipe, images):
    no_neg = run(tiny_pipe, images, w_neg=0.0)
    assert np.abs(no_neg - run(tiny_pipe, images, w_neg=6.0)).max() > 1e-3
    # Without a negative image the negative branch is skipped, as with w_neg = 0: the same computation.
    assert np.array_equal(run(tiny_pipe, images, negative_image=None, w_neg=6.0), no_neg)


def test_one_unet_call_per_step_with_four_branches(tiny_pipe, images):
    batch_sizes, steps = [], []
    hook = tiny_pipe.unet.register_forward_hook(
        lambda module, args, output: batch_sizes.append(args[0].shape[0])
    )
    try:
        tiny_pipe(
            ["a", "b"],
            [images["pos"], images["pos2"]],
            images["neg"],
            num_inference_steps=STEPS,
            callback_on_step_end=lambda pipe, step, t, kwargs: steps.append(step),
        )
    finally:
        hook.remove()
    assert len(steps) >= STEPS
    assert batch_sizes == [4 * 2] * len(steps)


def test_adapter_loaded_once_and_images_encoded_once_per_call(tiny_pipe, images):
    ip_keys = [name for name, _ in tiny_pipe.unet.named_parameters() if "to_k_ip" in name]
    cross_attentions = [name for name in tiny_pipe.unet.attn_processors if name.endswith("attn2.processor")]
    assert len(ip_keys) == len(cross_attentions)
    encoded = []
    hook = tiny_pipe.image_encoder.register_forward_hook(
        lambda module, args, output: encoded.append(args[0].shape[0])
    )
    try:
        # Four rows, but only two distinct images: each is encoded once, in one encoder call.
        tiny_pipe(["a"] * 4, [images["pos"]] * 4, [images["neg"]] * 4, num_inference_steps=STEPS)
    finally:
        hook.remove()
    assert encoded == [2]


def test_callback_streams_previews_and_interrupt_stops(tiny_pipe, images):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(kwargs["preview"])
        if step == 1:
            pipe.request_interrupt()
        return {}

    out = tiny_pipe(
        "a", images["pos"], images["neg"], num_inference_steps=STEPS, callback_on_step_end=callback
    )
    assert out.interrupted and out.images is None
    assert len(seen) == 2
    assert seen[0].shape == (1, 8, 8, 3) and seen[0].dtype == np.uint8
    # The flag is reset: the next call runs to the end.
    assert run(tiny_pipe, images).shape == (1, 64, 64, 3)


@pytest.mark.determinism
def test_augmentation_is_reproducible_and_keeps_the_noise(tiny_pipe, images):
    plain = run(tiny_pipe, images, seed=3)
    augmented = run(tiny_pipe, images, seed=3, augment=True)
    assert np.array_equal(augmented, run(tiny_pipe, images, seed=3, augment=True))
    assert np.abs(plain - augmented).max() > 1e-4
    # Same noise whatever the augmentation: with image weights off, the image branches are skipped
    # and the two calls are the same computation, so the images coincide bit for bit.
    off = dict(w_pos=0.0, w_neg=0.0)
    assert np.array_equal(
        run(tiny_pipe, images, seed=3, **off), run(tiny_pipe, images, seed=3, augment=True, **off)
    )


@pytest.mark.determinism
def test_odd_image_modes_are_converted(tiny_pipe, images):
    # Converted inputs give the adapter the same pixels: the same computation, the same bits.
    rgb = noise_image(9)
    expected = run(tiny_pipe, images, positive_image=rgb.convert("L").convert("RGB"))
    assert np.array_equal(run(tiny_pipe, images, positive_image=rgb.convert("L")), expected)
    cmyk = rgb.convert("CMYK")
    assert np.array_equal(
        run(tiny_pipe, images, positive_image=cmyk),
        run(tiny_pipe, images, positive_image=cmyk.convert("RGB")),
    )


def test_plain_ip_adapter_variant(tiny_spec, images):
    from dataclasses import replace

    from dipsy_ui.models import IP_ADAPTER_WEIGHTS

    pipe = load_pipeline(replace(tiny_spec, ip_adapter_weight=IP_ADAPTER_WEIGHTS["plain"]))
    assert np.abs(run(pipe, images, w_neg=0.0) - run(pipe, images, w_neg=6.0)).max() > 1e-3


# -- the trace: Eq. 9 taken apart ----------------------------------------------------------------


def test_guidance_terms_are_eq9s_differences_and_sum_like_its_formula():
    from dipsy_ui.diffusion.pipeline import dipsy_guidance, guidance_terms

    generator = torch.Generator().manual_seed(0)
    eps_u, eps_t, eps_tp, eps_tpn = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(4))
    w_text, w_pos, w_neg = torch.tensor([7.5, 2.0]).view(2, 1, 1, 1), 6.0, 3.0
    terms = guidance_terms(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg)
    assert torch.equal(terms["text"], w_text * (eps_t - eps_u))
    assert torch.equal(terms["positive"], w_pos * (eps_tp - eps_t))
    assert torch.equal(terms["negative"], w_neg * (eps_tpn - eps_tp))
    # The rule is the one-line formula of Eq. 9, bit for bit (the images of earlier versions).
    formula = eps_u + w_text * (eps_t - eps_u) + w_pos * (eps_tp - eps_t) - w_neg * (eps_tpn - eps_tp)
    assert torch.equal(dipsy_guidance(eps_u, eps_t, eps_tp, eps_tpn, w_text, w_pos, w_neg), formula)


def traced(pipe, images, monkeypatch, **kwargs):
    """A two-image call with ``trace_every``, and the noise predictions the sampler stepped with."""
    stepped, step = [], pipe.scheduler.step

    def spy(model_output, *args, **step_kwargs):
        stepped.append(model_output.clone())
        return step(model_output, *args, **step_kwargs)

    monkeypatch.setattr(pipe.scheduler, "step", spy)
    kwargs.setdefault("trace_every", 1)
    out = pipe(
        ["A photo of a cat", "A photo of a dog"],
        [images["pos"], images["pos2"]],
        [images["neg"], images["neg2"]],
        w_text=kwargs.pop("w_text", [5.0, 3.0]),
        w_pos=kwargs.pop("w_pos", [4.0, 6.0]),
        w_neg=kwargs.pop("w_neg", [3.0, 2.0]),
        num_inference_steps=STEPS,
        generator=[torch.Generator().manual_seed(s) for s in (21, 22)],
        output_type="np",
        **kwargs,
    )
    monkeypatch.undo()
    return out, stepped


def test_trace_terms_add_up_to_the_guided_prediction_at_every_step(tiny_pipe, images, monkeypatch):
    from dipsy_ui.diffusion.pipeline import TERMS

    out, stepped = traced(tiny_pipe, images, monkeypatch)
    assert [record.step for record in out.trace] == list(range(len(stepped)))
    for record, noise_pred in zip(out.trace, stepped, strict=True):
        assert set(record.terms) == set(TERMS)
        terms = record.terms
        # Eq. 9's sum, written out here rather than taken from the pipeline: bit for bit.
        assert torch.equal(record.eps_u + terms["text"] + terms["positive"] - terms["negative"], noise_pred)
        strengths = record.strengths()
        assert all(strengths[name].shape == (2,) and (strengths[name] > 0).all() for name in TERMS)


def test_trace_changes_no_image_and_costs_no_unet_call(tiny_pipe, images, monkeypatch):
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        plain, _ = traced(tiny_pipe, images, monkeypatch, trace_every=None)
        plain_calls, calls[:] = list(calls), []
        every, _ = traced(tiny_pipe, images, monkeypatch, trace_every=1)
        assert calls == plain_calls
        sparse, _ = traced(tiny_pipe, images, monkeypatch, trace_every=3)
    finally:
        hook.remove()
    assert plain.trace is None
    assert np.array_equal(every.images, plain.images) and np.array_equal(sparse.images, plain.images)
    last = len(every.trace) - 1
    assert [record.step for record in sparse.trace] == sorted({*range(0, last + 1, 3), last})
    for record in sparse.trace:
        assert torch.equal(record.terms["negative"], every.trace[record.step].terms["negative"])


def test_trace_branch_estimates_combine_like_the_guided_estimate(tiny_pipe, images, monkeypatch):
    from dipsy_ui.diffusion.pipeline import BRANCHES

    weights = dict(w_text=[5.0, 3.0], w_pos=[4.0, 6.0], w_neg=[3.0, 2.0])
    guided = []
    out, _ = traced(
        tiny_pipe,
        images,
        monkeypatch,
        callback_on_step_end=lambda pipe, step, t, kwargs: guided.append(kwargs["x0"]),
        **weights,
    )
    w = {name: torch.tensor(values).view(-1, 1, 1, 1) for name, values in weights.items()}
    for record, x0 in zip(out.trace, guided, strict=True):
        assert set(record.x0) == set(BRANCHES) and record.x0["u"].shape == (2, 4, 8, 8)
        # The clean estimate is affine in the noise prediction, so Eq. 9 holds between the
        # branches' estimates too (up to rounding): a branch estimate under the wrong name breaks it.
        b = record.x0
        combined = (
            b["u"]
            + w["w_text"] * (b["t"] - b["u"])
            + w["w_pos"] * (b["tp"] - b["t"])
            - w["w_neg"] * (b["tpn"] - b["tp"])
        )
        torch.testing.assert_close(combined, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.determinism
def test_latents_to_images_decodes_as_the_call_does(tiny_pipe, images):
    latents = tiny_pipe(
        "A photo of a cat",
        images["pos"],
        images["neg"],
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
    ).images
    decoded = tiny_pipe.latents_to_images(latents, output_type="np")
    # The same VAE call on the same latents: the same bits.
    assert np.array_equal(decoded, run(tiny_pipe, images))


def test_trace_strengths_follow_the_weights(tiny_pipe, images, monkeypatch):
    # At the first step every call starts from the same noise: each term is its weight times the
    # same branch difference, so its strength is proportional to the weight.
    single, _ = traced(tiny_pipe, images, monkeypatch, w_text=[4.0, 4.0], w_pos=[3.0, 3.0], w_neg=[2.0, 2.0])
    double, _ = traced(tiny_pipe, images, monkeypatch, w_text=[8.0, 8.0], w_pos=[6.0, 6.0], w_neg=[4.0, 4.0])
    one, two = single.trace[0].strengths(), double.trace[0].strengths()
    for name in one:
        torch.testing.assert_close(two[name], 2 * one[name], rtol=1e-5, atol=0)
    # An unused term is exactly zero at every step; its branch is not evaluated.
    off, _ = traced(tiny_pipe, images, monkeypatch, w_neg=[0.0, 0.0])
    assert all(float(record.strengths()["negative"].abs().max()) == 0.0 for record in off.trace)
    assert all("tpn" not in record.x0 for record in off.trace)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"positive_image": None}, "positive_image"),
        ({"positive_image": "cat.png"}, "positive_image"),
        ({"prompt": ["a", "b"], "positive_image": [noise_image(1)] * 3}, "same length"),
        ({"height": 60}, "height"),
        ({"width": 0}, "width"),
        ({"w_neg": -1.0}, "w_neg"),
        ({"w_pos": float("nan")}, "w_pos"),
        ({"w_text": float("inf")}, "w_text"),
        ({"prompt": ["a", "b", "c"], "ip_adapter_scale": [0.5, 0.5]}, "same length"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"trace_every": 0}, "trace_every"),
        ({"trace_every": 1.5}, "trace_every"),
    ],
)
def test_bad_input_names_the_argument(tiny_pipe, kwargs, argument):
    call = {"prompt": "a", "positive_image": noise_image(1), "num_inference_steps": 1} | kwargs
    with pytest.raises(ValueError, match=argument):
        tiny_pipe(call.pop("prompt"), call.pop("positive_image"), **call)


# -- inherited IP-Adapter methods --------------------------------------------------------------


def load_adapter(pipe, spec, **kwargs):
    pipe.load_ip_adapter(
        spec.ip_adapter, subfolder=spec.ip_adapter_subfolder, weight_name=spec.ip_adapter_weight, **kwargs
    )


def text_only(pipe, seed=0):
    """Plain text-to-image generation, through the stock pipeline on the same components."""
    return StableDiffusionPipeline.from_pipe(pipe)(
        "A photo of a cat",
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def assert_same_unet(pipe, reference):
    """Same weights under the same names, same attention processor classes, same image projection."""
    ours, theirs = pipe.unet.state_dict(), reference.unet.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == {
        name: type(p) for name, p in reference.unet.attn_processors.items()
    }
    assert type(pipe.unet.encoder_hid_proj) is type(reference.unet.encoder_hid_proj)
    assert pipe.unet.config.encoder_hid_dim_type == reference.unet.config.encoder_hid_dim_type


@pytest.mark.determinism
def test_set_ip_adapter_scale_sets_the_default_scale_the_call_uses(tiny_spec, images):
    pipe = load_pipeline(tiny_spec)
    at_06, at_03 = run(pipe, images, ip_adapter_scale=0.6), run(pipe, images, ip_adapter_scale=0.3)
    # Until set, the default is the authors' 0.6. Equal calls are the same computation: bit for bit.
    assert np.array_equal(run(pipe, images), at_06)
    pipe.set_ip_adapter_scale(0.3)
    default = run(pipe, images)
    assert np.array_equal(default, at_03)
    assert np.abs(default - at_06).max() > 1e-3
    # The call's own argument still overrides the default.
    assert np.array_equal(run(pipe, images, ip_adapter_scale=0.6), at_06)
    # The default belongs to the pipeline, not to the loaded weights.
    pipe.unload_ip_adapter()
    load_adapter(pipe, tiny_spec)
    assert np.array_equal(run(pipe, images), at_03)


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ({"up": {"block_0": [0.0, 1.0, 0.0]}}, "InstantStyle"),
        ([0.5, 0.5], "per-adapter"),
        ([[0.5]], "per-adapter"),
        (-1.0, "ip_adapter_scale must be a finite number >= 0"),
        ("0.5", "ip_adapter_scale must be a number"),
    ],
)
def test_set_ip_adapter_scale_refuses_scales_the_routing_cannot_honour(tiny_pipe, scale, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe.set_ip_adapter_scale(scale)


@pytest.mark.determinism
def test_unload_then_generate_equals_a_fresh_pipeline(tiny_spec, images):
    pipe = load_pipeline(tiny_spec)
    run(pipe, images)
    pipe.unload_ip_adapter()
    pipe.unload_ip_adapter()  # without an adapter, unloading changes nothing
    fresh = load_stock_pipeline(tiny_spec, adapter_copies=0)
    assert_same_unet(pipe, fresh)
    assert {name: c is None for name, c in pipe.components.items()} == {
        name: c is None for name, c in fresh.components.items()
    }
    # Same models, same batch shapes, same device: the same computation, bit for bit.
    assert np.array_equal(text_only(pipe), text_only(fresh))
    with pytest.raises(ValueError, match="load_ip_adapter"):
        run(pipe, images)


def test_unload_restores_the_attention_processors_from_before_the_load(tiny_spec):
    pipe = load_pipeline(tiny_spec)
    pipe.unload_ip_adapter()
    pipe.unet.set_attn_processor(AttnProcessor())
    before = pipe.unet.attn_processors
    load_adapter(pipe, tiny_spec)
    load_adapter(pipe, tiny_spec)  # replacing the adapter keeps the processors of the plain U-Net
    pipe.unload_ip_adapter()
    # diffusers' own unload would give the cross-attention layers AttnProcessor2_0.
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[name] is before[name] for name in before)


@pytest.mark.determinism
def test_load_after_unload_generates_like_a_single_load(tiny_spec, tiny_pipe, images):
    pipe = load_pipeline(tiny_spec)
    pipe.unload_ip_adapter()
    load_adapter(pipe, tiny_spec)
    assert_same_unet(pipe, tiny_pipe)
    assert np.array_equal(run(pipe, images), run(tiny_pipe, images))


def test_load_ip_adapter_refuses_several_adapters(tiny_spec, tiny_pipe):
    with pytest.raises(ValueError, match="one weight_name"):
        tiny_pipe.load_ip_adapter(
            tiny_spec.ip_adapter,
            subfolder=tiny_spec.ip_adapter_subfolder,
            weight_name=[tiny_spec.ip_adapter_weight] * 2,
        )


def test_load_ip_adapter_refuses_to_go_without_an_image_encoder(tiny_spec):
    pipe = load_pipeline(tiny_spec)
    pipe.unload_ip_adapter()
    with pytest.raises(ValueError, match="image_encoder_folder"):
        load_adapter(pipe, tiny_spec, image_encoder_folder=None)
    assert pipe.unet.encoder_hid_proj is None


def attention_loras(unet) -> dict[str, torch.Tensor]:
    """Rank-2 LoRA weights for every attention layer, keyed as in IP-Adapter FaceID files
    (``{layer}.{projection}_lora.{down|up}.weight``, layers numbered in processor order)."""
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for layer, name in enumerate(unet.attn_processors):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        for projection, linear in (
            ("to_q", attn.to_q),
            ("to_k", attn.to_k),
            ("to_v", attn.to_v),
            ("to_out", attn.to_out[0]),
        ):
            weights[f"{layer}.{projection}_lora.down.weight"] = torch.randn(
                2, linear.in_features, generator=generator
            )
            weights[f"{layer}.{projection}_lora.up.weight"] = torch.randn(
                linear.out_features, 2, generator=generator
            )
    return weights


@pytest.mark.parametrize("other_lora", [False, True])
def test_faceid_adapter_is_refused_and_leaves_no_trace(tiny_spec, other_lora):
    reference = load_stock_pipeline(tiny_spec, adapter_copies=0)
    loras = attention_loras(reference.unet)
    layers = list(reference.unet.attn_processors)
    pipe = load_pipeline(tiny_spec)
    if other_lora:  # a LoRA of the user's, loaded before: it stays
        user_lora = {}  # keyed as diffusers passes a FaceID LoRA to load_lora_weights
        for key, value in loras.items():
            layer, rest = key.split(".", 1)
            user_lora[f"unet.{layers[int(layer)]}.{rest}"] = value
        for each in (pipe, reference):
            each.load_lora_weights(dict(user_lora), adapter_name="mine")
    # A FaceID file: its projection maps face-recognition embeddings (8 wide here) to 4 tokens,
    # its attention layers are the image adapter's, and it carries a LoRA for the U-Net.
    width = reference.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(1)
    image_proj = {
        "proj.0.weight": torch.randn(16, 8, generator=generator),
        "proj.0.bias": torch.zeros(16),
        "proj.2.weight": torch.randn(4 * width, 16, generator=generator),
        "proj.2.bias": torch.zeros(4 * width),
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
    }
    weights = load_file(
        Path(tiny_spec.ip_adapter) / tiny_spec.ip_adapter_subfolder / tiny_spec.ip_adapter_weight
    )
    ip_adapter = {
        key.removeprefix("ip_adapter."): value
        for key, value in weights.items()
        if key.startswith("ip_adapter.")
    }
    faceid = {"image_proj": image_proj, "ip_adapter": ip_adapter | loras}
    with pytest.raises(ValueError, match="FaceID"):
        pipe.load_ip_adapter(faceid, subfolder="", weight_name="")
    assert_same_unet(pipe, reference)
    assert set(getattr(pipe.unet, "peft_config", {})) == ({"mine"} if other_lora else set())
    assert pipe.image_encoder is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("ip_adapter_image", noise_image(1)), ("ip_adapter_image_embeds", [torch.zeros(2, 1, 4, 32)])],
)
def test_stock_adapter_inputs_are_refused_naming_positive_image(tiny_pipe, name, value):
    with pytest.raises(ValueError, match=f"{name} .*positive_image"):
        tiny_pipe("A photo of a cat", num_inference_steps=1, **{name: value})


def test_prepare_ip_adapter_image_embeds_is_refused_naming_positive_image(tiny_pipe, images):
    with pytest.raises(NotImplementedError, match="positive_image"):
        tiny_pipe.prepare_ip_adapter_image_embeds(images["pos"], None, "cpu", 1, True)


@pytest.mark.determinism
def test_encode_image_gives_the_features_the_adapter_sees(tiny_pipe, images):
    image = images["pos"]
    features, _ = tiny_pipe.encode_image(image, tiny_pipe._execution_device, 1, output_hidden_states=True)
    assert torch.equal(features, tiny_pipe.encode_adapter_images([image]))
