"""What the HTML report draws, read from a run's files: plain numbers, no plotting.

Each loader returns None (or an empty list) when its input is missing, so the section says "not run"
instead of failing: a failed run still gets a report. Every list is sorted, so the same files give
the same figures.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

# Detections drawn on the sample images and counted in the confusion matrix: score >= this.
SCORE_THRESHOLD = 0.3
IOU_MATCH = 0.5
SAMPLES = 8


def read_json(path: Any) -> Any:
    """A JSON file, or None when it is missing or unreadable (the section then says so)."""
    if not isinstance(path, (str, Path)) or not str(path):
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def first_file(*candidates: Any) -> Path | None:
    for c in candidates:
        if isinstance(c, (str, Path)) and str(c) and Path(c).is_file():
            return Path(c)
    return None


# ------------------------------------------------------------------------------------------ dataset
def annotation_rows(dataset_dir: Any) -> list[dict[str, Any]] | None:
    """annotations.csv of the snapshot: one row per object (filename, width, height, class, box)."""
    path = first_file(Path(dataset_dir) / "annotations.csv") if dataset_dir else None
    if path is None:
        return None
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def dataset_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Images and boxes per class, boxes per image, box size relative to the image side."""
    boxes = Counter(r["class"] for r in rows if r.get("class"))
    images = Counter(c for _, c in sorted({(r["filename"], r["class"]) for r in rows if r.get("class")}))
    per_image = Counter(r["filename"] for r in rows if r.get("class"))
    files = {r["filename"] for r in rows}
    sizes = []
    for r in rows:
        if not r.get("class"):
            continue
        w, h = float(r["width"]), float(r["height"])
        bw, bh = float(r["xmax"]) - float(r["xmin"]), float(r["ymax"]) - float(r["ymin"])
        if w > 0 and h > 0 and bw > 0 and bh > 0:
            sizes.append(math.sqrt((bw / w) * (bh / h)))  # the anchors' "scale" measure
    classes = sorted(boxes)
    return {
        "classes": classes,
        "boxes": [boxes[c] for c in classes],
        "images": [images[c] for c in classes],
        "boxes_per_image": sorted(per_image.get(f, 0) for f in files),
        "sizes": sorted(sizes),
        "num_images": len(files),
    }


def anchor_scales(config_path: Any) -> list[float] | None:
    """The SSD anchor scales of the run's config (one per feature map), or None without a config."""
    if not first_file(config_path):
        return None
    try:
        from edgetpu_retrain.model.anchors import anchor_specs
        from edgetpu_retrain.model.config import load_config

        specs = anchor_specs(load_config(config_path))
    except Exception:  # noqa: BLE001 - a config this code cannot read only loses the anchor lines
        return None
    return sorted({round(s, 4) for layer in specs for s, _ in layer})


def rejected_files(report: Any) -> list[dict[str, str]]:
    """Rejected files of validation_report.json with their error messages (and the fix)."""
    out = []
    for f in (report or {}).get("files") or []:
        if f.get("verdict") != "rejected":
            continue
        errors = [i for i in f.get("issues") or [] if i.get("severity") == "error"] or f.get("issues") or []
        name = Path(str(f.get("xml") or f.get("image") or "?")).name
        out.append(
            {
                "file": name,
                "why": "; ".join(str(i.get("message", i.get("code", "?"))) for i in errors),
                "fix": "; ".join(sorted({str(i["fix"]) for i in errors if i.get("fix")})),
            }
        )
    return sorted(out, key=lambda r: r["file"])


# ----------------------------------------------------------------------------------------- training
def metrics_path(steps: dict[str, Any], run_dir: Path) -> Path:
    """train/metrics.jsonl: in the train step's out_dir, else beside its checkpoints, else run_dir/train."""
    t = steps.get("train") or {}
    if t.get("out_dir"):
        return Path(t["out_dir"]) / "metrics.jsonl"
    if t.get("checkpoint"):
        return Path(t["checkpoint"]).parent.parent / "metrics.jsonl"
    return Path(run_dir) / "train" / "metrics.jsonl"


