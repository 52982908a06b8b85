"""`edgetpu-retrain build-dataset`: annotations CSV, seeded stratified split and sharded TFRecords.

Reads `VALIDATED/accepted.json` + `VALIDATED/label_map.pbtxt` (written by `validate`; checked again in
validated.py) and writes one dataset snapshot into OUT (atomically: built in a temp dir beside OUT,
then renamed):

    annotations.csv                      filename,width,height,class,xmin,ymin,xmax,ymax (one row per
                                         object, sorted by file name then object order; background
                                         images have no rows)
    splits/{train,val,test}.txt          file names, sorted, one per line (an empty split: empty file)
    label_map.pbtxt                      byte copy of the validated label map
    tfrecords/{split}.tfrecord-NNNNN-of-MMMMM
                                         TF OD API Examples (see tfrecord.py), image bytes unchanged
    manifest.json                        see docs/contracts.md

Choices (documented here and in the verb's --help):
* Split: iterative stratification (Sechidis et al. 2011) on the set of classes in each image, rarest
  class first, ties broken by a `random.Random(seed)` stream (only `random()` is used, whose sequence
  Python guarantees across versions); background images then fill the splits furthest below target.
  Afterwards (when the train ratio is > 0) any class with images but none in train gets one image moved
  into train, logged and listed as `moved_to_train` {class: file} in the JSON line. A train ratio of 0
  (`--split 0,0,1`) builds an evaluation-only dataset: no train shards, and render-config/train refuse it.
* Within a split (shards.py), examples go to shards round-robin in a seeded shuffled order (so a small shuffle
  buffer in training still sees mixed classes). Default shard count per split: ceil(bytes / 150 MB),
  at least 1; `--shards N` asks for N per split; never more shards than images. An empty split writes
  NO shard file (its manifest entry is an empty list).
* `created` in manifest.json (snapshot.py) is the only time-dependent value: from SOURCE_DATE_EPOCH;
  otherwise, if OUT already holds a manifest whose every other field is identical, its `created` is
  kept; otherwise the current UTC time. So re-running into the same OUT gives byte-identical files.
* Shards are written by a ProcessPoolExecutor (spawn; one shard per task; --workers default
  os.cpu_count(), limited to one per 32 MB of images since starting a worker costs ~0.3 s); the
  TFRecord framing and Example protobuf are written without TensorFlow (see tfrecord.py; no 3 s TF
  import per worker). Each image's sha256 is checked against accepted.json.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, atomic_dir, dumps_json
from edgetpu_retrain.data import shards as sh
from edgetpu_retrain.data import snapshot
from edgetpu_retrain.data.snapshot import SPLITS
from edgetpu_retrain.data.validated import load_validated

log = logging.getLogger("edgetpu_retrain.data.dataset")


# ---------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--validated", required=True, help="validate's output dir (accepted.json + label_map.pbtxt)"
    )
    parser.add_argument("--out", required=True, help="dataset snapshot dir to write (replaced atomically)")
    parser.add_argument(
        "--split",
        default="0.8,0.1,0.1",
        help="train,val,test ratios: three non-negative numbers summing to 1 (default 0.8,0.1,0.1); "
        "0,0,1 = an evaluation-only dataset",
    )
    parser.add_argument("--seed", type=int, default=0, help="split and shard-order seed (default 0)")
    parser.add_argument(
        "--shards",
        type=int,
        default=None,
        help="TFRecord shards per split (capped at the split's image count; default: ~150 MB per shard, "
        "at least 1; an empty split writes no shard)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="shard-writing processes (default os.cpu_count(), but one per 32 MB of images: small datasets "
        "are written in-process, which is faster than starting workers)",
    )


def run(args: argparse.Namespace) -> dict:
    return build_dataset(
        args.validated,
        args.out,
        split=parse_split(args.split),
        seed=args.seed,
        shards=args.shards,
        workers=args.workers,
    )


# ---------------------------------------------------------------------------------------------------
# inputs


def parse_split(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); UserError unless 3 non-negative numbers summing to 1.

    A train ratio of 0 (e.g. 0,0,1) builds an evaluation-only dataset: no train records.
    """
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"--split {text!r}: not numbers; give three ratios like 0.8,0.1,0.1") from None
    else:
        values = [float(v) for v in text]
    shown = ",".join(str(v) for v in values) if not isinstance(text, str) else text
    if len(values) != 3:
        raise UserError(f"--split {shown!r}: need exactly three ratios (train,val,test), e.g. 0.8,0.1,0.1")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--split {shown!r}: ratios must be non-negative numbers, e.g. 0.8,0.1,0.1")
    if abs(sum(values) - 1.0) > 1e-6:
        raise UserError(f"--split {shown!r}: ratios sum to {sum(values):g}, must sum to 1, e.g. 0.8,0.1,0.1")
    return (values[0], values[1], values[2])


