"""`edgetpu-retrain report`: one plain-words report of a run (report.md) plus its data (report.json).

Modules: `collect` (where each step's result comes from, and the `RunReport` every renderer takes),
`steps` (per-step summaries), `advice` (Edge TPU next steps), `render` (report.md), `html` (report.html,
with the figures of `plots` drawn from what `data` reads in the run's files).

Each step's result comes from `--step NAME=VALUE` (alias `--step-json`, repeatable: the step's JSON
line, e.g. `--step train='{{ ti.xcom_pull("train") | tojson }}'`, or a JSON file), else from
well-known files under `--run-dir`. A step with no result is shown as "not run". An explicit `--step`
value that is not valid JSON is a user error (exit 2); an unreadable auto-discovered file is shown as
"unreadable" with the reason.

Step names: validate, dataset (alias build-dataset), config (render-config), train, export, tflite,
edgetpu, evaluate-float, evaluate-int8 (alias evaluate), promote. `_` and `-` are interchangeable.

Writes OUT/report.md, OUT/report.json (canonical JSON, no timestamps: the same inputs give the same
bytes) and OUT/report.html (the same run with pictures, self-contained), then logs the run to MLflow
(`release.tracking.log_report`; never fails the step). JSON line: report, report_json, report_html,
summary, steps_run, mlflow ({tracking_uri, mlflow_run_id} or null).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.release import tracking
from edgetpu_retrain.release.report import data as run_data
from edgetpu_retrain.release.report.collect import STEPS, RunReport, collect_entries
from edgetpu_retrain.release.report.render import render_md, summarize
from edgetpu_retrain.release.report.steps import normalize

log = logging.getLogger(__name__)

__all__ = ["RunReport", "add_arguments", "build_report", "render_md", "run"]


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
    tracking.add_arguments(parser)


def build_report(run_dir: Path, step_values: list[str]) -> RunReport:
    """The whole report's data: every step normalized, plus the one-line summary."""
    entries = collect_entries(run_dir, step_values)
    steps = {name: normalize(name, entry) for name, entry in entries.items()}
    return RunReport(run_id=run_dir.name, run_dir=str(run_dir), summary=summarize(steps), steps=steps)


def run(args: argparse.Namespace) -> dict[str, Any]:
    # A run that failed before its first step wrote anything has no run folder yet: report that, too.
    report = build_report(Path(args.run_dir).resolve(), args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = common.write_text(out / "report.md", render_md(report)).resolve()
    js = common.write_json(out / "report.json", report.to_json()).resolve()
    from edgetpu_retrain.release.report.html import write_html  # matplotlib: only when a report is made

    page = write_html(out, report)
    rows = run_data.training_rows(run_data.metrics_path(report.steps, Path(report.run_dir)))
    tracked = tracking.log_report(
        report, out_dir=out, html=page, uri=args.tracking_uri, run_id=args.airflow_run_id, metrics_rows=rows
    )
    log.info("report: %s", report.summary)
    return {
        "report": str(md),
        "report_json": str(js),
        "report_html": str(page),
        "summary": report.summary,
        "steps_run": sorted(n for n, s in report.steps.items() if s["status"] == "done"),
        "mlflow": tracked,
    }
