"""The SSD / SSDLite MobileNet detector (Keras 3) and checkpoint loading (anchors: `anchors.py`).

`build_detector(cfg)` maps float32 images [B,H,W,3] with pixel values 0..255 to
`(box_encodings [B,N,4], class_logits [B,N,C+1])`, class 0 = background. The model rescales pixels to
MobileNet's [-1, 1] itself, so an exported uint8 input quantizes cleanly.

Architecture (classic TF OD API SSD MobileNet feature extractor, Edge-TPU-friendly ops only):
- backbone: keras.applications MobileNet (V1) or MobileNetV2, include_top=False, weights None /
  'bundled' (the packaged Coral ImageNet models, see pretrained.py) / 'imagenet' / local .h5 or
  MobileNet .tflite; feature maps at stride 16 and 32
  (V1: conv_pw_11_relu, conv_pw_13_relu; V2: block_13_expand_relu, out_relu);
- extra feature maps at stride 64..512: 1x1 conv (d/2) then a stride-2 3x3 conv (d) — for SSDLite
  a depthwise 3x3 + 1x1 conv — each with batch norm and ReLU6; depths scaled by alpha (min 16);
- per map, box and class predictors: SSD = 3x3 conv, SSDLite = depthwise 3x3 (+BN+ReLU6) + 1x1 conv;
  each reshaped to [B, H*W*A, 4] / [B, H*W*A, C+1] and concatenated over maps.
Ops after int8 conversion (measured, V2 SSDLite 128): CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL (the input
rescale; Edge TPU supports Mul), RESHAPE, CONCATENATION (+ QUANTIZE/DEQUANTIZE); no tensor of rank > 4.
Export with a STATIC batch-1 input signature: with a None batch the Keras Reshape layers add
SHAPE / STRIDED_SLICE / PACK ops.

Anchor order = prediction order: maps in order, then row, column, anchor-at-location (`anchors.py`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetpu_retrain.common import UserError, log
from edgetpu_retrain.model.anchors import BOX_SCALES, anchor_specs, anchors, feature_map_sizes, num_anchors

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config

FEATURE_LAYERS = {
    "mobilenet_v1_ssd": ("conv_pw_11_relu", "conv_pw_13_relu"),
    "mobilenet_v2_ssd": ("block_13_expand_relu", "out_relu"),
}
CLASS_PRIOR = 0.01  # initial foreground probability of every anchor (focal-loss style bias init)
_FROM_CONFIG = object()
# The anchor API lives in model/anchors.py; re-exported because train.py and its tests call it through
# this module (`detector.anchors(cfg)`).
__all__ = [
    "BOX_SCALES",
    "CLASS_PRIOR",
    "FEATURE_LAYERS",
    "anchor_specs",
    "anchors",
    "build_detector",
    "class_scores",
    "feature_map_sizes",
    "load_detector",
    "num_anchors",
    "resolve_checkpoint",
]


# --------------------------------------------------------------------------------------- model
def _backbone(cfg: Config, weights: str | None):
    import keras

    m = cfg.model
    shape = (m.input_size, m.input_size, 3)
    if weights == "bundled" or (isinstance(weights, str) and weights.endswith(".tflite")):
        # converted once and cached; None (random init, with a warning) when no bundled file fits
        from edgetpu_retrain.model import pretrained

        weights = pretrained.backbone_weights_file(m.base, m.alpha, weights)
    if weights not in (None, "imagenet"):
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"{path}: backbone weights file not found (model.backbone_weights); give a local "
                f".h5/.keras file of keras.applications weights with include_top=False, "
                f"'bundled', 'imagenet', or null"
            )
        weights = str(path)
    app = keras.applications.MobileNet if m.base == "mobilenet_v1_ssd" else keras.applications.MobileNetV2
    try:
        backbone = app(input_shape=shape, alpha=m.alpha, include_top=False, weights=weights)
    except Exception as exc:  # download failure, unsupported alpha for imagenet, bad file
        raise UserError(
            f"model.backbone_weights={weights!r}: could not build the {m.base} backbone with "
            f"these weights ({type(exc).__name__}: {exc}); use alpha in 0.25/0.35/0.5/0.75/1.0 for "
            f"'imagenet', a local include_top=False weights file, or null"
        ) from exc
    names = FEATURE_LAYERS[m.base]
    return keras.Model(
        backbone.input, [backbone.get_layer(n).output for n in names], name=f"{m.base}_backbone"
    )


def backbone_of(model: Any) -> Any:
    """The keras.applications backbone sub-model inside a detector from build_detector."""
    return next(layer for layer in model.layers if layer.name.endswith("_backbone"))


def _conv_bn(x: Any, filters: int, kernel: int, *, stride: int, name: str, momentum: float) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x)


def _dw_bn(x: Any, *, stride: int, name: str, momentum: float) -> Any:
    from keras import layers

    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=1e-3, name=f"{name}_dw_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)


def _predictor(
    x: Any, outputs: int, *, name: str, head: str, momentum: float, bias_init: Any = "zeros"
) -> Any:
    from keras import layers

    if head == "ssd":
        return layers.Conv2D(outputs, 3, padding="same", bias_initializer=bias_init, name=f"{name}_conv")(x)
    x = _dw_bn(x, stride=1, name=name, momentum=momentum)
    return layers.Conv2D(outputs, 1, padding="same", bias_initializer=bias_init, name=f"{name}_conv")(x)


def build_detector(cfg: Config, *, weights: Any = _FROM_CONFIG):
    """The SSD detector as a Keras functional model (see module docstring).

    weights: backbone weights, None / 'bundled' / 'imagenet' / local .h5 or .tflite; defaults to
    cfg.model.backbone_weights.
    Raises UserError when the weights cannot be loaded (no network for 'imagenet', missing file).
    """
    import keras
    from keras import layers

    m = cfg.model
    if weights is _FROM_CONFIG:
        weights = m.backbone_weights
    momentum = m.bn_momentum
    num_outputs = m.num_classes + 1
    specs = anchor_specs(cfg)
    sizes = feature_map_sizes(cfg)

    images = keras.Input((m.input_size, m.input_size, 3), dtype="float32", name="images")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(images)
    backbone = _backbone(cfg, weights)
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum  # Keras' 0.999 leaves the moving stats untrained in short runs
    feats = list(backbone(x))
    depth = lambda d: max(int(d * m.alpha), 16)  # noqa: E731  (TF OD API depth_multiplier, min_depth 16)
    y = feats[-1]
    for i, d in enumerate(m.extra_layer_depths[: m.anchors.num_layers - 2]):
        name = f"extra_{i + 1}"
        y = _conv_bn(y, depth(d) // 2, 1, stride=1, name=f"{name}_1x1", momentum=momentum)
        if m.head == "ssdlite":
            y = _dw_bn(y, stride=2, name=f"{name}_3x3s2", momentum=momentum)
            y = _conv_bn(y, depth(d), 1, stride=1, name=f"{name}_3x3s2_pw", momentum=momentum)
        else:
            y = _conv_bn(y, depth(d), 3, stride=2, name=f"{name}_3x3s2", momentum=momentum)
        feats.append(y)
    feats = feats[: m.anchors.num_layers]

    prior = -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR)
    box_outs, cls_outs = [], []
    for i, (f, spec, size) in enumerate(zip(feats, specs, sizes, strict=False)):
        if tuple(f.shape[1:3]) != (size, size):  # pragma: no cover - guards anchors() vs the graph
            raise RuntimeError(f"feature map {i} is {tuple(f.shape[1:3])}, anchors expect {size}x{size}")
        a = len(spec)
        bias = np.tile(np.array([0.0] + [prior] * m.num_classes, np.float32), a)
        b = _predictor(f, a * 4, name=f"box_{i}", head=m.head, momentum=momentum)
        c = _predictor(
            f,
            a * num_outputs,
            name=f"class_{i}",
            head=m.head,
            momentum=momentum,
            bias_init=keras.initializers.Constant(bias),
        )
        box_outs.append(layers.Reshape((size * size * a, 4), name=f"box_{i}_reshape")(b))
        cls_outs.append(layers.Reshape((size * size * a, num_outputs), name=f"class_{i}_reshape")(c))
    boxes = layers.Concatenate(axis=1, name="box_encodings")(box_outs)
    logits = layers.Concatenate(axis=1, name="class_logits")(cls_outs)
    name = f"{m.base}_{m.head}_{m.input_size}"
    return keras.Model(images, (boxes, logits), name=name)


def class_scores(score_converter: str, class_logits):
    """Logits [..., C+1] -> scores [..., C+1] with model.score_converter ('sigmoid' or 'softmax').

    Export applies this before TFLite_Detection_PostProcess (which skips column 0, the background).
    """
    import tensorflow as tf

    if score_converter == "softmax":
        return tf.nn.softmax(class_logits, axis=-1)
    return tf.sigmoid(class_logits)


def resolve_checkpoint(checkpoint_path: str | os.PathLike[str]) -> str:
    """A checkpoint prefix from a prefix, a `checkpoints/` folder, or a train output folder."""
    import tensorflow as tf

    path = Path(checkpoint_path)
    if path.is_dir():
        for folder in (path, path / "checkpoints"):
            latest = tf.train.latest_checkpoint(str(folder))
            if latest:
                return latest
        raise UserError(f"{path}: no checkpoint found in this folder; run `edgetpu-retrain train` first")
    if not Path(str(path) + ".index").is_file():
        raise UserError(
            f"{path}: checkpoint not found (expected {path}.index); pass the 'checkpoint' path "
            f"printed by `edgetpu-retrain train`"
        )
    return str(path)


def load_detector(cfg: Config, checkpoint_path: str | os.PathLike[str]):
    """Rebuild the detector from cfg (no backbone download) and restore the weights `train` saved."""
    import tensorflow as tf

    prefix = resolve_checkpoint(checkpoint_path)
    model = build_detector(cfg, weights=None)
    try:
        status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        raise UserError(
            f"{prefix}: checkpoint does not match the config's model ({cfg.model.base}, "
            f"{cfg.model.head}, alpha {cfg.model.alpha}, {cfg.model.num_classes} classes); use the "
            f"config the checkpoint was trained with"
        ) from exc
    log.info("restored %s from %s", model.name, prefix)
    return model
