"""`edgetpu-retrain export`: a trained checkpoint -> SavedModel with post-processing built in.

    edgetpu-retrain export --config FILE --checkpoint PATH --out DIR

DIR is the SavedModel (written to a temp dir beside it, then renamed). It has two signatures that run
the same graph (uint8 image -> detector -> sigmoid -> TFLite_Detection_PostProcess stub):

- `serving_default` (the contract, docs/contracts.md): input `images` uint8 [1, H, W, 3] (already
  resized to the model input size, pixels 0..255); outputs
    `boxes`   [1, K, 4] float32  (ymin, xmin, ymax, xmax), normalized to 0..1 of the input image,
    `classes` [1, K]    float32  0-based class index = label-map id - 1 (labels.txt uses the same ids),
    `scores`  [1, K]    float32  sigmoid probability of that class,
    `count`   [1]       float32  number of valid rows; rows past it are padding (zeros here).
- `tflite`: what the `tflite` verb converts. Input `images` float32 [1, H, W, 3] holding 0..255 (a
  uint8 graph input would put a CAST op first, which the Edge TPU does not run; the converter turns
  this float input into a uint8 one whose scale/zero point come from calibration). Outputs are a
  list, so they are named `output_0`..`output_3` = (count, scores, classes, boxes): pycoral's
  `detect.get_objects` reads a .tflite signature by exactly those names.

Scores keep the background column (index 0) when they enter the op; the op drops it.
Beside the SavedModel files: `label_map.pbtxt` (copy of the dataset's), `labels.txt` (pycoral's
"id name" lines, 0-based ids matching `classes`) and `export.json` (what was exported).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetpu_retrain import common

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
TFLITE_SIGNATURE = "tflite"
INPUT_NAME = "images"
# pycoral's order: output_0..output_3 of the `tflite` signature and the .tflite output tensors.
PYCORAL_ORDER = ("count", "scores", "classes", "boxes")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training config YAML (render-config output)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint prefix (…/checkpoints/ckpt-N) or the checkpoints folder (latest is used)",
    )
    parser.add_argument("--out", required=True, help="SavedModel directory to write (replaced atomically)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgetpu_retrain.model import config as config_lib
    from edgetpu_retrain.model import detector as model_lib

    cfg = config_lib.load_config(common.require_file(args.config, what="config"))
    checkpoint = model_lib.resolve_checkpoint(args.checkpoint)
    log.info("loading %s", checkpoint)
    detector = model_lib.load_detector(cfg, checkpoint)
    return export_detector(detector, cfg, args.out, checkpoint=str(Path(checkpoint).resolve()))


def class_names(cfg: Config) -> list[tuple[int, str]]:
    """[(label-map id, name)]: cfg.data.classes lists the names in label-map id order, id 1 first."""
    names = tuple(getattr(getattr(cfg, "data", None), "classes", None) or ())
    if len(names) != int(cfg.model.num_classes):
        raise common.UserError(
            f"config: data.classes has {len(names)} names but model.num_classes is "
            f"{cfg.model.num_classes}; re-render the config from the dataset"
        )
    return [(i, str(name)) for i, name in enumerate(names, start=1)]


def labels_txt(pairs: list[tuple[int, str]]) -> str:
    """pycoral's label file: one "id name" line per class, 0-based ids (= the model's `classes`)."""
    return "".join(f"{i - 1} {name}\n" for i, name in pairs)


def build_archive(
    detector: Any, anchors: Any, params: Any, *, input_size: tuple[int, int], score_converter: str = "sigmoid"
) -> Any:
    """keras.export.ExportArchive with both signatures (see the module docstring).

    ExportArchive tracks the model's raw tf.Variables (a Keras 3 model inside a plain tf.Module keeps
    VAR_HANDLE ops and int8 calibration fails).
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from edgetpu_retrain.export.postprocess import make_postprocess_fn
    from edgetpu_retrain.model.detector import class_scores

    height, width = input_size
    anchors = np.asarray(anchors, dtype=np.float32)
    postprocess = make_postprocess_fn(params)
    spec = [tf.TensorSpec([1, height, width, 3], tf.uint8, name=INPUT_NAME)]
    float_spec = [tf.TensorSpec([1, height, width, 3], tf.float32, name=INPUT_NAME)]

    def detect(x: Any) -> tuple[Any, Any, Any, Any]:
        box_encodings, class_logits = detector(x, training=False)
        # background stays in column 0 for the op (which skips it)
        class_predictions = class_scores(score_converter, class_logits)
        return postprocess(box_encodings, class_predictions, tf.constant(anchors))

    def serving_default(images: Any) -> dict[str, Any]:
        boxes, classes, scores, count = detect(tf.cast(images, tf.float32))
        return {"boxes": boxes, "classes": classes, "scores": scores, "count": count}

    def tflite(images: Any) -> list[Any]:
        boxes, classes, scores, count = detect(images)
        return [count, scores, classes, boxes]  # -> output_0..output_3

    archive = keras.export.ExportArchive()
    archive.track(detector)
    archive.add_endpoint(SIGNATURE, serving_default, input_signature=spec)
    archive.add_endpoint(TFLITE_SIGNATURE, tflite, input_signature=float_spec)
    return archive


def archive_details(archive: Any) -> dict[str, Any]:
    """{signature: {"inputs": {name: [shape, dtype]}, "outputs": {...}}} from the archive's traced
    endpoints (no SavedModel reload)."""
    return {
        name: _fn_details(getattr(archive._tf_trackable, name).get_concrete_function())  # noqa: SLF001
        for name in sorted((SIGNATURE, TFLITE_SIGNATURE))
    }


