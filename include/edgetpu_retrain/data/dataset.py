"""`edgetpu-retrain build-dataset`: annotations CSV, seeded stratified split and sharded TFRecords.

Reads `VALIDATED/accepted.json` + `VALIDATED/label_map.pbtxt` (written by `validate`) and writes one
dataset snapshot into OUT (atomically: built in a temp dir beside OUT, then renamed):

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
  Afterwards any class with images but none in train gets one image moved into train.
* Within a split, examples go to shards round-robin in a seeded shuffled order (so a small shuffle
  buffer in training still sees mixed classes). Default shard count per split: ceil(bytes / 150 MB),
  at least 1; `--shards N` asks for N per split; never more shards than images. An empty split writes
  NO shard file (its manifest entry is an empty list).
* `created` in manifest.json is the only time-dependent value: from SOURCE_DATE_EPOCH when set;
  otherwise, if OUT already holds a manifest whose every other field is identical, its `created` is
  kept; otherwise the current UTC time. So re-running into the same OUT gives byte-identical files.
* Shards are written by a ProcessPoolExecutor (spawn; one shard per task; --workers default
  os.cpu_count(), limited to one per 32 MB of images since starting a worker costs ~0.3 s); the
  TFRecord framing and Example protobuf are written without TensorFlow (see tfrecord.py; no 3 s TF
  import per worker). Each image's sha256 is checked against accepted.json.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, atomic_dir, dumps_json, read_json, sha256_bytes, sha256_file

log = logging.getLogger("edgetpu_retrain.data.dataset")

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
TARGET_SHARD_BYTES = 150 * 1000 * 1000
SMALL_JOB_BYTES = 32 * 1000 * 1000  # default workers: one per 32 MB of images, up to os.cpu_count()
MANIFEST_VERSION = 1


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
        help="train,val,test ratios: three non-negative numbers summing to 1, train > 0 "
        "(default 0.8,0.1,0.1)",
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
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); UserError unless 3 non-negative numbers summing to 1, train > 0."""
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
    if values[0] <= 0:
        raise UserError(f"--split {shown!r}: the train ratio must be > 0")
    return (values[0], values[1], values[2])


