"""Run `edgetpu_compiler` into a temp dir beside OUT, keep its outputs, and judge the result."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, write_text
from edgetpu_retrain.export.edgetpu.compiler_log import parse_compiler_output
from edgetpu_retrain.export.edgetpu.tables import TAIL_OP_TYPES

log = logging.getLogger("edgetpu_retrain.export.edgetpu")

COMPILER_NAME = "edgetpu_compiler"
DEFAULT_TIMEOUT_S = 180  # the compiler's own default for -t
TIMEOUT_MARGIN_S = 60  # our subprocess limit = -t + margin (the compiler enforces -t itself)
COMPILER_STDOUT = "edgetpu_compiler.txt"  # the compiler's stdout (+stderr), kept in OUT
NOT_FOUND_MESSAGE = (
    "edgetpu_compiler not found on PATH; pre-flight only — compile in the edgetpu-compiler Docker image"
)


def output_names(stem: str) -> tuple[str, str]:
    """(compiled model, operation log) file names the compiler writes for `<stem>.tflite`."""
    return f"{stem}_edgetpu.tflite", f"{stem}_edgetpu.log"


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


def _run_compiler(
    compiler: str, tflite: Path, tmp: Path, *, timeout: int
) -> subprocess.CompletedProcess[str]:
    cmd = [compiler, "-s", "-o", str(tmp), "-t", str(int(timeout)), str(tflite)]
    log.info("running %s", " ".join(cmd))
    try:
        return subprocess.run(
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


def _keep_outputs(
    figures: dict[str, Any], tmp: Path, out_dir: Path, *, stem: str, returncode: int
) -> Path | None:
    """Move the compiled model (only when it succeeded) and the op log from tmp into OUT."""
    compiled_name, log_name = output_names(stem)
    produced = tmp / compiled_name
    if not produced.is_file() and figures.get("output_model"):
        produced = tmp / Path(figures["output_model"]).name
    compiled: Path | None = None
    if returncode == 0 and figures["success"] and produced.is_file():
        compiled = out_dir / compiled_name
        os.replace(produced, compiled)
    if (tmp / log_name).is_file():
        os.replace(tmp / log_name, out_dir / log_name)
        figures["operation_log_path"] = str((out_dir / log_name).resolve())
    else:
        figures["operation_log_path"] = None
    figures["compiled_model"] = str(compiled.resolve()) if compiled else None
    return compiled


def compile_model(
    compiler: str, tflite: Path, out_dir: Path, *, timeout: int = DEFAULT_TIMEOUT_S
) -> tuple[dict[str, Any], Path | None, int]:
    """Run the compiler into a temp dir beside OUT; move its outputs into OUT.

    Returns (figures, compiled model path or None, return code). Writes OUT/edgetpu_compiler.txt.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (*output_names(tflite.stem), COMPILER_STDOUT):  # a failed re-run must not leave an old model
        (out_dir / stale).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".edgetpu_compiler.", dir=out_dir))
    try:
        proc = _run_compiler(compiler, tflite, tmp, timeout=timeout)
        text = proc.stdout + (("\n" + proc.stderr) if proc.stderr.strip() else "")
        write_text(out_dir / COMPILER_STDOUT, text)
        for line in text.splitlines():
            if line.strip():
                log.info("edgetpu_compiler: %s", line.rstrip())
        figures = parse_compiler_output(text)
        figures["returncode"] = proc.returncode
        compiled = _keep_outputs(figures, tmp, out_dir, stem=tflite.stem, returncode=proc.returncode)
        return figures, compiled, proc.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _failed_compile(tflite: Path, figures: dict[str, Any], returncode: int) -> str:
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


def _no_tpu_subgraph(tflite: Path, figures: dict[str, Any]) -> str:
    cpu = ", ".join(f"{k} x{n}" for k, n in figures["cpu_ops"].items()) or "all ops"
    statuses = sorted({r["status"] for r in figures["op_table"] if not r["mapped"]})
    return (
        f"{tflite}: no Edge TPU subgraph: 0 of {figures.get('total_ops')} ops mapped ({cpu} on the CPU"
        f"{': ' + '; '.join(statuses) if statuses else ''}); check preflight.json and re-quantize the "
        "model"
    )


def _unexpected_cpu_ops(
    tflite: Path, figures: dict[str, Any], preflight_result: dict[str, Any]
) -> str | None:
    allowed = set(TAIL_OP_TYPES) | {r["name"] for r in preflight_result.get("ops", []) if r["role"] != "body"}
    unexpected = {k: n for k, n in figures["cpu_ops"].items() if k not in allowed}
    if not unexpected:
        return None
    rows = [r for r in figures["op_table"] if not r["mapped"] and r["op"] in unexpected]
    detail = "; ".join(f"{r['op']} x{r['count']}: {r['status']}" for r in rows)
    return (
        f"{tflite}: {sum(unexpected.values())} op(s) besides the post-processing tail would run on the "
        "CPU "
        f"({detail}); make them Edge TPU compatible or pass --allow-cpu-ops"
    )


def compile_failure(
    tflite: Path,
    figures: dict[str, Any],
    returncode: int,
    *,
    preflight_result: dict[str, Any],
    allow_cpu_ops: bool,
) -> str | None:
    """One-line reason the compile result is not acceptable, or None."""
    if returncode != 0 or not figures["success"] or figures.get("compiled_model") is None:
        return _failed_compile(tflite, figures, returncode)
    if not figures.get("tpu_subgraphs"):
        return _no_tpu_subgraph(tflite, figures)
    if allow_cpu_ops:
        return None
    return _unexpected_cpu_ops(tflite, figures, preflight_result)
