"""export/postprocess.py (the TFLite_Detection_PostProcess stub) and export/saved_model.py
(checkpoint -> SavedModel), on the session's tiny detector (tests/tiny_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tiny_models import (
    CLASSES,
    MAX_DETECTIONS,
    SIZE,
    TOP_ANCHOR_TYPE,
    TOP_CLASS,
    make_config,
    snapshot_images,
)  # noqa: E402

from edgetpu_retrain import cli  # noqa: E402
from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.evaluate.runtime import open_detector, resize_to_input  # noqa: E402
from edgetpu_retrain.export import saved_model as export  # noqa: E402
from edgetpu_retrain.export.postprocess import (
    PostprocessParams,
    decode_boxes,
    make_postprocess_fn,
    params_from_config,
)  # noqa: E402
from edgetpu_retrain.model import anchors as anchor_lib  # noqa: E402

# --------------------------------------------------------------------------------- postprocess
HAND_ANCHORS = np.array(
    [[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]], np.float32
)
HAND_ENCODINGS = np.zeros((1, 4, 4), np.float32)
HAND_ENCODINGS[0, 2] = [1.0, -1.0, 5.0 * np.log(2.0), 0.0]  # centre +0.1h / -0.1w, height doubled
HAND_SCORES = np.array(
    [
        [
            [0.10, 0.90, 0.20],  # a0: class 0 wins
            [0.10, 0.30, 0.80],  # a1: IoU 0.82 with a0, class 1
            [0.99, 0.05, 0.60],  # a2: background high (ignored), class 1
            [0.10, 0.001, 0.002],
        ]
    ],
    np.float32,
)  # a3: below every threshold
A0 = [0.4, 0.4, 0.6, 0.6]
A1 = [0.42, 0.4, 0.62, 0.6]
A2 = [0.11, 0.14, 0.31, 0.24]  # ycenter 0.21, xcenter 0.19, h 0.2, w 0.1


def test_decode_boxes_formula():
    got = decode_boxes(tf.constant(HAND_ENCODINGS[0]), tf.constant(HAND_ANCHORS)).numpy()
    np.testing.assert_allclose(got[0], A0, atol=1e-6)
    np.testing.assert_allclose(got[2], A2, atol=1e-6)


def test_stub_fast_nms_hand_made():
    params = PostprocessParams(
        num_classes=2, max_detections=5, nms_score_threshold=0.01, nms_iou_threshold=0.6
    )
    boxes, classes, scores, count = (
        t.numpy() for t in make_postprocess_fn(params)(HAND_ENCODINGS, HAND_SCORES, HAND_ANCHORS)
    )
    assert (
        boxes.shape == (1, 5, 4)
        and classes.shape == (1, 5)
        and scores.shape == (1, 5)
        and count.shape == (1,)
    )
    assert count[0] == 2  # a1 suppressed by a0 (class-agnostic), a3 under the threshold
    np.testing.assert_allclose(boxes[0, :2], [A0, A2], atol=1e-6)
    np.testing.assert_array_equal(classes[0, :2], [0, 1])  # 0-based, background column skipped
    np.testing.assert_allclose(scores[0, :2], [0.9, 0.6], atol=1e-7)
    assert not boxes[0, 2:].any() and not scores[0, 2:].any()  # zero padding


def test_stub_regular_nms_hand_made_threshold_inclusive():
    params = PostprocessParams(
        num_classes=2, max_detections=5, use_regular_nms=True, nms_score_threshold=0.05, nms_iou_threshold=0.6
    )
    boxes, classes, scores, count = (
        t.numpy() for t in make_postprocess_fn(params)(HAND_ENCODINGS, HAND_SCORES, HAND_ANCHORS)
    )
    assert count[0] == 4  # per class: a1 survives (other class), a0/class 1 is suppressed by a1
    np.testing.assert_allclose(boxes[0, :4], [A0, A1, A2, A2], atol=1e-6)
    np.testing.assert_array_equal(classes[0, :4], [0, 1, 1, 0])
    np.testing.assert_allclose(
        scores[0, :4], [0.9, 0.8, 0.6, 0.05], atol=1e-7
    )  # 0.05 >= 0.05 kept, as in the op


def _tflite_postprocess(
    params: PostprocessParams, anchors: np.ndarray, encodings: np.ndarray, scores: np.ndarray
):
    """Run the REAL TFLite_Detection_PostProcess kernel: convert a graph holding only the stub."""
    from ai_edge_litert.interpreter import Interpreter

    fn = make_postprocess_fn(params)
    n, c = scores.shape[1], scores.shape[2]

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.fn = fn

        @tf.function(
            input_signature=[
                tf.TensorSpec([1, n, 4], tf.float32, name="enc"),
                tf.TensorSpec([1, n, c], tf.float32, name="cls"),
            ]
        )
        def __call__(self, enc, cls):
            return self.fn(enc, cls, tf.constant(anchors))

    module = Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.__call__.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    assert [op["op_name"] for op in interpreter._get_ops_details()] == ["TFLite_Detection_PostProcess"]
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], encodings if "enc" in d["name"] else scores)
    interpreter.invoke()
    # output names end in ":<i>", i = position in the stub's (boxes, classes, scores, count)
    named = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    boxes, classes, scores, count = (named[n] for n in sorted(named, key=lambda s: int(s.rsplit(":", 1)[1])))
    return boxes, classes, scores, count


@pytest.mark.parametrize("regular", [False, True])
def test_stub_matches_tflite_kernel(regular):
    """The SavedModel body and the fused TFLite op give the same detections (random, tie-free case)."""
    rng = np.random.default_rng(3)
    n, classes = 60, 3
    anchors = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))], axis=1).astype(
        np.float32
    )
    encodings = rng.normal(0, 1, (1, n, 4)).astype(np.float32)
    scores = (
        rng.permutation(np.linspace(0.001, 0.999, n * (classes + 1)))
        .reshape(1, n, classes + 1)
        .astype(np.float32)
    )
    params = PostprocessParams(
        num_classes=classes,
        max_detections=12,
        use_regular_nms=regular,
        nms_score_threshold=0.3,
        nms_iou_threshold=0.5,
    )
    want = [t.numpy() for t in make_postprocess_fn(params)(encodings, scores, anchors)]
    got = _tflite_postprocess(params, anchors, encodings, scores)
    k = int(want[3][0])
    assert k > 3 and int(got[3][0]) == k
    np.testing.assert_allclose(got[0][0, :k], want[0][0, :k], atol=1e-5)
    np.testing.assert_array_equal(got[1][0, :k], want[1][0, :k])
    np.testing.assert_allclose(got[2][0, :k], want[2][0, :k], atol=1e-6)


def test_implements_signature_keeps_precision_and_required_attrs():
    text = PostprocessParams(
        num_classes=4, max_detections=20, nms_score_threshold=1e-8, nms_iou_threshold=0.6
    ).implements_signature()
    assert text.startswith('name: "TFLite_Detection_PostProcess"')
    assert 'key: "nms_score_threshold" value { f: 1e-08 }' in text  # not 0.000000
    assert 'key: "use_regular_nms" value { b: false }' in text
    for key in (
        "max_detections",
        "max_classes_per_detection",
        "num_classes",
        "nms_iou_threshold",
        "y_scale",
        "x_scale",
        "h_scale",
        "w_scale",
    ):
        assert f'key: "{key}"' in text
    from google.protobuf import text_format
    from tensorflow.core.framework import attr_value_pb2

    parsed = text_format.Parse(text, attr_value_pb2.NameAttrList())
    assert parsed.attr["nms_score_threshold"].f == pytest.approx(1e-8, rel=1e-6)


def test_params_from_config_and_rejections(micro_snapshot):
    params = params_from_config(make_config(micro_snapshot, score_threshold=0.25, iou_threshold=0.45))
    assert (
        params.num_classes,
        params.max_detections,
        params.nms_score_threshold,
        params.nms_iou_threshold,
    ) == (4, MAX_DETECTIONS, 0.25, 0.45)
    assert params.scales == anchor_lib.BOX_SCALES
    with pytest.raises(UserError, match="detections_per_class"):
        params_from_config(make_config(micro_snapshot, use_regular_nms=True, detections_per_class=5))
    with pytest.raises(UserError, match="max_classes_per_detection"):
        params_from_config(make_config(micro_snapshot, max_classes_per_detection=2))


# -------------------------------------------------------------------------------------- export
def test_export_cli_signature(tiny_run, loaded_saved_model):
    result, out = tiny_run["export"], tiny_run["saved_model"]
    assert result["saved_model"] == str(out) and result["out_dir"] == str(out)
    assert result["num_anchors"] == anchor_lib.num_anchors(tiny_run["cfg"]) == 192
    assert result["signature"] == {
        "inputs": {"images": [[1, SIZE, SIZE, 3], "uint8"]},
        "outputs": {
            "boxes": [[1, MAX_DETECTIONS, 4], "float32"],
            "classes": [[1, MAX_DETECTIONS], "float32"],
            "count": [[1], "float32"],
            "scores": [[1, MAX_DETECTIONS], "float32"],
        },
    }
    loaded = loaded_saved_model
    assert set(loaded.signatures) == {"serving_default", "tflite"}
    tfl = loaded.signatures["tflite"]
    assert tfl.structured_input_signature[1]["images"].dtype == tf.float32
    assert sorted(tfl.structured_outputs) == ["output_0", "output_1", "output_2", "output_3"]
    assert (out / "labels.txt").read_text() == "".join(f"{i} {n}\n" for i, n in enumerate(CLASSES))
    assert (out / "label_map.pbtxt").read_text() == Path(tiny_run["cfg"].data.label_map).read_text()
    info = json.loads((out / "export.json").read_text())
    assert info["postprocess"]["num_classes"] == 4 and info["pycoral_order"] == [
        "count",
        "scores",
        "classes",
        "boxes",
    ]
    assert not list(out.parent.glob(".saved_model.*"))  # no temp dir left behind


def test_export_outputs_on_real_images(tiny_run, micro_snapshot, loaded_saved_model):
    """serving_default == the Keras model decoded by hand (top box), tflite signature in pycoral order."""
    loaded = loaded_saved_model
    serve, tfl = loaded.signatures["serving_default"], loaded.signatures["tflite"]
    det, cfg = tiny_run["detector"], tiny_run["cfg"]
    anchors = anchor_lib.anchors(cfg)
    top_anchor = len(anchors) - 6 + TOP_ANCHOR_TYPE  # the 1x1 map has 6 anchor types, last in order
    tops = []
    for image in snapshot_images(micro_snapshot, "test"):
        out = {k: v.numpy() for k, v in serve(images=tf.constant(image[None])).items()}
        count = int(out["count"][0])
        assert 1 <= count <= MAX_DETECTIONS
        assert np.all(np.diff(out["scores"][0, :count]) <= 0)
        assert set(out["classes"][0, :count].astype(int)) <= set(range(len(CLASSES)))
        assert out["classes"][0, 0] == TOP_CLASS and out["scores"][0, 0] > 0.99
        enc, _ = det(image[None].astype(np.float32), training=False)
        expected = decode_boxes(
            tf.constant(np.asarray(enc)[0, top_anchor : top_anchor + 1]),
            tf.constant(anchors[top_anchor : top_anchor + 1]),
        ).numpy()[0]
        np.testing.assert_allclose(out["boxes"][0, 0], expected, atol=1e-4)
        pyc = {k: v.numpy() for k, v in tfl(images=tf.constant(image[None], tf.float32)).items()}
        for key, name in zip(
            ("output_0", "output_1", "output_2", "output_3"),
            ("count", "scores", "classes", "boxes"),
            strict=False,
        ):
            np.testing.assert_allclose(pyc[key], out[name], atol=1e-5)
        tops.append(out["boxes"][0, 0])
    assert np.ptp(np.array(tops), axis=0).max() > 1e-3  # image-dependent boxes, not a constant model


def test_runtime_saved_model_matches_signature(tiny_run, micro_snapshot):
    det = open_detector(tiny_run["saved_model"])
    assert det.kind == "saved_model" and det.input_size == (SIZE, SIZE) and det.input_dtype == "uint8"
    found = det.detect(snapshot_images(micro_snapshot, "test")[0])
    assert (
        1 <= len(found) <= MAX_DETECTIONS
        and found.classes.dtype == np.int64
        and found.classes[0] == TOP_CLASS
    )


def test_resize_matches_tf_image_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for size in ((96, 96), (128, 40), (200, 300)):
        want = tf.image.resize(image.astype(np.float32), size, method="bilinear").numpy()
        got = resize_to_input(image, size)
        assert np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-3


def test_export_missing_checkpoint_is_user_error(tiny_run, tmp_path, capsys):
    code = cli.main(
        [
            "export",
            "--config",
            str(tiny_run["config"]),
            "--checkpoint",
            str(tmp_path / "ckpt-9"),
            "--out",
            str(tmp_path / "sm"),
        ]
    )
    assert code == 2 and "ckpt-9" in capsys.readouterr().err
    assert not (tmp_path / "sm").exists()


def test_export_rejects_config_that_does_not_match_the_model(tiny_run, tmp_path):
    det, cfg = tiny_run["detector"], tiny_run["cfg"]
    with pytest.raises(UserError, match="192 anchors"):
        export.export_detector(det, cfg, tmp_path / "sm", anchors=np.zeros((5, 4), np.float32))
    with pytest.raises(UserError, match="expected num_classes"):
        export.export_detector(det, cfg, tmp_path / "sm", params=PostprocessParams(num_classes=7))
    assert not (tmp_path / "sm").exists()
