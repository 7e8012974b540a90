"""Class similarity and negative sampling (REFERENCE.md section 3): the probability identities, the
sampler's distribution and reproducibility, overrides, the embedding cache, and the heatmap."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from PIL import Image

from dipsy_ui.heatmap import ESCAPE_NOTE, heatmap_figure, save_heatmap
from dipsy_ui.similarity import (
    NegativeSampler,
    SimilarityResult,
    apply_override,
    class_embeddings,
    compute_similarity,
    dissimilar_probabilities,
    embed_images,
    mode_probabilities,
    negative_probabilities,
    sample_negative,
    similarity_matrix,
    similarity_order,
    top_similar,
    uniform_probabilities,
)

NAMES = ["cat", "dog", "fox", "owl", "eel"]


def _image(colour: tuple[int, int, int], seed: int, size: int = 40) -> Image.Image:
    """A flat colour with a little noise: images of one colour form one visual class."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def _random_similarity(count: int = 5, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return similarity_matrix(torch.randn(count, 8, generator=generator))


@pytest.fixture
def encoded(tiny_clip):
    """Counts how many images reach ``encode_image`` (the model must be skipped on cache hits)."""
    counts: list[int] = []
    original = tiny_clip.model.encode_image

    def counting(pixels, *args, **kwargs):
        counts.append(pixels.shape[0])
        return original(pixels, *args, **kwargs)

    # An instance attribute shadows the method; deleting it restores the shared session model.
    tiny_clip.model.encode_image = counting
    yield counts
    del tiny_clip.model.encode_image


# -- probabilities -----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.4, 3.0])
def test_probability_rows_are_distributions_over_other_classes(temperature):
    probabilities = negative_probabilities(_random_similarity(), temperature)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(5, dtype=torch.float64))
    assert torch.all(probabilities.diagonal() == 0)
    assert torch.all(probabilities >= 0)


def test_probabilities_equal_softmax_zero_diagonal_renormalised():
    similarity = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.5], [0.1, 0.5, 1.0]])
    temperature = 0.4
    # The reference recipe, literally: softmax of S / T, zero the diagonal, renormalise rows.
    exp = np.exp(similarity / temperature)
    expected = exp / exp.sum(axis=1, keepdims=True)
    np.fill_diagonal(expected, 0.0)
    expected /= expected.sum(axis=1, keepdims=True)
    result = negative_probabilities(torch.tensor(similarity), temperature).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=0)
    # Spot check by hand: row 0 is exp(2) : exp(0.25) over the two other classes.
    assert result[0, 1] == pytest.approx(math.exp(2.0) / (math.exp(2.0) + math.exp(0.25)), rel=1e-12)


def test_small_temperature_puts_the_mass_on_the_nearest_class():
    similarity = _random_similarity()
    nearest = similarity.clone().fill_diagonal_(-2).argmax(dim=1)
    for temperature in (1e-3, 1e-6):  # 1e-6: a plain softmax would underflow to 0 / 0 here
        probabilities = negative_probabilities(similarity, temperature)
        assert torch.isfinite(probabilities).all()
        assert torch.all(probabilities[torch.arange(5), nearest] > 0.999)


def test_large_temperature_approaches_uniform():
    probabilities = negative_probabilities(_random_similarity(), temperature=1e6)
    assert torch.allclose(probabilities, uniform_probabilities(5), atol=1e-5)


def test_dissimilar_probabilities_are_the_softmax_of_minus_s_over_t():
    similarity = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.5], [0.1, 0.5, 1.0]])
    result = dissimilar_probabilities(torch.tensor(similarity), 0.4).numpy()
    # Row 0 by hand: exp(-0.8 / 0.4) : exp(-0.1 / 0.4) over the two other classes.
    expected = math.exp(-0.25) / (math.exp(-2.0) + math.exp(-0.25))
    assert result[0, 2] == pytest.approx(expected, rel=1e-12) and result[0, 0] == 0
    assert np.allclose(result.sum(axis=1), 1.0)


