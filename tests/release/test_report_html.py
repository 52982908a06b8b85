"""report.html on a real tiny run (every step's verb on the shapes demo data), on a run that stopped half
way and on a run that never started; and the page from disk in Debian's Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import pytest

from edgetpu_retrain.cli import main

pytestmark = pytest.mark.usefixtures("mlflow_off")  # promote/report without MLflow

SECTIONS = ("Dataset", "Training", "Accuracy: float vs int8", "Sample test images", "Edge TPU", "Promotion")
CHROMIUM = Path("/usr/bin/chromium")


def report(capsys, run_dir: Path, out: Path, *extra: str) -> dict:
    assert main(["report", "--run-dir", str(run_dir), "--out", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def images(page: str) -> list[bytes]:
    """Every <img> of the page decoded; each must be an inline PNG."""
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    return [base64.b64decode(s.split(",", 1)[1]) for s in srcs]


def check_self_contained(page: str) -> None:
    assert not re.search(r"(src|href)=\"(?!data:)", page), "a resource that is not inline"
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "@import" not in page


def test_full_run_report_shows_every_section(tiny_pipeline_run, tmp_path, capsys) -> None:
    from PIL import Image

    res = report(capsys, tiny_pipeline_run, tmp_path / "report")
    html_path = Path(res["report_html"])
    assert html_path == (tmp_path / "report" / "report.html").resolve() and res["mlflow"] is None
    page = html_path.read_text(encoding="utf-8")
    check_self_contained(page)
    for title in SECTIONS:
        assert f"<h2>{title}" in page, title
    assert "stopped at" not in page
    pngs = images(page)
    for data in pngs:
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "PNG" and im.size[0] > 100 and "Software" not in im.info
    test_images = json.loads((tiny_pipeline_run / "eval_int8.json").read_text())["images"]
    # per class, boxes/image, box sizes, curves, AP, PR, confusion, ops, model size + the samples
    assert len(pngs) == 9 + min(8, test_images)
    assert "zz_unlabeled.jpg" in page and "zz_broken.xml" in page  # the rejected files, with why
    assert "Promoted as version 0001, the first model for this name" in page
    assert "on the CPU (pre-flight estimate; the compiler did not run)" in page
    assert "edgetpu_compiler: not run" in page  # no compiler on this machine


def test_same_run_gives_the_same_bytes(tiny_pipeline_run, tmp_path, capsys) -> None:
    first = Path(report(capsys, tiny_pipeline_run, tmp_path / "a")["report_html"]).read_bytes()
    second = Path(report(capsys, tiny_pipeline_run, tmp_path / "b")["report_html"]).read_bytes()
    assert first == second


def test_samples_are_worst_first_and_reproducible(tiny_pipeline_run) -> None:
    from edgetpu_retrain.release.report import data

    details = json.loads((tiny_pipeline_run / "eval_int8.details.json").read_text())
    chosen = data.worst_images(details)
    errors = [c["errors"] for c in chosen]
    assert errors == sorted(errors, reverse=True) and len(chosen) == min(8, len(details["images"]))
    assert [c["filename"] for c in chosen] == [c["filename"] for c in data.worst_images(details)]
    matrix = data.confusion(details)["matrix"]
    objects = sum(len(i["gt_labels"]) for i in details["images"])
    assert sum(sum(row) for row in matrix[:-1]) == objects  # every ground-truth box is counted once


def test_a_run_that_stopped_after_the_config_says_what_ran(tiny_pipeline_run, tmp_path, capsys) -> None:
    run = tmp_path / "runs" / "manual__stopped"
    run.mkdir(parents=True)
    saved = tiny_pipeline_run / "steps"
    steps = [f"{name}={saved / f'{name}.json'}" for name in ("validate", "dataset", "config")]
    flags = [a for s in steps for a in ("--step", s)]
    res = report(capsys, run, run / "report", *flags, "--step", "train=null")
    page = Path(res["report_html"]).read_text(encoding="utf-8")
    check_self_contained(page)
    assert "The run stopped at train (not run" in page
    assert "Training curves: not run." in page and "Evaluation: not run." in page
    assert "Sample images: not run." in page and "Edge TPU pre-flight: not run." in page
    assert "Promotion did not run" in page
    assert len(images(page)) == 3  # the dataset's pictures are still there


def test_a_run_with_nothing_gets_a_page(tmp_path, capsys) -> None:
    res = report(capsys, tmp_path / "runs" / "manual__empty", tmp_path / "out")
    page = Path(res["report_html"]).read_text(encoding="utf-8")
    assert "The run stopped at validate (not run)" in page and "Dataset snapshot: not run." in page
    assert images(page) == []


def test_compiler_figures_when_the_compiler_ran(tiny_pipeline_run, tmp_path, capsys) -> None:
    """edgetpu_compiler cannot run here: a compiler stdout in its real format stands in, with a
    placeholder compiled file for the size bar."""
    log = tmp_path / "edgetpu_compiler.txt"
    log.write_text(COMPILER_STDOUT)
    compiled = tmp_path / "model_int8_edgetpu.tflite"
    compiled.write_bytes(b"\0" * 3 * 2**20)
    step = {"preflight": {"ok": True, "reasons": []}, "compiled": str(compiled), "out_dir": str(tmp_path)}
    res = report(capsys, tiny_pipeline_run, tmp_path / "report", "--step", f"edgetpu={json.dumps(step)}")
    page = Path(res["report_html"]).read_text(encoding="utf-8")
    assert "Operations: 62 on the Edge TPU, 0 on the CPU (compiler)." in page
    for text in ("compiler version</td><td>16.0.384591198", "on chip memory used</td><td>3.91MiB",
                 "off chip memory used</td><td>0.00B"):  # fmt: skip
        assert text in page, text


COMPILER_STDOUT = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1021 ms.

Input model: model_int8.tflite
Input size: 4.12MiB
Output model: model_int8_edgetpu.tflite
Output size: 4.35MiB
On-chip memory used for caching model parameters: 3.91MiB
On-chip memory remaining for caching model parameters: 3.74MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 62
Operation log: model_int8_edgetpu.log
See the operation log file for individual operation details.
Number of operations that will run on Edge TPU: 62
Number of operations that will run on CPU: 0

Operator                       Count      Status

CONV_2D                        55         Mapped to Edge TPU
DEPTHWISE_CONV_2D              5          Mapped to Edge TPU
CONCATENATION                  2          Mapped to Edge TPU
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def test_chromium_renders_every_image_from_disk(tiny_pipeline_run, tmp_path) -> None:
    """The page from disk (file://, no server, no network) in Debian's Chromium: every <img> decoded."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} missing: apt-get install chromium (.ci/apt-packages.txt)")
        pytest.skip(f"{CHROMIUM} missing (Debian package chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    page_file = tiny_pipeline_run / "report" / "report.html"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(page_file.as_uri())
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(widths) >= 10 and all(w and w > 0 for w in widths), widths
