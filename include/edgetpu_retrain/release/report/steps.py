"""Per-step summaries: each step's JSON (or artifact) reduced to the figures the report shows.

A normalizer takes the step's data and the folder it was read from, and returns plain JSON values.
Odd shapes never crash the report: the step is then shown as "unreadable" with the reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.release.coverage import compiler_from_folder, op_coverage
from edgetpu_retrain.release.metrics import is_number, quantization_drop
from edgetpu_retrain.release.report.advice import edgetpu_advice

log = logging.getLogger(__name__)

CONFIG_KEYS = (
    "base_model",
    "input_size",
    "num_steps",
    "steps",
    "epochs",
    "batch_size",
    "learning_rate",
    "num_classes",
)
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def normalize(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k in ("status", "source", "note")}
    if entry["status"] != "done":
        return out
    data, base = entry["data"], entry.get("base")
    if data.get("nothing_to_do"):  # the step exited 99 (EXIT_NOTHING_TO_DO)
        return {**out, "status": "skipped", "note": str(data.get("reason") or "nothing to do")}
    try:
        info = NORMALIZERS[name](data, base)
        out.update({k: v for k, v in info.items() if k not in ("status", "source")})
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # odd shapes never crash the report
        log.warning("%s: unexpected content (%s)", entry.get("source"), exc)
        out["status"] = "unreadable"
        out["note"] = f"unexpected content: {exc}"
    return out


def eval_drop(steps: dict[str, dict[str, Any]]) -> dict[str, float | None] | None:
    """The float -> int8 quantization drop, when both evaluations are done."""
    f, q = steps["evaluate-float"], steps["evaluate-int8"]
    return quantization_drop(f if f["status"] == "done" else None, q if q["status"] == "done" else None)


# --------------------------------------------------------------------------------------- helpers
def _read_json_quiet(path: Any, base: str | None) -> dict[str, Any] | None:
    """A JSON object referenced from a step JSON (e.g. its manifest), or None if it is not there."""
    if not isinstance(path, str) or not path:
        return None
    p = Path(path)
    if not p.is_absolute() and base:
        p = Path(base) / p
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _strings(obj: Any) -> list[str]:
    """All string values in a JSON tree, depth first, sorted keys (deterministic)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k in sorted(obj) for s in _strings(obj[k])]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


def _size(path: str) -> int | None:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in sorted(p.rglob("*")) if f.is_file())
    return None


