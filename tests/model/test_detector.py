"""model/detector.py (detector, checkpoints), model/anchors.py and model/boxes.py (coder, IoU, matcher)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tiny_models import model_only_config  # noqa: E402

from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.model import anchors as anchor_lib  # noqa: E402
from edgetpu_retrain.model import boxes  # noqa: E402
from edgetpu_retrain.model import detector as model  # noqa: E402

make_cfg = model_only_config


@pytest.mark.parametrize(
    ("base", "head", "size"),
    [
        ("mobilenet_v1_ssd", "ssd", 96),
        ("mobilenet_v1_ssd", "ssdlite", 128),
        ("mobilenet_v2_ssd", "ssd", 128),
        ("mobilenet_v2_ssd", "ssdlite", 96),
    ],
)
def test_output_shapes_match_anchors(base, head, size):
    cfg = make_cfg(base, head=head, size=size, alpha=0.25 if base == "mobilenet_v1_ssd" else 0.35)
    det = model.build_detector(cfg)
    encodings, logits = det(np.zeros((2, size, size, 3), np.float32), training=False)
    anchors = anchor_lib.anchors(cfg)
    assert anchors.dtype == np.float32 and anchors.shape == (anchor_lib.num_anchors(cfg), 4)
    assert encodings.shape == (2, anchors.shape[0], 4)
    assert logits.shape == (2, anchors.shape[0], 4)  # 3 classes + background
    # foreground starts at the 1% prior, background at 0.5 (sigmoid)
    probs = tf.sigmoid(logits).numpy()
    assert probs[..., 1:].mean() < 0.05
    bn = [
        layer
        for layer in det.get_layer(f"{base}_backbone").layers
        if "BatchNormalization" in type(layer).__name__
    ]
    assert bn and all(layer.momentum == 0.9 for layer in bn)


def test_classic_anchor_counts():
    # SSDLite MobileNetV2 at 300x300: 19x19x3 + (10^2+5^2+3^2+2^2+1) x 6 = 1917, as published
    cfg = make_cfg(size=300)
    assert anchor_lib.feature_map_sizes(cfg) == [19, 10, 5, 3, 2, 1]
    assert anchor_lib.num_anchors(cfg) == 1917
    a = anchor_lib.anchors(cfg)
    assert np.all((a[:, :2] > 0) & (a[:, :2] < 1)) and np.all(a[:, 2:] > 0)
    np.testing.assert_allclose(a[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], rtol=1e-5)
    np.testing.assert_allclose(a[-1, :2], [0.5, 0.5])
    assert anchor_lib.BOX_SCALES == boxes.BOX_SCALES == (10.0, 10.0, 5.0, 5.0)


def test_box_coder_round_trip():
    rng = np.random.default_rng(0)
    anchors = anchor_lib.anchors(make_cfg(size=128))
    y0, x0 = rng.uniform(0, 0.6, (2, len(anchors)))
    h, w = rng.uniform(0.05, 0.4, (2, len(anchors)))
    gt = np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)
    enc = boxes.encode(gt, anchors)
    np.testing.assert_allclose(boxes.decode(enc, anchors).numpy(), gt, atol=1e-5)
    # an anchor encodes to zeros; batch dims broadcast
    np.testing.assert_allclose(boxes.encode(boxes.center_to_corners(anchors), anchors).numpy(), 0, atol=1e-4)
    assert boxes.decode(tf.zeros((2, len(anchors), 4)), anchors).shape == (2, len(anchors), 4)
    # the TF OD API FasterRcnnBoxCoder formula, by hand for one box
    a = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    e = boxes.encode(np.array([[0.45, 0.35, 0.65, 0.55]], np.float32), a).numpy()[0]
    np.testing.assert_allclose(
        e, [10 * 0.05 / 0.2, 10 * -0.05 / 0.4, 5 * np.log(1.0), 5 * np.log(0.5)], atol=1e-4
    )


def test_iou_and_matcher():
    a = tf.constant([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], tf.float32)
    np.testing.assert_allclose(boxes.iou(a, a).numpy(), [[1, 0.25], [0.25, 1]], atol=1e-6)
    anchors = np.array(
        [
            [0.25, 0.25, 0.5, 0.5],  # exactly GT 0 -> positive class 2
            [0.75, 0.75, 0.5, 0.5],  # nothing -> negative
            [0.30, 0.25, 0.5, 0.5],  # IoU ~0.82 with GT 0 -> positive
            [0.75, 0.25, 0.2, 0.2],  # small GT 1's best anchor (IoU < 0.4) -> forced positive
            [0.25, 0.45, 0.5, 0.5],
        ],  # IoU ~0.43 with GT 0 -> ignored
        np.float32,
    )
    gt = np.array([[0, 0, 0.5, 0.5], [0.7, 0.15, 0.95, 0.45], [0, 0, 0, 0]], np.float32)  # last row = padding
    labels = np.array([2, 1, 0], np.int32)
    cls, box_t, matched = boxes.match(gt, labels, anchors)
    assert cls.numpy().tolist() == [2, 0, 2, 1, boxes.IGNORE]
    assert matched.numpy().tolist() == [0, -1, 0, 1, -1]
    np.testing.assert_allclose(boxes.decode(box_t, anchors).numpy()[[0, 2, 3]], gt[[0, 0, 1]], atol=1e-5)
    # no real GT: everything is background
    cls, _, _ = boxes.match(np.zeros((3, 4), np.float32), np.zeros(3, np.int32), anchors)
    assert cls.numpy().tolist() == [0] * 5


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    cfg = make_cfg(size=96)
    det = model.build_detector(cfg)
    x = np.random.default_rng(1).uniform(0, 255, (1, 96, 96, 3)).astype(np.float32)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=det, step=tf.Variable(7, dtype=tf.int64)),
        str(tmp_path / "checkpoints"),
        max_to_keep=2,
    )
    prefix = manager.save()
    for path in (prefix, tmp_path / "checkpoints", tmp_path):
        restored = model.load_detector(cfg, path)
        for got, want in zip(restored(x, training=False), det(x, training=False), strict=False):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    with pytest.raises(UserError, match="does not match the config"):
        model.load_detector(
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head="ssd")), prefix
        )
    with pytest.raises(UserError, match="checkpoint not found"):
        model.load_detector(cfg, tmp_path / "checkpoints" / "ckpt-99")


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="backbone weights file not found"):
        model.build_detector(make_cfg(), weights=str(tmp_path / "missing.h5"))