def _fn_details(fn: Any) -> dict[str, Any]:
    """Signature details of a concrete function (a list of outputs is named output_0.. as SavedModel does)."""
    outputs = fn.structured_outputs
    if isinstance(outputs, (list, tuple)):
        outputs = {f"output_{i}": t for i, t in enumerate(outputs)}
    specs = fn.structured_input_signature
    inputs = specs[1] if specs[1] else {s.name: s for s in specs[0]}
    return {
        "inputs": {n: [s.shape.as_list(), s.dtype.name] for n, s in sorted(inputs.items())},
        "outputs": {n: [t.shape.as_list(), t.dtype.name] for n, t in sorted(outputs.items())},
    }


def export_detector(
    detector: Any,
    cfg: Config,
    out_dir: str | Path,
    *,
    anchors: Any = None,
    params: Any = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Write the SavedModel for a built/loaded Keras detector; returns the verb's JSON result."""
    import numpy as np

    from edgetpu_retrain.export.postprocess import params_from_config

    if anchors is None:
        from edgetpu_retrain.model import anchors as anchors_lib

        anchors = anchors_lib.anchors(cfg)
    anchors = np.asarray(anchors, dtype=np.float32)
    params = params if params is not None else params_from_config(cfg)
    input_size = (int(cfg.model.input_size), int(cfg.model.input_size))  # square (config.ModelConfig)
    _check_model_matches(detector, num_anchors=int(anchors.shape[0]), num_classes=int(params.num_classes))
    if params.use_regular_nms:
        log.info("regular NMS: TFLite always keeps %d detections per class", params.detections_per_class)

    out_dir = Path(out_dir).resolve()
    pairs = class_names(cfg)
    score_converter = getattr(cfg.model, "score_converter", "sigmoid")
    archive = build_archive(detector, anchors, params, input_size=input_size, score_converter=score_converter)
    with common.atomic_dir(out_dir) as tmp:
        archive.write_out(str(tmp), verbose=False)
        _write_label_files(tmp, cfg, pairs)
        details = archive_details(archive)
        _check_signature(details, input_size, params.max_detections)  # before the rename publishes it
        info = {
            "version": 1,
            "input_size": list(input_size),
            "num_anchors": int(anchors.shape[0]),
            "num_classes": int(params.num_classes),
            "classes": [{"id": i, "name": n} for i, n in pairs],
            "class_index": "0-based: classes output = label-map id - 1",
            "postprocess": {"op": "TFLite_Detection_PostProcess", **params.attributes()},
            "score_converter": score_converter,
            "signatures": details,
            "pycoral_order": list(PYCORAL_ORDER),
            "checkpoint": checkpoint,
        }
        common.write_json(tmp / "export.json", info)
    log.info("SavedModel written to %s", out_dir)
    return {
        "saved_model": str(out_dir),
        "signature": details[SIGNATURE],
        "signatures": sorted(details),
        "num_anchors": int(anchors.shape[0]),
        "num_classes": int(params.num_classes),
        "max_detections": int(params.max_detections),
        "labels": str(out_dir / "labels.txt"),
        "label_map": str(out_dir / "label_map.pbtxt"),
        "out_dir": str(out_dir),
    }


def _check_model_matches(detector: Any, *, num_anchors: int, num_classes: int) -> None:
    """The Keras model's output shapes agree with the config's anchors and classes (else UserError)."""
    box_shape = logit_shape = None
    if len(getattr(detector, "outputs", None) or ()) == 2:
        box_shape, logit_shape = (tuple(t.shape) for t in detector.outputs)
    if box_shape is not None and box_shape[1] is not None and box_shape[1] != num_anchors:
        raise common.UserError(
            f"model has {box_shape[1]} anchors but model.anchors(cfg) gives {num_anchors}; "
            "the config does not match the checkpoint — export with the config used for training"
        )
    if logit_shape is not None and logit_shape[-1] is not None and logit_shape[-1] != num_classes + 1:
        raise common.UserError(
            f"model predicts {logit_shape[-1]} columns, expected num_classes + 1 = {num_classes + 1} "
            "(background first); the config does not match the checkpoint"
        )


def _write_label_files(folder: Path, cfg: Config, pairs: list[tuple[int, str]]) -> None:
    """label_map.pbtxt (the dataset's, else written from the config's classes) and labels.txt."""
    label_map = getattr(getattr(cfg, "data", None), "label_map", None)
    if label_map and Path(label_map).is_file():
        shutil.copyfile(label_map, folder / "label_map.pbtxt")
    else:
        from edgetpu_retrain.data.labelmap import LabelItem, format_label_map

        items = [LabelItem(id=i, name=name) for i, name in pairs]
        (folder / "label_map.pbtxt").write_text(format_label_map(items), encoding="utf-8")
    (folder / "labels.txt").write_text(labels_txt(pairs), encoding="utf-8")


def _check_signature(details: dict[str, Any], input_size: tuple[int, int], k: int) -> None:
    h, w = input_size
    expected = {
        "inputs": {INPUT_NAME: [[1, h, w, 3], "uint8"]},
        "outputs": {
            "boxes": [[1, k, 4], "float32"],
            "classes": [[1, k], "float32"],
            "scores": [[1, k], "float32"],
            "count": [[1], "float32"],
        },
    }
    got = details.get(SIGNATURE)
    if got != expected:  # a bug in this module, not a user problem
        raise RuntimeError(f"serving_default signature is {got}, expected {expected}")
