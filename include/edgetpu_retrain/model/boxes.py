"""Box geometry in pure TensorFlow: IoU, the SSD box coder and the anchor matcher.

Conventions (the same as the TF Object Detection API and TFLite_Detection_PostProcess):
- boxes are normalized corners (ymin, xmin, ymax, xmax) in 0..1;
- anchors are normalized centers (ycenter, xcenter, h, w);
- encodings are FasterRcnnBoxCoder targets (ty, tx, th, tw) scaled by BOX_SCALES = (10, 10, 5, 5):
  ty = 10 * (yc - yc_a) / h_a, tx = 10 * (xc - xc_a) / w_a, th = 5 * log(h / h_a), tw = 5 * log(w / w_a).

All functions take static shapes and only use XLA-compatible ops, so they run inside tf.data maps and
inside a `jit_compile=True` train step.
"""

from __future__ import annotations

import tensorflow as tf

from edgetpu_retrain.model.anchors import BOX_SCALES  # (y, x, h, w) = (10, 10, 5, 5)

_EPS = 1e-8

IGNORE = -1  # class target of anchors in the ignore band (neither positive nor negative)


def center_to_corners(centers: tf.Tensor) -> tf.Tensor:
    """(ycenter, xcenter, h, w) -> (ymin, xmin, ymax, xmax) on the last axis."""
    yc, xc, h, w = tf.unstack(tf.convert_to_tensor(centers, tf.float32), axis=-1)
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def corners_to_center(corners: tf.Tensor) -> tf.Tensor:
    """(ymin, xmin, ymax, xmax) -> (ycenter, xcenter, h, w) on the last axis."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.convert_to_tensor(corners, tf.float32), axis=-1)
    return tf.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin], axis=-1)


def area(corners: tf.Tensor) -> tf.Tensor:
    ymin, xmin, ymax, xmax = tf.unstack(corners, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU of corner boxes: [M,4] x [N,4] -> [M,N] (0 where a box has no area)."""
    a = tf.convert_to_tensor(boxes_a, tf.float32)
    b = tf.convert_to_tensor(boxes_b, tf.float32)
    ay0, ax0, ay1, ax1 = [t[:, None] for t in tf.unstack(a, axis=-1)]
    by0, bx0, by1, bx1 = [t[None, :] for t in tf.unstack(b, axis=-1)]
    inter_h = tf.maximum(tf.minimum(ay1, by1) - tf.maximum(ay0, by0), 0.0)
    inter_w = tf.maximum(tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0), 0.0)
    inter = inter_h * inter_w
    union = area(a)[:, None] + area(b)[None, :] - inter
    return tf.where(union > 0.0, inter / tf.maximum(union, _EPS), 0.0)


def encode(gt_boxes: tf.Tensor, anchors: tf.Tensor, scales: tuple[float, ...] = BOX_SCALES) -> tf.Tensor:
    """Corner boxes [..., N, 4] (one per anchor) -> encodings [..., N, 4] relative to anchors [N, 4]."""
    gt = corners_to_center(gt_boxes)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    yc, xc, h, w = tf.unstack(gt, axis=-1)
    ayc, axc, ah, aw = tf.unstack(anchors, axis=-1)
    h = h + _EPS
    w = w + _EPS
    ah = ah + _EPS
    aw = aw + _EPS
    ty = (yc - ayc) / ah * scales[0]
    tx = (xc - axc) / aw * scales[1]
    th = tf.math.log(h / ah) * scales[2]
    tw = tf.math.log(w / aw) * scales[3]
    return tf.stack([ty, tx, th, tw], axis=-1)


def decode(encodings: tf.Tensor, anchors: tf.Tensor, scales: tuple[float, ...] = BOX_SCALES) -> tf.Tensor:
    """Encodings [..., N, 4] + anchors [N, 4] -> corner boxes (ymin, xmin, ymax, xmax) [..., N, 4]."""
    encodings = tf.convert_to_tensor(encodings, tf.float32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    ty, tx, th, tw = tf.unstack(encodings, axis=-1)
    ayc, axc, ah, aw = tf.unstack(anchors, axis=-1)
    yc = ty / scales[0] * ah + ayc
    xc = tx / scales[1] * aw + axc
    h = tf.exp(th / scales[2]) * ah
    w = tf.exp(tw / scales[3]) * aw
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def match(
    gt_boxes: tf.Tensor,
    gt_labels: tf.Tensor,
    anchors: tf.Tensor,
    *,
    matched_threshold: float = 0.5,
    unmatched_threshold: float = 0.4,
    force_match: bool = True,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Assign ground truth to anchors (argmax matcher, as the TF OD API's SSD).

    gt_boxes [G,4] corners, gt_labels [G] int (1..C; 0 = padding row), anchors [N,4] centers.
    Anchor with best IoU >= matched_threshold: positive (that GT's class); < unmatched_threshold:
    negative (class 0); in between: ignored (class IGNORE). With force_match every real GT also claims
    its best anchor, so small or odd-shaped objects always get at least one positive.

    Returns (class_targets [N] int32, box_targets [N,4] encodings, matched_gt [N] int32 (-1 = none)).
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_gt = tf.shape(gt_boxes)[0]
    num_anchors = tf.shape(anchors)[0]
    valid = (gt_labels > 0) & (area(gt_boxes) > 0.0)
    overlaps = iou(gt_boxes, center_to_corners(anchors))  # [G, N]
    overlaps = tf.where(valid[:, None], overlaps, -1.0)
    best_gt = tf.argmax(overlaps, axis=0, output_type=tf.int32)  # [N]
    best_iou = tf.reduce_max(overlaps, axis=0)  # [N] (-1 when there is no real GT)
    positive = best_iou >= matched_threshold
    ignore = (best_iou >= unmatched_threshold) & ~positive
    if force_match:
        best_anchor = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [G]
        forced = tf.one_hot(best_anchor, num_anchors, dtype=tf.float32) * tf.cast(valid, tf.float32)[:, None]
        # If several GTs pick the same anchor the last one wins (as tf.argmax on the reversed rows).
        order = tf.cast(tf.range(1, num_gt + 1), tf.float32)[:, None]
        forced_gt = tf.argmax(forced * order, axis=0, output_type=tf.int32)
        has_forced = tf.reduce_max(forced, axis=0) > 0.0
        best_gt = tf.where(has_forced, forced_gt, best_gt)
        positive = positive | has_forced
        ignore = ignore & ~has_forced
    has_gt = tf.reduce_any(valid)
    positive = positive & has_gt
    labels = tf.gather(gt_labels, best_gt)
    class_targets = tf.where(positive, labels, tf.where(ignore, IGNORE, 0))
    matched_boxes = tf.gather(gt_boxes, best_gt)
    matched_boxes = tf.where(positive[:, None], matched_boxes, center_to_corners(anchors))
    box_targets = encode(matched_boxes, anchors)
    matched_gt = tf.where(positive, best_gt, -1)
    return tf.cast(class_targets, tf.int32), box_targets, matched_gt