# ----------------------------------------------------------------------------------- normalizers
def _issue_rows(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (severity, code): how many files, the first example, its message and fix."""
    issues: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        for issue in f.get("issues") or []:
            issue_key = (str(issue.get("severity", "?")), str(issue.get("code", "?")))
            row = issues.setdefault(
                issue_key,
                {
                    "severity": issue_key[0],
                    "code": issue_key[1],
                    "count": 0,
                    "example": f.get("xml") or f.get("image"),
                    "message": issue.get("message"),
                    "fix": issue.get("fix"),
                },
            )
            row["count"] += 1
    return sorted(
        issues.values(), key=lambda r: (_SEVERITY_ORDER.get(r["severity"], 3), -r["count"], r["code"])
    )


def _validate(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    report = data if isinstance(data.get("files"), list) else _read_json_quiet(data.get("report"), base)
    info: dict[str, Any] = {k: data[k] for k in ("accepted", "rejected", "warnings", "report") if k in data}
    summary: dict[str, Any] = report["summary"] if report and isinstance(report.get("summary"), dict) else {}
    for key in ("objects_accepted", "objects_dropped", "background_images"):
        if summary.get(key) is not None:
            info[key] = summary[key]
    if isinstance(summary.get("status"), str):
        info["validation_status"] = summary["status"]
    if report and isinstance(report.get("files"), list):
        files = report["files"]
        info["accepted"] = sum(1 for f in files if f.get("verdict") == "accepted")
        info["rejected"] = sum(1 for f in files if f.get("verdict") == "rejected")
        info["issues"] = _issue_rows(files)
        info["warnings"] = sum(r["count"] for r in info["issues"] if r["severity"] == "warning")
    return info


def _dataset(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    ref = data.get("manifest")  # the step's JSON line names the manifest; else `data` is the manifest
    manifest = (_read_json_quiet(ref, base) or {}) if isinstance(ref, str) else data
    mdir = str(Path(ref).parent) if isinstance(ref, str) else base
    counts = data.get("counts") or manifest.get("counts") or {}
    classes = [
        c.get("name") for c in manifest.get("classes") or data.get("classes") or [] if isinstance(c, dict)
    ]
    info: dict[str, Any] = {
        "counts": counts,
        "classes": classes,
        "split": manifest.get("split"),
        "seed": manifest.get("seed"),
        "dataset_dir": data.get("dataset_dir") or mdir,
    }
    if info["dataset_dir"]:
        p = Path(info["dataset_dir"])
        info["snapshot"] = f"{p.parent.name}/{p.name}"
    return info


def _find_keys(obj: Any, keys: tuple[str, ...], found: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            v = obj[k]
            if k in keys and k not in found and isinstance(v, (str, int, float, bool, list)):
                found[k] = v
            _find_keys(v, keys, found)


def _config(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    path = next((s for s in _strings(data) if s.endswith((".yaml", ".yml"))), None)
    info: dict[str, Any] = {"config": path, "settings": {}}
    _find_keys(data, CONFIG_KEYS, info["settings"])
    if path and Path(path).is_file():
        try:
            import yaml

            _find_keys(yaml.safe_load(Path(path).read_text(encoding="utf-8")), CONFIG_KEYS, info["settings"])
        except Exception as exc:  # noqa: BLE001 - a bad YAML only loses the settings list
            info["note"] = f"config not readable: {exc}"
    return info


def _loss_summary(losses: Any) -> dict[str, Any] | None:
    if isinstance(losses, list) and losses and all(is_number(v) for v in losses):
        return {"total": {"first": losses[0], "last": losses[-1], "points": len(losses)}}
    if isinstance(losses, dict):
        out: dict[str, Any] = {}
        for k in sorted(losses):
            v = losses[k]
            if is_number(v):
                out[k] = {"last": v}
            elif isinstance(v, list) and v and all(is_number(x) for x in v):
                out[k] = {"first": v[0], "last": v[-1], "points": len(v)}
        return out or None
    if is_number(losses):
        return {"total": {"last": losses}}
    return None


def _train(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        k: data[k]
        for k in (
            "steps_done",
            "steps_planned",
            "stopped_by",
            "max_seconds",
            "images_per_sec",
            "backbone_weights",
            "compute_dtype",
            "checkpoint",
            "seconds",
            "resumed_from",
            "out_dir",
        )
        if k in data
    }
    loss = _loss_summary(data.get("losses", data.get("loss")))
    if loss:
        info["losses"] = loss
    return info


def _export(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    path = (
        data.get("saved_model")
        or data.get("path")
        or next((s for s in _strings(data) if Path(s).is_dir()), None)
    )
    return {"saved_model": path, "bytes": _size(path) if isinstance(path, str) else None}


def _tflite(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    models = {}
    for s in _strings(data):
        if s.endswith(".tflite"):
            models[Path(s).name] = {"path": s, "bytes": _size(s)}
    return {"models": models}


def _preflight_of(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    """The pre-flight summary: inline under `preflight`, the data itself, or the file it names."""
    pre: dict[str, Any] = data["preflight"] if isinstance(data.get("preflight"), dict) else data
    if not isinstance(pre.get("ok"), bool) and isinstance(data.get("preflight"), str):
        pre = _read_json_quiet(data["preflight"], base) or {}
        pre = pre.get("preflight", pre) if isinstance(pre.get("preflight", pre), dict) else {}
    return pre


def _edgetpu(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    pre = _preflight_of(data, base)
    ok = pre.get("ok") if isinstance(pre.get("ok"), bool) else None
    reasons = pre.get("reasons") or []
    reasons = [reasons] if isinstance(reasons, str) else [str(r) for r in reasons]
    compiled = data.get("compiled")
    compiled = None if common.is_none(compiled) else compiled
    compiler = data.get("compiler") if isinstance(data.get("compiler"), dict) else None
    folder = data.get("out_dir") or base  # the edgetpu step's folder: compiled model + compiler stdout
    if folder and Path(folder).is_dir():
        if compiled is None and "compiled" not in data:
            found = sorted(Path(folder).glob("*_edgetpu.tflite"))
            compiled = str(found[0]) if len(found) == 1 else None
        if compiler is None:
            compiler = compiler_from_folder(folder)
    coverage = op_coverage(compiler, pre)
    return {
        "preflight_ok": ok,
        "reasons": reasons,
        "compiled": compiled,
        "compiled_bytes": _size(compiled) if isinstance(compiled, str) else None,
        "compiler": compiler,
        "op_coverage": coverage,
        "advice": edgetpu_advice(reasons, compiled, coverage) if ok is not None else [],
    }


def _evaluate(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        k: data[k]
        for k in ("map", "map50", "images", "latency_ms", "model", "split", "out", "details")
        if k in data
    }
    per_class = data.get("per_class")
    if isinstance(per_class, dict):
        info["per_class"] = {str(k): v for k, v in per_class.items() if isinstance(v, dict)}
    if not is_number(info.get("map50")) and not is_number(info.get("map")):
        raise ValueError("no 'map' or 'map50' number")
    return info


PROMOTE_KEYS = (
    "promoted",
    "reason",
    "metric",
    "new",
    "current",
    "version",
    "model_dir",
    "current_version",
    "tolerance",
)


def _promote(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    return {k: data.get(k) for k in PROMOTE_KEYS}


NORMALIZERS: dict[str, Callable[[dict[str, Any], str | None], dict[str, Any]]] = {
    "validate": _validate,
    "dataset": _dataset,
    "config": _config,
    "train": _train,
    "export": _export,
    "tflite": _tflite,
    "edgetpu": _edgetpu,
    "evaluate-float": _evaluate,
    "evaluate-int8": _evaluate,
    "promote": _promote,
}
