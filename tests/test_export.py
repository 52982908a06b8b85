"""postprocess.py (the TFLite_Detection_PostProcess stub) and export.py (checkpoint -> SavedModel).

Also holds the session fixtures test_tflite.py / test_evaluate.py import: a small dataset snapshot made
of real microcontroller photos, a tiny detector (96x96, alpha 0.35, 192 anchors) whose outputs are
made image-dependent and whose top detection is made deterministic, its checkpoint, config and export.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edgetpu_retrain import cli  # noqa: E402
from edgetpu_retrain.export import saved_model as export  # noqa: E402
from edgetpu_retrain.model import detector as model  # noqa: E402
from edgetpu_retrain.data import tfrecord  # noqa: E402
from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.model.config import config_from_dict, dump_config  # noqa: E402
from edgetpu_retrain.evaluate.runtime import decode_image, open_detector, resize_to_input  # noqa: E402
from edgetpu_retrain.export.postprocess import PostprocessParams, decode_boxes, make_postprocess_fn, params_from_config  # noqa: E402

CLASSES = ["Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora", "Raspberry_Pi_3"]
SIZE = 96
MAX_DETECTIONS = 10
TOP_ANCHOR_TYPE, TOP_CLASS = 1, 1  # the deterministic winner: anchor type 1 of the 1x1 map, class ESP8266


# ------------------------------------------------------------------------------- shared fixtures
def build_snapshot(src: Path, out: Path, *, n_train: int = 6, n_test: int = 4) -> Path:
    """A dataset snapshot (manifest.json, label_map.pbtxt, TFRecords in the OD API schema) from the
    shared microcontroller photos and their CSV labels (first images of each published split)."""
    ids = {name: i for i, name in enumerate(CLASSES, start=1)}
    (out / "tfrecords").mkdir(parents=True)
    (out / "label_map.pbtxt").write_text("".join(f'item {{\n  id: {i}\n  name: "{n}"\n}}\n' for n, i in ids.items()))
    shards: dict[str, list[str]] = {"val": []}
    for split, csv_name, count in (("train", "train_labels.csv", n_train), ("test", "test_labels.csv", n_test)):
        rows: dict[str, list[dict]] = {}
        with open(src / csv_name, newline="") as handle:
            for row in csv.DictReader(handle):
                rows.setdefault(row["filename"], []).append(row)
        records = []
        for filename, objs in sorted(rows.items())[:count]:
            record = {"filename": filename, "width": int(objs[0]["width"]), "height": int(objs[0]["height"]),
                      "format": "jpeg",
                      "objects": [{"class": o["class"], "label": ids[o["class"]], "xmin": int(o["xmin"]),
                                   "ymin": int(o["ymin"]), "xmax": int(o["xmax"]), "ymax": int(o["ymax"])} for o in objs]}
            records.append(tfrecord.encode_example(record, (src / "images" / filename).read_bytes()))
        rel = f"tfrecords/{split}.tfrecord-00000-of-00001"
        tfrecord.write_tfrecord(out / rel, records)
        shards[split] = [rel]
    manifest = {"version": 1, "label_map": "label_map.pbtxt", "num_classes": len(CLASSES),
                "classes": [{"id": i, "name": n} for n, i in ids.items()], "tfrecords": shards}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def snapshot_images(dataset: Path, split: str) -> list[np.ndarray]:
    paths = [dataset / rel for rel in json.loads((dataset / "manifest.json").read_text())["tfrecords"][split]]
    return [resize_to_input(decode_image(ex["image/encoded"][0]), (SIZE, SIZE)) for ex in tfrecord.read_examples(paths)]


def make_config(dataset: Path, **post):
    raw = {
        "model": {"base": "mobilenet_v2_ssd", "head": "ssdlite", "input_size": SIZE, "alpha": 0.35,
                  "num_classes": len(CLASSES), "backbone_weights": None, "anchors": {"num_layers": 4}},
        "data": {"dataset_dir": str(dataset), "label_map": str(dataset / "label_map.pbtxt"), "classes": CLASSES,
                 "tfrecords": {"train": [str(dataset / "tfrecords/train.tfrecord-00000-of-00001")],
                               "test": [str(dataset / "tfrecords/test.tfrecord-00000-of-00001")]}},
        "postprocess": {"max_detections": MAX_DETECTIONS, "score_threshold": 1e-4, **post},
    }
    return config_from_dict(raw)


def make_deterministic_detector(cfg, images: list[np.ndarray]):
    """Random-init detector made useful for format/agreement tests.

    1. One forward pass in training mode on real photos (momentum 0) sets the batch-norm statistics, so the
       features (and box encodings) depend on the image instead of vanishing (random init + default
       moving statistics give ~1e-15 activations).
    2. Class predictors: zero kernels, logit -6 everywhere except anchor type TOP_ANCHOR_TYPE of the
       last (1x1) map, class TOP_CLASS: +6. So every image has one clear top detection whose box comes
       from the real (image-dependent, scaled-down) box branch, and int8 rounding cannot reorder it.
    """
    import keras

    det = model.build_detector(cfg, weights=None)
    norms = [layer for layer in _all_layers(det) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # one training-mode pass sets the moving statistics to the batch's
    det(np.stack(images).astype(np.float32), training=True)
    for layer in norms:
        layer.momentum = cfg.model.bn_momentum
    sizes = model.feature_map_sizes(cfg)
    assert sizes[-1] == 1
    columns = cfg.model.num_classes + 1
    for i in range(len(sizes)):
        layer = det.get_layer(f"class_{i}_conv")
        kernel, bias = layer.get_weights()
        kernel[:] = 0.0
        bias[:] = -6.0
        if i == len(sizes) - 1:
            bias[TOP_ANCHOR_TYPE * columns + 1 + TOP_CLASS] = 6.0
        layer.set_weights([kernel, bias])
    # the winner's box: a fixed offset plus a small image-dependent part. A random network amplifies int8
    # rounding (top-box IoU int8 vs float was 0.4-0.7 with the raw random box branch), so the image
    # part is scaled down: the box still moves per image, and the check measures the pipeline.
    layer = det.get_layer(f"box_{len(sizes) - 1}_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 0.1, np.tile(np.array([0.5, -0.5, -1.0, -1.5], np.float32), len(bias) // 4)])
    return det


def _all_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_layers(sub)


# test_tflite.py / test_evaluate.py import these fixtures; an imported fixture is a separate fixture
# per module, so the expensive artifacts are memoized here (one module object, one build per session).
_SESSION: dict = {}


def once(tmp_path_factory, key: str, build):
    key = f"{tmp_path_factory.getbasetemp()}:{key}"
    if key not in _SESSION:
        _SESSION[key] = build()
    return _SESSION[key]


@pytest.fixture(scope="session")
def micro_snapshot(tmp_path_factory, microcontroller_dir) -> Path:
    return once(tmp_path_factory, "snapshot",
                lambda: build_snapshot(microcontroller_dir, tmp_path_factory.mktemp("snapshot") / "micro"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, micro_snapshot):
    """{cfg, config, checkpoint, detector, export (CLI JSON line), saved_model} — exported once per session."""
    return once(tmp_path_factory, "run", lambda: _make_run(tmp_path_factory, micro_snapshot))


def _make_run(tmp_path_factory, micro_snapshot):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_config(micro_snapshot)
    config_path = run_dir / "config.yaml"
    config_path.write_text(dump_config(cfg))
    det = make_deterministic_detector(cfg, snapshot_images(micro_snapshot, "train"))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=det), str(run_dir / "checkpoints"), max_to_keep=1)
    checkpoint = manager.save()  # train's layout: checkpoints/ckpt-1 + the `checkpoint` state file
    out = run_dir / "saved_model"
    result = _cli_json(["export", "--config", str(config_path), "--checkpoint", str(run_dir / "checkpoints"),
                        "--out", str(out)])
    return {"cfg": cfg, "config": config_path, "checkpoint": checkpoint, "detector": det, "export": result,
            "saved_model": out, "dir": run_dir}


@pytest.fixture(scope="session")
def loaded_saved_model(tmp_path_factory, tiny_run):
    return once(tmp_path_factory, "loaded", lambda: tf.saved_model.load(str(tiny_run["saved_model"])))


def _cli_json(argv: list[str]) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    assert code == 0, f"{argv[0]} exited {code}"
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


# --------------------------------------------------------------------------------- postprocess
HAND_ANCHORS = np.array([[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]],
                        np.float32)
HAND_ENCODINGS = np.zeros((1, 4, 4), np.float32)
HAND_ENCODINGS[0, 2] = [1.0, -1.0, 5.0 * np.log(2.0), 0.0]  # centre +0.1h / -0.1w, height doubled
HAND_SCORES = np.array([[[0.10, 0.90, 0.20],  # a0: class 0 wins
                         [0.10, 0.30, 0.80],  # a1: IoU 0.82 with a0, class 1
                         [0.99, 0.05, 0.60],  # a2: background high (ignored), class 1
                         [0.10, 0.001, 0.002]]], np.float32)  # a3: below every threshold
A0 = [0.4, 0.4, 0.6, 0.6]
A1 = [0.42, 0.4, 0.62, 0.6]
A2 = [0.11, 0.14, 0.31, 0.24]  # ycenter 0.21, xcenter 0.19, h 0.2, w 0.1


def test_decode_boxes_formula():
    got = decode_boxes(tf.constant(HAND_ENCODINGS[0]), tf.constant(HAND_ANCHORS)).numpy()
    np.testing.assert_allclose(got[0], A0, atol=1e-6)
    np.testing.assert_allclose(got[2], A2, atol=1e-6)


def test_stub_fast_nms_hand_made():
    params = PostprocessParams(num_classes=2, max_detections=5, nms_score_threshold=0.01, nms_iou_threshold=0.6)
    boxes, classes, scores, count = (t.numpy() for t in make_postprocess_fn(params)(HAND_ENCODINGS, HAND_SCORES, HAND_ANCHORS))
    assert boxes.shape == (1, 5, 4) and classes.shape == (1, 5) and scores.shape == (1, 5) and count.shape == (1,)
    assert count[0] == 2  # a1 suppressed by a0 (class-agnostic), a3 under the threshold
    np.testing.assert_allclose(boxes[0, :2], [A0, A2], atol=1e-6)
    np.testing.assert_array_equal(classes[0, :2], [0, 1])  # 0-based, background column skipped
    np.testing.assert_allclose(scores[0, :2], [0.9, 0.6], atol=1e-7)
    assert not boxes[0, 2:].any() and not scores[0, 2:].any()  # zero padding


def test_stub_regular_nms_hand_made_threshold_inclusive():
    params = PostprocessParams(num_classes=2, max_detections=5, use_regular_nms=True, nms_score_threshold=0.05,
                               nms_iou_threshold=0.6)
    boxes, classes, scores, count = (t.numpy() for t in make_postprocess_fn(params)(HAND_ENCODINGS, HAND_SCORES, HAND_ANCHORS))
    assert count[0] == 4  # per class: a1 survives (other class), a0/class 1 is suppressed by a1
    np.testing.assert_allclose(boxes[0, :4], [A0, A1, A2, A2], atol=1e-6)
    np.testing.assert_array_equal(classes[0, :4], [0, 1, 1, 0])
    np.testing.assert_allclose(scores[0, :4], [0.9, 0.8, 0.6, 0.05], atol=1e-7)  # 0.05 >= 0.05 kept, as in the op


def _tflite_postprocess(params: PostprocessParams, anchors: np.ndarray, encodings: np.ndarray, scores: np.ndarray):
    """Run the REAL TFLite_Detection_PostProcess kernel: convert a graph holding only the stub."""
    from ai_edge_litert.interpreter import Interpreter

    fn = make_postprocess_fn(params)
    n, c = scores.shape[1], scores.shape[2]

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.fn = fn

        @tf.function(input_signature=[tf.TensorSpec([1, n, 4], tf.float32, name="enc"),
                                      tf.TensorSpec([1, n, c], tf.float32, name="cls")])
        def __call__(self, enc, cls):
            return self.fn(enc, cls, tf.constant(anchors))

    module = Module()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
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
    anchors = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.1, 0.4, (n, 2))], axis=1).astype(np.float32)
    encodings = rng.normal(0, 1, (1, n, 4)).astype(np.float32)
    scores = rng.permutation(np.linspace(0.001, 0.999, n * (classes + 1))).reshape(1, n, classes + 1).astype(np.float32)
    params = PostprocessParams(num_classes=classes, max_detections=12, use_regular_nms=regular,
                               nms_score_threshold=0.3, nms_iou_threshold=0.5)
    want = [t.numpy() for t in make_postprocess_fn(params)(encodings, scores, anchors)]
    got = _tflite_postprocess(params, anchors, encodings, scores)
    k = int(want[3][0])
    assert k > 3 and int(got[3][0]) == k
    np.testing.assert_allclose(got[0][0, :k], want[0][0, :k], atol=1e-5)
    np.testing.assert_array_equal(got[1][0, :k], want[1][0, :k])
    np.testing.assert_allclose(got[2][0, :k], want[2][0, :k], atol=1e-6)


def test_implements_signature_keeps_precision_and_required_attrs():
    text = PostprocessParams(num_classes=4, max_detections=20, nms_score_threshold=1e-8,
                             nms_iou_threshold=0.6).implements_signature()
    assert text.startswith('name: "TFLite_Detection_PostProcess"')
    assert 'key: "nms_score_threshold" value { f: 1e-08 }' in text  # not 0.000000
    assert 'key: "use_regular_nms" value { b: false }' in text
    for key in ("max_detections", "max_classes_per_detection", "num_classes", "nms_iou_threshold",
                "y_scale", "x_scale", "h_scale", "w_scale"):
        assert f'key: "{key}"' in text
    from google.protobuf import text_format
    from tensorflow.core.framework import attr_value_pb2

    parsed = text_format.Parse(text, attr_value_pb2.NameAttrList())
    assert parsed.attr["nms_score_threshold"].f == pytest.approx(1e-8, rel=1e-6)


def test_params_from_config_and_rejections(micro_snapshot):
    params = params_from_config(make_config(micro_snapshot, score_threshold=0.25, iou_threshold=0.45))
    assert (params.num_classes, params.max_detections, params.nms_score_threshold, params.nms_iou_threshold) == (
        4, MAX_DETECTIONS, 0.25, 0.45)
    assert params.scales == model.BOX_SCALES
    with pytest.raises(UserError, match="detections_per_class"):
        params_from_config(make_config(micro_snapshot, use_regular_nms=True, detections_per_class=5))
    with pytest.raises(UserError, match="max_classes_per_detection"):
        params_from_config(make_config(micro_snapshot, max_classes_per_detection=2))


# -------------------------------------------------------------------------------------- export
def test_export_cli_signature(tiny_run, loaded_saved_model):
    result, out = tiny_run["export"], tiny_run["saved_model"]
    assert result["saved_model"] == str(out) and result["out_dir"] == str(out)
    assert result["num_anchors"] == model.num_anchors(tiny_run["cfg"]) == 192
    assert result["signature"] == {
        "inputs": {"images": [[1, SIZE, SIZE, 3], "uint8"]},
        "outputs": {"boxes": [[1, MAX_DETECTIONS, 4], "float32"], "classes": [[1, MAX_DETECTIONS], "float32"],
                    "count": [[1], "float32"], "scores": [[1, MAX_DETECTIONS], "float32"]},
    }
    loaded = loaded_saved_model
    assert set(loaded.signatures) == {"serving_default", "tflite"}
    tfl = loaded.signatures["tflite"]
    assert tfl.structured_input_signature[1]["images"].dtype == tf.float32
    assert sorted(tfl.structured_outputs) == ["output_0", "output_1", "output_2", "output_3"]
    assert (out / "labels.txt").read_text() == "".join(f"{i} {n}\n" for i, n in enumerate(CLASSES))
    assert (out / "label_map.pbtxt").read_text() == Path(tiny_run["cfg"].data.label_map).read_text()
    info = json.loads((out / "export.json").read_text())
    assert info["postprocess"]["num_classes"] == 4 and info["pycoral_order"] == ["count", "scores", "classes", "boxes"]
    assert not list(out.parent.glob(".saved_model.*"))  # no temp dir left behind


def test_export_outputs_on_real_images(tiny_run, micro_snapshot, loaded_saved_model):
    """serving_default == the Keras model decoded by hand (top box), tflite signature in pycoral order."""
    loaded = loaded_saved_model
    serve, tfl = loaded.signatures["serving_default"], loaded.signatures["tflite"]
    det, cfg = tiny_run["detector"], tiny_run["cfg"]
    anchors = model.anchors(cfg)
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
        expected = decode_boxes(tf.constant(np.asarray(enc)[0, top_anchor:top_anchor + 1]),
                                tf.constant(anchors[top_anchor:top_anchor + 1])).numpy()[0]
        np.testing.assert_allclose(out["boxes"][0, 0], expected, atol=1e-4)
        pyc = {k: v.numpy() for k, v in tfl(images=tf.constant(image[None], tf.float32)).items()}
        for key, name in zip(("output_0", "output_1", "output_2", "output_3"), ("count", "scores", "classes", "boxes")):
            np.testing.assert_allclose(pyc[key], out[name], atol=1e-5)
        tops.append(out["boxes"][0, 0])
    assert np.ptp(np.array(tops), axis=0).max() > 1e-3  # image-dependent boxes, not a constant model


def test_runtime_saved_model_matches_signature(tiny_run, micro_snapshot):
    det = open_detector(tiny_run["saved_model"])
    assert det.kind == "saved_model" and det.input_size == (SIZE, SIZE) and det.input_dtype == "uint8"
    found = det.detect(snapshot_images(micro_snapshot, "test")[0])
    assert 1 <= len(found) <= MAX_DETECTIONS and found.classes.dtype == np.int64 and found.classes[0] == TOP_CLASS


def test_resize_matches_tf_image_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    for size in ((96, 96), (128, 40), (200, 300)):
        want = tf.image.resize(image.astype(np.float32), size, method="bilinear").numpy()
        got = resize_to_input(image, size)
        assert np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-3


def test_export_missing_checkpoint_is_user_error(tiny_run, tmp_path, capsys):
    code = cli.main(["export", "--config", str(tiny_run["config"]), "--checkpoint", str(tmp_path / "ckpt-9"),
                     "--out", str(tmp_path / "sm")])
    assert code == 2 and "ckpt-9" in capsys.readouterr().err
    assert not (tmp_path / "sm").exists()


def test_export_rejects_config_that_does_not_match_the_model(tiny_run, tmp_path):
    det, cfg = tiny_run["detector"], tiny_run["cfg"]
    with pytest.raises(UserError, match="192 anchors"):
        export.export_detector(det, cfg, tmp_path / "sm", anchors=np.zeros((5, 4), np.float32))
    with pytest.raises(UserError, match="expected num_classes"):
        export.export_detector(det, cfg, tmp_path / "sm", params=PostprocessParams(num_classes=7))
    assert not (tmp_path / "sm").exists()
