"""Classifier training on the tiny CLIP: peft invariants, real learning, loss weighting, bad input.

The tiny CLIP (tests/conftest.py) has random weights, so everything it learns here is learned by
the LoRA adapters and the prompt head during the test itself.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dipsy_ui.classifier import data as classifier_data
from dipsy_ui.classifier.data import labelled_images
from dipsy_ui.classifier.evaluate import evaluate, predict
from dipsy_ui.classifier.model import ClipClassifier, load_classifier, split_attention
from dipsy_ui.classifier.report import comparison_table, comparison_verdict
from dipsy_ui.classifier.train import compare, train
from dipsy_ui.config import TrainConfig
from dipsy_ui.data import load_dataset
from dipsy_ui.digits import write_demo_data
from dipsy_ui.errors import TrainDataError
from dipsy_ui.images import ImageReadError
from dipsy_ui.manifest import append_lines, set_status
from dipsy_ui.models import load_clip

CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Settings that let the random tiny CLIP learn digits in 120 steps: a higher lr than the
# recipe's 1e-4 (random features need large moves), and no crop, RandAugment or LoRA dropout (on
# 64 px digits they drown the little signal a 2-layer random model can pick up).
LEARN = dict(
    lr=4e-3, batch_size=20, warmup_fraction=0.05, crop_scale_min=1.0, randaugment_ops=0, lora_dropout=0.0
)
# Very small runs for the invariants: a few steps, a large lr so every LoRA weight moves.
QUICK = dict(epochs=1, steps_per_epoch=3, batch_size=8, lr=1e-2, eval_batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny model's matmuls are far too small for two threads to pay off; one is ~5x faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """8 shots per class for training, 20 per class for testing (sklearn digits, 64 px)."""
    return write_demo_data(tmp_path_factory.mktemp("digits") / "demo", shots=8, test_per_class=20, size=64)


def _noise_image(path: Path, seed: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _synthetic_set(root: Path, classes, per_class: int, seed: int, rejected_per_class: int = 0) -> Path:
    """A DIPSY synthetic folder: OUT/<slug>/<file>.png + manifest.jsonl (some records rejected)."""
    records, rejected = [], []
    for c, name in enumerate(classes):
        for i in range(per_class + rejected_per_class):
            file = f"{name}/{i:03d}.png"
            _noise_image(root / file, seed * 10_000 + c * 100 + i)
            records.append({"file": file, "class_name": name, "seed": i})
            if i >= per_class:
                rejected.append(file)
    append_lines(root, records)
    if rejected:
        set_status(root, rejected, "rejected")
    return root


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# Configuration --------------------------------------------------------------------------------


def test_config_defaults_are_the_paper_recipe_and_round_trip():
    config = TrainConfig()
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (16, 32, 0.1)
    assert (config.lr, config.weight_decay, config.batch_size, config.lambda_real) == (1e-4, 1e-4, 64, 0.8)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"lr": 0.0}, "lr"),
        ({"lambda_real": 1.5}, "lambda_real"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": "64"}, "batch_size"),
        ({"template": "A photo of a cat"}, "template"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"randaugment_magnitude": 31}, "randaugment_magnitude"),
    ],
)
def test_config_rejects_unknown_keys_and_bad_values_naming_the_key(settings, key):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_dict(settings)


# peft invariants ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tiny_spec, digits, tmp_path_factory):
    """Three steps on the digits with a kept copy of the base weights from before training."""
    clip = load_clip(tiny_spec)
    split_attention(clip.model)  # done by training anyway; the snapshot then has the same keys
    before = _state(clip.model)
    out = tmp_path_factory.mktemp("quick")
    result = train(
        digits / "train", out, tiny_spec, test=digits / "test", config=TrainConfig(**QUICK), clip=clip
    )
    return result, before


def test_lora_wraps_the_attention_of_every_block_of_both_encoders(quick_run):
    result, _ = quick_run
    model = result.classifier.model
    blocks = [n for n, _ in model.named_modules() if n.endswith(".attn") and "resblocks" in n]
    assert {n.split(".")[0] for n in blocks} == {"visual", "transformer"}  # image and text encoders
    assert len(blocks) == 4  # the tiny CLIP has 2 blocks per encoder
    for name in blocks:
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            module = model.get_submodule(f"{name}.{projection}")
            assert hasattr(module, "lora_A"), f"{name}.{projection} has no LoRA"
            assert module.lora_A["default"].weight.shape[0] == TrainConfig().lora_rank
            assert module.lora_dropout["default"].p == TrainConfig().lora_dropout
    trainable = [n for n, p in result.classifier.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_only_lora_parameters_change(quick_run):
    result, before = quick_run
    after = _state(result.classifier.model)
    lora = {k: v for k, v in after.items() if "lora_" in k}
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], base[k])]
    assert changed == [], f"frozen parameters changed: {changed[:5]}"
    # every LoRA B matrix starts at zero; a step must have moved all of them
    still_zero = [k for k, v in lora.items() if "lora_B" in k and not v.any()]
    assert lora and still_zero == []


@pytest.mark.determinism
def test_split_attention_matches_open_clip_attention(tiny_spec):
    clip = load_clip(tiny_spec)
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tokens = clip.tokenizer(["a photo of a cat", "a digit"])
    with torch.no_grad():
        before = clip.model.encode_image(images), clip.model.encode_text(tokens)
        assert len(split_attention(clip.model)) == 4 and split_attention(clip.model) == []
        after = clip.model.encode_image(images), clip.model.encode_text(tokens)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in clip.model.modules())
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5)  # same math, unfused matmuls


@pytest.mark.determinism
def test_disabling_the_adapter_restores_the_base_model_exactly(quick_run, tiny_spec):
    result, _ = quick_run
    trained = result.classifier.eval()
    base_clip = load_clip(tiny_spec)
    split_attention(base_clip.model)
    base = ClipClassifier(base_clip, trained.class_names, trained.template).eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(images)
        with trained.adapter_disabled():
            disabled = trained(images)
        enabled = trained(images)
    # A disabled LoRA layer returns its base layer's output: the base model's computation, bit for bit.
    assert torch.equal(disabled, expected)
    assert not torch.allclose(enabled, expected, atol=1e-4)  # the adapter does change outputs


@pytest.mark.determinism
def test_save_then_load_gives_identical_logits_and_predictions(quick_run, digits):
    result, _ = quick_run
    loaded = load_classifier(result.out_dir)
    assert loaded.class_names == tuple(sorted(CLASSES)) and loaded.template == TrainConfig().template
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(images), result.classifier.eval()(images))
    paths = [p for p, _ in labelled_images(digits / "test")][:5]
    predictions = predict(result.out_dir, paths)
    again = predict(result.classifier, paths)
    for prediction, other in zip(predictions, again, strict=True):
        assert prediction.probs == other.probs
        assert abs(sum(prediction.probs.values()) - 1) < 1e-5
        assert prediction.label == max(prediction.probs, key=prediction.probs.get)
        assert prediction.confidence == prediction.probs[prediction.label]


def test_output_folder_holds_config_metrics_and_plots(quick_run, tiny_spec):
    result, _ = quick_run
    out = result.out_dir
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["class_names"] == sorted(CLASSES) and saved["model_spec"] == tiny_spec.to_dict()
    assert saved["config"]["steps_per_epoch"] == 3 and "{c}" in saved["template"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and len(metrics["step_loss"]) == 3
    test = metrics["epochs"][0]["test"]
    assert test["count"] == 200 and set(test["per_class"]) == set(CLASSES)
    assert np.array(test["confusion"]).sum() == 200
    assert np.trace(np.array(test["confusion"])) / 200 == pytest.approx(test["top1"])
    assert 0 <= metrics["zero_shot"]["top1"] <= 1
    for plot in ("curves.png", "confusion.png"):
        assert Image.open(out / plot).size[0] > 100


def test_evaluate_folder_reports_zero_shot_and_fine_tuned(quick_run, digits):
    result, _ = quick_run
    report = evaluate(result.out_dir, digits / "test")
    assert report["zero_shot"].top1 == pytest.approx(result.metrics["zero_shot"]["top1"])
    assert report["fine_tuned"].top1 == pytest.approx(result.test_top1)


@pytest.mark.determinism
def test_same_seed_same_run_and_the_caller_rng_is_left_alone(tiny_spec, digits, tmp_path):
    def losses(name: str, caller_seed: int, **settings) -> list[float]:
        torch.manual_seed(caller_seed)
        config = TrainConfig(**{**QUICK, **settings})
        # the consumer draws random numbers at each event: the run must neither notice nor disturb it
        events = []
        train(digits / "train", tmp_path / name, tiny_spec, config=config,
              on_event=lambda e: events.append(e) or torch.rand(1))  # fmt: skip
        after = torch.rand(1)
        torch.manual_seed(caller_seed)
        assert torch.equal(after, torch.rand(len(events) + 1)[-1:])
        return [e.payload["loss"] for e in events if e.payload and e.payload["phase"] == "step"]

    first = losses("a", caller_seed=1)
    assert first == losses("b", caller_seed=2) and len(first) == 3
    assert losses("c", caller_seed=1, seed=1) != first
    # with DataLoader workers the augmentation RNG lives in the workers, seeded from the run's seed
    assert losses("d", caller_seed=3, num_workers=1) == losses("e", caller_seed=4, num_workers=1)


# Learning is real ---------------------------------------------------------------------------


def _shuffled_copy(train_dir: Path, out: Path) -> Path:
    """The same 80 images, each moved to a different class than its own: labels carry nothing."""
    rng = random.Random(0)
    for path, name in labelled_images(train_dir):
        wrong = CLASSES[(CLASSES.index(name) + rng.randrange(1, len(CLASSES))) % len(CLASSES)]
        (out / wrong).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / wrong / f"{name}-{path.name}")
    return out


def test_training_learns_digits_and_shuffled_labels_do_not(tiny_spec, digits, tmp_path):
    # 120 steps of 20 images. Chance is 10% on 200 test images (std ~2%); 30% is ~10 std above
    # it, and the zero-shot start of this random model sits at chance. The real run ends near
    # 43% (seeds 1 and 2: ~35%); the same run on labels that carry no information stays near 10%.
    config = TrainConfig(epochs=4, steps_per_epoch=30, **LEARN)
    events = []
    result = train(digits / "train", tmp_path / "real", tiny_spec, test=digits / "test", config=config,
                   on_event=events.append)  # fmt: skip
    losses = [e["train_loss"] for e in result.metrics["epochs"]]
    assert result.test_top1 >= 0.30, result.metrics["epochs"]
    assert losses[-1] < 0.7 * losses[0]
    assert result.zero_shot_top1 < 0.2

    shuffled = _shuffled_copy(digits / "train", tmp_path / "shuffled-train")
    control = train(shuffled, tmp_path / "shuffled", tiny_spec, test=digits / "test", config=config)
    assert control.test_top1 < 0.2, control.metrics["epochs"]

    steps = [e for e in events if e.payload and e.payload["phase"] == "step"]
    assert [e.step for e in steps] == list(range(1, 121)) and all(e.total == 120 for e in steps)
    assert steps[0].payload["lr"] < steps[10].payload["lr"]  # warm-up
    assert steps[-1].payload["eta_s"] == 0 and all(e.payload["elapsed_s"] >= 0 for e in steps)
    assert [e.payload["test_top1"] for e in events if e.payload and e.payload["phase"] == "epoch"] == [
        e["test"]["top1"] for e in result.metrics["epochs"]
    ]
    assert events[-1].kind == "done" and sum(e.last for e in events) == 1


# Loss weighting and the synthetic set ---------------------------------------------------------


@pytest.mark.determinism
def test_lambda_one_gives_synthetic_images_no_gradient_effect(tiny_spec, digits, tmp_path):
    first = _synthetic_set(tmp_path / "syn-a", CLASSES, per_class=2, seed=1)
    second = _synthetic_set(tmp_path / "syn-b", CLASSES, per_class=2, seed=2)

    def lora_after(synthetic: Path, lambda_real: float) -> dict[str, torch.Tensor]:
        config = TrainConfig(**{**QUICK, "lambda_real": lambda_real})
        out = tmp_path / f"{synthetic.name}-{lambda_real}"
        result = train(digits / "train", out, tiny_spec, synthetic=synthetic, config=config)
        return {k: v for k, v in _state(result.classifier.model).items() if "lora_" in k}

    ignored_a, ignored_b = lora_after(first, 1.0), lora_after(second, 1.0)
    # Both runs compute on batches of the same shapes and the synthetic term's weight is exactly 0,
    # so the real images alone decide every bit of the weights.
    assert all(torch.equal(ignored_a[k], ignored_b[k]) for k in ignored_a)
    # control: with weight on the synthetic term, the two sets do lead to different weights
    used_a, used_b = lora_after(first, 0.5), lora_after(second, 0.5)
    assert not all(torch.equal(used_a[k], used_b[k]) for k in used_a)


def test_rejected_images_never_reach_the_loader(tiny_spec, digits, tmp_path, monkeypatch):
    synthetic = _synthetic_set(tmp_path / "syn", CLASSES, per_class=2, seed=3, rejected_per_class=2)
    rejected = {p for p in synthetic.rglob("*.png") if int(p.stem) >= 2}
    for path in rejected:  # unreadable too, so a leak would also crash the run
        path.write_bytes(b"not a png")
    listed = {p for p, _ in labelled_images(synthetic)}
    assert len(listed) == 20 and not listed & rejected

    opened = []
    real_open = classifier_data.open_image
    monkeypatch.setattr(classifier_data, "open_image", lambda p: opened.append(Path(p)) or real_open(p))
    result = train(digits / "train", tmp_path / "run", tiny_spec, synthetic=synthetic,
                   config=TrainConfig(**{**QUICK, "steps_per_epoch": None, "batch_size": 10}))  # fmt: skip
    assert result.metrics["steps_per_epoch"] == 2  # one pass over the 20 kept images
    assert not set(opened) & rejected
    assert {p for p in opened if synthetic in p.parents} == listed


def test_comparison_uses_the_same_seed_and_step_budget(tiny_spec, digits, tmp_path):
    synthetic = _synthetic_set(tmp_path / "syn", CLASSES, per_class=3, seed=4)
    config = TrainConfig(**{**QUICK, "steps_per_epoch": None, "batch_size": 10})
    report = compare(digits / "train", synthetic, digits / "test", tmp_path / "cmp", tiny_spec, config=config)
    assert report["steps"] == 3  # ceil(30 synthetic images / 10), for both runs
    for run in ("real-only", "real+synthetic"):
        metrics = json.loads((tmp_path / "cmp" / run / "metrics.json").read_text())
        assert metrics["total_steps"] == 3 and len(metrics["step_loss"]) == 3
    assert report["real_only"]["top1"] is not None and report["real_synthetic"]["top1"] is not None
    assert "real only" in report["table"] and "real+synthetic" in report["table"]
    assert (
        report["verdict"] == comparison_verdict(report) and "same seed (0) and steps (3)" in report["verdict"]
    )
    assert report["text"] == f"{report['verdict']}\n\n{report['table']}"
    assert (tmp_path / "cmp" / "comparison.txt").read_text() == report["text"] + "\n"
    # Both classifiers are offered for download: each folder loads as a classifier.
    assert report["folders"] == {key: str(tmp_path / "cmp" / run) for key, run in
                                 (("real_only", "real-only"), ("real_synthetic", "real+synthetic"))}  # fmt: skip
    for folder in report["folders"].values():
        assert load_classifier(folder).class_names == tuple(report["class_names"])


def _comparison(real_only: float | None, real_synthetic: float | None, names=("cat", "dog")) -> dict:
    """A compare() report with the given top-1 (None: the run a cancel stopped) and per-class
    accuracies spread around it."""

    def run(top1):
        if top1 is None:
            return None
        return {"top1": top1, "per_class": {name: min(1.0, top1 + i / 100) for i, name in enumerate(names)}}

    return {
        "class_names": list(names),
        "steps": 300,
        "seed": 7,
        "zero_shot": run(0.1),
        "real_only": run(real_only),
        "real_synthetic": run(real_synthetic),
        "cancelled": real_only is None or real_synthetic is None,
    }


@pytest.mark.parametrize(
    ("real_only", "real_synthetic", "verdict"),
    [
        (
            0.48,
            0.62,
            "real+synthetic 62.0% vs real-only 48.0% top-1: +14.0 points, same seed (7) and steps (300)",
        ),
        (
            0.5,
            0.47,
            "real+synthetic 47.0% vs real-only 50.0% top-1: -3.0 points, same seed (7) and steps (300)",
        ),
        (
            0.5,
            0.5004,
            "real+synthetic 50.0% vs real-only 50.0% top-1: no difference, same seed (7) and steps (300)",
        ),
        (
            0.5,
            0.4996,
            "real+synthetic 50.0% vs real-only 50.0% top-1: no difference, same seed (7) and steps (300)",
        ),
        (0.48, None, "cancelled during the real+synthetic run (real-only top-1 48.0%): no comparison"),
        (None, None, "cancelled during the real-only run: no comparison"),
    ],
)
def test_comparison_verdict_states_the_sign_and_the_points(real_only, real_synthetic, verdict):
    assert comparison_verdict(_comparison(real_only, real_synthetic)) == verdict


def _cells(text: str) -> str:
    """``text`` as the terminal shows it, one character per cell: a wide character takes two."""
    return "".join(
        "" if unicodedata.combining(ch) else ch * 2 if unicodedata.east_asian_width(ch) in "WF" else ch
        for ch in text
    )


def test_comparison_table_columns_line_up_whatever_the_class_names():
    names = (
        "a",
        "a much longer class name than the others",
        "猫 (ねこ)",
        "é",
        "x" * 100,
        "tab\tand\nnewline",
    )
    report = _comparison(0.48, 0.62, names)
    report["real_synthetic"]["per_class"]["a"] = None  # a class with no test image

    [header, *rows] = map(_cells, comparison_table(report).splitlines())

    assert len(rows) == 2 + len(names)  # top-1, steps, then one row per class, each on one line
    assert {len(row) for row in rows} == {len(header)}
    ends = [
        header.index(title) + len(title) for title in ("zero-shot", "real only", "real+synthetic", "change")
    ]
    for row in rows:  # every value right-aligned under its column title
        assert all(row[end - 1] != " " and (end == len(row) or row[end] == " ") for end in ends[:3]), row
    top1, _, first_class = (row.split()[-4:] for row in rows[:3])
    assert top1 == ["10.0", "48.0", "62.0", "+14.0"] and first_class == ["10.0", "48.0", "-", "-"]
    assert any(row.startswith("x" * 39 + "…") for row in rows)  # long names are cut, not wrapped
    assert any(row.startswith("tab\\tand\\nnewline ") for row in rows)

    cut = comparison_table(report, per_class_limit=2).splitlines()
    assert len(cut) == 1 + 2 + 2 + 1 and cut[-1] == "... and 4 more classes (all of them in comparison.json)"


# Cancel ---------------------------------------------------------------------------------------


@pytest.mark.determinism
def test_cancel_between_steps_leaves_a_loadable_checkpoint(tiny_spec, digits, tmp_path):
    stop = threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if event.payload and event.payload["phase"] == "step" and event.step == 2:
            stop.set()

    config = TrainConfig(**{**QUICK, "steps_per_epoch": 10})
    result = train(digits / "train", tmp_path, tiny_spec, config=config, on_event=on_event, cancel=stop)
    assert result.cancelled and events[-1].kind == "cancelled" and events[-1].step == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["cancelled"] is True
    loaded = load_classifier(tmp_path)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), result.classifier.eval()(images))


# Bad input ------------------------------------------------------------------------------------


def _image_folder(root: Path, classes, per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _noise_image(root / name / f"{i}.png", c * 10 + i)
    return root


def test_bad_inputs_raise_clear_errors(tiny_spec, tmp_path):
    real = _image_folder(tmp_path / "real", ["cat", "dog", "fox"])

    (tmp_path / "empty-test").mkdir()
    with pytest.raises(TrainDataError, match="test folder .*empty-test holds no images"):
        train(real, tmp_path / "o1", tiny_spec, test=tmp_path / "empty-test")

    synthetic = _image_folder(tmp_path / "syn", ["cat", "dog", "owl"])
    with pytest.raises(
        TrainDataError, match=r"missing in the synthetic set: \['fox'\].*missing in the real set: \['owl'\]"
    ):
        train(real, tmp_path / "o2", tiny_spec, synthetic=synthetic)

    single = _image_folder(tmp_path / "single", ["cat"])
    with pytest.raises(TrainDataError, match=r"single class \['cat'\].*at least 2"):
        train(single, tmp_path / "o3", tiny_spec)

    broken = tmp_path / "broken"
    for name in ("cat", "dog"):
        (broken / name).mkdir(parents=True)
        (broken / name / "1.png").write_bytes(b"not an image")
    with pytest.raises(TrainDataError, match="real set .*broken has no readable images"):
        train(broken, tmp_path / "o4", tiny_spec)

    with pytest.raises(TrainDataError, match="does not exist"):
        train(tmp_path / "missing", tmp_path / "o5", tiny_spec)

    unknown_test = _image_folder(tmp_path / "test", ["cat", "wolf"])
    with pytest.raises(TrainDataError, match=r"not trained on: \['wolf'\]"):
        train(real, tmp_path / "o6", tiny_spec, test=unknown_test)

    with pytest.raises(TrainDataError, match="not a trained classifier folder"):
        load_classifier(tmp_path)


def test_unreadable_real_files_are_skipped_with_a_warning(tiny_spec, tmp_path):
    real = _image_folder(tmp_path / "real", ["cat", "dog"])
    (real / "cat" / "bad.png").write_bytes(b"not an image")
    result = train(real, tmp_path / "out", tiny_spec, config=TrainConfig(**QUICK))
    assert any("bad.png" in w for w in result.metrics["warnings"])


def test_predict_names_an_unreadable_file(quick_run, tmp_path):
    result, _ = quick_run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageReadError, match="bad.png"):
        predict(result.classifier, [bad])


def test_class_folders_are_named_as_the_few_shot_loader_names_them(tiny_spec, tmp_path):
    # "cat " (trailing space) is the class "cat" for the few-shot loader, so `generate` writes
    # "cat"; the trainer, the comparison and the evaluator must read it as "cat" too.
    real = _image_folder(tmp_path / "real", ["cat ", "dog"])
    synthetic = _image_folder(tmp_path / "syn", ["cat", "dog"])
    test = _image_folder(tmp_path / "test", [" cat", "dog"])
    assert load_dataset(real).class_names == ("cat", "dog")
    result = train(real, tmp_path / "run", tiny_spec, synthetic=synthetic, test=test,
                   config=TrainConfig(**QUICK))  # fmt: skip
    assert result.class_names == ("cat", "dog")
    assert set(result.metrics["epochs"][-1]["test"]["per_class"]) == {"cat", "dog"}
    assert evaluate(tmp_path / "run", test)["fine_tuned"].count == 4


def test_labelled_lists_train_and_evaluate_like_the_folder_they_list(tiny_spec, tmp_path):
    folder = _image_folder(tmp_path / "real", ["a", "b"], per_class=3)
    config = TrainConfig(**QUICK)
    by_folder = train(folder, tmp_path / "folder", tiny_spec, test=folder, config=config)
    by_list = train(labelled_images(folder), tmp_path / "list", tiny_spec, test=folder, config=config)
    assert by_list.metrics["step_loss"] == by_folder.metrics["step_loss"]  # same images, order, prompts

    # Names no folder can carry reach the prompts and the per-class metrics as they are.
    names = {"a": "a/b", "b": "crème brûlée"}
    renamed = [(path, names[name]) for path, name in labelled_images(folder)]
    result = train(renamed, tmp_path / "renamed", tiny_spec, test=renamed, config=config)
    assert result.class_names == ("a/b", "crème brûlée")
    assert set(result.metrics["epochs"][-1]["test"]["per_class"]) == {"a/b", "crème brûlée"}
    images = [(Image.open(path).convert("RGB"), name) for path, name in renamed]  # PIL images, not paths
    assert evaluate(tmp_path / "renamed", images)["fine_tuned"].top1 == result.test_top1