def read_label_map(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """[(id, name)] sorted by id, via labelmap.read_label_map (the one .pbtxt parser)."""
    from edgetpu_retrain.data.labelmap import read_label_map as _read

    return sorted((item.id, item.name) for item in _read(path))


def load_validated(
    validated_dir: str | os.PathLike[str],
) -> tuple[Path, list[dict], list[tuple[int, str]], Path]:
    """(validated dir, image records sorted by filename, label map items, label map path)."""
    vdir = Path(validated_dir)
    accepted_path = vdir / "accepted.json"
    if not accepted_path.is_file():
        raise UserError(
            f"{accepted_path}: not found; run validate first (it writes accepted.json into its --out dir)"
        )
    accepted = read_json(accepted_path)
    if (
        not isinstance(accepted, dict)
        or accepted.get("version") != 1
        or not isinstance(accepted.get("images"), list)
    ):
        raise UserError(
            f"{accepted_path}: not an accepted.json version 1 with an 'images' list; run validate first"
        )
    label_map_path = vdir / str(accepted.get("label_map") or "label_map.pbtxt")
    if not label_map_path.is_file():
        raise UserError(
            f"{label_map_path}: label map not found; run validate first (it writes label_map.pbtxt)"
        )
    items = read_label_map(label_map_path)
    by_name = {name: idx for idx, name in items}

    images: list[dict] = []
    seen: set[str] = set()
    for i, rec in enumerate(accepted["images"]):
        try:
            name = str(rec["filename"])
            width, height = int(rec["width"]), int(rec["height"])
            objects = list(rec.get("objects") or [])
            path = Path(rec["path"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"{accepted_path}: image {i} lacks {exc}; run validate first to rewrite it"
            ) from exc
        if name in seen:
            raise UserError(
                f"{accepted_path}: file name {name!r} listed twice; run validate first to rewrite it"
            )
        seen.add(name)
        if width <= 0 or height <= 0:
            raise UserError(f"{accepted_path}: {name}: bad size {width}x{height}; run validate first")
        if not path.is_absolute():
            path = vdir / path
        for j, obj in enumerate(objects):
            if not isinstance(obj, dict):
                raise UserError(
                    f"{accepted_path}: {name} object {j}: {obj!r} is not an object record; run validate first"
                )
            cls: Any = obj.get("class")
            if by_name.get(cls) != obj.get("label"):
                raise UserError(
                    f"{accepted_path}: {name} object {j}: class {cls!r} label {obj.get('label')!r} does not "
                    f"match {label_map_path.name}; run validate first to rewrite both"
                )
            box: list[Any] = [obj.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in box) or not (
                0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
            ):
                raise UserError(
                    f"{accepted_path}: {name} object {j}: box {box} is not integer pixels inside the "
                    f"{width}x{height} image with min < max; run validate first to rewrite it"
                )
        fmt = str(rec.get("format") or "jpeg").lower()
        if fmt not in ("jpeg", "jpg", "png"):
            raise UserError(f"{accepted_path}: {name}: format {fmt!r} is not jpeg or png; run validate first")
        images.append(
            {
                **rec,
                "filename": name,
                "width": width,
                "height": height,
                "objects": objects,
                "path": str(path),
                "format": "jpeg" if fmt == "jpg" else fmt,
            }
        )
    images.sort(key=lambda r: r["filename"])
    return vdir, images, items, label_map_path


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

    Same inputs and seed -> same result. Splits with ratio 0 get nothing; every class that has images
    gets at least one image in train.
    """
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

    # Every class in train when possible: move in the image with the fewest classes (then by name).
    for c in sorted(by_class):
        if not any(assigned[n] == 0 for n in by_class[c]):
            candidates = sorted(by_class[c], key=lambda n: (len(classes_of[n]), n))
            assigned[candidates[0]] = 0
    result: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name in sorted(assigned):
        result[SPLITS[assigned[name]]].append(name)
    return result


# ---------------------------------------------------------------------------------------------------
# writing


def csv_bytes(images: Sequence[Mapping[str, Any]]) -> bytes:
    """annotations.csv content: header + one row per object (records already sorted by file name)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rec in images:
        for obj in rec["objects"]:
            writer.writerow(
                [
                    rec["filename"],
                    rec["width"],
                    rec["height"],
                    obj["class"],
                    obj["xmin"],
                    obj["ymin"],
                    obj["xmax"],
                    obj["ymax"],
                ]
            )
    return buf.getvalue().encode("utf-8")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


def _write_shard(task: tuple[str, list[dict]]) -> tuple[str, int, int]:
    """Worker: write one shard. Returns (path, examples, bytes). Runs in a fresh (spawned) process."""
    from edgetpu_retrain.data.tfrecord import TFRecordWriter, encode_example

    path, records = task
    with TFRecordWriter(path) as writer:
        for rec in records:
            try:
                data = Path(rec["path"]).read_bytes()
            except OSError as exc:
                raise UserError(f"{rec['path']}: cannot read image ({exc}); run validate first") from exc
            digest = sha256_bytes(data)
            if rec.get("sha256") and rec["sha256"] != digest:
                raise UserError(
                    f"{rec['path']}: image changed since validate (sha256 differs); run validate first"
                )
            writer.write(encode_example(rec, data, sha256=digest))
    return path, len(records), os.path.getsize(path)


def _run_tasks(tasks: list[tuple[str, list[dict]]], workers: int) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            _write_shard(task)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: safe even when the parent process has TensorFlow threads (e.g. inside pytest)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # largest shards first, so the pool's tail is short
        order = sorted(tasks, key=lambda t: -sum(int(r.get("_size", 0)) for r in t[1]))
        for _ in pool.map(_write_shard, order):
            pass


def _created(previous: Path, manifest: dict) -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            stamp = datetime.fromtimestamp(int(epoch), tz=UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise UserError(
                f"SOURCE_DATE_EPOCH={epoch!r}: not a Unix timestamp in seconds; fix or unset it"
            ) from exc
        return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    if previous.is_file():
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if isinstance(old, dict) and isinstance(old.get("created"), str):
            if {k: v for k, v in old.items() if k != "created"} == manifest:
                return old["created"]
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    if shards is not None and shards < 1:
        raise UserError(f"--shards {shards}: must be >= 1 (or leave it out for ~150 MB shards)")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    vdir, images, label_items, label_map_path = load_validated(validated_dir)
    if not images:
        raise UserError(
            f"{vdir / 'accepted.json'}: no accepted images; fix the rejected files and run validate again"
        )
    out = Path(out_dir).resolve()
    class_names = [name for _, name in label_items]

    by_name = {rec["filename"]: rec for rec in images}
    splits = stratified_split(
        {n: [o["class"] for o in r["objects"]] for n, r in by_name.items()}, ratios, seed
    )

    for rec in images:
        try:
            rec["_size"] = os.path.getsize(rec["path"])
        except OSError as exc:
            raise UserError(
                f"{rec['path']}: image listed in accepted.json is missing ({exc}); run validate first"
            ) from exc

    with atomic_dir(out) as tmp:
        (tmp / "splits").mkdir()
        (tmp / "tfrecords").mkdir()
        (tmp / "annotations.csv").write_bytes(csv_bytes(images))
        shutil.copyfile(label_map_path, tmp / "label_map.pbtxt")
        tasks: list[tuple[str, list[dict]]] = []
        shard_files: dict[str, list[str]] = {}
        counts: dict[str, dict] = {}
        for split_name in SPLITS:
            names = splits[split_name]
            (tmp / "splits" / f"{split_name}.txt").write_text(
                "".join(f"{n}\n" for n in names), encoding="utf-8"
            )
            recs = [by_name[n] for n in names]
            per_class = dict.fromkeys(class_names, 0)
            for rec in recs:
                for obj in rec["objects"]:
                    per_class[obj["class"]] += 1
            counts[split_name] = {
                "images": len(recs),
                "objects": sum(per_class.values()),
                "per_class": per_class,
            }
            if not recs:
                shard_files[split_name] = []
                continue
            total = sum(r["_size"] for r in recs)
            n_shards = shards if shards is not None else max(1, math.ceil(total / TARGET_SHARD_BYTES))
            n_shards = max(1, min(n_shards, len(recs)))
            order = _shuffled(recs, random.Random(f"{seed}:{split_name}"))
            rel = [f"tfrecords/{shard_name(split_name, i, n_shards)}" for i in range(n_shards)]
            shard_files[split_name] = rel
            for i in range(n_shards):
                tasks.append((str(tmp / rel[i]), order[i::n_shards]))
        if workers is None:  # default: all cores, but no process start-up for small datasets
            total_bytes = sum(r["_size"] for r in images)
            workers = min(os.cpu_count() or 1, max(1, total_bytes // SMALL_JOB_BYTES))
        _run_tasks(tasks, min(workers, len(tasks)))

        outputs = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            outputs[path.relative_to(tmp).as_posix()] = sha256_file(path)
        manifest = {
            "version": MANIFEST_VERSION,
            "label_map": "label_map.pbtxt",
            "classes": [{"id": i, "name": n} for i, n in label_items],
            "num_classes": len(label_items),
            "csv": "annotations.csv",
            "splits": {s: f"splits/{s}.txt" for s in SPLITS},
            "tfrecords": shard_files,
            "counts": counts,
            "split": list(ratios),
            "seed": seed,
            "inputs": {rec["filename"]: rec.get("sha256") or sha256_file(rec["path"]) for rec in images},
            "outputs": outputs,
        }
        manifest["created"] = _created(out / "manifest.json", manifest)
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
    }
