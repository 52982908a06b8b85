"""report.html: the run report with pictures, one self-contained file (images inline, no network).

Built from the `RunReport` (the normalized steps report.md shows) and the run's files: the dataset
snapshot's annotations.csv and test TFRecords, validation_report.json, train/metrics.jsonl, the
evaluate step's `*.details.json`, the edgetpu and promote results. A section whose inputs are missing
says "Not run" with the reason, so a failed run still gets a page that shows how far it got. The same
inputs give the same bytes (see plots.py).
"""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.release.metrics import METRIC_NAMES, fmt
from edgetpu_retrain.release.report import data as rd
from edgetpu_retrain.release.report import plots
from edgetpu_retrain.release.report.collect import STEPS, RunReport

log = logging.getLogger(__name__)
HTML_FILE = "report.html"
CSS = """
body{font-family:"DejaVu Sans",Verdana,sans-serif;margin:0 auto;max-width:1060px;padding:0 18px 40px;
color:#222}
h1{font-size:22px;margin:18px 0 6px}
h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:30px}
h3{font-size:14px;margin:16px 0 6px}
.short{font-size:15px;background:#f4f6f8;padding:10px 12px;border-radius:6px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f6f8}
.done{color:#1b5e20;font-weight:bold}.bad{color:#b71c1c;font-weight:bold}.muted{color:#777}
.notrun{color:#777;font-style:italic}img{max-width:100%;display:block;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid img{width:252px;margin:0}
.row{display:flex;flex-wrap:wrap;gap:14px}.legend span{display:inline-block;margin-right:14px}
code{font-size:12px;background:#f4f6f8;padding:0 3px}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


def table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def not_run(what: str, why: str | None = None) -> str:
    return f'<p class="notrun">{esc(what)}: not run.' + (f" ({esc(why)})" if why else "") + "</p>"


def _mib(n: Any) -> str:
    return f"{n / 2**20:.2f} MiB" if isinstance(n, int) else "n/a"


def _done(steps: dict[str, Any], name: str) -> bool:
    return steps.get(name, {}).get("status") == "done"


def _why(steps: dict[str, Any], name: str) -> str:
    s = steps.get(name, {})
    return f"{name}: {s.get('status', 'not run')}" + (f", {s['note']}" if s.get("note") else "")


# ------------------------------------------------------------------------------------------ header
def stopped_at(steps: dict[str, Any]) -> str | None:
    """The first pipeline step that did not finish while a later one is missing too, in words."""
    for name in STEPS:
        s = steps.get(name, {})
        if s.get("status") != "done":
            note = f": {s['note']}" if s.get("note") else ""
            status = s.get("status", "not run")
            return f"The run stopped at {name} ({status}{note}); the steps after it did not run."
    return None


def header(report: RunReport) -> str:
    steps = report.steps
    rows = "".join(
        f'<tr><td>{esc(n)}</td><td class="{"done" if s.get("status") == "done" else "notrun"}">'
        f'{esc(s.get("status"))}</td><td class="muted">{esc(s.get("note") or "")}</td></tr>'
        for n, s in steps.items()
    )
    stop = stopped_at(steps)
    return (
        f"<h1>Run report: {esc(report.run_id)}</h1>"
        f'<p class="short"><b>In short:</b> {esc(report.summary)}.</p>'
        + (f'<p class="bad">{esc(stop)}</p>' if stop else "")
        + f'<p class="muted">Run folder: <code>{esc(report.run_dir)}</code></p>'
        f"<table><tr><th>step</th><th>status</th><th>note</th></tr>{rows}</table>"
    )


# ----------------------------------------------------------------------------------------- sections
def dataset_section(steps: dict[str, Any], run_dir: Path) -> str:
    out = ["<h2>Dataset</h2>"]
    ds = steps.get("dataset", {})
    rows = rd.annotation_rows(ds.get("dataset_dir")) if _done(steps, "dataset") else None
    if rows is None:
        out.append(not_run("Dataset snapshot", _why(steps, "dataset")))
    else:
        stats = rd.dataset_stats(rows)
        counts = ds.get("counts") or {}
        out.append(
            table(
                ["split", "images", "objects"],
                [
                    [k, (counts.get(k) or {}).get("images", "?"), (counts.get(k) or {}).get("objects", "?")]
                    for k in ("train", "val", "test")
                ],
            )
        )
        out.append(
            img(plots.per_class_counts(stats["classes"], stats["images"], stats["boxes"]), "per class")
        )
        scales = rd.anchor_scales((steps.get("config") or {}).get("config") or run_dir / "config.yaml")
        out.append(
            '<div class="row">'
            + img(plots.boxes_per_image(stats["boxes_per_image"]), "boxes per image")
            + img(plots.box_sizes(stats["sizes"], scales), "box sizes")
            + "</div>"
        )
        if scales is None:
            out.append('<p class="muted">Anchor scales unknown (no readable config).</p>')
    out.append("<h3>Rejected files (validation)</h3>")
    v = steps.get("validate", {})
    report = rd.read_json(v.get("report") or run_dir / "validation" / "validation_report.json")
    if not _done(steps, "validate") or report is None:
        out.append(not_run("Validation", _why(steps, "validate")))
    else:
        rejected = rd.rejected_files(report)
        out.append(
            table(["file", "why", "fix"], [[r["file"], r["why"], r["fix"]] for r in rejected])
            if rejected
            else "<p>No file was rejected.</p>"
        )
    return "".join(out)


def training_section(steps: dict[str, Any], run_dir: Path) -> str:
    out = ["<h2>Training</h2>"]
    path = rd.metrics_path(steps, run_dir)
    rows = rd.training_rows(path)
    if rows is None:
        out.append(
            not_run("Training curves", _why(steps, "train") if not _done(steps, "train") else f"no {path}")
        )
        return "".join(out)
    last = rows[-1]
    ips = [r["images_per_s"] for r in rows if r.get("images_per_s")]
    out.append(
        f"<p>{len(rows)} logged steps up to step {last['step']}; last loss {fmt(last.get('loss'), 4)} "
        f"(box {fmt(last.get('box_loss'), 4)}, class {fmt(last.get('cls_loss'), 4)})"
        + (f"; median {fmt(sorted(ips)[len(ips) // 2], 1)} images/s" if ips else "")
        + ".</p>"
    )
    out.append(img(plots.training_curves(rows), "training curves"))
    return "".join(out)


def accuracy_section(steps: dict[str, Any], run_dir: Path) -> str:
    out = ["<h2>Accuracy: float vs int8</h2>"]
    f, q = steps.get("evaluate-float", {}), steps.get("evaluate-int8", {})
    if not (_done(steps, "evaluate-float") or _done(steps, "evaluate-int8")):
        out.append(not_run("Evaluation", _why(steps, "evaluate-int8")))
        return "".join(out)
    out.append(
        table(
            ["model", "mAP@0.5", "mAP@[.5:.95]", "images", "latency"],
            [
                [
                    k,
                    fmt(e.get("map50")),
                    fmt(e.get("map")),
                    e.get("images", "n/a"),
                    f"{fmt(e.get('latency_ms'), 1)} ms" if e.get("latency_ms") is not None else "n/a",
                ]
                if e.get("status") == "done"
                else [k, e.get("status", "not run"), "", "", ""]
                for k, e in (("float", f), ("int8", q))
            ],
        )
    )
    classes = sorted(set(f.get("per_class") or {}) | set(q.get("per_class") or {}))
    if classes:
        ap = [[((e.get("per_class") or {}).get(c) or {}).get("ap50") for c in classes] for e in (f, q)]
        out.append(img(plots.ap_bars(classes, ap[0], ap[1]), "per-class AP"))
    details = {
        k: rd.eval_details(e, run_dir, k) for k, e in (("float", f), ("int8", q)) if e.get("status") == "done"
    }
    curves = {k: d.get("pr_iou50") or {} for k, d in details.items() if d}
    if any(curves.values()):
        recall = next(d["recall_thresholds"] for d in details.values() if d)
        out.append(
            "<h3>Precision-recall at IoU 0.5 (test split)</h3>" + img(plots.pr_curves(recall, curves), "PR")
        )
    else:
        out.append(not_run("Precision-recall curves", "no evaluate details file (older evaluate step?)"))
    int8_details = details.get("int8")
    if int8_details:
        c = rd.confusion(int8_details)
        out.append(
            f"<h3>Confusion (int8, score &ge; {rd.SCORE_THRESHOLD}, IoU &ge; {rd.IOU_MATCH})</h3>"
            + img(plots.confusion_matrix(c["rows"], c["cols"], c["matrix"]), "confusion")
        )
    return "".join(out)


def samples_section(steps: dict[str, Any], run_dir: Path) -> str:
    out = [f"<h2>Sample test images (int8, up to {rd.SAMPLES}, worst first)</h2>"]
    details = (
        rd.eval_details(steps.get("evaluate-int8", {}), run_dir, "int8")
        if _done(steps, "evaluate-int8")
        else None
    )
    dataset_dir = steps.get("dataset", {}).get("dataset_dir")
    if details is None or not dataset_dir:
        out.append(not_run("Sample images", _why(steps, "evaluate-int8")))
        return "".join(out)
    chosen = rd.worst_images(details)
    try:
        encoded = rd.test_images(dataset_dir, [i["filename"] for i in chosen])
    except common.UserError as exc:
        out.append(not_run("Sample images", str(exc)))
        return "".join(out)
    names = {c["id"]: c["name"] for c in details["classes"]}
    out.append(
        '<p class="legend"><span style="color:#00a844">&#9632; ground truth (solid)</span>'
        f"<span>&#9633; int8 detections (dashed, score &ge; {rd.SCORE_THRESHOLD}, class + score)</span>"
        "<span>errors = missed + false + wrong-class boxes</span></p>"
    )
    figures = []
    for image in chosen:
        if image["filename"] in encoded:
            figures.append(
                img(
                    plots.sample_image(
                        _pixels(encoded[image["filename"]]), image, names, threshold=rd.SCORE_THRESHOLD
                    ),
                    image["filename"],
                )
            )
    out.append('<div class="grid">' + "".join(figures) + "</div>")
    return "".join(out)


def _pixels(encoded: bytes) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as im:
        return np.asarray(im.convert("RGB"))


def edgetpu_section(steps: dict[str, Any], run_dir: Path) -> str:
    out = ["<h2>Edge TPU</h2>"]
    e = steps.get("edgetpu", {})
    if not _done(steps, "edgetpu"):
        out.append(not_run("Edge TPU pre-flight", _why(steps, "edgetpu")))
        return "".join(out)
    ok = e.get("preflight_ok")
    out.append(
        f'<p class="{"done" if ok else "bad"}">Pre-flight: '
        + ("passed" if ok else "FAILED" if ok is False else "unknown")
        + ".</p>"
    )
    out.extend(f"<p>Reason: {esc(r)}</p>" for r in e.get("reasons") or [])
    cov = e.get("op_coverage") or {}
    if isinstance(cov.get("tpu"), int) and isinstance(cov.get("cpu"), int):
        source = (
            "compiler" if cov.get("source") == "compiler" else "pre-flight estimate; the compiler did not run"
        )
        out.append(
            f"<p>Operations: {cov['tpu']} on the Edge TPU, {cov['cpu']} on the CPU ({esc(source)}).</p>"
            + img(plots.op_split(cov["tpu"], cov["cpu"]), "ops")
        )
        if cov.get("cpu_ops"):
            out.append(
                "<p>On the CPU: " + esc(", ".join(f"{k} x{v}" for k, v in cov["cpu_ops"].items())) + "</p>"
            )
    sizes = {
        n: m["bytes"]
        for n, m in ((steps.get("tflite") or {}).get("models") or {}).items()
        if isinstance(m.get("bytes"), int) and "int8" in n
    }
    if e.get("compiled") and isinstance(e.get("compiled_bytes"), int):
        sizes[Path(e["compiled"]).name] = e["compiled_bytes"]
    if sizes:
        out.append(img(plots.model_sizes(sizes), "model size"))
    compiler = _compiler_figures(e.get("compiler") or {})
    keys = (
        "compiler_version",
        "on_chip_memory_used",
        "on_chip_memory_remaining",
        "off_chip_memory_used",
        "tpu_subgraphs",
        "total_ops",
        "ops_on_tpu",
        "ops_on_cpu",
        "compile_time_ms",
    )
    figures = [[k.replace("_", " "), compiler[k]] for k in keys if compiler.get(k) is not None]
    out.append(
        "<h3>Compiler figures</h3>"
        + (
            table(["figure", "value"], figures)
            if figures
            else not_run("edgetpu_compiler", "not on this machine or it failed")
        )
    )
    return "".join(out)


def _compiler_figures(compiler: dict[str, Any]) -> dict[str, Any]:
    """The step's figures, completed from the kept compiler stdout (memory use, version, time)."""
    stdout = compiler.get("stdout")
    if isinstance(stdout, str) and Path(stdout).is_file():
        from edgetpu_retrain.export.edgetpu.compiler_log import parse_compiler_output

        return {
            **parse_compiler_output(Path(stdout).read_text(encoding="utf-8", errors="replace")),
            **compiler,
        }
    return compiler


