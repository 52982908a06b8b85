"""How much of a model runs on the Edge TPU, from the edgetpu step's outputs (the card and the report).

The compiler's own figures win; without them the pre-flight's estimate is used, and said so.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from edgetpu_retrain.export.edgetpu import COMPILER_STDOUT, SUMMARY_KEYS, parse_compiler_output

PREFLIGHT_KEYS = tuple(k for k in SUMMARY_KEYS if k not in ("ok", "reasons"))  # the card's preflight_details
_LOG_KEYS = ("ops_on_tpu", "ops_on_cpu", "total_ops", "tpu_subgraphs", "op_table")
_TABLE_KEYS = ("op_table", "operators", "ops_table")


def compiler_from_folder(folder: str | Path) -> dict[str, Any] | None:
    """Compiler figures from the stdout the edgetpu step keeps in its folder, or None if it did not run."""
    stdout = Path(folder) / COMPILER_STDOUT
    if not stdout.is_file():
        return None
    return {
        **parse_compiler_log(stdout.read_text(encoding="utf-8", errors="replace")),
        "stdout": str(stdout.resolve()),
    }


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Op counts and the `Operator Count Status` table of `edgetpu_compiler -s` stdout (only those found).

    The parsing itself is the edgetpu step's (`edgetpu.parse_compiler_output`), so the key names match.
    """
    figures = parse_compiler_output(text)
    return {k: figures[k] for k in _LOG_KEYS if figures[k] not in (None, [])}


def _read_log(value: str) -> str:
    if "\n" not in value and len(value) < 4096:
        with contextlib.suppress(OSError, ValueError):
            if Path(value).is_file():
                return Path(value).read_text(encoding="utf-8", errors="replace")
    return value


def _figures(compiler: dict[str, Any] | None) -> dict[str, Any]:
    """The compiler dict, plus what a compiler stdout text or path under a `log`/`stdout` key says."""
    figures: dict[str, Any] = {}
    if isinstance(compiler, dict):
        for key, value in sorted(compiler.items()):
            if isinstance(value, str) and ("log" in key.lower() or "stdout" in key.lower()):
                figures.update(
                    {k: v for k, v in parse_compiler_log(_read_log(value)).items() if k not in compiler}
                )
        figures.update(compiler)
    return figures


def _counts(figures: dict[str, Any]) -> dict[str, Any]:
    """tpu/cpu/total/subgraphs/cpu_ops from differently spelled count keys."""
    cov: dict[str, Any] = {}
    for key, value in sorted(figures.items()):
        k = key.lower()
        if isinstance(value, dict) and "cpu" in k and all(isinstance(v, int) for v in value.values()):
            cov["cpu_ops"] = dict(sorted(value.items()))
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if "subgraph" in k:
            cov["subgraphs"] = value
        elif "op" not in k:
            continue
        elif "cpu" in k or "unmapped" in k:
            cov["cpu"] = value
        elif "tpu" in k or "mapped" in k:
            cov["tpu"] = value
        elif "total" in k or k in ("ops", "num_ops", "operations"):
            cov["total"] = value
    return cov


def _add_table(cov: dict[str, Any], figures: dict[str, Any]) -> None:
    """Fill what the counts left open from the per-operator table (`mapped` or a `Mapped...` status)."""
    rows = next((figures[k] for k in _TABLE_KEYS if isinstance(figures.get(k), list)), None)
    if not rows or not all(isinstance(r, dict) for r in rows):
        return

    def on_tpu(r: dict[str, Any]) -> bool:
        return bool(r["mapped"]) if "mapped" in r else str(r.get("status", "")).startswith("Mapped")

    cov.setdefault("tpu", sum(int(r.get("count", 0)) for r in rows if on_tpu(r)))
    cov.setdefault("total", sum(int(r.get("count", 0)) for r in rows))
    cov.setdefault(
        "cpu_ops",
        {
            str(r.get("op")): int(r.get("count", 0))
            for r in sorted(rows, key=lambda r: str(r.get("op")))
            if not on_tpu(r)
        },
    )


def _preflight_estimate(preflight: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(preflight, dict) or not isinstance(preflight.get("expected_tpu_op_count"), int):
        return None
    cov = {
        "tpu": preflight["expected_tpu_op_count"],
        "cpu": preflight.get("expected_cpu_op_count"),
        "source": "pre-flight estimate",
    }
    if isinstance(cov["cpu"], int):
        cov["total"] = cov["tpu"] + cov["cpu"]
    if isinstance(preflight.get("expected_cpu_ops"), dict):
        cov["cpu_ops"] = dict(sorted(preflight["expected_cpu_ops"].items()))
    return cov


def op_coverage(
    compiler: dict[str, Any] | None, preflight: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """{tpu, cpu, total, subgraphs, cpu_ops, source} from the compiler figures, else the pre-flight estimate.

    Reads the edgetpu step's figures (`ops_on_tpu`, `ops_on_cpu`, `total_ops`, `tpu_subgraphs`, `op_table`,
    `cpu_ops`), tolerates other spellings (`tpu_ops`, `num_ops_cpu`, ...) and a compiler stdout text or
    path under a `log`/`stdout` key. Without compiler figures, falls back to the pre-flight's
    `expected_tpu_op_count` / `expected_cpu_op_count` (source "pre-flight estimate"). None if neither.
    """
    figures = _figures(compiler)
    cov = _counts(figures)
    _add_table(cov, figures)
    if "total" not in cov and "tpu" in cov and "cpu" in cov:
        cov["total"] = cov["tpu"] + cov["cpu"]
    if "cpu" not in cov and "tpu" in cov and "total" in cov:
        cov["cpu"] = cov["total"] - cov["tpu"]
    if "tpu" in cov or "cpu" in cov:
        cov["source"] = "compiler"
    else:
        estimate = _preflight_estimate(preflight)
        if estimate is None:
            return None
        cov = estimate
    if isinstance(cov.get("total"), int) and cov["total"] > 0 and isinstance(cov.get("tpu"), int):
        cov["tpu_percent"] = round(100.0 * cov["tpu"] / cov["total"], 1)
    return cov
