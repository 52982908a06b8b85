"""`edgetpu-retrain edgetpu`: Edge TPU pre-flight check of an int8 .tflite, then `edgetpu_compiler`.

    edgetpu-retrain edgetpu --tflite FILE --out DIR [--require-compiler] [--allow-cpu-ops]
                            [--compiler PATH] [--timeout S]

1. Pre-flight (always, pure Python, no TensorFlow import): reads the flatbuffer (`tflite_model`) and
   checks what the Edge TPU compiler 16.0.384591198 will need: supported ops, full 8-bit
   quantization, op versions the compiler can parse, static shapes with batch 1, tensor ranks, and
   the one-TPU-subgraph rule. Writes OUT/preflight.json (canonical JSON). Not ok -> UserError.
2. Compile (when `edgetpu_compiler` is on PATH or --compiler is given): runs
   `edgetpu_compiler -s -o TMP -t TIMEOUT model.tflite`, parses its report, moves
   `<stem>_edgetpu.tflite`, `<stem>_edgetpu.log` into OUT and keeps the compiler's stdout as
   OUT/edgetpu_compiler.txt. Fails when compilation failed, when there is no TPU subgraph, or when
   ops other than the post-processing tail fall to the CPU (unless --allow-cpu-ops).
   Without a compiler: one log line, pre-flight only (fails only with --require-compiler).
3. The JSON line (keys preflight, preflight_path, compiled, compiler, out_dir) is also written to
   OUT/edgetpu.json on success. Outputs of an earlier run for the same model are removed first.

Public helpers: `preflight(path) -> dict`, `analyze(model) -> dict`, `parse_compiler_output(text)
-> dict`, `check_op_version(name, version) -> str | None`, and the tables below.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, require_file, sha256_file, write_json, write_text

log = logging.getLogger("edgetpu_retrain.export.edgetpu")

COMPILER_NAME = "edgetpu_compiler"
COMPILER_TARGET_VERSION = "16.0.384591198"  # the last released Edge TPU compiler
DEFAULT_TIMEOUT_S = 180  # the compiler's own default for -t
TIMEOUT_MARGIN_S = 60  # our subprocess limit = -t + margin (the compiler enforces -t itself)
POSTPROCESS_CUSTOM_CODE = "TFLite_Detection_PostProcess"
STEP_RESULT = "edgetpu.json"  # the JSON line, also kept in OUT for promote/report
COMPILER_STDOUT = "edgetpu_compiler.txt"  # the compiler's stdout (+stderr), kept in OUT
NOT_FOUND_MESSAGE = (
    "edgetpu_compiler not found on PATH; pre-flight only — compile in the edgetpu-compiler Docker image"
)
CORAL_OPS_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

# ------------------------------------------------------------------------------------------ tables

# Operations the Edge TPU supports (compiler 16), TFLite builtin name -> known limitation.
# Source: Coral, "TensorFlow models on the Edge TPU", section "Supported operations"
# (https://coral.ai/docs/edgetpu/models-intro/#supported-operations). The limits are reported as
# notes; the pre-flight checks only what a flatbuffer shows cheaply (op, types, shapes), the compiler
# is the final word on the rest.
EDGETPU_SUPPORTED_OPS: dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation; a constant input only as the 2nd of 2 inputs and all zeros",
    "CONV_2D": "",
    "DEPTHWISE_CONV_2D": "",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weights format only; output tensor 1-D",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional LSTM only",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional LSTM only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction along the batch dimension (x/y reduction)",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "not along the batch dimension",
    "PAD": "not along the batch dimension (x/y padding)",
    "PRELU": "alpha must be constant",
    "QUANTIZE": "",
    "REDUCE_MAX": "not along the batch dimension",
    "REDUCE_MIN": "not along the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "very large reshapes may not map",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU where precision would suffer",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU where precision would suffer",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input, at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "not along the batch dimension",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides 1; no ellipsis or new-axis masks",
    "SUB": "",
    "SUM": "",
    "SQUARED_DIFFERENCE": "",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

# Hints for ops people meet in detectors that are NOT on the list.
REPLACEMENT_HINTS: dict[str, str] = {
    "LEAKY_RELU": "use ReLU/ReLU6, or PReLU with a constant alpha",
    "HARD_SWISH": "use ReLU6 (e.g. MobileNetV2 instead of V3-style activations)",
    "GELU": "use ReLU/ReLU6",
    "ELU": "use ReLU/ReLU6",
    "EXP": "keep exp in the CPU post-processing or remove it",
    "DIV": "multiply by a constant reciprocal instead",
    "CAST": "keep tensors int8 end to end; do casts in the CPU post-processing",
    "DEQUANTIZE": "keep tensors int8 until the post-processing tail",
    "BATCH_MATMUL": "use FULLY_CONNECTED or a 1x1 CONV_2D",
    "GATHER": "use SLICE/STRIDED_SLICE or move the gather into the CPU post-processing",
    "SPLIT_V": "use equal SPLIT or SLICE",
    "PADV2": "pad with zeros (PAD)",
    "ARG_MAX": "do argmax in the CPU post-processing",
}

# Highest version of each builtin op that edgetpu_compiler 16.0.384591198 parses:
#   name -> (max version, where the next version comes from).
# Source: tensorflow/lite/tools/versioning/runtime_version.cc (`FindMinimumRuntimeVersionForOp`), which
# maps each (op, version) to the TF release that introduced it; we keep every version introduced up
# to TF 2.5.0. Why 2.5: compiler 16 shipped mid-2021; compiler 15 still rejected 2.5-era versions
# (RSQRT v2: google-coral/edgetpu#384, REVERSE_V2 v3: #340) and Coral pointed those users to 16;
# every rejection reported against 16 is a version introduced in TF >= 2.6 (CONV_2D v6 / TF 2.9:
# #631, QUANTIZE v3 / TF 2.7: #879, TRANSPOSE_CONV v4 / TF 2.13: #845, EXP v2 from a TF 2.16
# export: google-coral/libedgetpu#71). The 2.5.0 cut-off is our inference from those reports, not
# a published list. Ops absent from the table (introduced after TF 2.5, e.g. GELU, VAR_HANDLE,
# REDUCE_ALL) are unknown to compiler 16.
OP_VERSION_CUTOFF_TF = "2.5.0"
OP_MAX_VERSION: dict[str, tuple[int, str]] = {
    "ABS": (3, "v4 in TF 2.6"),
    "ADD": (3, "v4 in TF 2.6"),
    "ADD_N": (1, ""),
    "ARG_MAX": (2, "v3 in TF 2.9"),
    "ARG_MIN": (2, "v3 in TF 2.9"),
    "AVERAGE_POOL_2D": (3, ""),
    "BATCH_MATMUL": (4, ""),
    "BATCH_TO_SPACE_ND": (3, ""),
    "BIDIRECTIONAL_SEQUENCE_LSTM": (3, ""),
    "BIDIRECTIONAL_SEQUENCE_RNN": (3, ""),
    "BROADCAST_TO": (3, ""),
    "CALL_ONCE": (1, ""),
    "CAST": (1, "v2 in TF 2.7"),
    "CEIL": (1, ""),
    "COMPLEX_ABS": (1, ""),
    "CONCATENATION": (3, ""),
    "CONV_2D": (5, "v6 in TF 2.9, reported rejected: google-coral/edgetpu#631"),
    "CONV_3D": (1, ""),
    "COS": (1, ""),
    "CUMSUM": (1, ""),
    "DENSIFY": (1, ""),
    "DEPTHWISE_CONV_2D": (6, "v7 in TF 2.11"),
    "DEPTH_TO_SPACE": (2, ""),
    "DEQUANTIZE": (4, "v5 in TF 2.7"),
    "DIV": (2, ""),
    "ELU": (1, ""),
    "EMBEDDING_LOOKUP": (3, ""),
    "EMBEDDING_LOOKUP_SPARSE": (1, ""),
    "EQUAL": (3, ""),
    "EXP": (1, "v2 reported rejected: google-coral/libedgetpu#71 (TF 2.16 export)"),
    "EXPAND_DIMS": (1, ""),
    "FAKE_QUANT": (2, ""),
    "FILL": (3, ""),
    "FLOOR": (1, ""),
    "FLOOR_DIV": (2, ""),
    "FLOOR_MOD": (1, ""),
    "FULLY_CONNECTED": (9, "v10 in TF 2.11"),
    "GATHER": (5, ""),
    "GATHER_ND": (3, ""),
    "GREATER": (2, ""),
    "GREATER_EQUAL": (2, ""),
    "HARD_SWISH": (1, ""),
    "HASHTABLE": (1, ""),
    "HASHTABLE_FIND": (1, ""),
    "HASHTABLE_IMPORT": (1, ""),
    "HASHTABLE_LOOKUP": (1, ""),
    "HASHTABLE_SIZE": (1, ""),
    "IF": (1, ""),
    "IMAG": (1, ""),
    "L2_NORMALIZATION": (2, ""),
    "L2_POOL_2D": (1, ""),
    "LEAKY_RELU": (2, ""),
    "LESS": (2, ""),
    "LESS_EQUAL": (2, ""),
    "LOCAL_RESPONSE_NORMALIZATION": (1, ""),
    "LOG": (1, ""),
    "LOGICAL_AND": (1, ""),
    "LOGICAL_NOT": (1, ""),
    "LOGICAL_OR": (1, ""),
    "LOGISTIC": (3, ""),
    "LOG_SOFTMAX": (2, ""),
    "LSH_PROJECTION": (1, ""),
    "LSTM": (4, ""),
    "MATRIX_DIAG": (1, ""),
    "MATRIX_SET_DIAG": (1, ""),
    "MAXIMUM": (4, ""),
    "MAX_POOL_2D": (3, ""),
    "MEAN": (3, ""),
    "MINIMUM": (4, ""),
    "MIRROR_PAD": (2, "v3 in TF 2.12"),
    "MUL": (4, "v5 in TF 2.6"),
    "NEG": (1, ""),
    "NON_MAX_SUPPRESSION_V4": (1, ""),
    "NON_MAX_SUPPRESSION_V5": (1, ""),
    "NOT_EQUAL": (3, ""),
    "ONE_HOT": (1, ""),
    "PACK": (3, ""),
    "PAD": (3, "v4 in TF 2.6"),
    "PADV2": (3, "v4 in TF 2.6"),
    "POW": (1, ""),
    "PRELU": (1, ""),
    "QUANTIZE": (2, "v3 in TF 2.7, reported rejected: google-coral/edgetpu#879"),
    "RANGE": (1, ""),
    "RANK": (1, ""),
    "REAL": (1, ""),
    "REDUCE_ANY": (1, ""),
    "REDUCE_MAX": (3, ""),
    "REDUCE_MIN": (3, ""),
    "REDUCE_PROD": (1, "v2 in TF 2.6"),
    "RELU": (3, ""),
    "RELU6": (3, ""),
    "RELU_N1_TO_1": (1, ""),
    "RESHAPE": (1, ""),
    "RESIZE_BILINEAR": (4, ""),
    "RESIZE_NEAREST_NEIGHBOR": (4, ""),
    "REVERSE_SEQUENCE": (1, ""),
    "REVERSE_V2": (3, ""),
    "RFFT2D": (1, ""),
    "RNN": (3, ""),
    "ROUND": (1, ""),
    "RSQRT": (2, ""),
    "SCATTER_ND": (1, ""),
    "SEGMENT_SUM": (1, ""),
    "SELECT": (2, "v3 in TF 2.12"),
    "SELECT_V2": (1, ""),
    "SHAPE": (1, ""),
    "SIN": (1, ""),
    "SKIP_GRAM": (1, ""),
    "SLICE": (5, ""),
    "SOFTMAX": (3, ""),
    "SPACE_TO_BATCH_ND": (3, ""),
    "SPACE_TO_DEPTH": (2, ""),
    "SPARSE_TO_DENSE": (3, ""),
    "SPLIT": (4, ""),
    "SPLIT_V": (2, ""),
    "SQRT": (1, ""),
    "SQUARE": (1, ""),
    "SQUARED_DIFFERENCE": (2, ""),
    "SQUEEZE": (2, ""),
    "STRIDED_SLICE": (5, "v6 in TF 2.6"),
    "SUB": (5, ""),
    "SUM": (2, ""),
    "SVDF": (4, ""),
    "TANH": (3, ""),
    "TILE": (2, "v3 in TF 2.8"),
    "TOPK_V2": (2, ""),
    "TRANSPOSE": (5, "v6 in TF 2.12"),
    "TRANSPOSE_CONV": (3, "v4 in TF 2.13, reported rejected: google-coral/edgetpu#845"),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": (3, "v4 in TF 2.12"),
    "UNIDIRECTIONAL_SEQUENCE_RNN": (3, ""),
    "UNIQUE": (1, ""),
    "UNPACK": (4, ""),
    "WHERE": (1, "v2 in TF 2.8"),
    "WHILE": (1, ""),
    "ZEROS_LIKE": (1, ""),
}
# Custom ops the compiler 16 parses (they stay on the CPU): the SSD post-processing op, version 1.
CUSTOM_MAX_VERSION: dict[str, int] = {POSTPROCESS_CUSTOM_CODE: 1}

EIGHT_BIT_TYPES = ("INT8", "UINT8")
CONSTANT_INDEX_TYPES = ("INT32", "INT64")  # biases, shapes, axes, paddings: fine as constants
TAIL_OP_TYPES = ("CUSTOM", "DEQUANTIZE")  # may run on the CPU after compilation without failing the step


def check_op_version(name: str, version: int, custom_code: str | None = None) -> str | None:
    """None when compiler 16 parses (name, version); else the problem as a sentence fragment."""
    if name == "CUSTOM":
        if custom_code in CUSTOM_MAX_VERSION and version > CUSTOM_MAX_VERSION[custom_code]:
            known = CUSTOM_MAX_VERSION[custom_code]
            return f"custom op {custom_code} version {version} is newer than the v{known} compiler 16 knows"
        return None  # other custom ops: the one-subgraph rule reports them
    if name not in OP_MAX_VERSION:
        return (
            f"{name} is not a builtin op compiler {COMPILER_TARGET_VERSION} knows "
            f"(newer than TF {OP_VERSION_CUTOFF_TF})"
        )
    max_version, source = OP_MAX_VERSION[name]
    if version > max_version:
        extra = f"; {source}" if source else ""
        return (
            f"{name} version {version} is newer than compiler {COMPILER_TARGET_VERSION} parses "
            f"(max v{max_version}{extra})"
        )
    return None


# --------------------------------------------------------------------------------------- pre-flight


def _tensor_label(t: Any) -> str:
    return f"tensor {t.index} '{t.name}' {t.type}{list(t.shape)}"


def _op_quantization_issue(model: Any, op: Any) -> str | None:
    """None when every tensor the op touches is 8-bit (or a constant int32/int64 bias/shape/axis)."""
    for ti in (*op.inputs, *op.outputs):
        if ti < 0:
            continue
        t = model.tensor(ti)
        if t.type in EIGHT_BIT_TYPES:
            if not t.quantized and not t.constant:
                return f"{_tensor_label(t)} has no quantization parameters"
            continue
        if t.constant and t.type in CONSTANT_INDEX_TYPES:
            continue
        return f"{_tensor_label(t)} is not 8-bit quantized"
    return None


def _op_rank_issue(model: Any, op: Any) -> str | None:
    """Activations: at most 3 dims with size > 1, all of them innermost (weights are exempt)."""
    for ti in (*op.inputs, *op.outputs):
        if ti < 0:
            continue
        t = model.tensor(ti)
        if t.constant or t.rank <= 3:
            continue
        if any(d != 1 for d in t.shape[:-3]):
            return f"{_tensor_label(t)} has size > 1 outside its 3 innermost dimensions"
    return None


def _tail_ops(model: Any) -> tuple[set[int], set[int]]:
    """(post-processing tail, input boundary) op indices.

    Tail: CUSTOM TFLite_Detection_PostProcess, and DEQUANTIZE ops whose outputs only reach graph
    outputs or tail ops. Input boundary: QUANTIZE of a float graph input (runs on the CPU before the
    TPU subgraph).
    """
    consumers: dict[int, list[int]] = {}
    for op in model.ops:
        for ti in op.inputs:
            if ti >= 0:
                consumers.setdefault(ti, []).append(op.index)
    graph_outputs = set(model.outputs)
    graph_inputs = set(model.inputs)
    tail: set[int] = set()
    for op in reversed(model.ops):
        if op.name == "CUSTOM" and op.custom_code == POSTPROCESS_CUSTOM_CODE:
            tail.add(op.index)
        elif op.name == "DEQUANTIZE" and all(
            ti in graph_outputs or all(c in tail for c in consumers.get(ti, [])) for ti in op.outputs
        ):
            tail.add(op.index)
    boundary = {
        op.index
        for op in model.ops
        if op.name == "QUANTIZE"
        and op.inputs
        and op.inputs[0] in graph_inputs
        and model.tensor(op.inputs[0]).type not in EIGHT_BIT_TYPES
    }
    return tail, boundary


def analyze(model: Any) -> dict[str, Any]:
    """Pre-flight verdict for a parsed `tflite_model.TFLiteModel` (no file access)."""
    reasons: list[str] = []
    warnings: list[str] = []
    tail, boundary = _tail_ops(model)

    rows = []
    first_cpu: dict[str, Any] | None = None
    version_problems: dict[tuple[str, int], list[int]] = {}
    version_text: dict[tuple[str, int], str] = {}
    for op in model.ops:
        role = (
            "postprocess_tail" if op.index in tail else "input_boundary" if op.index in boundary else "body"
        )
        supported = op.name in EDGETPU_SUPPORTED_OPS
        q_issue = _op_quantization_issue(model, op)
        r_issue = _op_rank_issue(model, op)
        v_issue = check_op_version(op.name, op.version, op.custom_code)
        if v_issue:
            key = (op.label, op.version)
            version_problems.setdefault(key, []).append(op.index)
            version_text[key] = v_issue
        issues = [i for i in (v_issue,) if i]
        if role == "body":
            blockers = []
            if not supported:
                blockers.append(f"{op.label} is not on the Edge TPU supported-op list")
            if q_issue:
                blockers.append(q_issue)
            if r_issue:
                blockers.append(r_issue)
            issues += blockers
            if blockers and first_cpu is None:
                first_cpu = {"index": op.index, "name": op.label, "version": op.version, "why": blockers}
        on_tpu = role == "body" and first_cpu is None
        rows.append(
            {
                "index": op.index,
                "name": op.name,
                "custom_code": op.custom_code,
                "version": op.version,
                "max_version": OP_MAX_VERSION.get(op.name, (None, ""))[0]
                if op.name != "CUSTOM"
                else CUSTOM_MAX_VERSION.get(op.custom_code or ""),
                "version_ok": v_issue is None,
                "supported": supported,
                "quantized": q_issue is None,
                "rank_ok": r_issue is None,
                "role": role,
                "on_tpu_expected": on_tpu,
                "note": EDGETPU_SUPPORTED_OPS.get(op.name, ""),
                "issues": issues,
            }
        )

    # 1. op versions the compiler cannot parse: it stops before mapping anything.
    for (label, version), indices in sorted(version_problems.items()):
        name = label.split("(")[0]
        reasons.append(
            f"op {_indices(indices)}: {version_text[(label, version)]}; the compiler would stop with "
            f"\"Didn't find op for builtin opcode '{name}' version '{version}'\" — convert with settings "
            f"(or a TF/converter release) that emit an older {name} version"
        )

    # 2. static shapes, batch 1.
    dynamic = [t for t in model.tensors if t.dynamic]
    if dynamic:
        inputs_dyn = [t for t in dynamic if t.index in set(model.inputs)]
        shown = inputs_dyn[0] if inputs_dyn else dynamic[0]
        reasons.append(
            f"{_tensor_label(shown)} has dynamic shape signature {list(shown.shape_signature)} "
            f"({len(dynamic)} dynamic tensor(s)); the Edge TPU needs static shapes with batch 1 — fix the "
            f"input shape before converting (e.g. keras.Input(shape, batch_size=1) or a concrete function "
            f"with a [1, H, W, 3] TensorSpec)"
        )
    for t in model.input_tensors:
        if t.rank >= 2 and t.shape[0] != 1 and not t.dynamic:
            reasons.append(f"input {_tensor_label(t)} has batch {t.shape[0]}; export with batch size 1")

    # 3. one TPU subgraph: the first op the TPU cannot run, and everything after it, runs on the CPU.
    body = [r for r in rows if r["role"] == "body"]
    cpu_after = [r for r in body if not r["on_tpu_expected"]]
    if first_cpu is not None:
        after = [r for r in cpu_after if r["index"] != first_cpu["index"]]
        hint = REPLACEMENT_HINTS.get(first_cpu["name"].split("(")[0], "")
        if any("not 8-bit quantized" in w or "quantization parameters" in w for w in first_cpu["why"]):
            fix = (
                "convert with full-integer quantization (optimizations=[DEFAULT], a representative dataset, "
                "supported_ops=[TFLITE_BUILTINS_INT8], uint8/int8 input)"
            )
        elif any("innermost" in w for w in first_cpu["why"]):
            fix = "reshape so tensors have at most 3 dimensions larger than 1"
        else:
            fix = f"replace it with an op from {CORAL_OPS_URL}" + (f" ({hint})" if hint else "")
        after_text = (
            f"it and the {len(after)} op(s) after it ({_op_list(after)}) would run on the CPU"
            if after
            else "it would run on the CPU"
        )
        reasons.append(
            f"op {first_cpu['index']} {first_cpu['name']} (v{first_cpu['version']}) cannot run on the Edge "
            "TPU: "
            f"{'; '.join(first_cpu['why'])}; {after_text}; fix: {fix}"
        )
    if not body:
        reasons.append(
            "the model has no ops before the post-processing tail; nothing would run on the Edge TPU"
        )

    if model.subgraph_count > 1:
        warnings.append(
            f"the model has {model.subgraph_count} subgraphs (control flow); only the main subgraph was "
            "checked "
            "and control-flow ops do not run on the Edge TPU"
        )
    notes_seen = sorted({r["name"] for r in rows if r["on_tpu_expected"] and r["note"]})
    for name in notes_seen:
        warnings.append(f"{name}: Edge TPU limit — {EDGETPU_SUPPORTED_OPS[name]} (checked by the compiler)")

    tpu_counts = Counter(r["name"] for r in rows if r["on_tpu_expected"])
    cpu_counts = Counter(r["name"] for r in rows if not r["on_tpu_expected"])
    return {
        "ok": not reasons,
        "reasons": reasons,
        "warnings": warnings,
        "compiler_target": COMPILER_TARGET_VERSION,
        "op_version_cutoff_tf": OP_VERSION_CUTOFF_TF,
        "ops": rows,
        "expected_tpu_ops": dict(sorted(tpu_counts.items())),
        "expected_cpu_ops": dict(sorted(cpu_counts.items())),
        "expected_tpu_op_count": sum(tpu_counts.values()),
        "expected_cpu_op_count": sum(cpu_counts.values()),
        "first_cpu_op": first_cpu,
        "cpu_ops_after_first": [
            r["index"] for r in cpu_after if first_cpu and r["index"] != first_cpu["index"]
        ],
        "tail_ops": sorted(tail),
        "boundary_ops": sorted(boundary),
        "inputs": [t.details() for t in model.input_tensors],
        "outputs": [t.details() for t in model.output_tensors],
        "subgraphs": model.subgraph_count,
        "total_ops": len(model.ops),
    }


def _indices(indices: list[int]) -> str:
    if len(indices) <= 8:
        return ", ".join(str(i) for i in indices)
    return f"{indices[0]}..{indices[-1]} ({len(indices)} ops)"


def _op_list(rows: list[dict[str, Any]], limit: int = 12) -> str:
    parts = [f"{r['index']} {r['name']}" for r in rows[:limit]]
    if len(rows) > limit:
        parts.append(f"... {len(rows) - limit} more")
    return ", ".join(parts)


def preflight(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a .tflite file and return the pre-flight dict (`ok`, `reasons`, `ops`, ...)."""
    from edgetpu_retrain.export.flatbuffer import TFLiteReadError, read_model

    path = Path(path)
    require_file(path, what="TFLite model")
    try:
        model = read_model(path)
    except TFLiteReadError as exc:
        raise UserError(f"{path}: {exc}; pass the .tflite written by the tflite step") from exc
    result = analyze(model)
    result["model"] = {"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size}
    return result


# ------------------------------------------------------------------------------- compiler output

_SIZE_UNITS = {
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMG]i?B|B)\s*$")


