"""`edgetpu-retrain tflite`: SavedModel -> full-integer `model_int8.tflite` (+ `model_float.tflite`).

    edgetpu-retrain tflite --saved-model DIR --dataset DIR --out DIR [--num-calibration 300] [--seed 0]
                           [--calibration-ranges mean]

Converts the SavedModel's `tflite` signature (written by `export`: float32 0..255 image in, outputs
`output_0..3` = count, scores, classes, boxes) with:
- int8: Optimize.DEFAULT + a representative dataset: every image of the dataset's TRAIN TFRecords
  (manifest.json) up to N, above N a draw of N with `--seed` (record order kept), resized like
  `evaluate` does; the first sample gets one 0 pixel and one 255 pixel so calibration sees the full
  input range and the uint8 input comes out with scale 1, zero point 0 (the Edge TPU's uint8 input).
  Activation ranges: the per-image mean (`--calibration-ranges mean`, default) or TFLite's min/max
  over all images (`minmax`); see export/calibration.py for why and what was measured.
  TFLITE_BUILTINS_INT8 only, uint8 input, FLOAT32 outputs (quantized outputs saturate scores),
  allow_custom_ops for TFLite_Detection_PostProcess.
- float: the same graph without quantization (float32 input holding 0..255), for comparison.

Output order: the converter lists the outputs in an order of its own (seen: scores, boxes, count,
classes). We rewrite the subgraph's output list so that get_output_details() gives pycoral's order
  0 count [1]   1 scores [1,K]   2 classes [1,K] (0-based)   3 boxes [1,K,4] (ymin, xmin, ymax, xmax)
and the signature names `output_0..3` point at the same tensors (pycoral's detect.get_objects reads
them by name). Both files are checked under ai_edge_litert after conversion: the custom op is
present, input/output types, the order above, one inference. labels.txt / label_map.pbtxt are copied
beside them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgetpu_retrain import common
from edgetpu_retrain.export import calibration
from edgetpu_retrain.export.postprocess import OP_NAME as CUSTOM_OP
from edgetpu_retrain.export.saved_model import (
    PYCORAL_ORDER as OUTPUT_ORDER,
)  # (count, scores, classes, boxes)
from edgetpu_retrain.export.saved_model import TFLITE_SIGNATURE

log = logging.getLogger(__name__)

OUTPUT_KEYS = ("output_0", "output_1", "output_2", "output_3")
INT8_NAME = "model_int8.tflite"
FLOAT_NAME = "model_float.tflite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--saved-model", required=True, help="SavedModel folder written by `export`")
    parser.add_argument(
        "--dataset", required=True, help="dataset snapshot (manifest.json): calibration images"
    )
    parser.add_argument("--out", required=True, help="folder for model_int8.tflite and model_float.tflite")
    parser.add_argument(
        "--num-calibration",
        type=int,
        default=calibration.DEFAULT_COUNT,
        help=f"calibration images from the train split: all of them up to this many, else a seeded "
        f"draw (default {calibration.DEFAULT_COUNT})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw (default 0)")
    parser.add_argument(
        "--calibration-ranges",
        choices=calibration.RANGE_MODES,
        default=calibration.DEFAULT_RANGES,
        help="activation ranges: per-image mean (default) or TFLite's min/max over all images",
    )
    parser.add_argument("--no-float", action="store_true", help="skip model_float.tflite")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.num_calibration < 1:
        raise common.UserError(f"--num-calibration {args.num_calibration}: must be >= 1")
    saved_model = common.require_dir(args.saved_model, what="SavedModel")
    if not (saved_model / "saved_model.pb").is_file():
        raise common.UserError(
            f"{saved_model}: no saved_model.pb; pass the folder `edgetpu-retrain export` wrote"
        )
    dataset = common.require_dir(args.dataset, what="dataset snapshot")
    return convert(
        saved_model,
        dataset,
        args.out,
        num_calibration=args.num_calibration,
        seed=args.seed,
        ranges=args.calibration_ranges,
        write_float=not args.no_float,
    )


# --------------------------------------------------------------------------------- calibration
def split_shards(dataset_dir: str | Path, split: str) -> list[Path]:
    """The dataset snapshot's TFRecord shards of one split, in manifest.json order (maybe none); UserError
    when the manifest has no such split or a shard is missing. Shared by calibration and `evaluate`."""
    manifest_path = Path(dataset_dir) / "manifest.json"
    manifest = common.read_json(manifest_path)
    tfrecords = manifest.get("tfrecords") if isinstance(manifest, dict) else None
    tfrecords = tfrecords if isinstance(tfrecords, dict) else {}
    if not isinstance(tfrecords.get(split), list):
        raise common.UserError(
            f"{manifest_path}: no tfrecords for split '{split}' (splits here: {sorted(tfrecords)}); "
            "choose another split or rebuild the dataset"
        )
    shards = [Path(dataset_dir) / r for r in tfrecords[split]]
    for shard in shards:
        if not shard.is_file():
            raise common.UserError(f"{manifest_path}: {split} shard {shard} is missing; rebuild the dataset")
    return shards


def train_shards(dataset_dir: str | Path, split: str = "train") -> list[Path]:
    shards = split_shards(dataset_dir, split)
    if not shards:
        raise common.UserError(
            f"{Path(dataset_dir) / 'manifest.json'}: the {split} split is empty; calibration "
            "needs images from it"
        )
    return shards


def calibration_images(
    dataset_dir: str | Path, size: tuple[int, int], *, count: int, seed: int
) -> list[np.ndarray]:
    """`count` train images (uint8 [h, w, 3] at the model size); see `calibration_set`."""
    return calibration_set(dataset_dir, size, count=count, seed=seed)[0]


def calibration_set(
    dataset_dir: str | Path, size: tuple[int, int], *, count: int, seed: int
) -> tuple[list[np.ndarray], int]:
    """(images, train images available): every train image when count >= that, else `count` drawn
    with `seed`, in record order; the first gets one 0 and one 255 pixel (full input range)."""
    from edgetpu_retrain.data import tfrecord
    from edgetpu_retrain.evaluate.runtime import decode_image, resize_to_input

    shards = train_shards(dataset_dir)
    total = sum(1 for shard in shards for _ in tfrecord.iter_records(shard, verify=False))
    if total == 0:
        raise common.UserError(f"{dataset_dir}: the train TFRecords hold no examples")
    chosen = set(calibration.draw_indices(total, count=count, seed=seed))
    if count < total:
        log.info("calibration: %d of the %d train images (seed %d)", count, total, seed)
    images: list[np.ndarray] = []
    index = 0
    for shard in shards:
        for record in tfrecord.iter_records(shard):
            if index in chosen:
                example = tfrecord.decode_example(record)
                images.append(resize_to_input(decode_image(example["image/encoded"][0]), size))
            index += 1
    first = images[0].copy()
    first[0, 0, :] = 0
    first[-1, -1, :] = 255
    images[0] = first
    return images, total


# ----------------------------------------------------------------------------------- conversion
def convert(
    saved_model: str | Path,
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    num_calibration: int = calibration.DEFAULT_COUNT,
    seed: int = 0,
    ranges: str = calibration.DEFAULT_RANGES,
    write_float: bool = True,
) -> dict[str, Any]:
    saved_model = Path(saved_model).resolve()
    out_dir = Path(out_dir).resolve()
    size = _input_size(saved_model)

    samples, available = calibration_set(dataset_dir, size, count=num_calibration, seed=seed)
    log.info("calibrating with %d images of %dx%d (%s ranges)", len(samples), size[0], size[1], ranges)
    int8_bytes, done = calibration.int8_model(saved_model, samples, ranges=ranges)
    float_bytes = _convert(saved_model) if write_float else None

    result: dict[str, Any] = {
        "out_dir": str(out_dir),
        "calibration_images": len(samples),
        "seed": seed,
        "calibration": {
            "split": "train",
            "images": len(samples),
            "train_images": available,
            "seed": seed,
            "drawn": len(samples) < available,
            **done,
        },
        "input_size": list(size),
        "output_order": list(OUTPUT_ORDER),
    }
    sizes: dict[str, int] = {}
    ops: dict[str, Any] = {}
    for kind, name, data in (("int8", INT8_NAME, int8_bytes), ("float", FLOAT_NAME, float_bytes)):
        if data is None:
            result[kind] = None
            continue
        data = reorder_outputs(data)
        info = check_model(data, quantized=kind == "int8", sample=samples[0])
        path = common.write_bytes(out_dir / name, data)
        result[kind] = str(path)
        sizes[kind] = len(data)
        ops[kind] = info["ops"]
        result[f"{kind}_details"] = {k: v for k, v in info.items() if k != "ops"}
    for extra in ("labels.txt", "label_map.pbtxt"):
        if (saved_model / extra).is_file():
            with common.atomic_path(out_dir / extra) as tmp:
                shutil.copyfile(saved_model / extra, tmp)
            result[extra.replace(".", "_")] = str(out_dir / extra)
    result["sizes"] = sizes
    result["ops"] = ops
    log.info("int8 %d bytes, float %s bytes -> %s", sizes["int8"], sizes.get("float"), out_dir)
    return result


def _input_size(saved_model: Path) -> tuple[int, int]:
    """(height, width) of the `tflite` signature: from export.json (fast), else by loading the SavedModel."""
    info_path = saved_model / "export.json"
    if info_path.is_file():
        info = common.read_json(info_path)
        try:
            shape = info["signatures"][TFLITE_SIGNATURE]["inputs"]["images"][0]
            return int(shape[1]), int(shape[2])
        except (KeyError, IndexError, TypeError):
            pass
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    if TFLITE_SIGNATURE not in loaded.signatures:
        raise common.UserError(
            f"{saved_model}: no '{TFLITE_SIGNATURE}' signature (has {sorted(loaded.signatures)}); "
            "re-export with this version of `edgetpu-retrain export`"
        )
    spec = next(iter(loaded.signatures[TFLITE_SIGNATURE].structured_input_signature[1].values()))
    return int(spec.shape[1]), int(spec.shape[2])


def _convert(saved_model: Path) -> bytes:
    """The float model (no quantization)."""
    return calibration.run_converter(calibration.converter(saved_model, None), saved_model)


def reorder_outputs(data: bytes) -> bytes:
    """Make the subgraph outputs (= get_output_details() order) follow the signature names output_0..3."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    if len(model.signatureDefs or []) != 1 or len(model.subgraphs) < 1:
        raise RuntimeError("expected one signature in the converted model")
    sig = model.signatureDefs[0]
    by_name = {_text(t.name): t.tensorIndex for t in sig.outputs}
    if set(by_name) != set(OUTPUT_KEYS):
        raise RuntimeError(f"signature outputs are {sorted(by_name)}, expected {list(OUTPUT_KEYS)}")
    subgraph = model.subgraphs[sig.subgraphIndex]
    wanted = [by_name[k] for k in OUTPUT_KEYS]
    if sorted(wanted) != sorted(int(i) for i in subgraph.outputs):
        raise RuntimeError("signature outputs are not the subgraph outputs")
    if [int(i) for i in subgraph.outputs] == wanted:
        return data
    subgraph.outputs = np.asarray(wanted, dtype=np.int32)
    sig.outputs = sorted(sig.outputs, key=lambda t: OUTPUT_KEYS.index(_text(t.name)))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def op_counts(data: bytes) -> dict[str, int]:
    """{"CONV_2D v3": 20, ..., "CUSTOM TFLite_Detection_PostProcess v1": 1} of the main subgraph."""
    from edgetpu_retrain.export.flatbuffer import read_model

    model = read_model(data)
    names = Counter(
        f"CUSTOM {op.custom_code} v{op.version}" if op.name == "CUSTOM" else f"{op.name} v{op.version}"
        for op in model.ops
    )
    return dict(sorted(names.items()))


