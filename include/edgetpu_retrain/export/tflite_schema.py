"""The TFLite flatbuffer's low-level pieces: schema enums, the generated schema module, a table reader.

`flatbuffer.py` builds the model view (`TFLiteModel`) on these. Only stdlib imports.
"""

from __future__ import annotations

import importlib.util
import os
import struct
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


class Table:
    """Just enough of a flatbuffer table reader: scalars, strings, vectors of scalars and tables."""

    __slots__ = ("buf", "pos", "vtable", "vtable_len")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]

    def field(self, slot: int) -> int:
        """Absolute position of field `slot` (0-based, in schema order), or 0 when absent."""
        voffset = 4 + 2 * slot
        if voffset >= self.vtable_len:
            return 0
        rel = struct.unpack_from("<H", self.buf, self.vtable + voffset)[0]
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: str, default: int | float = 0) -> Any:
        at = self.field(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def _indirect(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def string(self, slot: int) -> str | None:
        at = self.field(slot)
        if not at:
            return None
        start = self._indirect(at)
        length = struct.unpack_from("<I", self.buf, start)[0]
        return self.buf[start + 4 : start + 4 + length].decode("utf-8", "replace")

    def vector(self, slot: int) -> tuple[int, int] | None:
        """(absolute start, element count) of vector field `slot`, or None when absent."""
        at = self.field(slot)
        if not at:
            return None
        start = self._indirect(at)
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def vector_len(self, slot: int) -> int:
        vec = self.vector(slot)
        return vec[1] if vec else 0

    def scalars(self, slot: int, fmt: str) -> tuple[Any, ...] | None:
        vec = self.vector(slot)
        if vec is None:
            return None
        start, n = vec
        return struct.unpack_from(f"<{n}{fmt}", self.buf, start) if n else ()

    def tables(self, slot: int) -> list[Table]:
        vec = self.vector(slot)
        if vec is None:
            return []
        start, n = vec
        return [Table(self.buf, self._indirect(start + 4 * k)) for k in range(n)]

    def table(self, slot: int) -> Table | None:
        at = self.field(slot)
        return Table(self.buf, self._indirect(at)) if at else None


def root_table(buf: bytes) -> Table:
    """The flatbuffer's root table (the TFLite `Model`)."""
    return Table(buf, struct.unpack_from("<I", buf, 0)[0])
