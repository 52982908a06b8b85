"""`edgetpu-retrain evaluate`: COCO mAP of a SavedModel or a .tflite on one dataset split.

    edgetpu-retrain evaluate --dataset DIR --split test --model FILE_OR_DIR --out FILE
                             [--compare FILE_OR_DIR] [--score-threshold 0.0] [--num-threads N]

For every example of the split (TFRecords listed in DIR/manifest.json, in file order): decode the
stored pixels (EXIF orientation not applied, like training), resize to the model's input size (read
from the model) with the bilinear resize of `detector_runtime`, run the model, keep detections with
score >= --score-threshold. Ground truth = the example's normalized boxes and 1-based labels (every
object counts, `difficult` ones included). Both go to COCO format in pixels of the ORIGINAL image
(category id = label-map id = model class + 1) and pycocotools' COCOeval (bbox) gives
- `map`    mAP@[.5:.95] (COCO stats[0]),   `map50`  AP at IoU 0.5 (stats[1]),
- `per_class` {name: {"ap", "ap50", "objects"}} (ap = null for a class without ground truth),
- `images`, `objects`, `detections` (count kept), `latency_ms` (mean model time per image after one
  warm-up run: the only value that changes between runs; everything else is deterministic).
With `--compare` (or a second `--model`) the second model is evaluated the same way under
`compare`, and `quantization_drop_map50` = (float mAP50 - int8 mAP50) in points (x100), where the
int8 model is the one with a quantized (uint8/int8) input; if neither or both are, first - second.
The result is written to --out atomically and printed as the JSON line (same keys). Beside it,
`<out stem>.details.json` (key `details`) keeps what the run report draws for the first model: the
COCOeval precision at IoU 0.5 per class over the 101 recall points, and per image the ground truth and
the kept detections (normalized boxes, 0-based classes, scores; at most DETAIL_DETECTIONS per image).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgetpu_retrain import common

log = logging.getLogger(__name__)
DETAIL_DETECTIONS = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset snapshot folder (manifest.json)")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        help="SavedModel folder or .tflite file; give it twice to compare two models",
    )
    parser.add_argument("--compare", help="second model (e.g. the float one) to evaluate and compare")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=0.0,
        help="drop detections below this score before COCOeval (default 0.0: keep all)",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="TFLite interpreter threads")


def run(args: argparse.Namespace) -> dict[str, Any]:
    models = list(args.model) + ([args.compare] if args.compare else [])
    if len(models) > 2:
        raise common.UserError(f"--model/--compare: at most two models, got {len(models)}: {models}")
    if not 0.0 <= args.score_threshold <= 1.0:
        raise common.UserError(f"--score-threshold {args.score_threshold}: must be in [0, 1]")
    dataset = common.require_dir(args.dataset, what="dataset snapshot")
    details: dict[str, Any] = {}
    result = evaluate(
        dataset,
        args.split,
        models,
        score_threshold=args.score_threshold,
        num_threads=args.num_threads,
        details=details,
    )
    out = Path(args.out).resolve()
    result["out"] = str(out)
    details_path = common.write_json(out.with_name(f"{out.stem}.details.json"), details)
    result["details"] = str(details_path.resolve())
    common.write_json(out, result)
    return result


# --------------------------------------------------------------------------------------- data
def load_split(dataset_dir: str | Path, split: str) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """[(id, name)] classes and the split's examples: {"filename", "width", "height", "encoded",
    "boxes" [n,4] normalized (ymin, xmin, ymax, xmax), "labels" [n] 1-based}, in TFRecord order."""
    from edgetpu_retrain.data import tfrecord
    from edgetpu_retrain.export.convert import split_shards

    shards = split_shards(dataset_dir, split)
    manifest_path = Path(dataset_dir) / "manifest.json"
    if not shards:
        raise common.UserError(
            f"{manifest_path}: the '{split}' split is empty; nothing to evaluate "
            "(choose another --split or rebuild the dataset with a non-zero ratio)"
        )
    try:
        classes = sorted((int(c["id"]), str(c["name"])) for c in common.read_json(manifest_path)["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise common.UserError(
            f"{manifest_path}: missing or malformed 'classes' ({exc!r}); rebuild the dataset "
            "with `edgetpu-retrain build-dataset`"
        ) from exc
    examples = []
    for path in shards:
        for ex in tfrecord.read_examples([path]):
            boxes = np.stack(
                [
                    np.asarray(ex.get(f"image/object/bbox/{k}", []), np.float32)
                    for k in ("ymin", "xmin", "ymax", "xmax")
                ],
                axis=-1,
            ).reshape(-1, 4)
            examples.append(
                {
                    "filename": (ex.get("image/filename") or [b""])[0].decode("utf-8"),
                    "width": int((ex.get("image/width") or [0])[0]),
                    "height": int((ex.get("image/height") or [0])[0]),
                    "encoded": ex["image/encoded"][0],
                    "boxes": boxes,
                    "labels": np.asarray(ex.get("image/object/class/label", []), np.int64),
                }
            )
    return examples, classes


# ----------------------------------------------------------------------------------------- COCO
def coco_eval(
    ground_truth: list[dict[str, Any]],
    detections: list[dict[str, Any]],
    classes: list[tuple[int, str]],
    *,
    curves: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """COCOeval (bbox) on plain inputs.

    ground_truth: per image {"width", "height", "boxes" [n,4] normalized (ymin, xmin, ymax, xmax),
    "labels" [n] 1-based}; detections: per image (same order) {"boxes" normalized, "classes" [n]
    0-based, "scores" [n]}. Returns {"map", "map50", "per_class", "objects", "detections"}; a given
    `curves` dict gets {class name: precision at IoU 0.5 per recall point} (-1 = undefined).
    """
    images, annotations, results = _coco_records(ground_truth, detections)
    objects = {cid: 0 for cid, _ in classes}
    for ann in annotations:
        objects[ann["category_id"]] = objects.get(ann["category_id"], 0) + 1
    per_class: dict[str, Any] = {
        name: {"ap": None, "ap50": None, "objects": objects.get(cid, 0)} for cid, name in classes
    }
    out = {
        "map": 0.0,
        "map50": 0.0,
        "per_class": per_class,
        "objects": len(annotations),
        "detections": len(results),
    }
    if not annotations:
        return out
    known = {cid for cid, _ in classes}
    results = [r for r in results if r["category_id"] in known]
    if not results:
        return out
    ev = _run_cocoeval(images, annotations, results, classes=classes)
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    for k, cid in enumerate(ev.params.catIds):
        name = dict(classes)[cid]
        if objects.get(cid, 0) == 0:
            continue
        per_class[name]["ap"] = _mean_precision(precision[:, :, k, 0, -1])
        per_class[name]["ap50"] = _mean_precision(precision[0, :, k, 0, -1])
        if curves is not None:
            curves[name] = [_round(float(v)) for v in precision[0, :, k, 0, -1]]
    out["map"], out["map50"] = (_round(max(float(s), 0.0)) for s in ev.stats[:2])
    return out


def _coco_records(
    ground_truth: list[dict[str, Any]], detections: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(images, annotations, results) in COCO format, boxes in pixels of the original image."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, (gt, det) in enumerate(zip(ground_truth, detections, strict=True), start=1):
        w, h = float(gt["width"]), float(gt["height"])
        images.append({"id": image_id, "width": int(w), "height": int(h)})
        for box, label in zip(
            np.asarray(gt["boxes"]).reshape(-1, 4), np.asarray(gt["labels"]).reshape(-1), strict=False
        ):
            x, y, bw, bh = _xywh(box, w, h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
        for box, cls, score in zip(
            np.asarray(det["boxes"]).reshape(-1, 4),
            np.asarray(det["classes"]).reshape(-1),
            np.asarray(det["scores"]).reshape(-1),
            strict=False,
        ):
            x, y, bw, bh = _xywh(np.clip(box, 0.0, 1.0), w, h)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x, y, bw, bh],
                    "score": float(score),
                }
            )
    return images, annotations, results


def _run_cocoeval(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    results: list[dict[str, Any]],
    *,
    classes: list[tuple[int, str]],
) -> Any:
    """pycocotools' COCOeval (bbox), evaluated, accumulated and summarized."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(sys.stderr):  # pycocotools prints; stdout is for the JSON line
        gt_api = COCO()
        gt_api.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": cid, "name": name} for cid, name in classes],
        }
        gt_api.createIndex()
        dt_api = gt_api.loadRes(results)
        ev = COCOeval(gt_api, dt_api, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_precision(p: np.ndarray) -> float:
    """Mean of the valid (> -1) precision entries, 0 when there are none; rounded."""
    return _round(float(np.mean(p[p > -1])) if np.any(p > -1) else 0.0)


def _xywh(box: np.ndarray, w: float, h: float) -> tuple[float, float, float, float]:
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    x, y = xmin * w, ymin * h
    return x, y, max(xmax * w - x, 0.0), max(ymax * h - y, 0.0)


def _round(value: float) -> float:
    return round(value, 6)


# ------------------------------------------------------------------------------------- evaluate
def run_model(
    path: str | Path,
    examples: list[dict[str, Any]],
    *,
    score_threshold: float = 0.0,
    num_threads: int | None = None,
) -> tuple[Any, list[dict[str, Any]], float]:
    """(detector, per-image detections, mean latency ms) over the examples."""
    from edgetpu_retrain.evaluate.runtime import decode_image, open_detector, resize_to_input

    det = open_detector(path, num_threads=num_threads)
    outputs, times = [], []
    for i, ex in enumerate(examples):
        image = resize_to_input(decode_image(ex["encoded"]), det.input_size)
        if i == 0:
            det.detect(image)  # warm-up (tracing / delegate set-up) is not latency
        found, ms = det.timed_detect(image)
        keep = found.scores >= score_threshold
        outputs.append(
            {"boxes": found.boxes[keep], "classes": found.classes[keep], "scores": found.scores[keep]}
        )
        times.append(ms)
    return det, outputs, float(np.mean(times)) if times else 0.0


def evaluate_model(
    path: str | Path,
    examples: list[dict[str, Any]],
    classes: list[tuple[int, str]],
    *,
    score_threshold: float = 0.0,
    num_threads: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model's metrics; a given `details` dict gets its drawing material (see `eval_details`)."""
    det, outputs, latency = run_model(
        path, examples, score_threshold=score_threshold, num_threads=num_threads
    )
    curves: dict[str, Any] = {}
    metrics = coco_eval(examples, outputs, classes, curves=curves)
    if details is not None:
        details.update(eval_details(examples, outputs, classes, curves=curves))
    info = det.describe()
    log.info(
        "%s: mAP %.4f, mAP50 %.4f on %d images, %.1f ms/image",
        det.path,
        metrics["map"],
        metrics["map50"],
        len(examples),
        latency,
    )
    return {
        "model": str(det.path),
        "model_kind": info["kind"]
        + ("_int8" if det.quantized else ("_float" if info["kind"] == "tflite" else "")),
        "input_size": list(det.input_size),
        **metrics,
        "images": len(examples),
        "latency_ms": round(latency, 3),
    }


def eval_details(
    examples: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    classes: list[tuple[int, str]],
    *,
    curves: dict[str, Any],
) -> dict[str, Any]:
    """The run report's drawing material: PR curves and per-image ground truth + detections (rounded)."""

    def boxes(a: Any) -> list[list[float]]:
        return [[round(float(v), 5) for v in b] for b in np.asarray(a).reshape(-1, 4)]

    images = []
    for ex, det in zip(examples, outputs, strict=True):
        order = np.argsort(-np.asarray(det["scores"]), kind="stable")[:DETAIL_DETECTIONS]
        images.append(
            {
                "filename": ex["filename"],
                "width": ex["width"],
                "height": ex["height"],
                "gt_boxes": boxes(ex["boxes"]),
                "gt_labels": [int(v) for v in np.asarray(ex["labels"]).reshape(-1)],
                "boxes": boxes(np.asarray(det["boxes"])[order]),
                "classes": [int(v) for v in np.asarray(det["classes"])[order]],
                "scores": [round(float(v), 5) for v in np.asarray(det["scores"])[order]],
            }
        )
    return {
        "version": 1,
        "classes": [{"id": cid, "name": name} for cid, name in classes],
        "recall_thresholds": [round(i / 100, 2) for i in range(101)],
        "pr_iou50": curves,
        "images": images,
    }


def evaluate(
    dataset_dir: str | Path,
    split: str,
    models: list[str | Path],
    *,
    score_threshold: float = 0.0,
    num_threads: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of the first model (and `compare` of a second); a given `details` dict gets the first
    model's drawing material."""
    examples, classes = load_split(dataset_dir, split)
    log.info("evaluating %d %s images", len(examples), split)
    results = [
        evaluate_model(
            m,
            examples,
            classes,
            score_threshold=score_threshold,
            num_threads=num_threads,
            details=details if i == 0 else None,
        )
        for i, m in enumerate(models)
    ]
    out = {
        **results[0],
        "dataset": str(Path(dataset_dir).resolve()),
        "split": split,
        "score_threshold": score_threshold,
    }
    if len(results) == 2:
        first, second = results
        out["compare"] = second
        q1, q2 = (r["model_kind"].endswith("_int8") for r in results)
        float_r, int8_r = (second, first) if (q1 and not q2) else (first, second)
        out["quantization_drop_map50"] = round((float_r["map50"] - int8_r["map50"]) * 100.0, 4)
        out["quantization_drop_map"] = round((float_r["map"] - int8_r["map"]) * 100.0, 4)
        out["drop_reference"] = {"float": float_r["model"], "int8": int8_r["model"]}
    return out
