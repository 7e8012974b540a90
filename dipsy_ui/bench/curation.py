"""The curation benchmark: ``python -m dipsy_ui.bench curation`` generates a run of a shipped world
(:mod:`dipsy_ui.world.worlds`; the digits by default, with their preset and demo data as the real
images) and measures the curation report (:mod:`dipsy_ui.curation`) on it:

- on the run as generated, ``off_class`` against the world's reference judge (for the digits an
  SVC on their pixels): precision and recall of the flag for "the judge reads another class";
- on a copy with planted defects (:func:`plant_defects`: images replaced by their own positive
  image, by a copy of an earlier image of their class, and pairs of images of two classes
  swapped), each flag's precision and recall on the defects planted for it;
- the time of the report with an empty embedding cache and with a full one.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
from pathlib import Path

from ..curation import CACHE_DIR, CurationJob
from ..data import FewShotDataset, load_dataset, resolve_inside
from ..images import open_image, save_png
from ..manifest import read_manifest

PLANTED_FLAG = {"positive": "near_copy", "copy": "duplicate", "swap": "off_class"}


def _path(run_dir: Path, file: str) -> Path:
    return resolve_inside(run_dir, *file.split("/"))


def plant_defects(run_dir: str | Path, dataset: FewShotDataset, per_kind: int, seed: int = 0) -> dict:
    """Overwrite images of a run (a copy: the manifest is left as it is, so it now lies about
    them) with ``per_kind`` defects of each kind, on distinct images; returns ``{kind: files}``.

    - ``positive``: an image replaced by its own recorded positive image (a perfect near copy);
    - ``copy``: an image replaced by an earlier image of its class that is left untouched;
    - ``swap``: two images of different classes exchanged, so each is filed under the wrong class
      (both count; the exchange adds no copy that ``duplicate`` could catch instead).
    """
    run_dir = Path(run_dir)
    records = list(read_manifest(run_dir).values())
    rng = random.Random(seed)
    order = rng.sample(range(len(records)), len(records))
    used: set[int] = set()
    planted: dict[str, list[str]] = {kind: [] for kind in PLANTED_FLAG}

    def take(condition) -> int | None:
        for index in order:
            if index not in used and condition(index):
                used.add(index)
                return index
        return None

    sources = {record.source: record for name in dataset.class_names for record in dataset.images(name)}
    copied: set[str] = set()  # each positive once: two copies of one would also be duplicates
    for _ in range(per_kind):
        index = take(lambda i: records[i].get("positive") in sources.keys() - copied)
        if index is not None:
            copied.add(records[index]["positive"])
            save_png(sources[records[index]["positive"]].image, _path(run_dir, records[index]["file"]))
            planted["positive"].append(records[index]["file"])
        # The copied image stays as generated and earlier in the manifest: the copy is the later one.
        target = take(lambda i: any(j < i and j not in used and _same_class(records, i, j) for j in order))
        if target is not None:
            source = next(
                j for j in order if j < target and j not in used and _same_class(records, target, j)
            )
            used.add(source)
            shutil.copyfile(_path(run_dir, records[source]["file"]), _path(run_dir, records[target]["file"]))
            planted["copy"].append(records[target]["file"])
        first = take(lambda i: True)
        second = None if first is None else take(lambda i, a=first: not _same_class(records, i, a))
        if second is not None:
            a, b = _path(run_dir, records[first]["file"]), _path(run_dir, records[second]["file"])
            image_a, image_b = open_image(a), open_image(b)
            save_png(image_b, a)
            save_png(image_a, b)
            planted["swap"] += [records[first]["file"], records[second]["file"]]
    return planted


def _same_class(records: list[dict], i: int, j: int) -> bool:
    return records[i]["class_name"] == records[j]["class_name"]


def flag_scores(report: dict, planted: dict[str, list[str]]) -> dict:
    """Per planted kind, its flag's precision (flagged images that were planted for it) and
    recall (planted images that carry it); under ``"others"``, how many of the images planted
    for nothing carry a flag."""
    untouched = [e for e in report["images"] if not any(e["file"] in files for files in planted.values())]
    scores = {"others": {"images": len(untouched), "flagged": sum(bool(e["flags"]) for e in untouched)}}
    for kind, flag in PLANTED_FLAG.items():
        flagged = {entry["file"] for entry in report["images"] if flag in entry["flags"]}
        hits = len(flagged & set(planted[kind]))
        scores[flag] = {
            "planted": len(planted[kind]),
            "flagged": len(flagged),
            "precision": hits / len(flagged) if flagged else None,
            "recall": hits / len(planted[kind]) if planted[kind] else None,
        }
    return scores


def judge_off_class(report: dict, run_dir: Path, world) -> dict:
    """``off_class`` against a world's reference judge: precision and recall of the flag for the
    images the judge reads as another class than their own."""
    images = [open_image(_path(run_dir, entry["file"])) for entry in report["images"]]
    read = world.judge()(images)
    wrong = {
        e["file"]
        for e, label in zip(report["images"], read, strict=True)
        if world.classes[label] != e["class_name"]
    }
    flagged = {e["file"] for e in report["images"] if "off_class" in e["flags"]}
    return {
        "images": len(images),
        "judged_wrong": len(wrong),
        "flagged": len(flagged),
        "precision": len(flagged & wrong) / len(flagged) if flagged else None,
        "recall": len(flagged & wrong) / len(wrong) if wrong else None,
    }


def _timed_report(run: Path, dataset: FewShotDataset, encoder) -> tuple[dict, dict]:
    """The report, and its seconds with the run's embedding cache empty and then full."""
    seconds = {}
    for key in ("cold", "cached"):
        started = time.perf_counter()
        report = CurationJob(run, dataset, encoder).run()
        seconds[key] = round(time.perf_counter() - started, 2)
    return report, seconds


