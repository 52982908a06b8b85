"""Read a Coral/TFLite MobileNet V1/V2 (classifier or embedding extractor) as float conv weights.

Tensor names in these files are fused strings and unreliable, so the network is recognised by its
op sequence alone: V1 = CONV_2D then 13 x (DEPTHWISE_CONV_2D, CONV_2D); V2 = CONV_2D, DW, CONV_2D, then
16 x (CONV_2D, DW, CONV_2D) and a final 1x1 CONV_2D; a classifier adds AVERAGE_POOL_2D and a 1x1
CONV_2D (the logits). The width multiplier (alpha) follows from channel counts. Weights are
dequantized (w = scale x (q - zero_point), per tensor or per channel) and transposed to Keras' layout:
TFLite CONV_2D [out, kh, kw, in] and DEPTHWISE_CONV_2D [1, kh, kw, ch] -> [kh, kw, in|ch, out|1].

Structure comes from `export.flatbuffer.read_model` (stdlib reader), the raw weight bytes from its
`buffer_bytes`. Only stdlib + numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetpu_retrain.common import UserError
from edgetpu_retrain.export.flatbuffer import (
    TensorInfo,
    TFLiteModel,
    TFLiteReadError,
    buffer_bytes,
    read_model,
)

CONV, DW = "CONV_2D", "DEPTHWISE_CONV_2D"
V1_BACKBONE = (CONV,) + (DW, CONV) * 13
V2_BACKBONE = (CONV, DW, CONV) + (CONV, DW, CONV) * 16 + (CONV,)
_DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "INT32": np.int32, "FLOAT32": np.float32, "INT64": np.int64}
WHAT = "a Coral/TFLite MobileNet V1 or V2 classifier or embedding extractor"


@dataclass(frozen=True)
class Conv:
    """One conv op, float weights in Keras layout; `output_shape` is the TFLite output [1, H, W, C]."""

    op: str
    kernel: np.ndarray
    bias: np.ndarray
    output_shape: tuple[int, ...]
    output_index: int  # the output tensor (read back to compare logits, not rounded softmax)


@dataclass(frozen=True)
class MobileNetFile:
    path: str
    version: int  # 1 or 2
    alpha: float
    input_size: int
    kind: str  # "classifier" or "embedding"
    convs: tuple[Conv, ...]  # backbone convs in op order (no logits)
    logits: Conv | None  # classifier only: 1x1 conv kernel [1, 1, C, classes]
    input_scale: float
    input_zero_point: float

    @property
    def base(self) -> str:
        return f"mobilenet_v{self.version}"

    def describe(self) -> str:
        return f"MobileNet V{self.version} alpha {self.alpha:g} {self.kind} at {self.input_size} px"


def _dequantize(data: bytes, info: TensorInfo, where: str) -> np.ndarray:
    if info.type not in _DTYPES:
        raise UserError(
            f"{where}: tensor {info.name!r} has type {info.type}; expected {WHAT} with uint8/int8 "
            f"or float32 weights"
        )
    values = np.frombuffer(data, _DTYPES[info.type]).astype(np.float64)
    if values.size != int(np.prod(info.shape)):
        raise UserError(
            f"{where}: tensor {info.name!r} holds {values.size} values for shape {info.shape}; "
            f"the file is corrupt"
        )
    values = values.reshape(info.shape)
    if not info.scale or info.type == "FLOAT32":
        return values.astype(np.float32)
    scale, zero = np.asarray(info.scale), np.asarray(info.zero_point or [0] * len(info.scale), np.float64)
    if scale.size > 1:  # per-channel: broadcast along the quantized dimension
        shape = [1] * values.ndim
        shape[info.quantized_dimension] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (scale * (values - zero)).astype(np.float32)


def _conv(model: TFLiteModel, buf: bytes, op_index: int, *, where: str) -> Conv:
    op = model.ops[op_index]
    arrays = []
    for index in op.inputs[1:3]:
        if index < 0 or not model.tensor(index).constant:
            raise UserError(
                f"{where}: op {op_index} ({op.name}) has no constant weights/bias; expected {WHAT}"
            )
        info = model.tensor(index)
        arrays.append(_dequantize(buffer_bytes(buf, index), info, where))
    kernel, bias = arrays
    if kernel.ndim != 4 or bias.ndim != 1:
        raise UserError(
            f"{where}: op {op_index} ({op.name}) weights have shape {kernel.shape}; expected {WHAT}"
        )
    return Conv(
        op.name,
        np.ascontiguousarray(kernel.transpose(1, 2, 3, 0)),
        bias,
        model.tensor(op.outputs[0]).shape,
        op.outputs[0],
    )


def _classify(model: TFLiteModel, where: str) -> tuple[int, str, list[int]]:
    """(version, kind, op indices of the backbone convs [+ logits last]) or a UserError."""
    conv_ops = [op for op in model.ops if op.name in (CONV, DW)]
    names = tuple(op.name for op in conv_ops)
    for version, pattern in ((1, V1_BACKBONE), (2, V2_BACKBONE)):
        if names == pattern:
            return version, "embedding", [op.index for op in conv_ops]
        if names == pattern + (CONV,) and any(op.name == "AVERAGE_POOL_2D" for op in model.ops):
            return version, "classifier", [op.index for op in conv_ops]
    counts = {n: names.count(n) for n in (CONV, DW)}
    raise UserError(
        f"{where}: not {WHAT} (it has {counts[CONV]} CONV_2D and {counts[DW]} DEPTHWISE_CONV_2D ops "
        f"of {len(model.ops)}; V1 has 14+13, V2 35+17, classifiers one more CONV_2D); use one of "
        f"the bundled Coral MobileNets or a file of the same family"
    )


def _alpha(version: int, convs: list[Conv]) -> float:
    """V1: last pointwise conv = 1024 x alpha; V2: last projection = make_divisible(320 x alpha, 8)."""
    if version == 1:
        return round(convs[-1].kernel.shape[-1] / 1024, 4)
    return round(convs[-2].kernel.shape[-1] / 320, 2)


def read_mobilenet(path: str | os.PathLike[str]) -> MobileNetFile:
    """Parse and dequantize `path`; UserError (naming the file and what it is) when it is not a MobileNet."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError(f"{where}: file not found; give {WHAT} (.tflite)")
    buf = path.read_bytes()
    try:
        model = read_model(buf, reader="minimal")
    except TFLiteReadError as exc:
        raise UserError(f"{where}: not a TFLite model ({exc}); give {WHAT}") from exc
    version, kind, indices = _classify(model, where)
    inputs = model.input_tensors
    if (
        len(inputs) != 1
        or inputs[0].rank != 4
        or inputs[0].shape[3] != 3
        or inputs[0].shape[1] != inputs[0].shape[2]
    ):
        raise UserError(
            f"{where}: input is {[t.shape for t in inputs]}, not one square RGB image; expected {WHAT}"
        )
    convs = [_conv(model, buf, i, where=where) for i in indices]
    logits = convs.pop() if kind == "classifier" else None
    scale = inputs[0].scale[0] if inputs[0].scale else 1 / 127.5
    zero = float(inputs[0].zero_point[0]) if inputs[0].zero_point else 0.0
    if inputs[0].type == "FLOAT32":
        scale, zero = 1 / 127.5, 127.5  # float models take [-1, 1] directly
    return MobileNetFile(
        where,
        version,
        _alpha(version, convs),
        int(inputs[0].shape[1]),
        kind,
        tuple(convs),
        logits,
        float(scale),
        float(zero),
    )
