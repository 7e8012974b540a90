"""The headless CLI, run in-process (same code path as ``python -m dipsy_ui``)."""

import json

import numpy as np
import pytest
from PIL import Image

from dipsy_ui.cli import main
from dipsy_ui.digits import DIGIT_NAMES


@pytest.mark.determinism
def test_generate_one_writes_a_reproducible_png(tmp_path, tiny_models):
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(
        tmp_path / "pos.png"
    )
    Image.new("CMYK", (30, 50), (0, 120, 30, 0)).save(tmp_path / "neg.jpg")
    args = ["generate-one", "--models", str(tiny_models), "--prompt", "A photo of a cat", "--steps", "3"]
    args += ["--positive", str(tmp_path / "pos.png"), "--negative", str(tmp_path / "neg.jpg"), "--seed", "7"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    first, second = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    record = json.loads(first.text["dipsy"])
    assert record["seed"] == 7 and record["w_neg"] == 6.0 and record["models"]["sd"].endswith("sd")
    # The environment fields a manifest line records, so a single image is as reproducible.
    assert {"device_name", "dtype", "cpu_capability", "threads", "versions"} <= set(record)


def generate_one(models, folder) -> list[str]:
    """A generate-one command line for ``folder/pos.png`` -> ``folder/o.png``."""
    return [
        "generate-one",
        "--models",
        str(models),
        "--prompt",
        "x",
        "--positive",
        str(folder / "pos.png"),
        "--out",
        str(folder / "o.png"),
    ]


def test_missing_models_is_a_clear_error(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "pos.png")
    code = main(generate_one(tmp_path / "absent", tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert "Could not load the Stable Diffusion 1.5 pipeline" in err and "digit-world" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_unreadable_positive_image_is_a_clear_error(tmp_path, tiny_models, capsys):
    (tmp_path / "pos.png").write_text("not an image")
    code = main(generate_one(tiny_models, tmp_path))
    assert code == 2
    assert "pos.png" in capsys.readouterr().err


def test_make_demo_data(tmp_path):
    assert main(["make-demo-data", str(tmp_path / "demo"), "--shots", "3", "--test-per-class", "2"]) == 0
    assert len(list((tmp_path / "demo" / "train" / "three").glob("*.png"))) == 3


def test_train_evaluate_predict(tmp_path, tiny_models, capsys):
    assert main(["make-demo-data", str(tmp_path / "demo"), "--shots", "2", "--test-per-class", "1"]) == 0
    demo, out = tmp_path / "demo", tmp_path / "classifier"
    models = ["--models", str(tiny_models)]
    args = [
        "train",
        "--real",
        str(demo / "train"),
        "--test",
        str(demo / "test"),
        "--preset",
        "demo",
        "--epochs",
        "1",
    ]
    assert main([*args, "--out", str(out), *models]) == 0
    assert (out / "metrics.json").is_file() and (out / "adapter").is_dir()
    capsys.readouterr()
    assert main(["evaluate", "--adapter", str(out), "--test", str(demo / "test")]) == 0
    assert "fine_tuned: top-1" in capsys.readouterr().out
    image = next((demo / "test" / "seven").glob("*.png"))
    assert main(["predict", "--adapter", str(out), str(image)]) == 0
    path, label, confidence = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and label in DIGIT_NAMES
    assert 0 < float(confidence) <= 1


def test_train_on_a_single_class_is_a_clear_error(tmp_path, tiny_models, capsys):
    (tmp_path / "real" / "only").mkdir(parents=True)
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "real" / "only" / "a.png")
    code = main(
        [
            "train",
            "--real",
            str(tmp_path / "real"),
            "--preset",
            "demo",
            "--out",
            str(tmp_path / "o"),
            "--models",
            str(tiny_models),
        ]
    )
    assert code == 2 and "class" in capsys.readouterr().err


def test_similarity_writes_matrix_and_heatmap(tmp_path, tiny_models, capsys):
    assert main(["make-demo-data", str(tmp_path / "demo"), "--shots", "2", "--test-per-class", "1"]) == 0
    out = tmp_path / "sim"
    assert (
        main(
            ["similarity", str(tmp_path / "demo" / "train"), "--out", str(out), "--models", str(tiny_models)]
        )
        == 0
    )
    result = json.loads((out / "similarity.json").read_text())
    assert len(result["names"]) == 10 and len(result["probabilities"]) == 10
    assert all(abs(sum(row) - 1) < 1e-9 and row[i] == 0 for i, row in enumerate(result["probabilities"]))
    assert Image.open(out / "similarity.png").format == "PNG"
    assert "zero:" in capsys.readouterr().out


def test_similarity_of_a_single_class_is_a_clear_error(tmp_path, tiny_models, capsys):
    (tmp_path / "data" / "only").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "only" / "a.png")
    code = main(
        ["similarity", str(tmp_path / "data"), "--out", str(tmp_path / "o"), "--models", str(tiny_models)]
    )
    assert code == 2 and "at least 2 classes" in capsys.readouterr().err


@pytest.mark.determinism
def test_generate_then_regenerate_from_the_manifest(tmp_path, tiny_models, capsys):
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / name / "1.png")
    preset = tmp_path / "quick.json"
    preset.write_text(
        json.dumps(
            {"generation": {"steps": 2, "height": 64, "width": 64, "images_per_class": 2, "batch_size": 2}}
        )
    )
    out, models = tmp_path / "synth", ["--models", str(tiny_models)]
    assert (
        main(["generate", str(tmp_path / "data"), "--preset", str(preset), "--out", str(out), *models]) == 0
    )
    assert (out / "similarity.json").is_file() and len((out / "manifest.jsonl").read_text().splitlines()) == 4
    capsys.readouterr()
    regen = [
        "regenerate",
        str(out),
        "dog/00001.png",
        "--data",
        str(tmp_path / "data"),
        "--save",
        str(tmp_path / "again.png"),
    ]
    assert main(regen) == 0
    assert capsys.readouterr().out == "dog/00001.png: regenerated, identical to the stored image\n"
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "again.png")), np.asarray(Image.open(out / "dog/00001.png"))
    )
    # Alone instead of in its batch of 2: at most rounding differences, which must not fail the command.
    assert main([*regen[:5], "--batch-size", "1"]) == 0
    assert "different" not in capsys.readouterr().out
    # A stored image replaced by another one is different: exit code 1 and the likely cause.
    (out / "dog/00001.png").write_bytes((out / "dog/00000.png").read_bytes())
    assert main(regen[:5]) == 1
    assert "dog/00001.png: regenerated, different" in capsys.readouterr().out
    # A different few-shot set cannot reproduce the run: refused, nothing written.
    Image.new("RGB", (40, 40), (0, 0, 0)).save(tmp_path / "data" / "dog" / "2.png")
    assert main([*regen[:-2], "--save", str(tmp_path / "other.png")]) == 2
    assert "different classes" in capsys.readouterr().err and not (tmp_path / "other.png").exists()
