"""Edge TPU pre-flight: what compiler 16 will say about a parsed .tflite, without running it.

Pure Python over the flatbuffer reader (no TensorFlow import). Each rule is one named check that
returns its reasons; `analyze` runs them in a fixed order so the verdict reads the same every run.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, require_file, sha256_file
from edgetpu_retrain.export.edgetpu.tables import (
    COMPILER_TARGET_VERSION,
    CONSTANT_INDEX_TYPES,
    CORAL_OPS_URL,
    CUSTOM_MAX_VERSION,
    EDGETPU_SUPPORTED_OPS,
    EIGHT_BIT_TYPES,
    OP_MAX_VERSION,
    OP_VERSION_CUTOFF_TF,
    POSTPROCESS_CUSTOM_CODE,
    REPLACEMENT_HINTS,
)

ROLE_BODY = "body"
ROLE_TAIL = "postprocess_tail"
ROLE_BOUNDARY = "input_boundary"


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


# ------------------------------------------------------------------------------------ per-op rules


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


def _max_version(op: Any) -> int | None:
    if op.name == "CUSTOM":
        return CUSTOM_MAX_VERSION.get(op.custom_code or "")
    return OP_MAX_VERSION.get(op.name, (None, ""))[0]


def _op_row(model: Any, op: Any, role: str) -> tuple[dict[str, Any], list[str]]:
    """(the op's preflight.json row without `on_tpu_expected`, what keeps a body op off the TPU)."""
    supported = op.name in EDGETPU_SUPPORTED_OPS
    q_issue = _op_quantization_issue(model, op)
    r_issue = _op_rank_issue(model, op)
    v_issue = check_op_version(op.name, op.version, op.custom_code)
    blockers: list[str] = []
    if role == ROLE_BODY:
        if not supported:
            blockers.append(f"{op.label} is not on the Edge TPU supported-op list")
        blockers += [i for i in (q_issue, r_issue) if i]
    row = {
        "index": op.index,
        "name": op.name,
        "custom_code": op.custom_code,
        "version": op.version,
        "max_version": _max_version(op),
        "version_ok": v_issue is None,
        "supported": supported,
        "quantized": q_issue is None,
        "rank_ok": r_issue is None,
        "role": role,
        "on_tpu_expected": False,
        "note": EDGETPU_SUPPORTED_OPS.get(op.name, ""),
        "issues": [i for i in (v_issue,) if i] + blockers,
    }
    return row, blockers


def _op_rows(
    model: Any, tail: set[int], boundary: set[int]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every op's row, in execution order, and the first body op the TPU cannot run (or None).

    One TPU subgraph: that op and every op after it are expected on the CPU.
    """
    rows: list[dict[str, Any]] = []
    first_cpu: dict[str, Any] | None = None
    for op in model.ops:
        role = ROLE_TAIL if op.index in tail else ROLE_BOUNDARY if op.index in boundary else ROLE_BODY
        row, blockers = _op_row(model, op, role)
        if blockers and first_cpu is None:
            first_cpu = {"index": op.index, "name": op.label, "version": op.version, "why": blockers}
        row["on_tpu_expected"] = role == ROLE_BODY and first_cpu is None
        rows.append(row)
    return rows, first_cpu


# ------------------------------------------------------------------------------ model-wide checks


def _version_reasons(model: Any) -> list[str]:
    """Op versions the compiler cannot parse: it stops before mapping anything."""
    problems: dict[tuple[str, int], list[int]] = {}
    text: dict[tuple[str, int], str] = {}
    for op in model.ops:
        issue = check_op_version(op.name, op.version, op.custom_code)
        if issue:
            key = (op.label, op.version)
            problems.setdefault(key, []).append(op.index)
            text[key] = issue
    reasons = []
    for (label, version), indices in sorted(problems.items()):
        name = label.split("(")[0]
        reasons.append(
            f"op {_indices(indices)}: {text[(label, version)]}; the compiler would stop with "
            f"\"Didn't find op for builtin opcode '{name}' version '{version}'\" — convert with settings "
            f"(or a TF/converter release) that emit an older {name} version"
        )
    return reasons


def _shape_reasons(model: Any) -> list[str]:
    """Static shapes, batch 1."""
    reasons = []
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
    return reasons


def _first_cpu_fix(first_cpu: dict[str, Any]) -> str:
    why = first_cpu["why"]
    if any("not 8-bit quantized" in w or "quantization parameters" in w for w in why):
        return (
            "convert with full-integer quantization (optimizations=[DEFAULT], a representative dataset, "
            "supported_ops=[TFLITE_BUILTINS_INT8], uint8/int8 input)"
        )
    if any("innermost" in w for w in why):
        return "reshape so tensors have at most 3 dimensions larger than 1"
    hint = REPLACEMENT_HINTS.get(first_cpu["name"].split("(")[0], "")
    return f"replace it with an op from {CORAL_OPS_URL}" + (f" ({hint})" if hint else "")


def _subgraph_reasons(rows: list[dict[str, Any]], first_cpu: dict[str, Any] | None) -> list[str]:
    """One TPU subgraph: the first op the TPU cannot run, and everything after it, runs on the CPU."""
    reasons = []
    body = [r for r in rows if r["role"] == ROLE_BODY]
    if first_cpu is not None:
        after = _cpu_after_first(rows, first_cpu)
        after_text = (
            f"it and the {len(after)} op(s) after it ({_op_list(after)}) would run on the CPU"
            if after
            else "it would run on the CPU"
        )
        reasons.append(
            f"op {first_cpu['index']} {first_cpu['name']} (v{first_cpu['version']}) cannot run on the Edge "
            "TPU: "
            f"{'; '.join(first_cpu['why'])}; {after_text}; fix: {_first_cpu_fix(first_cpu)}"
        )
    if not body:
        reasons.append(
            "the model has no ops before the post-processing tail; nothing would run on the Edge TPU"
        )
    return reasons


def _warnings(model: Any, rows: list[dict[str, Any]]) -> list[str]:
    warnings = []
    if model.subgraph_count > 1:
        warnings.append(
            f"the model has {model.subgraph_count} subgraphs (control flow); only the main subgraph was "
            "checked "
            "and control-flow ops do not run on the Edge TPU"
        )
    notes_seen = sorted({r["name"] for r in rows if r["on_tpu_expected"] and r["note"]})
    for name in notes_seen:
        warnings.append(f"{name}: Edge TPU limit — {EDGETPU_SUPPORTED_OPS[name]} (checked by the compiler)")
    return warnings


def _cpu_after_first(rows: list[dict[str, Any]], first_cpu: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Body ops after the first CPU op (they fall to the CPU with it)."""
    if first_cpu is None:
        return []
    return [
        r
        for r in rows
        if r["role"] == ROLE_BODY and not r["on_tpu_expected"] and r["index"] != first_cpu["index"]
    ]


# ------------------------------------------------------------------------------------------ verdict


def analyze(model: Any) -> dict[str, Any]:
    """Pre-flight verdict for a parsed `flatbuffer.TFLiteModel` (no file access)."""
    tail, boundary = _tail_ops(model)
    rows, first_cpu = _op_rows(model, tail, boundary)
    reasons = _version_reasons(model) + _shape_reasons(model) + _subgraph_reasons(rows, first_cpu)
    tpu_counts = Counter(r["name"] for r in rows if r["on_tpu_expected"])
    cpu_counts = Counter(r["name"] for r in rows if not r["on_tpu_expected"])
    return {
        "ok": not reasons,
        "reasons": reasons,
        "warnings": _warnings(model, rows),
        "compiler_target": COMPILER_TARGET_VERSION,
        "op_version_cutoff_tf": OP_VERSION_CUTOFF_TF,
        "ops": rows,
        "expected_tpu_ops": dict(sorted(tpu_counts.items())),
        "expected_cpu_ops": dict(sorted(cpu_counts.items())),
        "expected_tpu_op_count": sum(tpu_counts.values()),
        "expected_cpu_op_count": sum(cpu_counts.values()),
        "first_cpu_op": first_cpu,
        "cpu_ops_after_first": [r["index"] for r in _cpu_after_first(rows, first_cpu)],
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