def parse_size(text: str) -> int | None:
    """'3.91MiB' -> 4099932 (bytes, rounded; the compiler prints 2 decimals)."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    return int(round(float(m.group(1)) * _SIZE_UNITS[m.group(2)]))


_LINE_FIELDS = {
    "compiler_version": re.compile(r"^Edge TPU Compiler version (\S+)", re.M),
    "timeout_s": re.compile(r"^Started a compilation timeout timer of (\d+) seconds", re.M),
    "compile_time_ms": re.compile(r"^Model compiled successfully in (\d+) ms", re.M),
    "input_model": re.compile(r"^Input model: (.+?)\s*$", re.M),
    "input_size": re.compile(r"^Input size: (.+?)\s*$", re.M),
    "output_model": re.compile(r"^Output model: (.+?)\s*$", re.M),
    "output_size": re.compile(r"^Output size: (.+?)\s*$", re.M),
    "on_chip_memory_used": re.compile(r"^On-chip memory used for caching model parameters: (.+?)\s*$", re.M),
    "on_chip_memory_remaining": re.compile(
        r"^On-chip memory remaining for caching model parameters: (.+?)\s*$", re.M
    ),
    "off_chip_memory_used": re.compile(
        r"^Off-chip memory used for streaming uncached model parameters: (.+?)\s*$", re.M
    ),
    "tpu_subgraphs": re.compile(r"^Number of Edge TPU subgraphs: (\d+)", re.M),
    "total_ops": re.compile(r"^Total number of operations: (\d+)", re.M),
    "operation_log": re.compile(r"^Operation log: (.+?)\s*$", re.M),
    "ops_on_tpu": re.compile(r"^Number of operations that will run on Edge TPU: (\d+)", re.M),
    "ops_on_cpu": re.compile(r"^Number of operations that will run on CPU: (\d+)", re.M),
}
_INT_FIELDS = {"timeout_s", "compile_time_ms", "tpu_subgraphs", "total_ops", "ops_on_tpu", "ops_on_cpu"}
_SIZE_FIELDS = {
    "input_size",
    "output_size",
    "on_chip_memory_used",
    "on_chip_memory_remaining",
    "off_chip_memory_used",
}
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_MAPPED = "Mapped to Edge TPU"
_VERSION_ERROR = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)' version '(\d+)'")


def parse_compiler_output(text: str) -> dict[str, Any]:
    """Figures from `edgetpu_compiler -s` stdout (the `Key: value` lines and the op table of compiler 16)."""
    out: dict[str, Any] = {}
    for key, pattern in _LINE_FIELDS.items():
        m = pattern.search(text)
        value: Any = m.group(1) if m else None
        if value is not None and key in _INT_FIELDS:
            value = int(value)
        out[key] = value
        if key in _SIZE_FIELDS:
            out[f"{key}_bytes"] = parse_size(value) if value is not None else None

    # The per-op table printed with -s: "Operator  Count  Status".
    table: list[dict[str, Any]] = []
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(r"^Operator\s+Count\s+Status\s*$", line))
    except StopIteration:
        start = None
    if start is not None:
        for line in lines[start + 1 :]:
            m = _TABLE_ROW.match(line)
            if m:
                status = m.group(3)
                table.append(
                    {
                        "op": m.group(1),
                        "count": int(m.group(2)),
                        "status": status,
                        "mapped": status == _MAPPED,
                    }
                )
            elif line.strip():
                break
    tpu_ops: Counter[str] = Counter()
    cpu_ops: Counter[str] = Counter()
    for row in table:
        (tpu_ops if row["mapped"] else cpu_ops)[row["op"]] += row["count"]
    out["op_table"] = table
    out["tpu_ops"] = dict(sorted(tpu_ops.items()))
    out["cpu_ops"] = dict(sorted(cpu_ops.items()))

    # Errors: "ERROR: ..." lines, "Invalid model: X" + the reason on the next line, internal errors.
    errors: list[str] = []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("ERROR:"):
            errors.append(s[len("ERROR:") :].strip())
        elif s.startswith("Invalid model:"):
            nxt = next((x.strip() for x in lines[i + 1 :] if x.strip()), "")
            errors.append(f"{s}: {nxt}" if nxt else s)
        elif (
            s.startswith("Internal compiler error")
            or s.startswith("Compilation failed")
            or "timed out" in s.lower()
        ):
            errors.append(s)
    out["error"] = "; ".join(errors) if errors else None
    vm = _VERSION_ERROR.search(text)
    out["unsupported_op_version"] = {"op": vm.group(1), "version": int(vm.group(2))} if vm else None
    out["success"] = out["compile_time_ms"] is not None and not errors

    # With no "will run on" lines a successful compile mapped everything (the all-mapped report).
    if out["success"] and out["total_ops"] is not None and out["ops_on_tpu"] is None:
        if (out["tpu_subgraphs"] or 0) > 0 and not cpu_ops:
            out["ops_on_tpu"], out["ops_on_cpu"] = out["total_ops"], 0
    return out


# ----------------------------------------------------------------------------------------- compile


def find_compiler(explicit: str | None) -> str | None:
    if explicit:
        found = shutil.which(explicit)
        if not found and os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            found = explicit
        if not found:
            raise UserError(
                f"{explicit}: edgetpu_compiler not found or not executable; fix --compiler or drop it"
            )
        return str(Path(found).resolve())
    found = shutil.which(COMPILER_NAME)
    return str(Path(found).resolve()) if found else None


def compile_model(
    compiler: str, tflite: Path, out_dir: Path, *, timeout: int = DEFAULT_TIMEOUT_S
) -> tuple[dict[str, Any], Path | None, int]:
    """Run the compiler into a temp dir beside OUT; move its outputs into OUT.

    Returns (figures, compiled model path or None, return code). Writes OUT/edgetpu_compiler.txt.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = tflite.stem
    compiled_name, log_name = f"{stem}_edgetpu.tflite", f"{stem}_edgetpu.log"
    for stale in (compiled_name, log_name, COMPILER_STDOUT):  # a failed re-run must not leave an old model
        (out_dir / stale).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".edgetpu_compiler.", dir=out_dir))
    cmd = [compiler, "-s", "-o", str(tmp), "-t", str(int(timeout)), str(tflite)]
    log.info("running %s", " ".join(cmd))
    try:
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout + TIMEOUT_MARGIN_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise UserError(
                f"{tflite}: edgetpu_compiler did not finish within {timeout + TIMEOUT_MARGIN_S} s; "
                "raise --timeout or check the model size"
            ) from exc
        except OSError as exc:
            raise UserError(
                f"{compiler}: cannot run edgetpu_compiler ({exc}); it runs on x86-64 Linux only"
            ) from exc
        text = proc.stdout + (("\n" + proc.stderr) if proc.stderr.strip() else "")
        write_text(out_dir / COMPILER_STDOUT, text)
        for line in text.splitlines():
            if line.strip():
                log.info("edgetpu_compiler: %s", line.rstrip())
        figures = parse_compiler_output(text)
        figures["returncode"] = proc.returncode
        produced = tmp / compiled_name
        if not produced.is_file() and figures.get("output_model"):
            produced = tmp / Path(figures["output_model"]).name
        compiled: Path | None = None
        if proc.returncode == 0 and figures["success"] and produced.is_file():
            compiled = out_dir / compiled_name
            os.replace(produced, compiled)
        if (tmp / log_name).is_file():
            os.replace(tmp / log_name, out_dir / log_name)
            figures["operation_log_path"] = str((out_dir / log_name).resolve())
        else:
            figures["operation_log_path"] = None
        figures["compiled_model"] = str(compiled.resolve()) if compiled else None
        return figures, compiled, proc.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compile_failure(
    tflite: Path,
    figures: dict[str, Any],
    returncode: int,
    preflight_result: dict[str, Any],
    *,
    allow_cpu_ops: bool,
) -> str | None:
    """One-line reason the compile result is not acceptable, or None."""
    if returncode != 0 or not figures["success"] or figures.get("compiled_model") is None:
        error = figures.get("error") or f"exit code {returncode}, no compiled model written"
        if figures.get("unsupported_op_version"):
            v = figures["unsupported_op_version"]
            fix = (
                f"{v['op']} version {v['version']} is too new for compiler 16; "
                "convert so it emits an older version"
            )
        elif "not quantized" in error.lower():
            fix = "convert with full-integer quantization (the tflite step's model_int8.tflite)"
        else:
            fix = "see edgetpu_compiler.txt in the output folder"
        return f"{tflite}: edgetpu_compiler failed: {error}; {fix}"
    if not figures.get("tpu_subgraphs"):
        cpu = ", ".join(f"{k} x{n}" for k, n in figures["cpu_ops"].items()) or "all ops"
        statuses = sorted({r["status"] for r in figures["op_table"] if not r["mapped"]})
        return (
            f"{tflite}: no Edge TPU subgraph: 0 of {figures.get('total_ops')} ops mapped ({cpu} on the CPU"
            f"{': ' + '; '.join(statuses) if statuses else ''}); check preflight.json and re-quantize the "
            "model"
        )
    allowed = set(TAIL_OP_TYPES) | {r["name"] for r in preflight_result.get("ops", []) if r["role"] != "body"}
    unexpected = {k: n for k, n in figures["cpu_ops"].items() if k not in allowed}
    if unexpected and not allow_cpu_ops:
        rows = [r for r in figures["op_table"] if not r["mapped"] and r["op"] in unexpected]
        detail = "; ".join(f"{r['op']} x{r['count']}: {r['status']}" for r in rows)
        return (
            f"{tflite}: {sum(unexpected.values())} op(s) besides the post-processing tail would run on the "
            "CPU "
            f"({detail}); make them Edge TPU compatible or pass --allow-cpu-ops"
        )
    return None