def bench_curation(
    per_class: int,
    shots: int,
    per_kind: int,
    seed: int = 0,
    timing_clip: str | None = None,
    classifier: bool = True,
    world_name: str = "digits",
) -> dict:
    """Everything the module docstring lists, printed and returned. With ``timing_clip`` (an
    open_clip architecture such as ``ViT-B-16``, random weights: no download), the report on the
    same run is timed with that encoder too; its flags mean nothing, its cost is the real one's.
    With ``classifier``, ``off_class`` is also judged on the features of a classifier trained on
    the real images (the demo preset's recipe), as ``curate-report --adapter`` uses them."""
    import torch

    from ..config import CurationConfig
    from ..generate import GenerationJob
    from ..models import ModelSpec, load_clip, load_pipeline, resolve_runtime
    from ..presets import load_preset
    from ..similarity import compute_similarity
    from ..world.worlds import get_world

    world = get_world(world_name)
    spec, runtime = ModelSpec.from_models_dir(world.directory), resolve_runtime("cpu", "fp32")
    preset = load_preset(world.preset)
    config = dataclasses.replace(preset.generation, images_per_class=per_class, seed=seed)
    result: dict = {
        "world": world.name,
        "classes": len(world.classes),
        "per_class": per_class,
        "shots": shots,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        real = world.write_demo_data(scratch / "data", shots=shots, seed=seed) / "train"
        dataset = load_dataset(real)
        clip = load_clip(spec, runtime)
        similarity = compute_similarity(clip, dataset.image_lists(), temperature=config.temperature)
        run = scratch / "run"
        started = time.perf_counter()
        GenerationJob(load_pipeline(spec, runtime), dataset, config, run, spec, similarity).run()
        result["generation_seconds"] = round(time.perf_counter() - started, 1)
        report, result["report_seconds"] = _timed_report(run, dataset, clip)
        if timing_clip:
            encoder = load_clip(ModelSpec(clip=timing_clip, clip_pretrained=None), runtime)
            result["report_seconds_" + timing_clip] = _timed_report(run, dataset, encoder)[1]
        result["clean"] = {
            flag: sum(flag in e["flags"] for e in report["images"]) for flag in PLANTED_FLAG.values()
        }
        result["off_class_vs_judge"] = judge_off_class(report, run, world)
        if classifier:
            # The real-only classifier of the preset's recipe: what --adapter gives a user who trained one.
            from ..classifier.train import train
            from ..curation import classifier_encoder

            folder = scratch / "classifier"
            train(real, folder, spec, config=preset.train, runtime=runtime)
            features = CurationJob(
                run, dataset, classifier_encoder(folder, runtime), features="classifier"
            ).run()
            result["off_class_vs_judge_classifier"] = judge_off_class(features, run, world)
        planted_run = scratch / "planted"
        shutil.copytree(run, planted_run, ignore=shutil.ignore_patterns(CACHE_DIR))
        planted = plant_defects(planted_run, dataset, per_kind, seed)
        result["planted"] = flag_scores(CurationJob(planted_run, dataset, clip).run(), planted)
    result["thresholds"] = CurationConfig().to_dict()
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    def share(value) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    images = result["per_class"] * result["classes"]
    lines = [
        f"curation report on the {result['world']} world: {images} images ({result['per_class']} per class), "
        f"{result['shots']} real images per class, {result['threads']} thread(s)",
        f"  generation {result['generation_seconds']} s; report {result['report_seconds']['cold']} s "
        f"(empty cache), {result['report_seconds']['cached']} s (cached)",
        *(
            f"  report with {key.removeprefix('report_seconds_')} (random weights): {value['cold']} s "
            f"(empty cache), {value['cached']} s (cached)"
            for key, value in result.items()
            if key.startswith("report_seconds_")
        ),
        "  flags on the run as generated: " + ", ".join(f"{k} {v}" for k, v in result["clean"].items()),
        *(
            f"  off_class vs the reference judge ({features}): {judge['judged_wrong']} images read as "
            f"another class, {judge['flagged']} flagged; precision {share(judge['precision'])}, "
            f"recall {share(judge['recall'])}"
            for features, key in (
                ("CLIP", "off_class_vs_judge"),
                ("classifier", "off_class_vs_judge_classifier"),
            )
            if (judge := result.get(key))
        ),
    ]
    others = result["planted"].pop("others")
    for flag, score in result["planted"].items():
        lines.append(
            f"  planted {flag:<9} {score['planted']:>3} planted, {score['flagged']:>3} flagged: "
            f"precision {share(score['precision'])}, recall {share(score['recall'])}"
        )
    lines.append(f"  images planted for nothing: {others['flagged']} of {others['images']} flagged")
    result["planted"]["others"] = others
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dipsy_ui.bench curation", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--per-class", type=int, default=200, help="images per class (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=16, help="real images per class (default: %(default)s)")
    parser.add_argument(
        "--planted", type=int, default=10, help="defects planted per kind (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--world", default="digits", help="which shipped world: digits or critters (default: digits)"
    )
    parser.add_argument(
        "--no-classifier", action="store_true", help="skip off_class on a trained classifier's features"
    )
    parser.add_argument(
        "--timing-clip",
        metavar="ARCH",
        help="also time the report with this open_clip architecture (e.g. ViT-B-16)",
    )
    args = parser.parse_args(argv)
    bench_curation(
        args.per_class,
        args.shots,
        args.planted,
        args.seed,
        args.timing_clip,
        not args.no_classifier,
        args.world,
    )
    return 0
