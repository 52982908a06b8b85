"""What to do next, in plain words, for an Edge TPU verdict (the report's "What to do" list)."""

from __future__ import annotations

import re
from typing import Any

_OP_VERSION = re.compile(r"version '?\d+'? is newer|op version|opcode .*version|version .*(not|cannot).*pars")
_NOT_INT8 = re.compile(
    r"not (fully )?(8-bit |int8 )?quantized|float32|float16|\bfloat (input|output|tensor|weight)"
)
_SHAPES = re.compile(r"dynamic|static shape|batch (size|dimension)")
_RANK = re.compile(r"\bdimensions?\b|\brank\b")


def _reason_advice(reasons: list[str]) -> list[str]:
    """Advice for the pre-flight's reasons (empty when there are none)."""
    text = " ".join(reasons).lower()
    advice = []
    if any("fix:" in r.lower() for r in reasons):
        advice.append("Apply the fix given with each reason above, then re-run the tflite and edgetpu steps.")
    if _OP_VERSION.search(text):
        advice.append(
            "An op version is newer than Edge TPU compiler 16 accepts: convert with the pinned "
            "converter settings (preflight.json lists each op's highest accepted version) and re-run "
            "tflite and edgetpu."
        )
    if _NOT_INT8.search(text):
        advice.append(
            "The model is not fully int8: re-run the tflite step with a representative dataset "
            "(full-integer quantization, uint8 input)."
        )
    if _SHAPES.search(text):
        advice.append("Shapes must be static with batch 1: export with a fixed input size.")
    if _RANK.search(text):
        advice.append("A tensor has more than 3 non-1 dimensions: reshape it in the model head.")
    if reasons and not advice:
        advice.append(
            "Fix the reasons above in the model or conversion settings and re-run tflite and edgetpu."
        )
    return advice


def edgetpu_advice(reasons: list[str], compiled: Any, coverage: dict[str, Any] | None) -> list[str]:
    """Plain-words next steps for an Edge TPU verdict."""
    advice = _reason_advice(reasons)
    if not reasons and not compiled:
        advice.append(
            "The pre-flight passed but nothing was compiled: the Edge TPU compiler runs on x86-64 "
            "Linux only; run the edgetpu step in the compiler image (package edgetpu-compiler)."
        )
    if coverage and coverage.get("subgraphs") == 0:
        advice.append("No op runs on the Edge TPU: the model is effectively CPU-only; check quantization.")
    elif coverage and isinstance(coverage.get("cpu"), int) and coverage["cpu"] > 3:
        advice.append(
            f"{coverage['cpu']} ops run on the CPU (only the SSD post-processing tail, about 3 ops, "
            "is expected there): the first unsupported op sends everything after it to the CPU."
        )
    return advice
