"""evaluate/coco.py: COCO mAP (pycocotools) of a SavedModel / .tflite on a dataset split."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tiny_models import CLASSES, SIZE  # noqa: E402
from tiny_models import cli_json as _cli_json  # noqa: E402

from edgetpu_retrain import cli  # noqa: E402
from edgetpu_retrain.evaluate import coco as evaluate  # noqa: E402
from edgetpu_retrain.evaluate import runtime as detector_runtime  # noqa: E402
from edgetpu_retrain.evaluate.runtime import Detections, Detector, decode_image, resize_to_input  # noqa: E402

CLS = [(1, "a"), (2, "b"), (3, "c")]


def _gt():
    return [
        {
            "width": 800,
            "height": 600,
            "boxes": np.array([[0.1, 0.1, 0.5, 0.4], [0.5, 0.5, 0.9, 0.95]]),
            "labels": np.array([1, 2]),
        },
        {"width": 640, "height": 480, "boxes": np.array([[0.2, 0.3, 0.6, 0.7]]), "labels": np.array([2])},
        {"width": 300, "height": 300, "boxes": np.zeros((0, 4)), "labels": np.zeros((0,), np.int64)},
    ]


def test_coco_eval_detections_equal_ground_truth():
    gt = _gt()
    dets = [
        {"boxes": g["boxes"], "classes": g["labels"] - 1, "scores": np.full(len(g["labels"]), 0.9)}
        for g in gt
    ]
    r = evaluate.coco_eval(gt, dets, CLS)
    assert r["map"] == 1.0 and r["map50"] == 1.0
    assert r["per_class"] == {
        "a": {"ap": 1.0, "ap50": 1.0, "objects": 1},
        "b": {"ap": 1.0, "ap50": 1.0, "objects": 2},
        "c": {"ap": None, "ap50": None, "objects": 0},
    }
    assert r["objects"] == 3 and r["detections"] == 3


def test_coco_eval_wrong_class_shifted_box_and_nothing():
    gt = _gt()
    dets = [
        {
            "boxes": gt[0]["boxes"],
            "classes": np.array([0, 0]),
            "scores": np.array([0.9, 0.8]),
        },  # 2nd: wrong class
        {
            "boxes": gt[1]["boxes"] + [0.1, 0.0, 0.1, 0.0],
            "classes": np.array([1]),
            "scores": np.array([0.7]),
        },  # IoU 0.6
        {"boxes": np.zeros((0, 4)), "classes": np.zeros(0, np.int64), "scores": np.zeros(0)},
    ]
    r = evaluate.coco_eval(gt, dets, CLS)
    assert r["per_class"]["a"]["ap"] == 1.0
    assert r["per_class"]["b"]["ap50"] == pytest.approx(0.5, abs=0.01)  # one of two found at IoU 0.5
    assert 0.0 < r["map"] < r["map50"] < 1.0
    empty = [{"boxes": np.zeros((0, 4)), "classes": np.zeros(0, np.int64), "scores": np.zeros(0)}] * 3
    assert evaluate.coco_eval(gt, empty, CLS)["map"] == 0.0


class _Oracle(Detector):
    """Returns each image's ground truth (found by the resized pixels), 0-based classes."""

    kind = "oracle"

    def __init__(self, answers):
        super().__init__(Path("oracle"), (SIZE, SIZE), "uint8")
        self.answers = answers

    def _run(self, batch):
        boxes, labels = self.answers[batch[0].tobytes()]
        return Detections(
            boxes.astype(np.float32), labels - 1, np.linspace(0.9, 0.5, len(labels)).astype(np.float32)
        )


def _evaluate_cli(snapshot, out, *flags: str) -> dict:
    """`evaluate` on the snapshot's test split, writing `out`; its JSON line."""
    return _cli_json(["evaluate", "--dataset", str(snapshot), "--split", "test", "--out", str(out), *flags])


def test_evaluate_cli_oracle_gives_map_1(micro_snapshot, tmp_path, monkeypatch):
    examples, _ = evaluate.load_split(micro_snapshot, "test")
    answers = {
        resize_to_input(decode_image(ex["encoded"]), (SIZE, SIZE)).tobytes(): (ex["boxes"], ex["labels"])
        for ex in examples
    }
    monkeypatch.setattr(detector_runtime, "open_detector", lambda path, num_threads=None: _Oracle(answers))
    out = tmp_path / "eval.json"
    line = _evaluate_cli(micro_snapshot, out, "--model", "whatever")
    assert line["map"] == 1.0 and line["map50"] == 1.0 and line["images"] == 4
    assert json.loads(out.read_text()) == line
    details = json.loads((tmp_path / "eval.details.json").read_text())  # what the run report draws
    assert line["details"] == str(tmp_path / "eval.details.json")
    assert len(details["images"]) == 4 and len(details["recall_thresholds"]) == 101
    for image, ex in zip(details["images"], examples, strict=True):
        assert image["filename"] == ex["filename"] and image["gt_labels"] == ex["labels"].tolist()
        assert image["boxes"] == image["gt_boxes"] and image["scores"] == sorted(
            image["scores"], reverse=True
        )
    assert all(max(p) == 1.0 for p in details["pr_iou50"].values())  # the oracle: precision 1
    present = {n: v for n, v in line["per_class"].items() if v["objects"]}
    assert present and all(v == {"ap": 1.0, "ap50": 1.0, "objects": v["objects"]} for v in present.values())


def test_evaluate_cli_int8_vs_saved_model(tiny_run, tiny_tflite, micro_snapshot, tmp_path):
    out = tmp_path / "eval.json"
    line = _evaluate_cli(
        micro_snapshot,
        out,
        "--model",
        tiny_tflite["int8"],
        "--compare",
        str(tiny_run["saved_model"]),
        "--score-threshold",
        "0.0",
    )
    assert json.loads(out.read_text()) == line
    assert line["model_kind"] == "tflite_int8" and line["compare"]["model_kind"] == "saved_model"
    for r in (line, line["compare"]):
        assert r["images"] == 4 and r["objects"] > 0 and 0 < r["detections"] <= 4 * 10
        assert 0.0 <= r["map"] <= r["map50"] <= 1.0 and r["latency_ms"] > 0
        assert set(r["per_class"]) == set(CLASSES) and r["input_size"] == [SIZE, SIZE]
    assert line["drop_reference"] == {"float": str(tiny_run["saved_model"]), "int8": tiny_tflite["int8"]}
    assert line["quantization_drop_map50"] == pytest.approx(
        (line["compare"]["map50"] - line["map50"]) * 100, abs=1e-3
    )
    # deterministic: the same metrics again (latency aside)
    again = evaluate.evaluate(micro_snapshot, "test", [tiny_tflite["int8"]])
    strip = lambda r: {k: v for k, v in r.items() if k not in ("latency_ms", "compare", "out", "details")}  # noqa: E731
    assert strip(again) == {
        k: v for k, v in strip(line).items() if not k.startswith(("quantization", "drop"))
    }


def test_evaluate_float_tflite_and_bad_split(tiny_tflite, micro_snapshot, tmp_path):
    r = evaluate.evaluate(micro_snapshot, "test", [tiny_tflite["float"]], score_threshold=0.5)
    assert r["model_kind"] == "tflite_float" and r["detections"] == 4  # only the deterministic winner >= 0.5
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(
            [
                "evaluate",
                "--dataset",
                str(micro_snapshot),
                "--split",
                "val",
                "--model",
                tiny_tflite["float"],
                "--out",
                str(tmp_path / "e.json"),
            ]
        )
    assert code == 2 and "'val' split is empty" in stderr.getvalue()
