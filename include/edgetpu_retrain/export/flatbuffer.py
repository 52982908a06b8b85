"""Read a .tflite flatbuffer: operators (builtin name, version, custom code), tensors (type, shape,
shape signature, quantization, constness) and the graph's inputs/outputs.

Two readers produce the same `TFLiteModel`:
- "schema": TensorFlow's generated flatbuffer classes (`tensorflow/lite/python/schema_py_generated.py`,
  or the copy shipped in `ai_edge_litert`). The file is loaded by path so reading a model never
  imports TensorFlow itself (importing `tensorflow.lite.python...` would pay TF's ~4 s start-up).
- "minimal": a few dozen lines of flatbuffer decoding over `struct` (no dependency at all, not even
  the `flatbuffers` runtime), reading only the fields listed below from the TFLite schema
  (tensorflow/lite/schema/schema.fbs), for images without TF (e.g. the edgetpu-compiler image).

The enums, the schema-module lookup and the table reader live in `tflite_schema.py`; this module is
the model view. `buffer_bytes(data, tensor_index)` reads a tensor's raw buffer (weights) for callers
that need the values, which `TFLiteModel` does not hold. Only stdlib imports at module level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from edgetpu_retrain.export.tflite_schema import (
    BUILTIN_OPERATOR_NAMES,
    TENSOR_TYPE_NAMES,
    Table,
    builtin_name,
    root_table,
    schema_module,
    tensor_type_name,
)

__all__ = [
    "BUILTIN_OPERATOR_NAMES",
    "TENSOR_TYPE_NAMES",
    "OpInfo",
    "TFLiteModel",
    "TFLiteReadError",
    "Table",
    "TensorInfo",
    "buffer_bytes",
    "builtin_name",
    "read_model",
    "schema_module",
    "tensor_type_name",
]

TFLITE_FILE_IDENTIFIER = b"TFL3"


class TFLiteReadError(ValueError):
    """The file is not a readable TFLite flatbuffer."""


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    type: str  # TensorType name, e.g. "INT8"
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None  # -1 marks a dynamic dimension; None when not stored
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int
    constant: bool  # backed by a non-empty buffer (weights, bias, shape/axis constants)
    variable: bool

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def quantized(self) -> bool:
        return bool(self.scale)

    @property
    def dynamic(self) -> bool:
        return self.shape_signature is not None and any(d < 0 for d in self.shape_signature)

    def details(self) -> dict[str, Any]:
        """JSON-friendly summary (used for input/output details in preflight.json)."""
        out: dict[str, Any] = {
            "index": self.index,
            "name": self.name,
            "type": self.type,
            "shape": list(self.shape),
            "shape_signature": list(self.shape_signature) if self.shape_signature is not None else None,
        }
        if self.scale:
            if len(self.scale) == 1:
                out["quantization"] = {"scale": self.scale[0], "zero_point": self.zero_point[0]}
            else:
                out["quantization"] = {
                    "scale": list(self.scale),
                    "zero_point": list(self.zero_point),
                    "quantized_dimension": self.quantized_dimension,
                }
        else:
            out["quantization"] = None
        return out


@dataclass(frozen=True)
class OpInfo:
    index: int  # position in the subgraph's execution order
    name: str  # builtin operator name, e.g. "CONV_2D"; "CUSTOM" for custom ops
    builtin_code: int
    version: int
    custom_code: str | None
    inputs: tuple[int, ...]  # tensor indices; -1 = optional input not given
    outputs: tuple[int, ...]

    @property
    def label(self) -> str:
        """Name for messages: builtin name, or CUSTOM(<custom code>)."""
        return f"CUSTOM({self.custom_code})" if self.name == "CUSTOM" else self.name


@dataclass(frozen=True)
class TFLiteModel:
    path: str | None
    schema_version: int
    description: str
    subgraph_count: int
    tensors: tuple[TensorInfo, ...]  # of the main subgraph (subgraph 0)
    ops: tuple[OpInfo, ...]  # of the main subgraph, in execution order
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    reader: str  # "schema" or "minimal"

    def tensor(self, index: int) -> TensorInfo:
        return self.tensors[index]

    @property
    def input_tensors(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self.inputs]

    @property
    def output_tensors(self) -> list[TensorInfo]:
        return [self.tensors[i] for i in self.outputs]

    def op_versions(self) -> dict[str, list[int]]:
        """{op label: sorted distinct versions} — handy in reports and tests."""
        seen: dict[str, set[int]] = {}
        for op in self.ops:
            seen.setdefault(op.label, set()).add(op.version)
        return {k: sorted(v) for k, v in sorted(seen.items())}


# ----------------------------------------------------------------------------------------- reading


def read_model(source: str | os.PathLike[str] | bytes, *, reader: str = "auto") -> TFLiteModel:
    """Parse a .tflite file (path or bytes). reader: "auto" (schema module if found), "schema", "minimal"."""
    path: str | None = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf = bytes(source)
    else:
        path = str(Path(source).resolve())
        buf = Path(source).read_bytes()
    if len(buf) < 8 or buf[4:8] != TFLITE_FILE_IDENTIFIER:
        raise TFLiteReadError(
            f"{path or '<bytes>'}: not a TFLite flatbuffer (file identifier {buf[4:8]!r}, expected 'TFL3')"
        )
    if reader not in ("auto", "schema", "minimal"):
        raise ValueError(f"reader must be auto, schema or minimal, not {reader!r}")
    module = schema_module() if reader in ("auto", "schema") else None
    if reader == "schema" and module is None:
        raise TFLiteReadError("TFLite schema module (tensorflow or ai_edge_litert) not importable")
    try:
        if module is not None:
            return _read_with_schema(module, buf, path)
        return _read_minimal(buf, path)
    except TFLiteReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt offsets surface as struct/index errors
        raise TFLiteReadError(
            f"{path or '<bytes>'}: corrupt TFLite flatbuffer ({type(exc).__name__}: {exc})"
        ) from exc


def _decode(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_with_schema(m: ModuleType, buf: bytes, path: str | None) -> TFLiteModel:
    model = m.Model.GetRootAs(buf, 0)
    if model.SubgraphsLength() < 1:
        raise TFLiteReadError(f"{path or '<bytes>'}: model has no subgraph")
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        custom = oc.CustomCode()
        codes.append((code, int(oc.Version()), _decode(custom) if custom is not None else None))
    constant_buffers = set()
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        size = b.Size() if hasattr(b, "Size") else 0
        if b.DataLength() > 0 or size > 0:
            constant_buffers.add(i)
    sg = model.Subgraphs(0)
    tensors = []
    for i in range(sg.TensorsLength()):
        t = sg.Tensors(i)
        q = t.Quantization()
        scale: tuple[float, ...] = ()
        zp: tuple[int, ...] = ()
        qdim = 0
        if q is not None and q.ScaleLength() > 0:
            scale = tuple(float(q.Scale(j)) for j in range(q.ScaleLength()))
            zp = tuple(int(q.ZeroPoint(j)) for j in range(q.ZeroPointLength()))
            qdim = int(q.QuantizedDimension())
        sig = (
            tuple(int(t.ShapeSignature(j)) for j in range(t.ShapeSignatureLength()))
            if t.ShapeSignatureLength()
            else None
        )
        tensors.append(
            TensorInfo(
                index=i,
                name=_decode(t.Name()),
                type=tensor_type_name(int(t.Type())),
                shape=tuple(int(t.Shape(j)) for j in range(t.ShapeLength())),
                shape_signature=sig,
                scale=scale,
                zero_point=zp,
                quantized_dimension=qdim,
                constant=int(t.Buffer()) in constant_buffers,
                variable=bool(t.IsVariable()),
            )
        )
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code, version, custom = codes[int(op.OpcodeIndex())]
        ops.append(
            OpInfo(
                index=i,
                name=builtin_name(code),
                builtin_code=code,
                version=version,
                custom_code=custom if builtin_name(code) == "CUSTOM" else None,
                inputs=tuple(int(op.Inputs(j)) for j in range(op.InputsLength())),
                outputs=tuple(int(op.Outputs(j)) for j in range(op.OutputsLength())),
            )
        )
    return TFLiteModel(
        path=path,
        schema_version=int(model.Version()),
        description=_decode(model.Description()),
        subgraph_count=int(model.SubgraphsLength()),
        tensors=tuple(tensors),
        ops=tuple(ops),
        inputs=tuple(int(sg.Inputs(j)) for j in range(sg.InputsLength())),
        outputs=tuple(int(sg.Outputs(j)) for j in range(sg.OutputsLength())),
        reader="schema",
    )


# Field slots (schema.fbs order) used by the minimal reader.
# Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4.
# OperatorCode: deprecated_builtin_code 0 (byte), custom_code 1, version 2 (int, default 1), builtin_code 3.
# SubGraph: tensors 0, inputs 1, outputs 2, operators 3.
# Tensor: shape 0, type 1 (byte), buffer 2 (uint), name 3, quantization 4, is_variable 5, shape_signature 7.
# QuantizationParameters: scale 2 (float), zero_point 3 (long), quantized_dimension 6.
# Operator: opcode_index 0, inputs 1, outputs 2.   Buffer: data 0 (ubyte), offset 1, size 2 (ulong).


def _read_minimal(buf: bytes, path: str | None) -> TFLiteModel:
    root = root_table(buf)
    codes = []
    for oc in root.tables(1):
        code = max(int(oc.scalar(0, "b", 0)), int(oc.scalar(3, "i", 0)))
        codes.append((code, int(oc.scalar(2, "i", 1)), oc.string(1)))
    constant_buffers = set()
    for i, b in enumerate(root.tables(4)):
        if b.vector_len(0) > 0 or int(b.scalar(2, "Q", 0)) > 0:
            constant_buffers.add(i)
    subgraphs = root.tables(2)
    if not subgraphs:
        raise TFLiteReadError(f"{path or '<bytes>'}: model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(sg.tables(0)):
        q = t.table(4)
        scale: tuple[float, ...] = ()
        zp: tuple[int, ...] = ()
        qdim = 0
        if q is not None:
            scale = tuple(float(s) for s in (q.scalars(2, "f") or ()))
            zp = tuple(int(z) for z in (q.scalars(3, "q") or ()))
            qdim = int(q.scalar(6, "i", 0))
        sig = t.scalars(7, "i")
        tensors.append(
            TensorInfo(
                index=i,
                name=t.string(3) or "",
                type=tensor_type_name(int(t.scalar(1, "b", 0))),
                shape=tuple(int(d) for d in (t.scalars(0, "i") or ())),
                shape_signature=tuple(int(d) for d in sig) if sig else None,
                scale=scale,
                zero_point=zp,
                quantized_dimension=qdim,
                constant=int(t.scalar(2, "I", 0)) in constant_buffers,
                variable=bool(t.scalar(5, "B", 0)),
            )
        )
    ops = []
    for i, op in enumerate(sg.tables(3)):
        code, version, custom = codes[int(op.scalar(0, "I", 0))]
        name = builtin_name(code)
        ops.append(
            OpInfo(
                index=i,
                name=name,
                builtin_code=code,
                version=version,
                custom_code=custom if name == "CUSTOM" else None,
                inputs=tuple(int(x) for x in (op.scalars(1, "i") or ())),
                outputs=tuple(int(x) for x in (op.scalars(2, "i") or ())),
            )
        )
    return TFLiteModel(
        path=path,
        schema_version=int(root.scalar(0, "I", 0)),
        description=root.string(3) or "",
        subgraph_count=len(subgraphs),
        tensors=tuple(tensors),
        ops=tuple(ops),
        inputs=tuple(int(x) for x in (sg.scalars(1, "i") or ())),
        outputs=tuple(int(x) for x in (sg.scalars(2, "i") or ())),
        reader="minimal",
    )


def buffer_bytes(data: bytes, tensor_index: int, *, subgraph: int = 0) -> bytes:
    """Raw bytes of a tensor's buffer in a .tflite (b"" for a tensor without data).

    Inline `Buffer.data`, or for models over 2 GB the bytes stored after the flatbuffer
    (`Buffer.offset`/`size`, from the start of the file). Slots as listed above the minimal reader.
    """
    root = root_table(data)
    subgraphs = root.tables(2)
    if not 0 <= subgraph < len(subgraphs):
        raise TFLiteReadError(f"<bytes>: no subgraph {subgraph} (the model has {len(subgraphs)})")
    tensors = subgraphs[subgraph].tables(0)
    if not 0 <= tensor_index < len(tensors):
        raise TFLiteReadError(f"<bytes>: no tensor {tensor_index} (subgraph {subgraph} has {len(tensors)})")
    buffers = root.tables(4)
    index = int(tensors[tensor_index].scalar(2, "I", 0))
    if index >= len(buffers):
        raise TFLiteReadError(f"<bytes>: tensor {tensor_index} names buffer {index} of {len(buffers)}")
    vec = buffers[index].vector(0)
    if vec is not None and vec[1]:
        return bytes(data[vec[0] : vec[0] + vec[1]])
    offset, size = int(buffers[index].scalar(1, "Q", 0)), int(buffers[index].scalar(2, "Q", 0))
    return bytes(data[offset : offset + size]) if size else b""
