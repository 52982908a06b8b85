"""report.md: a run in plain words (the one-line summary, then one section per step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetpu_retrain.release.metrics import fmt, is_number
from edgetpu_retrain.release.report.collect import STEPS, RunReport
from edgetpu_retrain.release.report.steps import eval_drop

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

Step = dict[str, Any]


def _ap(value: Any) -> str:
    """An AP cell: COCOeval writes -1 for a class with no ground truth in the split."""
    return "n/a (no test objects)" if is_number(value) and value < 0 else fmt(value)


def _mib(n: Any) -> str:
    if not is_number(n):
        return "size unknown"
    return f"{n / (1 << 20):.2f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


# ------------------------------------------------------------------------------------------ summary
def _accuracy_summary(steps: dict[str, Step]) -> list[str]:
    q, f = steps["evaluate-int8"], steps["evaluate-float"]
    if q["status"] == "done":
        s = f"int8 mAP@0.5 {fmt(q.get('map50'))}"
        if f["status"] == "done":
            s += f" (float {fmt(f.get('map50'))}, drop {fmt((eval_drop(steps) or {}).get('map50'))})"
        return [s]
    if f["status"] == "done":
        return [f"float mAP@0.5 {fmt(f.get('map50'))} (int8 not evaluated)"]
    return []


def _edgetpu_summary(t: Step) -> str:
    if t["status"] != "done" or t.get("preflight_ok") is None:
        return "Edge TPU: not run"
    if not t["preflight_ok"]:
        return "Edge TPU pre-flight FAILED"
    if not t.get("compiled"):
        return "Edge TPU: pre-flight ok, not compiled"
    cov = t.get("op_coverage") or {}
    est = " (pre-flight estimate)" if cov.get("source") != "compiler" else ""
    ops = f", {cov['tpu']}/{cov['total']} ops on TPU{est}" if "tpu" in cov and cov.get("total") else ""
    return f"Edge TPU: compiled{ops}"


def summarize(steps: dict[str, Step]) -> str:
    """The report's one line: accuracy, Edge TPU verdict, promotion."""
    if not any(s["status"] == "done" for s in steps.values()):
        return "nothing to report: no step results found"
    p = steps["promote"]
    if p["status"] == "done":
        promotion = (
            f"promoted as version {p.get('version')}"
            if p.get("promoted")
            else f"not promoted: {p.get('reason')}"
        )
    else:
        promotion = "promotion: not run"
    return "; ".join([*_accuracy_summary(steps), _edgetpu_summary(steps["edgetpu"]), promotion])


# ----------------------------------------------------------------------------------------- sections
def _md_validate(s: Step) -> list[str]:
    w = s.get("warnings", 0)
    lines = [
        f"{s.get('accepted', '?')} labeled images accepted, {s.get('rejected', '?')} rejected, "
        f"{w} warning{'' if w == 1 else 's'}."
    ]
    if is_number(s.get("objects_accepted")):
        lines.append(
            f"{s['objects_accepted']} labeled objects kept"
            + (f", {s['objects_dropped']} boxes dropped" if s.get("objects_dropped") else "")
            + (f", {s['background_images']} images without objects" if s.get("background_images") else "")
            + "."
        )
    if s.get("validation_status", "ok") != "ok":
        lines.append(f"Validation status: {s['validation_status']}.")
    if s.get("rejected"):
        lines.append("Rejected images are left out of training; fix them and drop them in again.")
    elif s.get("accepted"):
        lines.append("Every labeled image passed the checks.")
    for r in (s.get("issues") or [])[:10]:
        msg = str(r.get("message") or "").rstrip(".")
        lines.append(
            f"- {r['severity']} `{r['code']}` in {r['count']} file{'s' if r['count'] != 1 else ''} "
            f"(e.g. {Path(str(r['example'])).name}): {msg}" + (f". Fix: {r['fix']}" if r.get("fix") else "")
        )
    if s.get("report"):
        lines.append(f"Full per-file report: `{s['report']}`.")
    return lines