def promotion_sentence(steps: dict[str, Any]) -> str:
    p = steps.get("promote", {})
    if p.get("status") != "done":
        return f"Promotion did not run ({_why(steps, 'promote')})."
    metric = METRIC_NAMES.get(str(p.get("metric")), str(p.get("metric")))
    new, cur, cur_ver = p.get("new"), p.get("current"), p.get("current_version")
    tol = f"tolerance {fmt(p.get('tolerance'), 2)}"
    if p.get("promoted") and cur is None:
        return (
            f"Promoted as version {p.get('version')}, the first model for this name "
            f"(int8 {metric} {fmt(new)})."
        )
    if p.get("promoted"):
        return (
            f"Promoted as version {p.get('version')}: int8 {metric} {fmt(new)} against {fmt(cur)} for the "
            f"current version {cur_ver} ({tol})."
        )
    against = (
        f"the current version {cur_ver} (int8 {metric} {fmt(cur)}) keeps serving"
        if cur is not None
        else "there is no current model"
    )
    return f"Not promoted ({p.get('reason')}): this run's int8 {metric} is {fmt(new)}; {against}."


def sections(report: RunReport) -> list[str]:
    steps, run_dir = report.steps, Path(report.run_dir)
    parts = [header(report)]
    for build in (dataset_section, training_section, accuracy_section, samples_section, edgetpu_section):
        try:
            parts.append(build(steps, run_dir))
        except Exception as exc:  # noqa: BLE001 - one broken input must not cost the whole page
            log.warning("report.html: %s failed: %s", build.__name__, exc)
            parts.append(
                f"<h2>{esc(build.__name__)}</h2>" + not_run("This section", f"could not be drawn: {exc}")
            )
    parts.append(f"<h2>Promotion</h2><p>{esc(promotion_sentence(steps))}</p>")
    return parts


def render_html(report: RunReport) -> str:
    body = "\n".join(sections(report))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Run report {esc(report.run_id)}</title><style>{CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def write_html(out_dir: str | Path, report: RunReport) -> Path:
    """OUT/report.html of the run."""
    return common.write_text(Path(out_dir) / HTML_FILE, render_html(report)).resolve()
