"""The world report: does a models folder do what DIPSY needs? ``python -m dipsy_ui.bench world``.

The world's reference judge, which never saw a generated image (for the digits scikit-learn's
SVC on the 8x8 pixels of the pool digits, :func:`reference_classifier`; for the critters
:class:`dipsy_ui.critters.CritterJudge`), reads every generated image back to a class. On the
world's preset's settings the report measures, per class and overall:

- text-only recognition: ``w_pos = w_neg = 0`` (plain text classifier-free guidance);
- image-prompt-only recognition: the empty prompt and a positive image of the class, no negative;
- DIPSY recognition: the preset's weights, negative classes drawn from the CLIP similarity, and
  the share of images read as their own negative class, with and without the negative term;
- the negative effect: positive images of class A, negative images of B, the share of images
  read as B at ``w_neg = 0`` and at the preset's ``w_neg``, for two pairs: the pair the generator
  confuses most when the images alone steer (empty prompt; the most frequent misreading of the
  image-prompt-only images), and the pair CLIP finds most similar, with the class prompt (where
  the text alone already pins the digit, so there is little left for the negative to remove);
- the class similarity's structure (spread of off-diagonal cosines, negative probabilities at
  the preset's temperature), how well the Curate tab's CLIP ranking separates images of a class
  from images of other classes, the live-preview latency, and the classifier's headroom: zero-shot
  and real-only few-shot test top-1 on the held-out images;
- for a world with families (:mod:`.families`): family and within-family recognition, the share
  read as a sibling, the sibling-negative effect with its 95% interval, and the similarity's
  family blocks (the hypotheses H1-H5 of BENCHMARKS.md).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models import ModelSpec, load_clip, load_pipeline, resolve_runtime
from ..presets import load_preset
from ..similarity import compute_similarity
from .families import family_index, family_recognition, family_structure, paired_change
from .worlds import World, get_world


def digit_features(images: list[Image.Image]) -> np.ndarray:
    """Images -> the 8x8 ink features of scikit-learn's digits (0..16, white ink on black)."""
    rows = []
    for image in images:
        gray = image.convert("L").resize((8, 8), Image.Resampling.BOX)
        rows.append((255 - np.asarray(gray, dtype=np.float64)) * 16 / 255)
    return np.stack(rows).reshape(len(rows), 64)


def reference_classifier():
    """An SVC trained on the pool digits as the world renders them, read back like any generated
    image (so it judges shapes, not the rendering)."""
    from sklearn.svm import SVC

    from .config import Pool
    from .worlds import get_world

    pool = Pool.load(get_world("digits"))
    return SVC(gamma=0.001, C=10.0).fit(digit_features(pool.images), pool.labels.numpy())


def _recognition(world: World, predicted: np.ndarray, expected: np.ndarray) -> dict:
    per_class = {
        world.classes[label]: round(float(np.mean(predicted[expected == label] == label)), 3)
        for label in np.unique(expected)
    }
    confusion = np.zeros((len(world.classes), len(world.classes)), dtype=int)
    np.add.at(confusion, (expected, predicted), 1)
    result = {
        "overall": round(float(np.mean(predicted == expected)), 3),
        "per_class": per_class,
        "confusion": confusion.tolist(),  # [asked-for class][class read]
    }
    if world.families:
        result |= family_recognition(predicted, expected, family_index(world.classes, world.families))
    return result