# ---------------------------------------------------------------------------------------------------
# split


def _shuffled(items: Sequence[Any], rng: random.Random) -> list[Any]:
    """Fisher-Yates with rng.random() only (its sequence is guaranteed stable across Python versions)."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def _pick(candidates: list[int], keys: Mapping[int, tuple], rng: random.Random) -> int:
    best = max(keys[j] for j in candidates)
    tied = [j for j in candidates if keys[j] == best]
    return tied[0] if len(tied) == 1 else tied[int(rng.random() * len(tied))]


def stratified_split(
    image_classes: Mapping[str, Sequence[str]], ratios: Sequence[float], seed: int
) -> dict[str, list[str]]:
    """Iterative stratification of images by their class sets; returns {split: sorted file names}.

    Same inputs and seed -> same result. Splits with ratio 0 get nothing; when train has a ratio > 0,
    every class that has images gets at least one image in train (see split_with_moves).
    """
    return split_with_moves(image_classes, ratios, seed)[0]


def split_with_moves(
    image_classes: Mapping[str, Sequence[str]], ratios: Sequence[float], seed: int
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """stratified_split plus {class: file name} of the images moved into train so that every class is
    trained on (a tiny train ratio would otherwise leave classes out); reported, never silent."""
    rng = random.Random(seed)
    names = _shuffled(sorted(image_classes), rng)
    active = [j for j, r in enumerate(ratios) if r > 0]
    classes_of = {n: sorted(set(image_classes[n])) for n in names}
    desired = {j: len(names) * ratios[j] for j in active}
    by_class: dict[str, list[str]] = {}
    for n in names:
        for c in classes_of[n]:
            by_class.setdefault(c, []).append(n)
    desired_class = {c: {j: len(imgs) * ratios[j] for j in active} for c, imgs in by_class.items()}
    assigned: dict[str, int] = {}

    def assign(name: str, j: int) -> None:
        assigned[name] = j
        desired[j] -= 1
        for c in classes_of[name]:
            desired_class[c][j] -= 1

    while True:
        remaining = {c: sum(1 for n in imgs if n not in assigned) for c, imgs in by_class.items()}
        remaining = {c: k for c, k in remaining.items() if k}
        if not remaining:
            break
        rarest = min(remaining, key=lambda c: (remaining[c], c))
        for name in by_class[rarest]:
            if name not in assigned:
                keys = {j: (desired_class[rarest][j], desired[j]) for j in active}
                assign(name, _pick(active, keys, rng))
    for name in names:
        if name not in assigned:
            assign(name, _pick(active, {j: (desired[j],) for j in active}, rng))

    moved = _move_into_train(assigned, by_class, classes_of) if ratios[0] > 0 else {}
    result: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name in sorted(assigned):
        result[SPLITS[assigned[name]]].append(name)
    return result, moved


def _move_into_train(
    assigned: dict[str, int], by_class: Mapping[str, list[str]], classes_of: Mapping[str, list[str]]
) -> dict[str, str]:
    """Every class in train: move in the image with the fewest classes (then by name); {class: file}."""
    moved: dict[str, str] = {}
    for c in sorted(by_class):
        if not any(assigned[n] == 0 for n in by_class[c]):
            candidates = sorted(by_class[c], key=lambda n: (len(classes_of[n]), n))
            assigned[candidates[0]] = 0
            moved[c] = candidates[0]
    return moved


def _report_split(moved: Mapping[str, str], ratios: Sequence[float]) -> None:
    for class_name, file_name in sorted(moved.items()):
        log.warning(
            "class %s had no image in train at --split %s: moved %s into train (every class must be "
            "trained on); reported as moved_to_train",
            class_name,
            ",".join(f"{r:g}" for r in ratios),
            file_name,
        )
    if ratios[0] == 0:
        log.info(
            "train ratio 0: evaluation-only dataset (no train records; use it with `evaluate --dataset`)"
        )


# ---------------------------------------------------------------------------------------------------
# writing


def _check_options(shards: int | None, workers: int | None) -> None:
    if shards is not None and shards < 1:
        raise UserError(f"--shards {shards}: must be >= 1 (or leave it out for ~150 MB shards)")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")


def _record_sizes(images: Sequence[dict]) -> None:
    """Store each image's size as `_size` (shard planning); a missing image is the user's to fix."""
    for rec in images:
        try:
            rec["_size"] = os.path.getsize(rec["path"])
        except OSError as exc:
            raise UserError(
                f"{rec['path']}: image listed in accepted.json is missing ({exc}); run validate first"
            ) from exc


def _write_splits(
    tmp: Path,
    splits: Mapping[str, list[str]],
    by_name: Mapping[str, dict],
    *,
    class_names: Sequence[str],
    shards: int | None,
    seed: int,
) -> tuple[dict[str, list[str]], dict[str, dict], list[sh.Task]]:
    """Write splits/*.txt; return (shard files, counts, shard tasks) per split."""
    shard_files: dict[str, list[str]] = {}
    counts: dict[str, dict] = {}
    tasks: list[sh.Task] = []
    for split_name in SPLITS:
        names = splits[split_name]
        (tmp / "splits" / f"{split_name}.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
        recs = [by_name[n] for n in names]
        counts[split_name] = snapshot.split_counts(recs, class_names)
        order = _shuffled(recs, random.Random(f"{seed}:{split_name}"))
        shard_files[split_name], split_tasks = sh.plan_split(split_name, order, shards=shards, root=tmp)
        tasks += split_tasks
    return shard_files, counts, tasks


def build_dataset(
    validated_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    shards: int | None = None,
    workers: int | None = None,
) -> dict:
    """Build the dataset snapshot in OUT; returns the JSON-line dict (absolute paths)."""
    ratios = parse_split(split)
    _check_options(shards, workers)
    vdir, images, label_items, label_map_path = load_validated(validated_dir)
    if not images:
        raise UserError(
            f"{vdir / 'accepted.json'}: no accepted images; fix the rejected files and run validate again"
        )
    out = Path(out_dir).resolve()
    by_name = {rec["filename"]: rec for rec in images}
    splits, moved = split_with_moves(
        {n: [o["class"] for o in r["objects"]] for n, r in by_name.items()}, ratios, seed
    )
    _report_split(moved, ratios)
    _record_sizes(images)

    with atomic_dir(out) as tmp:
        (tmp / "splits").mkdir()
        (tmp / "tfrecords").mkdir()
        (tmp / "annotations.csv").write_bytes(snapshot.csv_bytes(images))
        shutil.copyfile(label_map_path, tmp / "label_map.pbtxt")
        shard_files, counts, tasks = _write_splits(
            tmp, splits, by_name, class_names=[name for _, name in label_items], shards=shards, seed=seed
        )
        if workers is None:  # default: all cores, but no process start-up for small datasets
            workers = sh.default_workers(images)
        sh.run_tasks(tasks, min(workers, len(tasks)))
        manifest = snapshot.manifest_fields(
            tmp,
            label_items=label_items,
            shard_files=shard_files,
            counts=counts,
            ratios=ratios,
            seed=seed,
            images=images,
        )
        manifest["created"] = snapshot.created_stamp(out / "manifest.json", manifest)
        (tmp / "manifest.json").write_text(dumps_json(manifest), encoding="utf-8")

    log.info(
        "dataset %s: %s",
        out,
        ", ".join(
            f"{s} {counts[s]['images']} images/{counts[s]['objects']} objects/{len(shard_files[s])} shards"
            for s in SPLITS
        ),
    )
    return {
        "manifest": str(out / "manifest.json"),
        "csv": str(out / "annotations.csv"),
        "tfrecords": {s: [str(out / r) for r in shard_files[s]] for s in SPLITS},
        "counts": counts,
        "label_map": str(out / "label_map.pbtxt"),
        "dataset_dir": str(out),
        "moved_to_train": dict(sorted(moved.items())),
        "evaluation_only": ratios[0] == 0,
    }
