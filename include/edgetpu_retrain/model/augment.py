"""Box-aware augmentation for one image (pure TF, stateless random ops -> reproducible per seed).

Boxes are normalized (ymin, xmin, ymax, xmax) with a parallel `labels` vector in which 0 marks a
padding / dropped box, so shapes stay fixed. Every function keeps boxes inside [0, 1].

`augment(image, boxes, labels, *, seed, aug, size)` = random crop (pixel-aligned, boxes clipped to the
crop, boxes with less than `min_visible` of their area inside dropped) -> resize to size x size ->
random horizontal flip -> colour jitter (brightness, contrast, saturation, hue). `resize_only` is the
same path without randomness (what evaluation/export see: a plain bilinear resize of the full image).
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from edgetpu_retrain.model.boxes import area


def _seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    """Independent stateless seed number k derived from a [2] int seed."""
    seed = tf.cast(seed, tf.int64)
    return tf.stack([seed[0] * 1_000_003 + k, seed[1]])


def flip_boxes(boxes: tf.Tensor) -> tf.Tensor:
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def flip(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Horizontal flip of an image [H,W,C] and its boxes (flip twice = identity)."""
    return tf.reverse(image, axis=[1]), flip_boxes(boxes)


def crop_boxes(
    boxes: tf.Tensor, labels: tf.Tensor, window: tf.Tensor, *, min_visible: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Boxes in the coordinates of `window` (ymin, xmin, ymax, xmax, normalized to the image).

    Boxes are clipped to the window; a box keeping less than `min_visible` of its area (or no area) is
    dropped: its label becomes 0 and its box zeros.
    """
    wy0, wx0, wy1, wx1 = tf.unstack(window)
    wh = tf.maximum(wy1 - wy0, 1e-6)
    ww = tf.maximum(wx1 - wx0, 1e-6)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    moved = tf.stack([(ymin - wy0) / wh, (xmin - wx0) / ww, (ymax - wy0) / wh, (xmax - wx0) / ww], axis=-1)
    clipped = tf.clip_by_value(moved, 0.0, 1.0)
    before = area(moved)
    after = area(clipped)
    keep = (labels > 0) & (after > 0.0) & (after >= min_visible * before)
    return tf.where(keep[:, None], clipped, 0.0), tf.where(keep, labels, tf.zeros_like(labels))


def random_window(seed: tf.Tensor, aug: Any) -> tf.Tensor:
    """A random crop window (normalized): side scale in [min_crop_scale, 1], aspect in [1/a, a]."""
    u = tf.random.stateless_uniform([5], seed=_seed(seed, 1))
    log_a = math.log(aug.max_crop_aspect)
    aspect = tf.exp((2.0 * u[0] - 1.0) * log_a)
    scale = aug.min_crop_scale + (1.0 - aug.min_crop_scale) * u[1]
    h = tf.minimum(scale / tf.sqrt(aspect), 1.0)
    w = tf.minimum(scale * tf.sqrt(aspect), 1.0)
    y0 = (1.0 - h) * u[2]
    x0 = (1.0 - w) * u[3]
    window = tf.stack([y0, x0, y0 + h, x0 + w])
    return tf.where(u[4] < aug.crop_probability, window, tf.constant([0.0, 0.0, 1.0, 1.0]))


def crop_pixels(image: tf.Tensor, window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Crop an image [H,W,C] to a normalized window rounded to whole pixels; returns (crop, exact window)."""
    shape = tf.shape(image)
    hw = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
    px = tf.cast(tf.round(window * hw), tf.int32)
    y0 = tf.clip_by_value(px[0], 0, shape[0] - 1)
    x0 = tf.clip_by_value(px[1], 0, shape[1] - 1)
    y1 = tf.clip_by_value(px[2], y0 + 1, shape[0])
    x1 = tf.clip_by_value(px[3], x0 + 1, shape[1])
    exact = tf.cast(tf.stack([y0, x0, y1, x1]), tf.float32) / hw
    return image[y0:y1, x0:x1, :], exact


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """Bilinear resize to size x size, float32 0..255 (the same resize evaluation uses)."""
    out = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=False)
    return tf.clip_by_value(out, 0.0, 255.0)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, aug: Any) -> tf.Tensor:
    """Random brightness / contrast / saturation / hue on a float32 0..255 image."""
    x = image / 255.0
    if aug.brightness > 0:
        x = tf.image.stateless_random_brightness(x, aug.brightness, seed=_seed(seed, 3))
    if aug.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1.0 - aug.contrast, 1.0 + aug.contrast, seed=_seed(seed, 4))
    if aug.saturation > 0:
        x = tf.image.stateless_random_saturation(
            x, 1.0 - aug.saturation, 1.0 + aug.saturation, seed=_seed(seed, 5)
        )
    if aug.hue > 0:
        x = tf.image.stateless_random_hue(x, aug.hue, seed=_seed(seed, 6))
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def resize_only(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, *, size: int):
    return resize(image, size), tf.clip_by_value(boxes, 0.0, 1.0), labels


def augment(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, *, seed: tf.Tensor, aug: Any, size: int):
    """(uint8/float image [H,W,3], boxes [M,4], labels [M]) -> (float32 [size,size,3] 0..255, boxes,
    labels)."""
    boxes = tf.clip_by_value(tf.cast(boxes, tf.float32), 0.0, 1.0)
    if aug.scale_crop:
        image, window = crop_pixels(image, random_window(seed, aug))
        boxes, labels = crop_boxes(boxes, labels, window, min_visible=aug.min_visible)
    image = resize(image, size)
    if aug.flip:
        do_flip = tf.random.stateless_uniform([], seed=_seed(seed, 2)) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        flipped = tf.where(labels[:, None] > 0, flip_boxes(boxes), boxes)
        boxes = tf.where(do_flip, flipped, boxes)
    if aug.color:
        image = color_jitter(image, seed, aug)
    return image, boxes, labels