class WorldProbe:
    """Generates images on one models folder with the preset's settings and reads them back."""

    def __init__(
        self,
        models: str | Path | None = None,
        preset: str | None = None,
        shots: int = 4,
        seed: int = 0,
        world: str = "digits",
    ):
        self.world = get_world(world)
        self.classes = self.world.classes
        self.spec = ModelSpec.from_models_dir(models or self.world.directory)
        self.runtime = resolve_runtime("cpu", "fp32")
        self.pipe = load_pipeline(self.spec, self.runtime)
        self.clip = load_clip(self.spec, self.runtime)
        self.preset = load_preset(preset or self.world.preset)
        self.config = self.preset.generation
        self.pipe.use_scheduler(self.config.scheduler)
        self.reader = self.world.judge()
        self.seed, self.shots = seed, shots
        size = (self.config.width, self.config.height)
        self.fewshot = {
            name: [
                image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
                for image in images
            ]
            for name, images in self.world.fewshot(shots, seed).items()
        }

    def generate(self, prompts, positives, negatives, **weights) -> list[Image.Image]:
        """One batched pipeline call; image ``i`` uses seed ``self.seed + i``."""
        settings = {
            "w_text": self.config.w_text,
            "w_pos": self.config.w_pos,
            "w_neg": self.config.w_neg,
            "ip_adapter_scale": self.config.ip_adapter_scale,
        } | weights
        return self.pipe(
            prompts, positives, negatives, **settings,
            num_inference_steps=self.config.steps, height=self.config.height, width=self.config.width,
            generator=[torch.Generator().manual_seed(self.seed + i) for i in range(len(prompts))],
            augment=self.config.augment,
        ).images  # fmt: skip

    def read(self, images: list[Image.Image]) -> np.ndarray:
        return self.reader(images)

    def recognition(self, per_class: int, prompt: bool, negatives: dict | None = None, **weights) -> dict:
        """Recognition of ``per_class`` images of every class; with ``negatives`` (class ->
        negative class of each image) also the share read as the image's negative class."""
        predicted, expected, negative_labels = [], [], []
        for label, name in enumerate(self.classes):
            shots = self.fewshot[name]
            positives = [shots[i % len(shots)] for i in range(per_class)]
            chosen = negatives[name] if negatives else None
            negative_images = (
                [self.fewshot[c][(i + 1) % self.shots] for i, c in enumerate(chosen)] if chosen else None
            )
            text = self.config.prompt(name) if prompt else ""
            predicted.append(
                self.read(self.generate([text] * per_class, positives, negative_images, **weights))
            )
            expected.append(np.full(per_class, label))
            negative_labels.append([self.classes.index(c) for c in chosen] if chosen else [])
        predicted, expected = np.concatenate(predicted), np.concatenate(expected)
        result = _recognition(self.world, predicted, expected)
        if negatives:
            result["read_as_negative"] = round(
                float(np.mean(predicted == np.concatenate(negative_labels))), 3
            )
        return result

    def similarity(self):
        return compute_similarity(self.clip, self.fewshot, temperature=self.config.temperature)

    def report(self, per_class: int = 20, classifier: bool = True) -> dict:
        """Every measure of the module docstring, as a dict."""
        result = {
            "models": self.spec.sd, "world": self.world.name, "preset": self.preset.name,
            "per_class": per_class, "judge": self.world.judge_source,
        }  # fmt: skip
        similarity = self.similarity()
        names = similarity.names
        off_diagonal = similarity.similarity[~torch.eye(len(names), dtype=torch.bool)]
        probabilities = similarity.probabilities[~torch.eye(len(names), dtype=torch.bool)]
        result["similarity"] = {
            "off_diagonal_min": round(float(off_diagonal.min()), 3),
            "off_diagonal_max": round(float(off_diagonal.max()), 3),
            "probability_min": round(float(probabilities.min()), 3),
            "probability_max": round(float(probabilities.max()), 3),
            "temperature": self.config.temperature,
        }
        if self.world.families:
            family = family_index(tuple(names), self.world.families)
            result["similarity"] |= family_structure(similarity.similarity, similarity.probabilities, family)
        result["text_only"] = self.recognition(per_class, True, w_pos=0.0, w_neg=0.0)
        result["image_only"] = self.recognition(per_class, False, w_neg=0.0)
        # The same sampled negative classes, with and without the negative term.
        sampler, generator = similarity.sampler(), torch.Generator().manual_seed(self.seed)
        negatives = {
            name: [sampler.sample(name, generator) for _ in range(per_class)] for name in self.classes
        }
        result["dipsy"] = self.recognition(per_class, True, negatives)
        result["dipsy_without_negative"] = self.recognition(per_class, True, negatives, w_neg=0.0)
        misread = np.array(result["image_only"]["confusion"])
        np.fill_diagonal(misread, -1)
        a, b = np.unravel_index(int(misread.argmax()), misread.shape)
        result["negative_effect"] = self.negative_effect(
            int(a), int(b), similarity, per_class * 2, prompt=False
        )
        matrix = similarity.similarity.clone().fill_diagonal_(-2)
        a, b = divmod(int(matrix.argmax()), len(names))
        result["negative_effect_similar_pair"] = self.negative_effect(a, b, similarity, per_class * 2)
        if self.world.families:
            result["sibling_negative"] = self.sibling_negative_effect(per_class)
        result["curation_auc"] = self.curation_separation(per_class)
        result["preview_seconds"] = self.preview_latency()
        if classifier:
            result["classifier"] = self.classifier_headroom()
        return result

    def negative_effect(self, a: int, b: int, similarity, count: int, prompt: bool = True) -> dict:
        """Share of images of class ``a`` read as the negative class ``b``, at ``w_neg = 0`` and the
        preset's; with the class prompt, or (``prompt=False``) the empty prompt, where the images
        alone steer (the paper's Eq. 9 with ``w_text`` acting on an empty prompt)."""
        name_a, name_b = self.classes[a], self.classes[b]
        a, b = similarity.names.index(name_a), similarity.names.index(name_b)
        positives = [self.fewshot[name_a][i % self.shots] for i in range(count)]
        negatives = [self.fewshot[name_b][(i + 1) % self.shots] for i in range(count)]
        effect = {
            "positive": name_a,
            "negative": name_b,
            "cosine": round(float(similarity.similarity[a, b]), 3),
            "prompt": "class prompt" if prompt else "empty prompt",
        }
        for key, w_neg in (("without", 0.0), ("with", self.config.w_neg)):
            text = self.config.prompt(name_a) if prompt else ""
            read = self.read(self.generate([text] * count, positives, negatives, w_neg=w_neg))
            effect[key] = {
                "w_neg": w_neg,
                "read_as_negative": round(float(np.mean(read == self.classes.index(name_b))), 3),
                "read_as_positive": round(float(np.mean(read == self.classes.index(name_a))), 3),
            }
        return effect

    def sibling_negative_effect(self, per_class: int, w_neg: float | None = None) -> dict:
        """H3/H4: the class prompt and a positive image of every class, the negative image a
        sibling's (the siblings in turn); per image, whether it reads as its negative sibling, as
        any sibling and as its own class, at ``w_neg = 0`` and at ``w_neg`` (the preset's), on the
        same seeds, with the 95% interval of each paired change."""
        w_neg = self.config.w_neg if w_neg is None else w_neg
        family = family_index(self.classes, self.world.families)
        reads = {0.0: [], w_neg: []}
        negatives, expected = [], []
        for label, name in enumerate(self.classes):
            siblings = [c for c in np.flatnonzero(family == family[label]) if c != label]
            chosen = [int(siblings[i % len(siblings)]) for i in range(per_class)]
            positives = [self.fewshot[name][i % self.shots] for i in range(per_class)]
            negative_images = [
                self.fewshot[self.classes[c]][(i + 1) % self.shots] for i, c in enumerate(chosen)
            ]
            for weight, read in reads.items():
                images = self.generate(
                    [self.config.prompt(name)] * per_class, positives, negative_images, w_neg=weight
                )
                read.append(self.read(images))
            negatives += chosen
            expected += [label] * per_class
        negatives, expected = np.array(negatives), np.array(expected)
        before, after = (np.concatenate(reads[weight]) for weight in (0.0, w_neg))

        def sibling(read: np.ndarray) -> np.ndarray:
            return (family[read] == family[expected]) & (read != expected)

        return {
            "w_neg": w_neg,
            "images": len(expected),
            "read_as_negative": paired_change(before == negatives, after == negatives),
            "read_as_sibling": paired_change(sibling(before), sibling(after)),
            "read_as_own": paired_change(before == expected, after == expected),
        }

    def curation_separation(self, per_class: int) -> float:
        """ROC AUC of the Curate tab's ranking before a classifier exists (CLIP cosine of an image
        to its class's mean real embedding): how well it scores an image of the class above an
        image of another class labelled as this one (0.5: no better than chance, 1: perfect)."""
        from sklearn.metrics import roc_auc_score

        from ..similarity import embed_images

        means = torch.stack([embed_images(self.clip, self.fewshot[name]).mean(0) for name in self.classes])
        images, labels = [], []
        for label, name in enumerate(self.classes):
            positives = [self.fewshot[name][i % self.shots] for i in range(per_class)]
            images += self.generate([self.config.prompt(name)] * per_class, positives, None, w_neg=0.0)
            labels += [label] * per_class
        embeddings = torch.nn.functional.normalize(embed_images(self.clip, images), dim=-1)
        scores = embeddings @ torch.nn.functional.normalize(means, dim=-1).T  # (images, classes)
        own = torch.nn.functional.one_hot(torch.tensor(labels), len(self.classes))
        return round(float(roc_auc_score(own.flatten().numpy(), scores.flatten().numpy())), 3)

    def preview_latency(self) -> dict:
        """Seconds to the first streamed frame and to the end of one preview (median of 3)."""
        first, whole, frames = [], [], []
        positive, negative = self.classes[3 % len(self.classes)], self.classes[len(self.classes) - 2]

        def on_step(pipe, step, timestep, kwargs):
            frames.append(time.perf_counter())
            return {}

        for _ in range(3):
            frames.clear()
            started = time.perf_counter()
            self.pipe(
                self.config.prompt(positive), self.fewshot[positive][0], self.fewshot[negative][0],
                w_text=self.config.w_text, w_pos=self.config.w_pos, w_neg=self.config.w_neg,
                ip_adapter_scale=self.config.ip_adapter_scale, num_inference_steps=self.config.steps,
                height=self.config.height, width=self.config.width, callback_on_step_end=on_step,
            )  # fmt: skip
            first.append(frames[0] - started)
            whole.append(time.perf_counter() - started)
        return {"steps": self.config.steps, "first_frame": round(float(np.median(first)), 3),
                "whole": round(float(np.median(whole)), 3)}  # fmt: skip

    def classifier_headroom(self) -> dict:
        """Zero-shot and real-only test top-1 of the preset's classifier recipe on the world's demo
        data (its few-shot images and its held-out test images)."""
        from ..classifier.train import train

        config = replace(self.preset.train, seed=self.seed)
        with tempfile.TemporaryDirectory() as scratch:
            data = self.world.write_demo_data(
                Path(scratch) / "data", shots=self.shots, test_per_class=min(100, self.world.test_per_class),
                size=self.config.height, seed=self.seed,
            )  # fmt: skip
            result = train(data / "train", Path(scratch) / "clf", self.spec, test=data / "test",
                           config=config, runtime=self.runtime)  # fmt: skip
        return {
            "shots": self.shots,
            "zero_shot_top1": result.zero_shot_top1,
            "real_only_top1": result.test_top1,
        }