def _md_dataset(s: Step) -> list[str]:
    lines = []
    if s.get("snapshot"):
        lines.append(
            f"Snapshot `{s['snapshot']}`; classes: {', '.join(map(str, s['classes'])) or 'n/a'}; "
            f"split {s.get('split')}, seed {s.get('seed')}."
        )
    counts = s.get("counts") or {}
    lines += ["", "| split | images | objects |", "|---|---|---|"]
    for split in ("train", "val", "test"):
        c = counts.get(split)
        if isinstance(c, dict):
            lines.append(f"| {split} | {c.get('images', '?')} | {c.get('objects', '?')} |")
    if isinstance(counts.get("test"), dict) and not counts["test"].get("images"):
        lines += ["", "The test split is empty: accuracy numbers cannot be trusted; add labeled images."]
    return lines


def _md_config(s: Step) -> list[str]:
    return [
        f"Config: `{s.get('config')}`.",
        *(f"- {k}: {v}" for k, v in sorted(s.get("settings", {}).items())),
    ]


def _md_train(s: Step) -> list[str]:
    speed = f" at {fmt(s['images_per_sec'], 1)} images/s." if is_number(s.get("images_per_sec")) else "."
    lines = [f"Trained {s.get('steps_done', '?')} steps" + _budget_text(s) + speed]
    if "backbone_weights" in s:
        lines.append(f"- backbone weights: {s['backbone_weights'] or 'none (random init)'}")
    if s.get("compute_dtype"):
        lines.append(f"- compute dtype: {s['compute_dtype']}")
    for k, v in sorted((s.get("losses") or {}).items()):
        if "first" in v:
            lines.append(f"- loss {k}: {fmt(v['first'], 4)} -> {fmt(v['last'], 4)}")
        else:
            lines.append(f"- loss {k}: {fmt(v['last'], 4)}")
    return lines


def _budget_text(s: Step) -> str:
    """' (of N planned, stopped by the 15 min time budget)' for a budgeted run, else ''."""
    if s.get("stopped_by") != "time budget":
        return ""
    budget = (
        f"the {fmt(s['max_seconds'] / 60, 1)} min time budget"
        if is_number(s.get("max_seconds"))
        else "its time budget"
    )
    return f" (of {s.get('steps_planned', '?')} planned; stopped by {budget})"


def _md_export(s: Step) -> list[str]:
    return [f"SavedModel `{s.get('saved_model')}` ({_mib(s.get('bytes'))})."]


def _md_tflite(s: Step) -> list[str]:
    lines = [f"- `{n}`: {_mib(m.get('bytes'))}" for n, m in sorted((s.get("models") or {}).items())]
    return lines if s.get("models") else [*lines, "No .tflite path in the step result."]


def _md_coverage(cov: dict[str, Any]) -> list[str]:
    est = " (pre-flight estimate; the compiler did not run)" if cov.get("source") != "compiler" else ""
    lines = [
        f"Operations on the Edge TPU: {cov.get('tpu', '?')}; on the CPU: {cov.get('cpu', '?')}; "
        f"total {cov.get('total', '?')}{est}."
    ]
    if cov.get("cpu_ops"):
        lines.append(
            "On the CPU: "
            + ", ".join(f"{k} x{v}" for k, v in cov["cpu_ops"].items())
            + " (expected there: only the SSD post-processing tail, CUSTOM + DEQUANTIZE)."
        )
    return lines


def _md_edgetpu(s: Step) -> list[str]:
    ok = s.get("preflight_ok")
    verdict = (
        "the model passes the Edge TPU pre-flight."
        if ok
        else "the model can NOT run on the Edge TPU as is."
        if ok is False
        else "unknown."
    )
    lines = ["Verdict: " + verdict, *(f"- reason: {r}" for r in s.get("reasons", []))]
    if s.get("compiled"):
        lines.append(f"Compiled model: `{s['compiled']}` ({_mib(s.get('compiled_bytes'))}).")
    elif ok:
        lines.append("No compiled model (compiler not run or failed).")
    if s.get("op_coverage"):
        lines += _md_coverage(s["op_coverage"])
    if s.get("advice"):
        lines += ["", "What to do:", *(f"- {a}" for a in s["advice"])]
    return lines