def training_rows(metrics_path: Any) -> list[dict[str, float]] | None:
    """metrics.jsonl of the train step (one object per logged step), sorted by step."""
    path = first_file(metrics_path)
    if path is None:
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed run
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return sorted(rows, key=lambda r: r["step"]) or None


# ----------------------------------------------------------------------------------------- accuracy
def iou(a: list[float], b: list[float]) -> float:
    """IoU of two (ymin, xmin, ymax, xmax) boxes."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_image(image: dict[str, Any], threshold: float = SCORE_THRESHOLD) -> dict[str, Any]:
    """Greedy match (highest score first) of detections >= threshold to ground truth at IoU 0.5,
    class-agnostic, so a right box with the wrong class shows up as a confusion.

    Returns pairs [(gt label 1-based, predicted label 1-based)], missed gt labels, false-positive labels.
    """
    gts = list(zip(image["gt_boxes"], image["gt_labels"], strict=True))
    dets = [
        (b, c + 1, s)
        for b, c, s in zip(image["boxes"], image["classes"], image["scores"], strict=True)
        if s >= threshold
    ]
    used: set[int] = set()
    pairs, false_pos = [], []
    for box, label, _ in dets:  # details keep detections sorted by score, highest first
        best, best_iou = None, IOU_MATCH
        for j, (gbox, _) in enumerate(gts):
            if j not in used and (v := iou(box, gbox)) >= best_iou:
                best, best_iou = j, v
        if best is None:
            false_pos.append(label)
        else:
            used.add(best)
            pairs.append((gts[best][1], label))
    missed = [g[1] for j, g in enumerate(gts) if j not in used]
    return {"pairs": pairs, "missed": missed, "false_pos": false_pos}


def confusion(details: dict[str, Any]) -> dict[str, Any]:
    """Rows: true class + "background" (false positives); columns: predicted class + "missed"."""
    names = [c["name"] for c in sorted(details["classes"], key=lambda c: c["id"])]
    ids = [c["id"] for c in sorted(details["classes"], key=lambda c: c["id"])]
    n = len(ids)
    matrix = [[0] * (n + 1) for _ in range(n + 1)]
    index = {cid: i for i, cid in enumerate(ids)}
    for image in details["images"]:
        m = match_image(image)
        for gt, pred in m["pairs"]:
            matrix[index.get(gt, n)][index.get(pred, n)] += 1
        for gt in m["missed"]:
            matrix[index.get(gt, n)][n] += 1
        for pred in m["false_pos"]:
            matrix[n][index.get(pred, n)] += 1
    return {"rows": [*names, "background"], "cols": [*names, "missed"], "matrix": matrix}


def worst_images(details: dict[str, Any], count: int = SAMPLES) -> list[dict[str, Any]]:
    """The `count` test images with the most errors (missed + false + wrong class), ties by file name."""
    scored = []
    for image in details["images"]:
        m = match_image(image)
        wrong = sum(1 for gt, pred in m["pairs"] if gt != pred)
        errors = len(m["missed"]) + len(m["false_pos"]) + wrong
        scored.append((-errors, image["filename"], {**image, "errors": errors}))
    return [item for _, _, item in sorted(scored, key=lambda t: (t[0], t[1]))[:count]]


def test_images(dataset_dir: Any, filenames: list[str]) -> dict[str, bytes]:
    """Encoded bytes of the named test-split images, read from the snapshot's TFRecords."""
    from edgetpu_retrain.evaluate.coco import load_split

    wanted = set(filenames)
    examples, _ = load_split(dataset_dir, "test")
    return {ex["filename"]: ex["encoded"] for ex in examples if ex["filename"] in wanted}


def eval_details(step: dict[str, Any], run_dir: Path, kind: str) -> dict[str, Any] | None:
    """The evaluate step's details file (PR curves, per-image detections), None when absent."""
    out = step.get("out") or step.get("source")
    stem = Path(out) if isinstance(out, str) and out.endswith(".json") else run_dir / f"eval_{kind}.json"
    data = read_json(first_file(step.get("details"), stem.with_name(f"{stem.stem}.details.json")))
    return data if isinstance(data, dict) and isinstance(data.get("images"), list) else None
