"""SSD post-processing that runs in TensorFlow AND becomes TFLite's `TFLite_Detection_PostProcess`.

`make_postprocess_fn(params)` returns a `tf.function` whose `experimental_implements` attribute names
the TFLite custom op and carries its attributes. Two consumers see two different things:

- TensorFlow (the exported SavedModel, `evaluate` on it) runs the body: a real implementation —
  decode the box encodings against the anchors with the box coder scales, then class-agnostic
  ("fast") NMS on each anchor's best class, or per-class ("regular") NMS, then the top
  `max_detections`, zero-padded to a static size. So the SavedModel itself gives correct detections.
- The TFLite converter replaces the whole function by ONE custom op (the MLIR "composite function"
  fusion), reading the attributes from the implements string. The body is never converted.

The body follows the op's semantics (tensorflow/lite/kernels/detection_postprocess.cc):
  ycenter = ty / y_scale * ha + ya        xcenter = tx / x_scale * wa + xa
  h = exp(th / h_scale) * ha              w = exp(tw / w_scale) * wa
  box = (ycenter - h/2, xcenter - w/2, ycenter + h/2, xcenter + w/2)   (not clipped)
  class_predictions has C+1 columns: column 0 (background) is skipped; output classes are 0-based
  over the C real classes (label-map id - 1); candidates need score >= nms_score_threshold; a box is
  suppressed when IoU > nms_iou_threshold. Outputs (boxes [1,K,4], classes [1,K], scores [1,K],
  count [1]), all float32; rows past `count` are zero here (garbage is allowed in the op: use count).

Converter facts (TF 2.21 TFLiteConverter): it needs `use_regular_nms` in the attributes and drops
`detections_per_class` (the op then uses its default, 100), so the SavedModel uses 100 per class as
well; thresholds are written with `repr` so 1e-8 does not become "0.000000". Batch size must be 1.
Only `max_classes_per_detection == 1` is supported (what pycoral and our evaluate expect).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from edgetpu_retrain.model.anchors import BOX_SCALES as DEFAULT_SCALES  # (y, x, h, w); no TF import

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config

OP_NAME = "TFLite_Detection_PostProcess"
# The custom op's own default; the converter drops the attribute, so this is what TFLite always uses.
OP_DETECTIONS_PER_CLASS = 100


@dataclasses.dataclass(frozen=True)
class PostprocessParams:
    """Attributes of TFLite_Detection_PostProcess (names as the op spells them)."""

    num_classes: int
    max_detections: int = 100
    max_classes_per_detection: int = 1
    use_regular_nms: bool = False
    nms_score_threshold: float = 1e-8
    nms_iou_threshold: float = 0.6
    scales: tuple[float, float, float, float] = DEFAULT_SCALES  # (y, x, h, w)
    detections_per_class: int = OP_DETECTIONS_PER_CLASS

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {self.max_detections}")
        if self.max_classes_per_detection != 1:
            raise ValueError(
                "only max_classes_per_detection=1 is supported (pycoral reads one class per box)"
            )
        if not 0.0 <= self.nms_iou_threshold <= 1.0:
            raise ValueError(f"nms_iou_threshold must be in [0, 1], got {self.nms_iou_threshold}")
        if len(self.scales) != 4 or min(self.scales) <= 0:
            raise ValueError(f"scales must be 4 positive numbers (y, x, h, w), got {self.scales}")

    def attributes(self) -> dict[str, Any]:
        y, x, h, w = (float(s) for s in self.scales)
        return {
            "max_detections": int(self.max_detections),
            "max_classes_per_detection": int(self.max_classes_per_detection),
            "detections_per_class": int(self.detections_per_class),
            "use_regular_nms": bool(self.use_regular_nms),
            "nms_score_threshold": float(self.nms_score_threshold),
            "nms_iou_threshold": float(self.nms_iou_threshold),
            "num_classes": int(self.num_classes),
            "y_scale": y,
            "x_scale": x,
            "h_scale": h,
            "w_scale": w,
        }

    def implements_signature(self) -> str:
        """The `experimental_implements` text proto (a NameAttrList) the converter fuses on."""
        parts = [f'name: "{OP_NAME}"']
        for key, value in self.attributes().items():
            if isinstance(value, bool):
                literal = f"b: {'true' if value else 'false'}"
            elif isinstance(value, int):
                literal = f"i: {value}"
            else:
                # repr keeps every digit (1e-08, 0.6); "%f" would turn 1e-8 into 0.000000.
                literal = f"f: {value!r}"
            parts.append(f'attr {{ key: "{key}" value {{ {literal} }} }}')
        return " ".join(parts)


def params_from_config(cfg: Config) -> PostprocessParams:
    """Build the op attributes from `Config` (cfg.model.num_classes, cfg.postprocess.*).

    Accepts the usual spellings of each field so the config module can name them naturally.
    """
    post = getattr(cfg, "postprocess", None)

    def pick(*names: str, default: Any) -> Any:
        for name in names:
            if post is not None and getattr(post, name, None) is not None:
                return getattr(post, name)
        return default

    from edgetpu_retrain.common import UserError

    per_class = int(pick("detections_per_class", default=OP_DETECTIONS_PER_CLASS))
    if bool(pick("use_regular_nms", default=False)) and per_class != OP_DETECTIONS_PER_CLASS:
        raise UserError(
            f"postprocess.detections_per_class={per_class}: the TFLite converter drops this attribute and "
            f"the op always keeps {OP_DETECTIONS_PER_CLASS} per class; set it to {OP_DETECTIONS_PER_CLASS} "
            "(or use fast NMS: postprocess.use_regular_nms=false)"
        )
    if int(pick("max_classes_per_detection", default=1)) != 1:
        raise UserError(
            "postprocess.max_classes_per_detection must be 1: pycoral and `evaluate` read one class per box"
        )
    return PostprocessParams(
        num_classes=int(cfg.model.num_classes),
        max_detections=int(pick("max_detections", "max_total_detections", default=100)),
        max_classes_per_detection=int(pick("max_classes_per_detection", default=1)),
        use_regular_nms=bool(pick("use_regular_nms", default=False)),
        nms_score_threshold=float(pick("nms_score_threshold", "score_threshold", default=1e-8)),
        nms_iou_threshold=float(pick("nms_iou_threshold", "iou_threshold", default=0.6)),
        scales=DEFAULT_SCALES,
        detections_per_class=OP_DETECTIONS_PER_CLASS,
    )


def decode_boxes(
    box_encodings: Any, anchors: Any, scales: tuple[float, float, float, float] = DEFAULT_SCALES
) -> Any:
    """[N,4] (ty, tx, th, tw) + anchors [N,4] (ycenter, xcenter, h, w) -> [N,4] (ymin, xmin, ymax, xmax).

    The training box coder's decode (`boxes.decode`), so the SavedModel and training agree by construction.
    """
    from edgetpu_retrain.model import boxes

    return boxes.decode(box_encodings, anchors, tuple(float(v) for v in scales))


def make_postprocess_fn(params: PostprocessParams) -> Any:
    """tf.function (box_encodings [1,N,4], class_predictions [1,N,C+1], anchors [N,4]) ->
    (boxes [1,K,4], classes [1,K], scores [1,K], count [1]), float32, K = params.max_detections.

    `class_predictions` are probabilities (sigmoid of the logits), background in column 0.
    """
    import numpy as np
    import tensorflow as tf

    k = int(params.max_detections)
    num_classes = int(params.num_classes)
    # TF's NMS keeps score > threshold, the op keeps score >= threshold: step one float32 ulp down.
    tf_threshold = float(np.nextafter(np.float32(params.nms_score_threshold), np.float32(-np.inf)))
    iou = float(params.nms_iou_threshold)
    sy, sx, sh, sw = (float(s) for s in params.scales)
    scales = (sy, sx, sh, sw)

    @tf.function(experimental_implements=params.implements_signature())
    def postprocess(box_encodings: Any, class_predictions: Any, anchors: Any) -> tuple[Any, Any, Any, Any]:
        boxes = decode_boxes(box_encodings[0], anchors, scales)  # [N,4]
        label_offset = tf.shape(class_predictions)[-1] - num_classes  # 1 when a background column exists
        scores = class_predictions[0, :, label_offset:]  # [N,C]
        if params.use_regular_nms:
            nms = tf.image.combined_non_max_suppression(
                boxes[tf.newaxis, :, tf.newaxis, :],
                scores[tf.newaxis],
                max_output_size_per_class=int(params.detections_per_class),
                max_total_size=k,
                iou_threshold=iou,
                score_threshold=tf_threshold,
                pad_per_class=False,
                clip_boxes=False,
            )
            out_boxes, out_scores, out_classes = nms.nmsed_boxes, nms.nmsed_scores, nms.nmsed_classes
            count = tf.cast(nms.valid_detections, tf.float32)
            # combined NMS may leave stale values in padded rows: zero them like the fast path.
            valid = tf.sequence_mask(nms.valid_detections, k)
            out_boxes = tf.where(valid[..., tf.newaxis], out_boxes, 0.0)
            out_scores = tf.where(valid, out_scores, 0.0)
            out_classes = tf.where(valid, out_classes, 0.0)
        else:
            best_scores = tf.reduce_max(scores, axis=-1)
            best_classes = tf.argmax(scores, axis=-1, output_type=tf.int32)
            keep = tf.image.non_max_suppression(
                boxes, best_scores, max_output_size=k, iou_threshold=iou, score_threshold=tf_threshold
            )
            n = tf.shape(keep)[0]
            pad = k - n
            out_boxes = tf.pad(tf.gather(boxes, keep), [[0, pad], [0, 0]])[tf.newaxis]
            out_scores = tf.pad(tf.gather(best_scores, keep), [[0, pad]])[tf.newaxis]
            out_classes = tf.pad(tf.cast(tf.gather(best_classes, keep), tf.float32), [[0, pad]])[tf.newaxis]
            count = tf.cast(n, tf.float32)[tf.newaxis]
        out_boxes = tf.ensure_shape(tf.reshape(out_boxes, [1, k, 4]), [1, k, 4])
        out_classes = tf.ensure_shape(tf.reshape(out_classes, [1, k]), [1, k])
        out_scores = tf.ensure_shape(tf.reshape(out_scores, [1, k]), [1, k])
        count = tf.ensure_shape(tf.reshape(count, [1]), [1])
        return out_boxes, out_classes, out_scores, count

    return postprocess
