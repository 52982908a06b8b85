"""SSD losses (pure TF, static shapes, XLA-friendly).

Targets come from `boxes.match`: class_targets [B,N] int32 (k = class k, 0 = background,
boxes.IGNORE = -1 = ignored anchor) and box_targets [B,N,4] encodings. Both the box and the class loss
are normalized by the number of positive anchors in the batch (at least 1), as the TF OD API does.

- focal: sigmoid focal loss (alpha, gamma) on the C foreground columns; background is "all zeros";
  the background logit (column 0) is not trained, export uses sigmoid scores of columns 1..C.
- hard_negative: cross-entropy (softmax over C+1 columns when model.score_converter == 'softmax',
  else sigmoid per column with a one-hot target including background) on all positives plus the
  `neg_pos_ratio` x positives highest-loss negatives of each image.
- box: Huber (smooth L1, delta 1) summed over (ty, tx, th, tw) of positive anchors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config


def huber(x: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    ax = tf.abs(x)
    return tf.where(ax < delta, 0.5 * x * x, delta * (ax - 0.5 * delta))


def focal_loss(
    logits: tf.Tensor, cls_targets: tf.Tensor, *, alpha: float = 0.25, gamma: float = 2.0
) -> tf.Tensor:
    """Per-anchor sigmoid focal loss [B,N] over the foreground columns (ignored anchors -> 0)."""
    num_outputs = logits.shape[-1]
    fg_logits = logits[..., 1:]
    targets = tf.one_hot(tf.maximum(cls_targets, 0), num_outputs, dtype=logits.dtype)[..., 1:]
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=fg_logits)
    p = tf.sigmoid(fg_logits)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    loss = tf.reduce_sum(alpha_t * tf.pow(1.0 - p_t, gamma) * ce, axis=-1)
    return tf.where(cls_targets >= 0, loss, 0.0)


def cross_entropy(logits: tf.Tensor, cls_targets: tf.Tensor, *, softmax: bool) -> tf.Tensor:
    """Per-anchor cross-entropy [B,N] with background as class 0 (ignored anchors -> 0)."""
    labels = tf.maximum(cls_targets, 0)
    if softmax:
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        onehot = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
        loss = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits), axis=-1)
    return tf.where(cls_targets >= 0, loss, 0.0)


def hard_negative_mask(
    neg_loss: tf.Tensor, negatives: tf.Tensor, num_pos: tf.Tensor, *, ratio: float, min_negatives: int = 3
) -> tf.Tensor:
    """[B,N] bool: per image the ratio*num_pos (at least min_negatives) highest-loss negatives."""
    scores = tf.where(negatives, neg_loss, -1.0)
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=-1, stable=True)  # rank of each anchor by loss
    k = tf.maximum(tf.cast(tf.math.ceil(ratio * tf.cast(num_pos, tf.float32)), tf.int32), min_negatives)
    return negatives & (rank < k[:, None])


def detection_loss(
    cfg: Config, box_pred: tf.Tensor, logits: tf.Tensor, *, box_targets: tf.Tensor, cls_targets: tf.Tensor
) -> dict[str, tf.Tensor]:
    """{'total', 'box', 'class', 'num_pos'} scalars for one (replica) batch."""
    t = cfg.train
    box_pred = tf.cast(box_pred, tf.float32)
    logits = tf.cast(logits, tf.float32)
    cls_targets = tf.cast(cls_targets, tf.int32)
    positives = cls_targets > 0
    pos_f = tf.cast(positives, tf.float32)
    num_pos_img = tf.reduce_sum(tf.cast(positives, tf.int32), axis=-1)
    normalizer = tf.maximum(tf.reduce_sum(pos_f), 1.0)

    box_loss = tf.reduce_sum(tf.reduce_sum(huber(box_pred - box_targets), axis=-1) * pos_f) / normalizer
    if t.loss == "focal":
        cls_loss = tf.reduce_sum(focal_loss(logits, cls_targets, alpha=t.focal_alpha, gamma=t.focal_gamma))
    else:
        per_anchor = cross_entropy(logits, cls_targets, softmax=cfg.model.score_converter == "softmax")
        keep = positives | hard_negative_mask(
            per_anchor, cls_targets == 0, num_pos_img, ratio=t.neg_pos_ratio
        )
        cls_loss = tf.reduce_sum(per_anchor * tf.cast(keep, tf.float32))
    cls_loss = cls_loss / normalizer
    total = t.box_loss_weight * box_loss + t.class_loss_weight * cls_loss
    return {"total": total, "box": box_loss, "class": cls_loss, "num_pos": tf.reduce_sum(pos_f)}
