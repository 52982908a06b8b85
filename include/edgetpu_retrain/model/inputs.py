"""tf.data input pipeline: our TFRecords (TF OD API schema) -> batches of images and SSD targets.

Order is deterministic for a seed: shards sorted by name, read in order, shuffled with a seeded buffer
(reshuffled every epoch), repeated. A resumed run skips the serialized records the previous steps
consumed (cheap: before decoding), and augmentation seeds come from the record's global position, so a
resumed run sees the same images and the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import tensorflow as tf

from edgetpu_retrain.data.tfrecord import parse_example
from edgetpu_retrain.model import augment, boxes

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config


def parse_record(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One serialized Example -> (image uint8 [H,W,3], boxes [M,4] (ymin,xmin,ymax,xmax), labels [M]
    int32)."""
    ex = parse_example(serialized, decode_image=True)
    image = tf.ensure_shape(ex["image"], [None, None, 3])
    return image, tf.reshape(tf.cast(ex["boxes"], tf.float32), [-1, 4]), tf.cast(ex["labels"], tf.int32)


def pad_boxes(box: tf.Tensor, label: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Keep the first max_boxes real boxes; pad to [max_boxes,4] / [max_boxes] (label 0 = padding)."""
    keep = label > 0
    box = tf.boolean_mask(box, keep)[:max_boxes]
    label = tf.boolean_mask(label, keep)[:max_boxes]
    n = tf.shape(label)[0]
    box = tf.pad(box, [[0, max_boxes - n], [0, 0]])
    label = tf.pad(label, [[0, max_boxes - n]])
    return tf.ensure_shape(box, [max_boxes, 4]), tf.ensure_shape(label, [max_boxes])


def preprocess(
    cfg: Config,
    image: tf.Tensor,
    *,
    box: tf.Tensor,
    label: tf.Tensor,
    training: bool,
    seed: tf.Tensor | None = None,
):
    """Decoded example -> (float32 [S,S,3] 0..255, boxes [max_boxes,4], labels [max_boxes])."""
    size = cfg.model.input_size
    label = tf.where((label >= 1) & (label <= cfg.model.num_classes), label, 0)
    if training:
        image, box, label = augment.augment(
            image, box, label, seed=seed, aug=cfg.train.augmentation, size=size
        )
    else:
        image, box, label = augment.resize_only(image, box, label, size=size)
    box, label = pad_boxes(box, label, cfg.train.max_boxes)
    return tf.ensure_shape(image, [size, size, 3]), box, label


def targets(cfg: Config, anchors: tf.Tensor, *, box: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    cls_t, box_t, _ = boxes.match(
        box,
        label,
        anchors,
        matched_threshold=cfg.train.matched_threshold,
        unmatched_threshold=cfg.train.unmatched_threshold,
    )
    return {"box_targets": box_t, "cls_targets": cls_t}


def train_files(cfg: Config) -> list[str]:
    return sorted(cfg.data.tfrecords.get(cfg.train.train_split, ()))


def train_dataset(
    cfg: Config, anchors: Any, *, batch_size: int | None = None, start_step: int = 0, with_boxes: bool = False
) -> tf.data.Dataset:
    """Infinite batches (images [B,S,S,3] float32, {'box_targets' [B,N,4], 'cls_targets' [B,N]}).

    start_step: steps already trained (resume) -> the first start_step*B records are skipped.
    with_boxes: also yield the padded 'boxes' / 'labels' (for tests and debugging).
    """
    t = cfg.train
    batch = batch_size or t.batch_size
    anchors = tf.constant(anchors, tf.float32)
    files = train_files(cfg)
    ds = tf.data.TFRecordDataset(files)
    ds = ds.shuffle(t.shuffle_buffer, seed=t.seed, reshuffle_each_iteration=True).repeat()
    offset = int(start_step) * batch
    ds = ds.skip(offset).enumerate(start=offset)

    def load(index, serialized):
        image, box, label = parse_record(serialized)
        seed = tf.stack([tf.constant(t.seed, tf.int64), tf.cast(index, tf.int64)])
        image, box, label = preprocess(cfg, image, box=box, label=label, training=True, seed=seed)
        out = targets(cfg, anchors, box=box, label=label)
        if with_boxes:
            out.update(boxes=box, labels=label)
        return image, out

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
