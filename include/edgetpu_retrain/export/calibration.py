"""Int8 calibration of the `tflite` verb: which images, and which activation range each tensor gets.

Why not the converter's one-call calibration: TFLite's calibrator keeps, per tensor, the minimum and
maximum over ALL calibration images, so the most unusual image sets every tensor's int8 scale (the
linear bottlenecks and head outputs reach 1.5-2.9x their median per-image range width) and the
common image loses resolution. Measured (V2 SSDLite 320, bundled weights, 300 steps, test split
0.3), int8 minus float mAP@.5 in points: microcontroller -6.2 with those ranges (-0.7 to -4.0 over
three 50-image draws), +3.0 with the ranges below; bccd -1.2 -> -0.7. So we run the same steps
the converter runs, split in two (what tf.lite.experimental.QuantizationDebugger does):

1. `calibrate`: the converter's own calibrator (`_experimental_calibrate_only`) -> a float model
   whose activations carry min/max statistics;
2. `ranges="mean"` (the default): every activation's range becomes the MEAN over the images of its
   per-image min and max (the moving-average range of TF's quantization-aware training, without the
   order dependence), measured by running that float model on each image with every tensor kept.
   Two groups get the min / max over all images instead (measured the same way, so clean):
   - the input and the pixel rescale computed from it alone: the uint8 input stays scale 1, zero
     point 0, and the rescale keeps all 256 levels (TFLite's statistics give that MUL the range
     [-1, 2] although its values are 0..2: 170 levels; feeding the float model pixels on that grid
     cost bccd 0.3 points mAP@.5);
   - the head outputs on their way to the post-process (box encodings, class logits, scores): a
     mean range would clip confident scores (mc: every score above 0.93 became 0.93) and tie them.
   `ranges="minmax"` keeps TFLite's statistics;
3. `quantize`: the converter's own quantizer (`mlir_quantize`) on those statistics.

Only the statistics differ between the modes: the ops, op versions and the graph are the converter's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgetpu_retrain import common

log = logging.getLogger(__name__)

RANGE_MODES = ("mean", "minmax")
DEFAULT_RANGES = "mean"
DEFAULT_COUNT = 300  # every train image of bccd (254) and microcontroller (101); a seeded draw above


def draw_indices(total: int, *, count: int, seed: int) -> list[int]:
    """Sorted indices of the calibration images among `total`: all of them when count >= total, else
    `count` drawn without replacement with `seed` (same inputs, same draw)."""
    if total < 1 or count < 1:
        raise ValueError(f"need total >= 1 and count >= 1, got total={total} count={count}")
    if count >= total:
        return list(range(total))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(total, size=count, replace=False))


def converter(saved_model: Path, representative: Callable[[], Iterable[list[np.ndarray]]] | None) -> Any:
    """The TFLiteConverter of the `tflite` signature; int8 settings when `representative` is given."""
    import tensorflow as tf

    from edgetpu_retrain.export.saved_model import TFLITE_SIGNATURE

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[TFLITE_SIGNATURE])
    conv.allow_custom_ops = True
    if representative is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.float32
    return conv


def run_converter(conv: Any, saved_model: Path) -> bytes:
    """conv.convert() with a one-line UserError (converter errors are long)."""
    try:
        return bytes(conv.convert())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise common.UserError(
            f"{saved_model}: TFLite conversion failed ({first}); re-export the SavedModel "
            "with `edgetpu-retrain export` (a hand-made SavedModel lacks the post-processing stub)"
        ) from exc


def calibrate(saved_model: Path, samples: list[np.ndarray]) -> bytes:
    """Float .tflite with TFLite's min/max statistics over `samples` (uint8 [h, w, 3] images)."""

    def representative() -> Iterable[list[np.ndarray]]:
        for image in samples:
            yield [image[np.newaxis].astype(np.float32)]

    conv = converter(saved_model, representative)
    conv._experimental_calibrate_only = True  # noqa: SLF001 (as QuantizationDebugger does)
    return run_converter(conv, saved_model)


