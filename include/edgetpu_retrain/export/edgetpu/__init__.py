"""`edgetpu-retrain edgetpu`: Edge TPU pre-flight check of an int8 .tflite, then `edgetpu_compiler`.

    edgetpu-retrain edgetpu --tflite FILE --out DIR [--require-compiler] [--allow-cpu-ops]
                            [--compiler PATH] [--timeout S]

1. Pre-flight (always, pure Python, no TensorFlow import): reads the flatbuffer (`export/flatbuffer.py`) and
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

Modules: `tables` (the op list and version tables, as data), `preflight` (`preflight(path)`,
`analyze(model)`, `check_op_version`), `compiler` (find, run, judge `edgetpu_compiler`),
`compiler_log` (`parse_compiler_output(text)`, `parse_size`). This package is the verb module
(`add_arguments`, `run`) and re-exports their public names.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, require_file, write_json
from edgetpu_retrain.export.edgetpu.compiler import (
    COMPILER_NAME,
    COMPILER_STDOUT,
    DEFAULT_TIMEOUT_S,
    NOT_FOUND_MESSAGE,
    TIMEOUT_MARGIN_S,
    compile_failure,
    compile_model,
    find_compiler,
    output_names,
)
from edgetpu_retrain.export.edgetpu.compiler_log import parse_compiler_output, parse_size
from edgetpu_retrain.export.edgetpu.preflight import analyze, check_op_version, preflight
from edgetpu_retrain.export.edgetpu.tables import (
    COMPILER_TARGET_VERSION,
    CUSTOM_MAX_VERSION,
    EDGETPU_SUPPORTED_OPS,
    OP_MAX_VERSION,
    OP_VERSION_CUTOFF_TF,
    POSTPROCESS_CUSTOM_CODE,
    REPLACEMENT_HINTS,
)

__all__ = [
    "COMPILER_NAME",
    "COMPILER_STDOUT",
    "COMPILER_TARGET_VERSION",
    "CUSTOM_MAX_VERSION",
    "DEFAULT_TIMEOUT_S",
    "EDGETPU_SUPPORTED_OPS",
    "NOT_FOUND_MESSAGE",
    "OP_MAX_VERSION",
    "OP_VERSION_CUTOFF_TF",
    "POSTPROCESS_CUSTOM_CODE",
    "REPLACEMENT_HINTS",
    "STEP_RESULT",
    "SUMMARY_KEYS",
    "TIMEOUT_MARGIN_S",
    "add_arguments",
    "analyze",
    "check_op_version",
    "compile_failure",
    "compile_model",
    "find_compiler",
    "parse_compiler_output",
    "parse_size",
    "preflight",
    "run",
]

log = logging.getLogger("edgetpu_retrain.export.edgetpu")

STEP_RESULT = "edgetpu.json"  # the JSON line, also kept in OUT for promote/report


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
    for name in (*output_names(stem), COMPILER_STDOUT, STEP_RESULT):
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
    problem = compile_failure(
        tflite, figures, returncode, preflight_result=result, allow_cpu_ops=args.allow_cpu_ops
    )
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