def format_report(report: dict) -> str:
    """The report as the lines the benchmark prints."""
    lines = [
        f"world report: {report['world']} world, {report['models']} (preset {report['preset']}, "
        f"{report['per_class']} images per class; judge: {report['judge']})"
    ]
    rows = (("text_only", "text only"), ("image_only", "image prompt only"), ("dipsy", "DIPSY"),
            ("dipsy_without_negative", "DIPSY, w_neg = 0"))  # fmt: skip
    for key, label in rows:
        row = report[key]
        classes = " ".join(f"{name}={value:.2f}" for name, value in row["per_class"].items())
        negative = (
            f", read as its negative {row['read_as_negative']:.1%}" if "read_as_negative" in row else ""
        )
        family = (
            f", right family {row['family']:.1%}, read as a sibling {row['sibling']:.1%}"
            if "family" in row
            else ""
        )
        lines.append(f"  {label:<18} recognition {row['overall']:.1%}{family}{negative}   ({classes})")
    for key, label in (
        ("negative_effect", "negative effect"),
        ("negative_effect_similar_pair", "  CLIP-similar pair"),
    ):
        effect = report[key]
        lines.append(
            f"  {label:<18} positive {effect['positive']}, negative {effect['negative']} "
            f"(cosine {effect['cosine']}, {effect['prompt']}): read as {effect['negative']} "
            f"{effect['without']['read_as_negative']:.1%} at w_neg=0 -> {effect['with']['read_as_negative']:.1%} "
            f"at w_neg={effect['with']['w_neg']}; read as {effect['positive']} "
            f"{effect['without']['read_as_positive']:.1%} -> {effect['with']['read_as_positive']:.1%}"
        )
    if "sibling_negative" in report:
        effect = report["sibling_negative"]
        for key, label in (("read_as_negative", "its negative sibling"), ("read_as_sibling", "any sibling"),
                           ("read_as_own", "its own class")):  # fmt: skip
            change, diff = effect[key], effect[key]["difference"]
            lines.append(
                f"  sibling negative   class prompt + positive image, {effect['images']} images: read as {label} "
                f"{change['before']:.1%} at w_neg=0 -> {change['after']:.1%} at w_neg={effect['w_neg']} "
                f"(difference {diff['mean']:+.1%}, 95% interval {diff['low']:+.1%} .. {diff['high']:+.1%})"
            )
    sim = report["similarity"]
    lines.append(
        f"  similarity         off-diagonal cosines {sim['off_diagonal_min']} .. {sim['off_diagonal_max']}; "
        f"negative probabilities at T={sim['temperature']}: {sim['probability_min']} .. {sim['probability_max']}"
    )
    if "within_family_cosine" in sim:
        lines.append(
            f"  family blocks      mean cosine within a family {sim['within_family_cosine']}, across "
            f"{sim['across_family_cosine']}; negative probability on siblings {sim['sibling_probability_mean']:.1%} "
            f"on average (lowest class {sim['sibling_probability_min']:.1%})"
        )
    lines.append(
        f"  curation ranking   ROC AUC {report['curation_auc']} (own class vs other classes' images)"
    )
    preview = report["preview_seconds"]
    lines.append(
        f"  preview            {preview['steps']} steps: first frame {preview['first_frame']} s, whole {preview['whole']} s"
    )
    if "classifier" in report:
        clf = report["classifier"]
        lines.append(
            f"  classifier         {clf['shots']} shots: zero-shot top-1 {clf['zero_shot_top1']:.1%}, "
            f"real-only top-1 {clf['real_only_top1']:.1%}"
        )
    return "\n".join(lines)


def main(
    models: str | Path | None,
    preset: str | None,
    per_class: int,
    shots: int,
    classifier: bool,
    out: Path | None,
    world: str = "digits",
) -> int:
    report = WorldProbe(models, preset, shots, world=world).report(per_class, classifier)
    print(format_report(report))
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0
