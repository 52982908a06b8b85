"""`edgetpu-retrain report`: one plain-words report of a run (report.md) plus its data (report.json).

Each step's result comes from, in this order:
1. `--step NAME=VALUE` (alias `--step-json`), repeatable. VALUE is either the step's JSON line itself
   (what the DAG has in XCom, e.g. `--step train='{{ ti.xcom_pull("train") | tojson }}'`) or a path to a
   JSON file (the step's JSON line saved to a file, or the artifact itself: validation_report.json,
   dataset manifest.json, preflight.json, an evaluate JSON, promote.json). For `config` and `tflite` a
   .yaml / .tflite path works too. An empty value, `None` or `null` (a skipped upstream task) means
   "not run"; so does a file that does not exist.
2. well-known files under `--run-dir` (first one found; see WELL_KNOWN): `steps/<name>.json` (the
   convention for saved step JSON lines), then each step's usual artifact name.

A step with no result is shown as "not run". An explicit `--step` value that is not valid JSON is a user
error (exit 2); an unreadable auto-discovered file is shown as "unreadable" with the reason.

Step names: validate, dataset (alias build-dataset), config (render-config), train, export, tflite,
edgetpu, evaluate-float, evaluate-int8 (alias evaluate), promote. `_` and `-` are interchangeable.

Writes OUT/report.md and OUT/report.json (canonical JSON, no timestamps: the same inputs give the same
bytes). JSON line: report, report_json, summary, steps_run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, TypeGuard

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError

log = logging.getLogger(__name__)

STEPS = (
    "validate",
    "dataset",
    "config",
    "train",
    "export",
    "tflite",
    "edgetpu",
    "evaluate-float",
    "evaluate-int8",
    "promote",
)
ALIASES = {
    "build-dataset": "dataset",
    "render-config": "config",
    "eval-float": "evaluate-float",
    "float-eval": "evaluate-float",
    "eval-int8": "evaluate-int8",
    "int8-eval": "evaluate-int8",
    "evaluate": "evaluate-int8",
    "eval": "evaluate-int8",
    "compile": "edgetpu",
    "preflight": "edgetpu",
    "training": "train",
}
WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "validate": (
        "validate.json",
        "validation_report.json",
        "validation/validation_report.json",
        "validate/validation_report.json",
    ),
    "dataset": ("dataset.json", "build-dataset.json", "manifest.json", "dataset/manifest.json"),
    "config": ("config.json", "render-config.json", "config.yaml", "config.yml", "pipeline.yaml"),
    "train": ("train.json", "training.json", "train/train_result.json", "train/train.json"),
    "export": ("export.json", "saved_model"),
    "tflite": ("tflite.json", "model_int8.tflite", "tflite/model_int8.tflite"),
    "edgetpu": ("edgetpu.json", "edgetpu/preflight.json", "preflight.json"),
    "evaluate-float": ("evaluate-float.json", "eval_float.json", "eval-float.json", "eval/float.json"),
    "evaluate-int8": (
        "evaluate-int8.json",
        "eval_int8.json",
        "eval-int8.json",
        "eval.json",
        "eval/int8.json",
    ),
    "promote": ("promote.json",),
}
TITLES = {
    "validate": "Labeled data check",
    "dataset": "Dataset",
    "config": "Training config",
    "train": "Training",
    "export": "Export",
    "tflite": "TFLite conversion",
    "edgetpu": "Edge TPU",
    "evaluate-float": "Accuracy (float)",
    "evaluate-int8": "Accuracy (int8)",
    "promote": "Promotion",
}
# A float -> int8 mAP@0.5 drop above this gets a "what to do" line.
BIG_DROP = 0.05


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, help="the run folder (runs/<run_id>)")
    parser.add_argument("--out", required=True, help="folder for report.md and report.json")
    parser.add_argument(
        "--step",
        "--step-json",
        dest="steps",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"a step's JSON line (inline JSON) or a JSON file; repeatable. NAME: {', '.join(STEPS)}",
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    # A run that failed before its first step wrote anything has no run folder yet: report that, too.
    run_dir = Path(args.run_dir).resolve()
    explicit = parse_step_args(args.steps)
    steps: dict[str, dict[str, Any]] = {}
    for name in STEPS:
        entry = load_explicit(name, explicit[name]) if name in explicit else {"status": "not run"}
        if entry["status"] == "not run":
            # no result passed (e.g. the step failed or was skipped): its files may still say why
            found = discover(name, run_dir)
            if found["status"] != "not run" and name in explicit:
                found["note"] = f"read from {found['source']}: the step passed no result"
            entry = found if found["status"] != "not run" else entry
        steps[name] = normalize(name, entry)
    summary = summarize(steps)
    data = {
        "report_version": 1,
        "run_id": run_dir.name,
        "run_dir": str(run_dir),
        "summary": summary,
        "steps": steps,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = common.write_text(out / "report.md", render_md(data)).resolve()
    js = common.write_json(out / "report.json", data).resolve()
    log.info("report: %s", summary)
    return {
        "report": str(md),
        "report_json": str(js),
        "summary": summary,
        "steps_run": sorted(n for n, s in steps.items() if s["status"] == "done"),
    }


# ------------------------------------------------------------------------------------------ inputs
def canonical_step(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in STEPS:
        raise UserError(f"--step {name}=...: unknown step name; use one of {', '.join(STEPS)}")
    return key


def parse_step_args(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise UserError(
                f"--step {value!r}: expected NAME=JSON or NAME=FILE, e.g. --step train=runs/r1/train.json"
            )
        out[canonical_step(name)] = rest
    return out


def load_explicit(name: str, value: str) -> dict[str, Any]:
    """{status, source, data} from one --step value (inline JSON or a path)."""
    if common.is_none(value):
        return {"status": "not run", "source": None, "note": "the step passed no result (skipped upstream?)"}
    text = value.strip()
    if text[:1] == '"':  # `| tojson` of an XCom that is the raw JSON line (a string): unwrap once
        try:
            inner = json.loads(text)
        except json.JSONDecodeError:
            inner = None
        if isinstance(inner, str):
            return load_explicit(name, inner)
    if text[:1] in "{[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            data = _python_literal(text)  # a Jinja-rendered dict without `| tojson` ({'ok': True, ...})
            if data is not None:
                return {"status": "done", "source": "inline", "data": data, "base": None}
            raise UserError(
                f"--step {name}: the value is not valid JSON ({exc}); pass the step's JSON line "
                "unchanged (e.g. Jinja `| tojson`) or a file path"
            ) from exc
        if not isinstance(data, dict):
            raise UserError(f"--step {name}: expected a JSON object (the step's JSON line); fix the value")
        return {"status": "done", "source": "inline", "data": data, "base": None}
    path = Path(text)
    if not path.exists():
        return {"status": "not run", "source": str(path), "note": f"{path} not found"}
    return _load_path(name, path, explicit=True)


def _python_literal(text: str) -> dict[str, Any] | None:
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:  # keep only what JSON can hold, so report.json stays canonical
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _load_path(name: str, path: Path, *, explicit: bool) -> dict[str, Any]:
    path = path.resolve()
    if path.is_dir() or path.suffix in (".yaml", ".yml", ".tflite"):
        return {"status": "done", "source": str(path), "data": {"path": str(path)}, "base": str(path.parent)}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if explicit:
            raise UserError(
                f"{path}: --step {name} file is not valid JSON ({exc}); re-run the {name} step "
                "or pass its JSON line"
            ) from exc
        log.warning("%s: unreadable (%s)", path, exc)
        return {"status": "unreadable", "source": str(path), "note": f"not valid JSON: {exc}"}
    if not isinstance(data, dict):
        if explicit:
            raise UserError(f"{path}: --step {name} expects a JSON object; re-run the {name} step")
        return {"status": "unreadable", "source": str(path), "note": "not a JSON object"}
    return {"status": "done", "source": str(path), "data": data, "base": str(path.parent)}


def discover(name: str, run_dir: Path) -> dict[str, Any]:
    for rel in (f"steps/{name}.json", *WELL_KNOWN[name]):
        path = run_dir / rel
        if path.exists():
            return _load_path(name, path, explicit=False)
    return {"status": "not run", "source": None}


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


def _num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


# --------------------------------------------------------------------------------------- normalize
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
        order = {"error": 0, "warning": 1, "info": 2}
        info["issues"] = sorted(
            issues.values(), key=lambda r: (order.get(r["severity"], 3), -r["count"], r["code"])
        )
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


def _find_keys(obj: Any, keys: tuple[str, ...], found: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            v = obj[k]
            if (
                k in keys
                and k not in found
                and isinstance(v, (str, int, float, bool, list))
                and v is not None
            ):
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
    if isinstance(losses, list) and losses and all(_num(v) for v in losses):
        return {"total": {"first": losses[0], "last": losses[-1], "points": len(losses)}}
    if isinstance(losses, dict):
        out: dict[str, Any] = {}
        for k in sorted(losses):
            v = losses[k]
            if _num(v):
                out[k] = {"last": v}
            elif isinstance(v, list) and v and all(_num(x) for x in v):
                out[k] = {"first": v[0], "last": v[-1], "points": len(v)}
        return out or None
    if _num(losses):
        return {"total": {"last": losses}}
    return None


def _train(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        k: data[k]
        for k in ("steps_done", "images_per_sec", "checkpoint", "seconds", "resumed_from")
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


def edgetpu_advice(reasons: list[str], compiled: Any, coverage: dict[str, Any] | None) -> list[str]:
    """Plain-words next steps for an Edge TPU verdict."""
    import re

    text = " ".join(reasons).lower()
    advice = []
    if any("fix:" in r.lower() for r in reasons):
        advice.append("Apply the fix given with each reason above, then re-run the tflite and edgetpu steps.")
    if re.search(r"version '?\d+'? is newer|op version|opcode .*version|version .*(not|cannot).*pars", text):
        advice.append(
            "An op version is newer than Edge TPU compiler 16 accepts: convert with the pinned "
            "converter settings (preflight.json lists each op's highest accepted version) and re-run "
            "tflite and edgetpu."
        )
    if re.search(
        r"not (fully )?(8-bit |int8 )?quantized|float32|float16|\bfloat (input|output|tensor|weight)", text
    ):
        advice.append(
            "The model is not fully int8: re-run the tflite step with a representative dataset "
            "(full-integer quantization, uint8 input)."
        )
    if re.search(r"dynamic|static shape|batch (size|dimension)", text):
        advice.append("Shapes must be static with batch 1: export with a fixed input size.")
    if re.search(r"\bdimensions?\b|\brank\b", text):
        advice.append("A tensor has more than 3 non-1 dimensions: reshape it in the model head.")
    if reasons and not advice:
        advice.append(
            "Fix the reasons above in the model or conversion settings and re-run tflite and edgetpu."
        )
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


def _edgetpu(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    from edgetpu_retrain.release.gate import compiler_from_folder, op_coverage

    pre: dict[str, Any] = data["preflight"] if isinstance(data.get("preflight"), dict) else data
    if not isinstance(pre.get("ok"), bool) and isinstance(data.get("preflight"), str):
        pre = _read_json_quiet(data["preflight"], base) or {}
        pre = pre.get("preflight", pre) if isinstance(pre.get("preflight", pre), dict) else {}
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
        k: data[k] for k in ("map", "map50", "images", "latency_ms", "model", "split") if k in data
    }
    per_class = data.get("per_class")
    if isinstance(per_class, dict):
        info["per_class"] = {str(k): v for k, v in per_class.items() if isinstance(v, dict)}
    if not _num(info.get("map50")) and not _num(info.get("map")):
        raise ValueError("no 'map' or 'map50' number")
    return info


def _promote(data: dict[str, Any], base: str | None) -> dict[str, Any]:
    return {
        k: data.get(k)
        for k in (
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
    }


NORMALIZERS = {
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


# ------------------------------------------------------------------------------------------ render
def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _num(value) else "n/a"


def _ap(value: Any) -> str:
    """An AP cell: COCOeval writes -1 for a class with no ground truth in the split."""
    return "n/a (no test objects)" if _num(value) and value < 0 else _f(value)


def _mib(n: Any) -> str:
    if not _num(n):
        return "size unknown"
    return f"{n / (1 << 20):.2f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


def _drop(steps: dict[str, dict[str, Any]], key: str) -> float | None:
    f, q = steps["evaluate-float"], steps["evaluate-int8"]
    if f["status"] == "done" and q["status"] == "done" and _num(f.get(key)) and _num(q.get(key)):
        return round(f[key] - q[key], 6)
    return None


def summarize(steps: dict[str, dict[str, Any]]) -> str:
    parts = []
    q = steps["evaluate-int8"]
    if q["status"] == "done":
        s = f"int8 mAP@0.5 {_f(q.get('map50'))}"
        f = steps["evaluate-float"]
        if f["status"] == "done":
            s += f" (float {_f(f.get('map50'))}, drop {_f(_drop(steps, 'map50'))})"
        parts.append(s)
    elif steps["evaluate-float"]["status"] == "done":
        parts.append(f"float mAP@0.5 {_f(steps['evaluate-float'].get('map50'))} (int8 not evaluated)")
    t = steps["edgetpu"]
    if t["status"] == "done" and t.get("preflight_ok") is not None:
        if not t["preflight_ok"]:
            parts.append("Edge TPU pre-flight FAILED")
        elif t.get("compiled"):
            cov = t.get("op_coverage") or {}
            est = " (pre-flight estimate)" if cov.get("source") != "compiler" else ""
            ops = (
                f", {cov['tpu']}/{cov['total']} ops on TPU{est}" if "tpu" in cov and cov.get("total") else ""
            )
            parts.append(f"Edge TPU: compiled{ops}")
        else:
            parts.append("Edge TPU: pre-flight ok, not compiled")
    else:
        parts.append("Edge TPU: not run")
    p = steps["promote"]
    if p["status"] == "done":
        parts.append(
            f"promoted as version {p.get('version')}"
            if p.get("promoted")
            else f"not promoted: {p.get('reason')}"
        )
    else:
        parts.append("promotion: not run")
    done = sum(1 for s in steps.values() if s["status"] == "done")
    if done == 0:
        return "nothing to report: no step results found"
    return "; ".join(parts)


def render_md(report: dict[str, Any]) -> str:
    steps = report["steps"]
    L = [
        f"# Run report: {report['run_id']}",
        "",
        f"**In short:** {report['summary'].rstrip('.')}.",
        "",
        f"Run folder: `{report['run_dir']}`",
        "",
        "| step | status |",
        "|---|---|",
    ]
    L += [f"| {TITLES[n]} | {steps[n]['status']} |" for n in STEPS]

    def section(name: str, title: str | None = None) -> dict[str, Any] | None:
        s = steps[name]
        L.extend(["", f"## {title or TITLES[name]}", ""])
        if s["status"] == "done" and s.get("note"):
            L.append(f"({s['note']})")
        if s["status"] != "done":
            L.append(
                {"not run": "Not run.", "skipped": f"Skipped: {s.get('note')}."}.get(
                    s["status"], f"Result unreadable: {s.get('note')}."
                )
            )
            if s.get("note") and s["status"] == "not run":
                L.append(f"({s['note']})")
            return None
        return s

    s = section("validate")
    if s:
        w = s.get("warnings", 0)
        L.append(
            f"{s.get('accepted', '?')} labeled images accepted, {s.get('rejected', '?')} rejected, "
            f"{w} warning{'' if w == 1 else 's'}."
        )
        if _num(s.get("objects_accepted")):
            L.append(
                f"{s['objects_accepted']} labeled objects kept"
                + (f", {s['objects_dropped']} boxes dropped" if s.get("objects_dropped") else "")
                + (f", {s['background_images']} images without objects" if s.get("background_images") else "")
                + "."
            )
        if s.get("validation_status", "ok") != "ok":
            L.append(f"Validation status: {s['validation_status']}.")
        if s.get("rejected"):
            L.append("Rejected images are left out of training; fix them and drop them in again.")
        elif s.get("accepted"):
            L.append("Every labeled image passed the checks.")
        for r in (s.get("issues") or [])[:10]:
            msg = str(r.get("message") or "").rstrip(".")
            L.append(
                f"- {r['severity']} `{r['code']}` in {r['count']} file{'s' if r['count'] != 1 else ''} "
                f"(e.g. {Path(str(r['example'])).name}): {msg}"
                + (f". Fix: {r['fix']}" if r.get("fix") else "")
            )
        if s.get("report"):
            L.append(f"Full per-file report: `{s['report']}`.")
    s = section("dataset")
    if s:
        if s.get("snapshot"):
            L.append(
                f"Snapshot `{s['snapshot']}`; classes: {', '.join(map(str, s['classes'])) or 'n/a'}; "
                f"split {s.get('split')}, seed {s.get('seed')}."
            )
        L += ["", "| split | images | objects |", "|---|---|---|"]
        for split in ("train", "val", "test"):
            c = (s.get("counts") or {}).get(split)
            if isinstance(c, dict):
                L.append(f"| {split} | {c.get('images', '?')} | {c.get('objects', '?')} |")
        if isinstance((s.get("counts") or {}).get("test"), dict) and not s["counts"]["test"].get("images"):
            L.append("")
            L.append("The test split is empty: accuracy numbers cannot be trusted; add labeled images.")
    s = section("config")
    if s:
        L.append(f"Config: `{s.get('config')}`.")
        L += [f"- {k}: {v}" for k, v in sorted(s.get("settings", {}).items())]
    s = section("train")
    if s:
        L.append(
            f"Trained {s.get('steps_done', '?')} steps"
            + (f" at {_f(s['images_per_sec'], 1)} images/s." if _num(s.get("images_per_sec")) else ".")
        )
        for k, v in sorted((s.get("losses") or {}).items()):
            if "first" in v:
                L.append(f"- loss {k}: {_f(v['first'], 4)} -> {_f(v['last'], 4)}")
            else:
                L.append(f"- loss {k}: {_f(v['last'], 4)}")
    s = section("export")
    if s:
        L.append(f"SavedModel `{s.get('saved_model')}` ({_mib(s.get('bytes'))}).")
    s = section("tflite")
    if s:
        for n, m in sorted((s.get("models") or {}).items()):
            L.append(f"- `{n}`: {_mib(m.get('bytes'))}")
        if not s.get("models"):
            L.append("No .tflite path in the step result.")
    s = section("edgetpu")
    if s:
        ok = s.get("preflight_ok")
        L.append(
            "Verdict: "
            + (
                "the model passes the Edge TPU pre-flight."
                if ok
                else "the model can NOT run on the Edge TPU as is."
                if ok is False
                else "unknown."
            )
        )
        L += [f"- reason: {r}" for r in s.get("reasons", [])]
        if s.get("compiled"):
            L.append(f"Compiled model: `{s['compiled']}` ({_mib(s.get('compiled_bytes'))}).")
        elif ok:
            L.append("No compiled model (compiler not run or failed).")
        cov = s.get("op_coverage")
        if cov:
            est = (
                " (pre-flight estimate; the compiler did not run)" if cov.get("source") != "compiler" else ""
            )
            L.append(
                f"Operations on the Edge TPU: {cov.get('tpu', '?')}; on the CPU: {cov.get('cpu', '?')}; "
                f"total {cov.get('total', '?')}{est}."
            )
            if cov.get("cpu_ops"):
                L.append(
                    "On the CPU: "
                    + ", ".join(f"{k} x{v}" for k, v in cov["cpu_ops"].items())
                    + " (expected there: only the SSD post-processing tail, CUSTOM + DEQUANTIZE)."
                )
        if s.get("advice"):
            L.append("")
            L.append("What to do:")
            L += [f"- {a}" for a in s["advice"]]
    L += ["", "## Accuracy: float vs int8", ""]
    f, q = steps["evaluate-float"], steps["evaluate-int8"]
    if f["status"] != "done" and q["status"] != "done":
        L.append("Not run.")
    else:
        L += [
            "COCO mAP on the test split (higher is better, 0..1).",
            "",
            "| model | mAP@0.5 | mAP@[.5:.95] | images | latency |",
            "|---|---|---|---|---|",
        ]
        for label, e in (("float", f), ("int8", q)):
            if e["status"] == "done":
                lat = f"{_f(e['latency_ms'], 1)} ms" if _num(e.get("latency_ms")) else "n/a"
                L.append(
                    f"| {label} | {_f(e.get('map50'))} | {_f(e.get('map'))} | {e.get('images', 'n/a')} | "
                    f"{lat} |"
                )
            else:
                L.append(f"| {label} | {e['status']} | | | |")
        d50, d = _drop(steps, "map50"), _drop(steps, "map")
        if d50 is not None or d is not None:
            L += ["", f"Quantization drop (float - int8): mAP@0.5 {_f(d50)}, mAP@[.5:.95] {_f(d)}."]
            if _num(d50) and d50 > BIG_DROP:
                L.append(
                    f"The drop is above {BIG_DROP}: calibrate with more representative images "
                    "(the tflite step's representative dataset) or train longer."
                )
        classes = sorted(
            set((f.get("per_class") or {}) if f["status"] == "done" else {})
            | set((q.get("per_class") or {}) if q["status"] == "done" else {})
        )
        if classes:
            L += ["", "| class | AP@0.5 float | AP@0.5 int8 |", "|---|---|---|"]
            for c in classes:
                fa = ((f.get("per_class") or {}).get(c) or {}).get("ap50")
                qa = ((q.get("per_class") or {}).get(c) or {}).get("ap50")
                L.append(f"| {c} | {_ap(fa)} | {_ap(qa)} |")
    s = section("promote")
    if s:
        if s.get("promoted"):
            L.append(f"Promoted as version {s.get('version')}: {s.get('reason')}.")
            L.append(f"Model folder: `{s.get('model_dir')}`.")
        else:
            L.append(f"Not promoted: {s.get('reason')}.")
            L.append(
                f"The model stays in `{s.get('model_dir')}`; the current model "
                f"(version {s.get('current_version') or 'none'}) keeps serving."
            )
    return "\n".join(L) + "\n"
