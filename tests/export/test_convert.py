"""export/convert.py: SavedModel -> model_int8.tflite / model_float.tflite (custom op, types, pycoral order),
and agreement of both .tflite files with the SavedModel on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from tiny_models import MAX_DETECTIONS, SIZE, TOP_CLASS, snapshot_images  # noqa: E402

from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.evaluate.runtime import open_detector  # noqa: E402
from edgetpu_retrain.export import convert as tflite  # noqa: E402


def test_tflite_json_and_ops(tiny_tflite):
    r = tiny_tflite
    assert r["int8"].endswith("model_int8.tflite") and r["float"].endswith("model_float.tflite")
    assert r["calibration_images"] == 4 and r["output_order"] == ["count", "scores", "classes", "boxes"]
    for kind in ("int8", "float"):
        assert r["sizes"][kind] == len(open(r[kind], "rb").read()) > 0
        assert r["ops"][kind]["CUSTOM TFLite_Detection_PostProcess v1"] == 1
        assert not any(op.startswith("CAST") for op in r["ops"][kind])  # float graph input: no CAST first
    int8_ops = {op.split()[0] for op in r["ops"]["int8"]}
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "LOGISTIC"} <= int8_ops
    assert "QUANTIZE" not in {op.split()[0] for op in r["ops"]["float"]}
    assert r["sizes"]["int8"] < r["sizes"]["float"] / 2
    assert r["int8_details"]["input"]["quantization"] == [
        1.0,
        0,
    ]  # uint8 input: scale 1, zero point 0 (the full 0..255 range)
    assert open(r["labels_txt"]).readline() == "0 Arduino_Nano\n"


@pytest.mark.parametrize("kind", ["int8", "float"])
def test_interpreter_types_and_pycoral_order(tiny_tflite, kind):
    interpreter = Interpreter(model_path=tiny_tflite[kind])
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    assert list(inp["shape"]) == [1, SIZE, SIZE, 3]
    assert inp["dtype"] == (np.uint8 if kind == "int8" else np.float32)
    outputs = interpreter.get_output_details()
    assert [list(d["shape"]) for d in outputs] == [
        [1],
        [1, MAX_DETECTIONS],
        [1, MAX_DETECTIONS],
        [1, MAX_DETECTIONS, 4],
    ]
    assert all(d["dtype"] == np.float32 for d in outputs)
    # what pycoral's detect.get_objects reads: one signature,
    # outputs output_0..3 = count, scores, classes, boxes
    signatures = interpreter._get_full_signature_list()
    assert list(signatures) == ["tflite"]
    named = signatures["tflite"]["outputs"]
    assert [named[f"output_{i}"] for i in range(4)] == [d["index"] for d in outputs]
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "TFLite_Detection_PostProcess" in ops


def _iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_tflite_agrees_with_saved_model_on_real_images(tiny_run, tiny_tflite, micro_snapshot):
    reference = open_detector(tiny_run["saved_model"])
    int8 = open_detector(tiny_tflite["int8"])
    flt = open_detector(tiny_tflite["float"])
    assert int8.input_size == flt.input_size == reference.input_size == (SIZE, SIZE)
    ious = []
    for image in snapshot_images(micro_snapshot, "test") + snapshot_images(micro_snapshot, "train")[:2]:
        want = reference.detect(image)
        f = flt.detect(image)
        q = int8.detect(image)
        assert len(f) == len(want) and len(q) >= 1
        # float TFLite: same numbers as TensorFlow for the (deterministic) top detection
        np.testing.assert_allclose(f.boxes[0], want.boxes[0], atol=1e-4)
        assert f.classes[0] == want.classes[0] == TOP_CLASS
        assert abs(f.scores[0] - want.scores[0]) < 1e-4
        # int8: same top detection within quantization error
        assert q.classes[0] == TOP_CLASS and abs(q.scores[0] - want.scores[0]) < 0.01
        ious.append(_iou(q.boxes[0], want.boxes[0]))
    # measured: 0.86-0.98 (mean 0.95); the random backbone amplifies int8 rounding, a trained one less
    assert min(ious) > 0.8 and np.mean(ious) > 0.9, ious


def test_calibration_draw_is_seeded_and_spans_full_range(micro_snapshot):
    a = tflite.calibration_images(micro_snapshot, (SIZE, SIZE), count=3, seed=0)
    b = tflite.calibration_images(micro_snapshot, (SIZE, SIZE), count=3, seed=0)
    c = tflite.calibration_images(micro_snapshot, (SIZE, SIZE), count=3, seed=1)
    assert len(a) == 3 and all(x.shape == (SIZE, SIZE, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    assert a[0].min() == 0 and a[0].max() == 255
    assert (
        len(tflite.calibration_images(micro_snapshot, (SIZE, SIZE), count=50, seed=0)) == 6
    )  # all train images


def test_tflite_user_errors(tmp_path, micro_snapshot):
    (tmp_path / "manifest.json").write_text(json.dumps({"tfrecords": {"train": []}}))
    with pytest.raises(UserError, match="train split is empty"):
        tflite.train_shards(tmp_path)

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    module = Plain()
    tf.saved_model.save(module, str(tmp_path / "plain"), signatures={"serving_default": module.__call__})
    with pytest.raises(UserError, match="no 'tflite' signature"):
        tflite.convert(tmp_path / "plain", micro_snapshot, tmp_path / "out", num_calibration=1)


def test_edgetpu_preflight_passes_our_int8_export_and_rejects_the_float_one(tiny_tflite):
    """Our own SSD export is what the Edge TPU needs: every op but the post-processing tail maps."""
    from edgetpu_retrain.export.edgetpu import preflight

    report = preflight(tiny_tflite["int8"])
    assert report["ok"] is True, report["reasons"]
    assert report["first_cpu_op"] is None
    assert report["expected_cpu_ops"] == {"CUSTOM": 1, "DEQUANTIZE": 2}  # TFLite_Detection_PostProcess tail
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "CONCATENATION", "RESHAPE"} <= set(report["expected_tpu_ops"])
    float_report = preflight(tiny_tflite["float"])
    assert float_report["ok"] is False and float_report["reasons"]
