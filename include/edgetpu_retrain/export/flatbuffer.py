"""Read a .tflite flatbuffer: operators (builtin name, version, custom code), tensors (type, shape,
shape signature, quantization, constness) and the graph's inputs/outputs.

Two readers produce the same `TFLiteModel`:
- "schema": TensorFlow's generated flatbuffer classes (`tensorflow/lite/python/schema_py_generated.py`,
  or the copy shipped in `ai_edge_litert`). The file is loaded by path so reading a model never
  imports TensorFlow itself (importing `tensorflow.lite.python...` would pay TF's ~4 s start-up).
- "minimal": a few dozen lines of flatbuffer decoding over `struct` (no dependency at all, not even
  the `flatbuffers` runtime), reading only the fields listed below from the TFLite schema
  (tensorflow/lite/schema/schema.fbs), for images without TF (e.g. the edgetpu-compiler image).

Only stdlib imports at module level.
"""

from __future__ import annotations

import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

# BuiltinOperator enum of schema.fbs, in value order (value = position). Used by the minimal reader
# and checked against the generated schema module in tests. Codes beyond the list print as
# "BUILTIN_<code>" (unknown to us, hence never on the Edge TPU list).
BUILTIN_OPERATOR_NAMES: tuple[str, ...] = tuple(
    """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1
RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM
CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND
SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE
BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE
SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW
ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK
REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR
LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS
WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE
NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM
BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG
REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL
BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD
UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR
RIGHT_SHIFT
""".split()
)

# TensorType enum of schema.fbs, in value order.
TENSOR_TYPE_NAMES: tuple[str, ...] = (
    "FLOAT32",
    "FLOAT16",
    "INT32",
    "UINT8",
    "INT64",
    "STRING",
    "BOOL",
    "INT16",
    "COMPLEX64",
    "INT8",
    "FLOAT64",
    "COMPLEX128",
    "UINT64",
    "RESOURCE",
    "VARIANT",
    "UINT32",
    "UINT16",
    "INT4",
    "BFLOAT16",
)

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


def builtin_name(code: int) -> str:
    return BUILTIN_OPERATOR_NAMES[code] if 0 <= code < len(BUILTIN_OPERATOR_NAMES) else f"BUILTIN_{code}"


def tensor_type_name(code: int) -> str:
    return TENSOR_TYPE_NAMES[code] if 0 <= code < len(TENSOR_TYPE_NAMES) else f"TYPE_{code}"


# ----------------------------------------------------------------------------- schema module lookup

_SCHEMA_MODULE: ModuleType | None = None
_SCHEMA_SEARCHED = False
# (package, file inside it): TF's copy first (the brief's preferred source), then LiteRT's.
_SCHEMA_CANDIDATES = (
    ("tensorflow", ("lite", "python", "schema_py_generated.py")),
    ("ai_edge_litert", ("schema_py_generated.py",)),
    ("tflite_runtime", ("schema_py_generated.py",)),
)


def schema_module() -> ModuleType | None:
    """TFLite's generated schema classes, loaded by file path without importing their package."""
    global _SCHEMA_MODULE, _SCHEMA_SEARCHED
    if _SCHEMA_SEARCHED:
        return _SCHEMA_MODULE
    _SCHEMA_SEARCHED = True
    for package, parts in _SCHEMA_CANDIDATES:
        try:
            spec = importlib.util.find_spec(package)  # top-level find_spec does not import
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            path = os.path.join(root, *parts)
            if not os.path.isfile(path):
                continue
            try:
                file_spec = importlib.util.spec_from_file_location(
                    f"_edgetpu_retrain_tflite_schema_{package}", path
                )
                assert file_spec is not None and file_spec.loader is not None
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
                module.Model.GetRootAs  # noqa: B018 - sanity check: the generated API we use exists
            except Exception:  # noqa: BLE001 - any failure means "use the minimal reader"
                continue
            _SCHEMA_MODULE = module
            return module
    return None


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


class _Table:
    """Just enough of a flatbuffer table reader: scalars, strings, vectors of scalars and tables."""

    __slots__ = ("buf", "pos", "vtable", "vtable_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, slot: int) -> int:
        """Absolute position of field `slot` (0-based, in schema order), or 0 when absent."""
        voffset = 4 + 2 * slot
        if voffset >= self.vtable_len:
            return 0
        rel = struct.unpack_from("<H", self.buf, self.vtable + voffset)[0]
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: str, default: int | float = 0) -> Any:
        at = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _indirect(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def string(self, slot: int) -> str | None:
        at = self._field(slot)
        if not at:
            return None
        start = self._indirect(at)
        length = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4 : start + 4 + length].decode("utf-8", "replace")

    def _vector(self, slot: int) -> tuple[int, int] | None:
        at = self._field(slot)
        if not at:
            return None
        start = self._indirect(at)
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def vector_len(self, slot: int) -> int:
        vec = self._vector(slot)
        return vec[1] if vec else 0

    def scalars(self, slot: int, fmt: str) -> tuple[Any, ...] | None:
        vec = self._vector(slot)
        if vec is None:
            return None
        start, n = vec
        return struct.unpack_from(f"<{n}{fmt}", self.buf, start) if n else ()

    def tables(self, slot: int) -> list[_Table]:
        vec = self._vector(slot)
        if vec is None:
            return []
        start, n = vec
        return [_Table(self.buf, self._indirect(start + 4 * k)) for k in range(n)]

    def table(self, slot: int) -> _Table | None:
        at = self._field(slot)
        return _Table(self.buf, self._indirect(at)) if at else None


# Field slots (schema.fbs order) used by the minimal reader.
# Model: version 0, operator_codes 1, subgraphs 2, description 3, buffers 4.
# OperatorCode: deprecated_builtin_code 0 (byte), custom_code 1, version 2 (int, default 1), builtin_code 3.
# SubGraph: tensors 0, inputs 1, outputs 2, operators 3.
# Tensor: shape 0, type 1 (byte), buffer 2 (uint), name 3, quantization 4, is_variable 5, shape_signature 7.
# QuantizationParameters: scale 2 (float), zero_point 3 (long), quantized_dimension 6.
# Operator: opcode_index 0, inputs 1, outputs 2.   Buffer: data 0 (ubyte), offset 1, size 2 (ulong).


def _read_minimal(buf: bytes, path: str | None) -> TFLiteModel:
    root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
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