# -------------------------------------------------------------------------------------------- verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tflite", required=True, help="full-int8 .tflite (the tflite step's model_int8.tflite)"
    )
    parser.add_argument(
        "--out", required=True, help="output folder: preflight.json, <stem>_edgetpu.tflite, logs"
    )
    parser.add_argument(
        "--require-compiler", action="store_true", help="fail when edgetpu_compiler is not available"
    )
    parser.add_argument(
        "--allow-cpu-ops",
        action="store_true",
        help="accept ops other than the post-processing tail on the CPU",
    )
    parser.add_argument(
        "--compiler", default=None, help="path to edgetpu_compiler (default: look it up on PATH)"
    )
    parser.add_argument(
        "--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="compiler timeout in seconds (-t), default 180"
    )


# The pre-flight keys of the JSON line (the per-op table stays in preflight.json); promote reads them too.
SUMMARY_KEYS = (
    "ok", "reasons", "warnings", "expected_tpu_op_count", "expected_cpu_op_count", "expected_tpu_ops",
    "expected_cpu_ops", "first_cpu_op", "compiler_target", "total_ops",
)  # fmt: skip


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The pre-flight without its per-op table (that stays in preflight.json)."""
    return {k: result.get(k) for k in SUMMARY_KEYS}


def _clear_previous_outputs(out_dir: Path, stem: str) -> None:
    """A re-run must not leave an older compiled model or result that looks like this run's."""
    for name in (f"{stem}_edgetpu.tflite", f"{stem}_edgetpu.log", COMPILER_STDOUT, STEP_RESULT):
        (out_dir / name).unlink(missing_ok=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    tflite = require_file(args.tflite, what="TFLite model").resolve()
    out_dir = Path(args.out).resolve()
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout}: must be a positive number of seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_previous_outputs(out_dir, tflite.stem)

    result = preflight(tflite)
    preflight_path = out_dir / "preflight.json"
    write_json(preflight_path, result)
    log.info(
        "pre-flight %s: %d op(s) expected on the Edge TPU, %d on the CPU",
        "ok" if result["ok"] else "FAILED",
        result["expected_tpu_op_count"],
        result["expected_cpu_op_count"],
    )
    for reason in result["reasons"]:
        log.error("pre-flight: %s", reason)
    if not result["ok"]:
        more = f" (+{len(result['reasons']) - 1} more)" if len(result["reasons"]) > 1 else ""
        raise UserError(
            f"{tflite}: Edge TPU pre-flight failed: {result['reasons'][0]}{more}; details in {preflight_path}"
        )

    line: dict[str, Any] = {
        "preflight": _summary(result),
        "preflight_path": str(preflight_path),
        "compiled": None,
        "compiler": None,
        "out_dir": str(out_dir),
    }
    compiler = find_compiler(args.compiler)
    if compiler is None:
        log.warning(NOT_FOUND_MESSAGE)
        if args.require_compiler:
            raise UserError(f"{tflite}: {NOT_FOUND_MESSAGE} (--require-compiler is set)")
        write_json(out_dir / STEP_RESULT, line)
        return line

    figures, compiled, returncode = compile_model(compiler, tflite, out_dir, timeout=args.timeout)
    line["compiler"] = figures
    problem = compile_failure(tflite, figures, returncode, result, allow_cpu_ops=args.allow_cpu_ops)
    if problem:
        if compiled is not None:  # keep the logs for diagnosis, but no model that looks like a good one
            compiled.unlink(missing_ok=True)
        raise UserError(problem)
    if figures.get("ops_on_tpu") is not None and figures["ops_on_tpu"] != result["expected_tpu_op_count"]:
        log.warning(
            "the compiler mapped %s op(s) to the Edge TPU, the pre-flight expected %s; see %s",
            figures["ops_on_tpu"],
            result["expected_tpu_op_count"],
            out_dir / COMPILER_STDOUT,
        )
    line["compiled"] = str(compiled) if compiled else None
    log.info(
        "compiled %s: %s op(s) on the Edge TPU, %s on the CPU, on-chip cache %s, off-chip %s",
        compiled,
        figures.get("ops_on_tpu"),
        figures.get("ops_on_cpu"),
        figures.get("on_chip_memory_used"),
        figures.get("off_chip_memory_used"),
    )
    write_json(out_dir / STEP_RESULT, line)
    return line