def test_dissimilar_mode_puts_the_mass_where_similarity_puts_the_least():
    similarity = _random_similarity()
    off = similarity.clone().fill_diagonal_(math.nan)
    similar, dissimilar = negative_probabilities(similarity), dissimilar_probabilities(similarity)
    rows = torch.arange(5)
    farthest = off.nan_to_num(2.0).argmin(dim=1)
    nearest = off.nan_to_num(-2.0).argmax(dim=1)
    assert torch.all(dissimilar.argmax(dim=1) == farthest) and torch.all(similar.argmax(dim=1) == nearest)
    # Within a row, the two modes order the other classes in opposite ways.
    for row in rows.tolist():
        others = [j for j in range(5) if j != row]
        order = sorted(others, key=lambda j: float(similar[row, j]))
        assert sorted(others, key=lambda j: float(dissimilar[row, j])) == order[::-1]
    assert torch.all(dissimilar_probabilities(similarity, 1e-6)[rows, farthest] > 0.999)


def test_mode_probabilities_names_each_mode():
    similarity = _random_similarity()
    assert torch.equal(
        mode_probabilities("similarity", similarity, 0.3), negative_probabilities(similarity, 0.3)
    )
    assert torch.equal(
        mode_probabilities("dissimilar", similarity, 0.3), dissimilar_probabilities(similarity, 0.3)
    )
    assert torch.equal(mode_probabilities("uniform", similarity, 0.3), uniform_probabilities(5))
    with pytest.raises(ValueError, match="'none'"):
        mode_probabilities("none", similarity, 0.3)


def test_uniform_probabilities():
    probabilities = uniform_probabilities(4)
    expected = torch.full((4, 4), 1 / 3, dtype=torch.float64).fill_diagonal_(0)
    assert torch.allclose(probabilities, expected)


@pytest.mark.parametrize("temperature", [0, -0.4, math.nan, math.inf, "warm", None])
def test_invalid_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        negative_probabilities(_random_similarity(), temperature)


def test_fewer_than_two_classes_is_refused():
    with pytest.raises(ValueError, match="at least two classes"):
        negative_probabilities(torch.ones(1, 1))
    with pytest.raises(ValueError, match="at least two classes"):
        uniform_probabilities(1)
    with pytest.raises(ValueError, match="square"):
        negative_probabilities(torch.ones(2, 3))


# -- sampling ----------------------------------------------------------------------------------


def test_empirical_frequencies_match_the_probabilities():
    probabilities = negative_probabilities(_random_similarity(), temperature=0.4)
    sampler = NegativeSampler(NAMES, probabilities)
    generator = torch.Generator().manual_seed(1234)
    draws = 20000
    counts = {name: 0 for name in NAMES}
    for _ in range(draws):
        counts[sampler.sample("fox", generator)] += 1
    assert counts["fox"] == 0
    row = probabilities[NAMES.index("fox")].numpy()
    frequencies = np.array([counts[name] for name in NAMES]) / draws
    # A binomial frequency has standard error sqrt(p (1 - p) / n); 4 of them leaves a chance of
    # about 6e-5 per class of a false alarm (and the seed is fixed).
    tolerance = 4 * np.sqrt(row * (1 - row) / draws)
    assert np.all(np.abs(frequencies - row) <= tolerance), (frequencies, row)


