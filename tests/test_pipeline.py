"""DipsyPipeline on tiny models: parity with diffusers and the authors' loop, row independence,
reproducibility, one U-Net call per step, previews, interrupt, input validation."""

import numpy as np
import pytest
import torch
from PIL import Image

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
    ],
)
def test_bad_input_names_the_argument(tiny_pipe, kwargs, argument):
    call = {"prompt": "a", "positive_image": noise_image(1), "num_inference_steps": 1} | kwargs
    with pytest.raises(ValueError, match=argument):
        tiny_pipe(call.pop("prompt"), call.pop("positive_image"), **call)
