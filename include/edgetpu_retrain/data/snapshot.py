"""The files of a dataset snapshot besides the TFRecords: annotations.csv and manifest.json.

`created` in manifest.json is the only time-dependent value: from SOURCE_DATE_EPOCH when set;
otherwise, if OUT already holds a manifest whose every other field is identical, its `created` is
kept; otherwise the current UTC time. So re-running into the same OUT gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, sha256_file

SPLITS = ("train", "val", "test")
CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
MANIFEST_VERSION = 1


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


def split_counts(recs: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    per_class = dict.fromkeys(class_names, 0)
    for rec in recs:
        for obj in rec["objects"]:
            per_class[obj["class"]] += 1
    return {"images": len(recs), "objects": sum(per_class.values()), "per_class": per_class}


def manifest_fields(
    tmp: Path,
    *,
    label_items: list[tuple[int, str]],
    shard_files: dict[str, list[str]],
    counts: dict[str, dict],
    ratios: Sequence[float],
    seed: int,
    images: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """manifest.json without `created`; `outputs` hashes every file already written into `tmp`."""
    outputs = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        outputs[path.relative_to(tmp).as_posix()] = sha256_file(path)
    return {
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


def created_stamp(previous: Path, manifest: dict) -> str:
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