def quantize(calibrated: bytes) -> bytes:
    """The converter's quantization step on a calibrated model: uint8 input, float32 outputs."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    data = tfl_convert.mlir_quantize(
        calibrated, disable_per_channel=False, input_data_type=tf.uint8, output_data_type=tf.float32
    )
    return bytes(data)


def image_ranges(calibrated: bytes, samples: list[np.ndarray], tensors: list[int]) -> np.ndarray:
    """[len(tensors), len(samples), 2] per-image (min, max) of those tensors of the float model, with
    the built-in kernels (those TFLite's calibrator runs; no XNNPACK, whose results may vary by CPU)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=calibrated,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    out = np.zeros((len(tensors), len(samples), 2), np.float64)
    for j, image in enumerate(samples):
        interpreter.set_tensor(inp["index"], image[np.newaxis].astype(np.float32))
        interpreter.invoke()
        for i, index in enumerate(tensors):
            values = interpreter.get_tensor(index)
            out[i, j] = (float(values.min()), float(values.max()))
    return out


def mean_ranges(calibrated: bytes, samples: list[np.ndarray]) -> tuple[bytes, dict[str, Any]]:
    """The calibrated model with each inner activation's statistics set to the per-image mean min /
    max. The input and what is computed from it alone (the pixel rescale), and the head outputs on
    their way to the post-process (box encodings, class logits, scores) get the min / max over all
    images instead: every pixel value stays representable and no confident score is clipped.
    Returns it and a summary {"tensors", "full_range_tensors", "narrowed" (ranges now >1% narrower)}."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    subgraph = model.subgraphs[0]
    graph_inputs = {int(i) for i in subgraph.inputs}
    full_range = input_derived(model) | output_path(model)
    tensors = [
        i for i, t in enumerate(subgraph.tensors) if i not in graph_inputs and _has_stats(t.quantization)
    ]
    per_image = image_ranges(calibrated, samples, tensors)
    narrowed = 0
    for i, index in enumerate(tensors):
        stats = subgraph.tensors[index].quantization
        if index in full_range:
            low, high = float(per_image[i, :, 0].min()), float(per_image[i, :, 1].max())
        else:
            low, high = float(per_image[i, :, 0].mean()), float(per_image[i, :, 1].mean())
        low, high = min(low, 0.0), max(high, 0.0)  # int8 ranges must hold 0
        narrowed += int(high - low < 0.99 * (float(stats.max[0]) - float(stats.min[0])))
        stats.min = np.asarray([low], np.float32)
        stats.max = np.asarray([high], np.float32)
    summary = {
        "tensors": len(tensors),
        "full_range_tensors": len(full_range & set(tensors)),
        "narrowed": narrowed,
    }
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary


def _opcode(model: Any, op: Any) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def output_path(model: Any) -> set[int]:
    """Tensors of subgraph 0 that reach the post-process op or a graph output through RESHAPE,
    CONCATENATION, LOGISTIC and (DE)QUANTIZE only: the predictor outputs and what is built from them."""
    from tensorflow.lite.python import schema_py_generated as schema

    codes = schema.BuiltinOperator
    passing = {codes.RESHAPE, codes.CONCATENATION, codes.LOGISTIC, codes.QUANTIZE, codes.DEQUANTIZE}
    subgraph = model.subgraphs[0]
    ops = subgraph.operators or []
    producer = {int(o): op for op in ops for o in op.outputs}
    found = {int(i) for i in subgraph.outputs}
    for op in ops:
        if _opcode(model, op) == codes.CUSTOM:
            found.update(int(i) for i in op.inputs if int(i) >= 0 and not _constant(model, int(i)))
    todo = list(found)
    while todo:
        op = producer.get(todo.pop())
        if op is None or _opcode(model, op) not in passing:
            continue
        for i in (int(i) for i in op.inputs):
            if i >= 0 and i not in found and not _constant(model, i):
                found.add(i)
                todo.append(i)
    return found


def input_derived(model: Any) -> set[int]:
    """Tensors of subgraph 0 computed from the graph inputs and constants by element-wise ops only."""
    from tensorflow.lite.python import schema_py_generated as schema

    codes = schema.BuiltinOperator
    elementwise = {codes.ADD, codes.MUL, codes.SUB, codes.QUANTIZE, codes.DEQUANTIZE, codes.RESHAPE}
    subgraph = model.subgraphs[0]
    derived = {int(i) for i in subgraph.inputs}
    for op in subgraph.operators or []:
        if _opcode(model, op) not in elementwise:
            continue
        inputs = [int(i) for i in op.inputs if int(i) >= 0]
        if any(i in derived for i in inputs) and all(i in derived or _constant(model, i) for i in inputs):
            derived.update(int(o) for o in op.outputs)
    return derived


def _constant(model: Any, index: int) -> bool:
    buffer = model.buffers[model.subgraphs[0].tensors[index].buffer]
    return buffer.data is not None and len(buffer.data) > 0


def _has_stats(quantization: Any) -> bool:
    return quantization is not None and quantization.min is not None and len(quantization.min) == 1


def int8_model(saved_model: Path, samples: list[np.ndarray], *, ranges: str) -> tuple[bytes, dict[str, Any]]:
    """Full-integer model bytes calibrated on `samples` with `ranges` (RANGE_MODES), and what was done."""
    if ranges not in RANGE_MODES:
        raise common.UserError(f"calibration ranges '{ranges}': choose one of {', '.join(RANGE_MODES)}")
    calibrated = calibrate(Path(saved_model), samples)
    summary: dict[str, Any] = {"ranges": ranges}
    if ranges == "mean":
        calibrated, adjusted = mean_ranges(calibrated, samples)
        summary.update(adjusted)
        log.info("calibration: per-image mean ranges on %d tensors", adjusted["tensors"])
    return quantize(calibrated), summary
