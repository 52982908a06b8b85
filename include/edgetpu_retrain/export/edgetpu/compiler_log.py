"""Parse `edgetpu_compiler -s` stdout (compiler 16): the `Key: value` lines, the op table, the errors.

Shared by the `edgetpu` step and by promote/report, which read the kept `edgetpu_compiler.txt`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

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
_TABLE_HEADER = re.compile(r"^Operator\s+Count\s+Status\s*$")
_TABLE_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_MAPPED = "Mapped to Edge TPU"
_VERSION_ERROR = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)' version '(\d+)'")


def _line_fields(text: str) -> dict[str, Any]:
    """The `Key: value` lines; ints and sizes (plus `<key>_bytes`) converted, None when absent."""
    out: dict[str, Any] = {}
    for key, pattern in _LINE_FIELDS.items():
        m = pattern.search(text)
        value: Any = m.group(1) if m else None
        if value is not None and key in _INT_FIELDS:
            value = int(value)
        out[key] = value
        if key in _SIZE_FIELDS:
            out[f"{key}_bytes"] = parse_size(value) if value is not None else None
    return out


def _op_table(lines: list[str]) -> list[dict[str, Any]]:
    """The per-op table printed with -s: "Operator  Count  Status" and its rows up to the next text."""
    start = next((i for i, line in enumerate(lines) if _TABLE_HEADER.match(line)), None)
    if start is None:
        return []
    table: list[dict[str, Any]] = []
    for line in lines[start + 1 :]:
        m = _TABLE_ROW.match(line)
        if m:
            status = m.group(3)
            table.append(
                {"op": m.group(1), "count": int(m.group(2)), "status": status, "mapped": status == _MAPPED}
            )
        elif line.strip():
            break
    return table


def _errors(lines: list[str]) -> list[str]:
    """ "ERROR: ..." lines, "Invalid model: X" + the reason on the next line, internal errors."""
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
    return errors


def parse_compiler_output(text: str) -> dict[str, Any]:
    """Figures from `edgetpu_compiler -s` stdout (the `Key: value` lines and the op table of compiler 16)."""
    out = _line_fields(text)
    lines = text.splitlines()
    table = _op_table(lines)
    tpu_ops: Counter[str] = Counter()
    cpu_ops: Counter[str] = Counter()
    for row in table:
        (tpu_ops if row["mapped"] else cpu_ops)[row["op"]] += row["count"]
    out["op_table"] = table
    out["tpu_ops"] = dict(sorted(tpu_ops.items()))
    out["cpu_ops"] = dict(sorted(cpu_ops.items()))

    errors = _errors(lines)
    out["error"] = "; ".join(errors) if errors else None
    vm = _VERSION_ERROR.search(text)
    out["unsupported_op_version"] = {"op": vm.group(1), "version": int(vm.group(2))} if vm else None
    out["success"] = out["compile_time_ms"] is not None and not errors

    # With no "will run on" lines a successful compile mapped everything (the all-mapped report).
    if out["success"] and out["total_ops"] is not None and out["ops_on_tpu"] is None:
        if (out["tpu_subgraphs"] or 0) > 0 and not cpu_ops:
            out["ops_on_tpu"], out["ops_on_cpu"] = out["total_ops"], 0
    return out