def test_same_seed_gives_the_same_draws():
    sampler = NegativeSampler(NAMES, uniform_probabilities(5))

    def draws(seed: int) -> list[str]:
        generator = torch.Generator().manual_seed(seed)
        return [sampler.sample("cat", generator) for _ in range(40)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_a_draw_consumes_exactly_one_uniform_from_the_generator():
    generator, reference = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sample_negative(uniform_probabilities(5)[0], generator)
    torch.rand((), generator=reference, dtype=torch.float64)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_zero_probability_entries_are_never_drawn():
    row = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    assert {sample_negative(row, generator) for _ in range(2000)} == {1, 4}
    with pytest.raises(ValueError, match="probabilities_row"):
        sample_negative(torch.zeros(3), generator)


def test_sampler_rejects_unknown_class_and_self_negatives():
    with pytest.raises(ValueError, match="zero diagonal"):
        NegativeSampler(NAMES, torch.full((5, 5), 0.2))
    with pytest.raises(ValueError, match="'wolf'"):
        NegativeSampler(NAMES, uniform_probabilities(5)).sample("wolf", torch.Generator())


# -- overrides ---------------------------------------------------------------------------------


def test_pinned_negatives_only():
    base = negative_probabilities(_random_similarity(), 0.4)
    result = apply_override(base, NAMES, allowed={"cat": ["owl", "eel"]})
    assert result[0].nonzero()[:, 0].tolist() == [3, 4]
    assert result[0, 3] / result[0, 4] == pytest.approx(float(base[0, 3] / base[0, 4]))
    assert torch.equal(result[1:], base[1:])  # other rows untouched
    generator = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(NAMES, result)
    assert {sampler.sample("cat", generator) for _ in range(500)} == {"owl", "eel"}


def test_excluded_negatives_are_never_drawn():
    result = apply_override(uniform_probabilities(5), NAMES, excluded={"dog": ["cat", "fox", "dog"]})
    assert torch.allclose(result[1], torch.tensor([0, 0, 0, 0.5, 0.5], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(NAMES, result)
    assert {sampler.sample("dog", generator) for _ in range(500)} == {"owl", "eel"}


def test_override_errors_name_the_culprits():
    base = uniform_probabilities(5)
    with pytest.raises(ValueError, match="wolf.*yak|yak.*wolf"):
        apply_override(base, NAMES, allowed={"wolf": ["cat"]}, excluded={"cat": ["yak"]})
    with pytest.raises(ValueError, match="no possible negative class.*'owl'"):
        apply_override(base, NAMES, allowed={"owl": ["cat"]}, excluded={"owl": ["cat"]})
    with pytest.raises(ValueError, match="no possible negative class.*'eel'"):
        apply_override(base, NAMES, allowed={"eel": []})
    with pytest.raises(ValueError, match="own negative.*'fox'"):
        apply_override(base, NAMES, allowed={"fox": ["fox", "cat"]})


# -- similarity --------------------------------------------------------------------------------


def test_similarity_is_symmetric_unit_diagonal_and_bounded():
    similarity = _random_similarity(count=7, seed=3)
    assert torch.equal(similarity, similarity.T)
    assert torch.all(similarity.diagonal() == 1)
    assert torch.all((similarity >= -1) & (similarity <= 1))


def test_similarity_is_the_cosine_of_class_means():
    means = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    similarity = similarity_matrix(means)
    assert similarity[0, 1] == pytest.approx(0.0)
    assert similarity[0, 2] == pytest.approx(1 / math.sqrt(2))
    assert similarity[0, 3] == pytest.approx(-1.0)
    assert torch.allclose(similarity_matrix(means * 5), similarity)  # scale does not matter
    with pytest.raises(ValueError, match="zero norm"):
        similarity_matrix(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


# -- embeddings through the tiny CLIP ----------------------------------------------------------


@pytest.mark.determinism
def test_embeddings_are_the_raw_encode_image_output(tiny_clip):
    images = [_image((200, 30, 30), 0), _image((30, 200, 30), 1), _image((200, 30, 30), 0)]
    embeddings = embed_images(tiny_clip, images, batch_size=2)
    assert embeddings.shape == (3, 32) and embeddings.dtype == torch.float32
    # The same batches again: the same computation, so the same bits.
    assert torch.equal(embed_images(tiny_clip, images, batch_size=2), embeddings)
    # Image 0 is encoded in a batch of 2, image 2 alone: matmul kernels may round differently
    # with the batch shape (they do on AVX512 CPUs), so equal only up to float32 rounding.
    assert torch.allclose(embeddings[0], embeddings[2], atol=1e-5)
    with torch.no_grad():
        direct = tiny_clip.model.encode_image(torch.stack([tiny_clip.preprocess(image) for image in images]))
    assert torch.allclose(embeddings, direct, atol=1e-5)  # one batch of 3 vs batches of 2 and 1
    assert not torch.allclose(embeddings.norm(dim=1), torch.ones(3))  # not normalised


@pytest.mark.determinism
def test_cache_hit_skips_the_model(tiny_clip, encoded, tmp_path):
    images = [_image((30, 30, 200), seed) for seed in range(5)]
    first = embed_images(tiny_clip, images, batch_size=2, cache_dir=tmp_path)
    assert sum(encoded) == 5
    encoded.clear()
    second = embed_images(tiny_clip, images, cache_dir=tmp_path)
    assert encoded == [] and torch.equal(first, second)  # read back from the cache: the same bits
    third = embed_images(tiny_clip, [*images, _image((0, 0, 0), 9)], cache_dir=tmp_path)
    assert sum(encoded) == 1 and torch.equal(third[:5], first)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 6
    assert np.load(files[0], allow_pickle=False).shape == (32,)  # plain arrays, no pickle


def test_cache_is_keyed_by_model(tiny_clip, encoded, tmp_path):
    images = [_image((90, 90, 90), seed) for seed in range(3)]
    embed_images(tiny_clip, images, cache_dir=tmp_path)
    encoded.clear()
    embed_images(dataclasses.replace(tiny_clip, source="another/model"), images, cache_dir=tmp_path)
    assert sum(encoded) == 3


@pytest.mark.determinism
def test_corrupt_cache_files_are_rebuilt(tiny_clip, encoded, tmp_path):
    images = [_image((250, 200, 0), seed) for seed in range(4)]
    first = embed_images(tiny_clip, images, cache_dir=tmp_path)
    files = sorted(tmp_path.rglob("*.npy"))
    files[0].write_bytes(b"not an array")
    files[1].write_bytes(files[1].read_bytes()[:60])  # torn file
    np.save(files[2], np.zeros((2, 2), dtype=np.float32))  # valid file, wrong shape
    encoded.clear()
    second = embed_images(tiny_clip, images, cache_dir=tmp_path)
    # Recomputed in a batch of 3 instead of 4: equal up to float32 summation order.
    assert sum(encoded) == 3 and torch.allclose(first, second, atol=1e-5)
    encoded.clear()
    embed_images(tiny_clip, images, cache_dir=tmp_path)
    assert encoded == []  # rebuilt files are good again


@pytest.mark.determinism
def test_class_embeddings_are_per_class_means(tiny_clip):
    classes = {"red": [_image((220, 20, 20), s) for s in range(3)], "blue": [_image((20, 20, 220), 5)]}
    names, means = class_embeddings(tiny_clip, classes)
    assert names == ["red", "blue"] and means.shape == (2, 32)
    # The class means come from one batch of all 4 images, the reference from a batch of 3.
    assert torch.allclose(means[0], embed_images(tiny_clip, classes["red"]).mean(dim=0), atol=1e-6)
    with pytest.raises(ValueError, match="green"):
        class_embeddings(tiny_clip, {**classes, "green": []})


def test_compute_similarity_prefers_the_look_alike_class(tiny_clip, tmp_path):
    colours = {"red": (220, 20, 20), "crimson": (215, 25, 25), "green": (20, 200, 40), "blue": (20, 20, 220)}
    classes = {
        name: [_image(colour, 10 * i + s) for s in range(3)]
        for i, (name, colour) in enumerate(colours.items())
    }
    result = compute_similarity(tiny_clip, classes, cache_dir=tmp_path)
    assert result.names == list(colours)
    red = result.probabilities[0]
    assert int(red.argmax()) == 1 and red[1] > 0.4  # crimson is red's most likely negative
    ablation = compute_similarity(tiny_clip, classes, mode="uniform", excluded={"red": ["crimson"]})
    assert torch.allclose(ablation.probabilities[0], torch.tensor([0, 0, 0.5, 0.5], dtype=torch.float64))
    assert ablation.excluded == {"red": ["crimson"]}
    dissimilar = compute_similarity(tiny_clip, classes, mode="dissimilar", cache_dir=tmp_path)
    # Crimson, red's look-alike, is now its least likely negative.
    assert min(range(1, 4), key=lambda j: float(dissimilar.probabilities[0, j])) == 1
    # A result serves the other modes: the same matrix, temperature and overrides, other probabilities.
    assert torch.equal(result.with_mode("dissimilar").probabilities, dissimilar.probabilities)
    assert torch.equal(dissimilar.with_mode("similarity").probabilities, result.probabilities)
    assert result.with_mode("similarity") is result
    assert torch.equal(ablation.with_mode("uniform").probabilities, ablation.probabilities)


def test_result_round_trips_through_json(tmp_path):
    similarity = _random_similarity()
    result = SimilarityResult(
        names=NAMES,
        similarity=similarity,
        probabilities=apply_override(negative_probabilities(similarity), NAMES, excluded={"cat": ["dog"]}),
        temperature=0.4,
        excluded={"cat": ["dog"]},
    )
    path = result.save(tmp_path)
    assert path.name == "similarity.json"
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored["names"] == NAMES and len(stored["similarity"]) == 5 and len(stored["similarity"][0]) == 5
    loaded = SimilarityResult.load(tmp_path)
    assert torch.equal(loaded.similarity, result.similarity)
    assert torch.equal(loaded.probabilities, result.probabilities)
    assert (loaded.names, loaded.temperature, loaded.mode, loaded.excluded) == (
        NAMES,
        0.4,
        "similarity",
        {"cat": ["dog"]},
    )
    # Files written before the dissimilar mode carry a "uniform" flag instead of a mode.
    legacy = {key: value for key, value in stored.items() if key != "mode"}
    assert SimilarityResult.from_json(json.dumps(legacy | {"uniform": True})).mode == "uniform"
    assert SimilarityResult.from_json(json.dumps(legacy | {"uniform": False})).mode == "similarity"
    stored["probabilities"] = stored["probabilities"][:4]
    with pytest.raises(ValueError, match="probabilities must be 5x5"):
        SimilarityResult.from_json(json.dumps(stored))
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


# -- heatmap -----------------------------------------------------------------------------------


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


@pytest.mark.parametrize(("count", "max_classes"), [(6, 40), (9, 4)])  # heatmap, then list fallback
def test_heatmap_png_has_the_figure_size(tmp_path, count, max_classes):
    names = [f"class {i}" for i in range(count)]
    similarity = _random_similarity(count)
    figure = heatmap_figure(names, similarity, max_classes=max_classes)
    assert isinstance(figure, Figure)
    width, height = figure.get_size_inches()
    order = save_heatmap(tmp_path / "map.png", names, similarity, max_classes=max_classes, dpi=50)
    assert _png_size(tmp_path / "map.png") == (round(width * 50), round(height * 50))
    assert sorted(order) == list(range(count))


def _drawable(text: Text) -> bool:
    """Whether every character of ``text`` has a glyph in the fonts matplotlib draws it with (its
    families in fallback order): no box, no "Glyph missing" warning."""
    fonts = [
        font_manager.get_font(font_manager.findfont(FontProperties(family=[family])))
        for family in text.get_fontproperties().get_family()
    ]
    return all(c == "\n" or any(font.get_char_index(ord(c)) for font in fonts) for c in text.get_text())


@pytest.mark.parametrize("max_classes", [40, 2])  # heatmap, then list fallback
def test_class_names_in_any_script_are_drawn_or_escaped_never_boxes(tmp_path, max_classes):
    names = ["猫", "고양이", "dog", "แมว", "$1 coin$"]  # Thai: no font here has it
    figure = heatmap_figure(names, _random_similarity(len(names)), max_classes=max_classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(tmp_path / "map.png")
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
    texts = [text for text in figure.findobj(Text) if text.get_visible() and text.get_text()]
    assert [text.get_text() for text in texts if not _drawable(text)] == []
    shown = "\n".join(text.get_text() for text in texts)
    assert "猫" in shown and "고양이" in shown and "แมว" not in shown
    assert "\\u0e41\\u0e21\\u0e27" in shown and ESCAPE_NOTE in shown
    assert all(not text.get_parse_math() for text in texts if "$1 coin$" in text.get_text())  # plain text


def test_heatmap_grows_with_the_class_count():
    small = heatmap_figure(["a", "b", "c"], _random_similarity(3))
    large = heatmap_figure([f"c{i}" for i in range(30)], _random_similarity(30))
    assert large.get_size_inches()[0] > small.get_size_inches()[0]


def test_order_puts_near_duplicate_classes_together():
    generator = torch.Generator().manual_seed(5)
    means = torch.randn(8, 16, generator=generator)
    means[6] = means[1] + 0.01 * torch.randn(16, generator=generator)
    similarity = similarity_matrix(means)
    order = similarity_order(similarity)
    assert sorted(order) == list(range(8))
    assert abs(order.index(1) - order.index(6)) == 1
    assert similarity_order(similarity) == order  # deterministic


def test_top_similar_lists_the_closest_other_classes():
    means = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    table = dict(top_similar(["a", "b", "c"], similarity_matrix(means), k=5))
    assert [name for name, _ in table["a"]] == ["b", "c"]  # k capped at the other classes
    assert table["c"][0][0] == "b"