def check_model(data: bytes, *, quantized: bool, sample: np.ndarray) -> dict[str, Any]:
    """Verify a converted model under ai_edge_litert; returns its details (raises RuntimeError if wrong)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgetpu_retrain.evaluate.runtime import is_identity_quantization, quantize_input

    ops = op_counts(data)
    if not any(k.startswith(f"CUSTOM {CUSTOM_OP} ") for k in ops):
        raise RuntimeError(
            f"no CUSTOM {CUSTOM_OP} op after conversion (ops: {sorted(ops)}); the stub was inlined"
        )
    interpreter = Interpreter(model_content=data)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    want_in = np.uint8 if quantized else np.float32
    if np.dtype(inp["dtype"]) != want_in:
        raise RuntimeError(f"input dtype is {np.dtype(inp['dtype']).name}, expected {np.dtype(want_in).name}")
    outputs = interpreter.get_output_details()
    signature = interpreter._get_full_signature_list()  # noqa: SLF001 (what pycoral reads)
    named = next(iter(signature.values()))["outputs"]
    order = [int(d["index"]) for d in outputs]
    if order != [int(named[k]) for k in OUTPUT_KEYS]:
        raise RuntimeError(f"get_output_details() order {order} is not output_0..3 {named}")
    k = int(outputs[1]["shape"][-1])
    shapes = {"count": [1], "scores": [1, k], "classes": [1, k], "boxes": [1, k, 4]}
    for name, d in zip(OUTPUT_ORDER, outputs, strict=False):
        if np.dtype(d["dtype"]) != np.float32 or list(d["shape"]) != shapes[name]:
            raise RuntimeError(
                f"output {name}: {np.dtype(d['dtype']).name} {list(d['shape'])}, "
                f"expected float32 {shapes[name]}"
            )
    scale, zero = inp["quantization"]
    if quantized and not is_identity_quantization(scale, zero):
        log.warning("uint8 input quantization is scale %s zero point %s (expected 1, 0)", scale, zero)
    interpreter.set_tensor(inp["index"], quantize_input(sample[np.newaxis], want_in, (scale, zero)))
    interpreter.invoke()
    count = float(interpreter.get_tensor(outputs[0]["index"])[0])
    return {
        "ops": ops,
        "input": {
            "name": inp["name"],
            "dtype": np.dtype(inp["dtype"]).name,
            "shape": [int(s) for s in inp["shape"]],
            "quantization": [float(scale), int(zero)],
        },
        "outputs": [
            {"name": n, "tensor": d["name"], "shape": [int(s) for s in d["shape"]]}
            for n, d in zip(OUTPUT_ORDER, outputs, strict=False)
        ],
        "max_detections": k,
        "smoke_count": count,
    }