def _md_promote(s: Step) -> list[str]:
    if s.get("promoted"):
        return [
            f"Promoted as version {s.get('version')}: {s.get('reason')}.",
            f"Model folder: `{s.get('model_dir')}`.",
        ]
    return [
        f"Not promoted: {s.get('reason')}.",
        f"The model stays in `{s.get('model_dir')}`; the current model "
        f"(version {s.get('current_version') or 'none'}) keeps serving.",
    ]


def _section(s: Step, title: str, body: Callable[[Step], list[str]]) -> list[str]:
    """A step's heading, then its body when it is done, else why it is not."""
    lines = ["", f"## {title}", ""]
    if s["status"] != "done":
        status = {"not run": "Not run.", "skipped": f"Skipped: {s.get('note')}."}
        lines.append(status.get(s["status"], f"Result unreadable: {s.get('note')}."))
        if s.get("note") and s["status"] == "not run":
            lines.append(f"({s['note']})")
        return lines
    if s.get("note"):
        lines.append(f"({s['note']})")
    return lines + body(s)


def _per_class_rows(f: Step, q: Step) -> list[str]:
    def per_class(e: Step) -> dict[str, Any]:
        return (e.get("per_class") or {}) if e["status"] == "done" else {}

    classes = sorted(set(per_class(f)) | set(per_class(q)))
    if not classes:
        return []
    lines = ["", "| class | AP@0.5 float | AP@0.5 int8 |", "|---|---|---|"]
    for c in classes:
        fa = ((f.get("per_class") or {}).get(c) or {}).get("ap50")
        qa = ((q.get("per_class") or {}).get(c) or {}).get("ap50")
        lines.append(f"| {c} | {_ap(fa)} | {_ap(qa)} |")
    return lines


def _md_accuracy(steps: dict[str, Step]) -> list[str]:
    """Float and int8 side by side, the quantization drop and the per-class AP."""
    lines = ["", "## Accuracy: float vs int8", ""]
    f, q = steps["evaluate-float"], steps["evaluate-int8"]
    if f["status"] != "done" and q["status"] != "done":
        return [*lines, "Not run."]
    lines += [
        "COCO mAP on the test split (higher is better, 0..1).",
        "",
        "| model | mAP@0.5 | mAP@[.5:.95] | images | latency |",
        "|---|---|---|---|---|",
    ]
    for label, e in (("float", f), ("int8", q)):
        if e["status"] == "done":
            lat = f"{fmt(e['latency_ms'], 1)} ms" if is_number(e.get("latency_ms")) else "n/a"
            lines.append(
                f"| {label} | {fmt(e.get('map50'))} | {fmt(e.get('map'))} | {e.get('images', 'n/a')} | "
                f"{lat} |"
            )
        else:
            lines.append(f"| {label} | {e['status']} | | | |")
    drop = eval_drop(steps) or {}
    d50, d = drop.get("map50"), drop.get("map")
    if d50 is not None or d is not None:
        lines += ["", f"Quantization drop (float - int8): mAP@0.5 {fmt(d50)}, mAP@[.5:.95] {fmt(d)}."]
        if is_number(d50) and d50 > BIG_DROP:
            lines.append(
                f"The drop is above {BIG_DROP}: calibrate with more representative images "
                "(the tflite step's representative dataset) or train longer."
            )
    return lines + _per_class_rows(f, q)


_SECTIONS: tuple[tuple[str, Callable[[Step], list[str]]], ...] = (
    ("validate", _md_validate),
    ("dataset", _md_dataset),
    ("config", _md_config),
    ("train", _md_train),
    ("export", _md_export),
    ("tflite", _md_tflite),
    ("edgetpu", _md_edgetpu),
)


def render_md(report: RunReport) -> str:
    steps = report.steps
    lines = [
        f"# Run report: {report.run_id}",
        "",
        f"**In short:** {report.summary.rstrip('.')}.",
        "",
        f"Run folder: `{report.run_dir}`",
        "",
        "| step | status |",
        "|---|---|",
        *(f"| {TITLES[n]} | {steps[n]['status']} |" for n in STEPS),
    ]
    for name, body in _SECTIONS:
        lines += _section(steps[name], TITLES[name], body)
    lines += _md_accuracy(steps)
    lines += _section(steps["promote"], TITLES["promote"], _md_promote)
    return "\n".join(lines) + "\n"
