"""The run report: all steps present, some missing, inline XCom JSON, well-known files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from release_data import PER_CLASS, bccd_manifest
from release_data import write as _json

from edgetpu_retrain.cli import main

pytestmark = pytest.mark.usefixtures("mlflow_off")  # promote/report without MLflow

UNKNOWN_CLASS = {
    "code": "unknown_class",
    "severity": "error",
    "message": "class 'RCB' not in the label map",
    "fix": "rename it to RBC",
    "object": 0,
}


@pytest.fixture()
def full_run(tmp_path: Path) -> dict:
    """Every step's JSON line (as XCom would hold it) plus the files they point at."""
    root = tmp_path
    run = root / "runs" / "scheduled__2026-11-24T02:00:00"
    val = root / "validated" / "drop1"
    _json(
        val / "validation_report.json",
        {
            "summary": {
                "status": "ok",
                "accepted": 2,
                "rejected": 2,
                "objects_accepted": 41,
                "objects_dropped": 1,
                "background_images": 0,
            },
            "files": [
                {"xml": str(val / "a.xml"), "image": "a.jpg", "verdict": "accepted", "issues": []},
                {
                    "xml": str(val / "b.xml"),
                    "image": "b.jpg",
                    "verdict": "accepted",
                    "issues": [
                        {
                            "code": "box_clipped",
                            "severity": "warning",
                            "message": "box 2 past the right edge by 3 px",
                            "fix": "redraw the box in LabelImg",
                            "object": 2,
                        }
                    ],
                },
                {
                    "xml": str(val / "c.xml"),
                    "image": "c.jpg",
                    "verdict": "rejected",
                    "issues": [UNKNOWN_CLASS],
                },
                {
                    "xml": None,
                    "image": "d.jpg",
                    "verdict": "rejected",
                    "issues": [
                        {
                            "code": "missing_xml",
                            "severity": "error",
                            "message": "no annotation",
                            "fix": "label it",
                            "object": None,
                        }
                    ],
                },
            ],
        },
    )
    ds = root / "datasets" / "bccd" / "20261124"
    _json(ds / "manifest.json", bccd_manifest(seed=7))
    (run / "tflite").mkdir(parents=True)
    (run / "tflite" / "model_int8.tflite").write_bytes(b"\0" * 3 * 1024 * 1024)
    (run / "tflite" / "model_float.tflite").write_bytes(b"\0" * 2048)
    (run / "saved_model").mkdir()
    (run / "saved_model" / "saved_model.pb").write_bytes(b"\0" * 4096)
    (run / "config.yaml").write_text(
        "model:\n  base_model: mobilenet_v2_ssd\n  input_size: 320\n"
        "train:\n  batch_size: 4\n  learning_rate: 0.004\n  num_steps: 2000\n"
    )
    steps = {
        "validate": {
            "report": str(val / "validation_report.json"),
            "accepted": 2,
            "rejected": 2,
            "label_map": str(val / "label_map.pbtxt"),
            "annotations": str(val / "accepted.json"),
            "out_dir": str(val),
            "warnings": 1,
        },
        "build-dataset": {
            "manifest": str(ds / "manifest.json"),
            "csv": str(ds / "annotations.csv"),
            "counts": {
                "train": {"images": 291, "objects": 3890},
                "val": {"images": 36, "objects": 480},
                "test": {"images": 37, "objects": 500},
            },
            "label_map": str(ds / "label_map.pbtxt"),
            "dataset_dir": str(ds),
            "tfrecords": {},
        },
        "render-config": {"config": str(run / "config.yaml")},
        "train": {
            "steps_done": 2000,
            "steps_planned": 2000,
            "stopped_by": "time budget",
            "max_seconds": 900.0,
            "backbone_weights": "bundled",
            "compute_dtype": "float32",
            "losses": {"total": [1.9, 1.2, 0.61], "cls": [1.1, 0.3]},
            "images_per_sec": 5.9,
            "checkpoint": str(run / "checkpoints" / "ckpt-20"),
        },
        "export": {"saved_model": str(run / "saved_model")},
        "tflite": {
            "int8": str(run / "tflite" / "model_int8.tflite"),
            "float": str(run / "tflite" / "model_float.tflite"),
        },
        "edgetpu": {
            "preflight": {"ok": True, "reasons": []},
            "compiled": str(run / "tflite" / "missing_edgetpu.tflite"),
            "compiler": {"ops_tpu": 110, "ops_cpu": 3, "ops_total": 113, "subgraphs": 1},
        },
        "evaluate-float": {
            "map": 0.52,
            "map50": 0.83,
            "per_class": PER_CLASS,
            "images": 37,
            "model": str(run / "saved_model"),
        },
        "evaluate-int8": {
            "map": 0.49,
            "map50": 0.80,
            "per_class": {**PER_CLASS, "RBC": {"ap": 0.4, "ap50": 0.7}},
            "images": 37,
            "model": str(run / "tflite" / "model_int8.tflite"),
            "latency_ms": 7.7,
        },
        "promote": {
            "promoted": True,
            "reason": "first model for this name",
            "metric": "map50",
            "new": 0.8,
            "current": None,
            "version": "0001",
            "model_dir": str(root / "models/bccd/versions/0001"),
        },
    }
    return {"run": run, "steps": steps, "root": root}


def report(capsys, run: Path, out: Path, *step_args: str) -> tuple[int, dict]:
    args = ["report", "--run-dir", str(run), "--out", str(out)]
    for s in step_args:
        args += ["--step", s]
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {"stderr": captured.err}


def test_report_all_steps_inline_xcom(full_run, capsys):
    out = full_run["run"] / "report"
    step_args = [f"{k}={json.dumps(v)}" for k, v in full_run["steps"].items()]
    code, res = report(capsys, full_run["run"], out, *step_args)
    assert code == 0
    assert res["report"] == str((out / "report.md").resolve()) and res["report_json"].endswith("report.json")
    assert res["summary"] == (
        "int8 mAP@0.5 0.800 (float 0.830, drop 0.030); Edge TPU: compiled, 110/113 ops "
        "on TPU; promoted as version 0001"
    )
    data = json.loads((out / "report.json").read_text())
    assert all(s["status"] == "done" for s in data["steps"].values())
    v = data["steps"]["validate"]
    assert (v["accepted"], v["rejected"], v["warnings"]) == (2, 2, 1)
    assert [i["code"] for i in v["issues"]] == ["missing_xml", "unknown_class", "box_clipped"]
    assert data["steps"]["config"]["settings"]["batch_size"] == 4
    assert data["steps"]["tflite"]["models"]["model_int8.tflite"]["bytes"] == 3 * 1024 * 1024
    md = (out / "report.md").read_text()
    for text in (
        "2 labeled images accepted, 2 rejected, 1 warning.",
        "41 labeled objects kept, 1 boxes dropped.",
        "Fix: rename it to RBC",
        "Snapshot `bccd/20261124`",
        "| test | 37 | 500 |",
        "Trained 2000 steps (of 2000 planned; stopped by the 15.0 min time budget) at 5.9 images/s.",
        "- backbone weights: bundled",
        "- compute dtype: float32",
        "loss total: 1.9000 -> 0.6100",
        "`model_int8.tflite`: 3.00 MiB",
        "passes the Edge TPU pre-flight",
        "Operations on the Edge TPU: 110; on the CPU: 3",
        "| int8 | 0.800 | 0.490 | 37 | 7.7 ms |",
        "mAP@0.5 0.030",
        "| RBC | 0.810 | 0.700 |",
        "Promoted as version 0001",
        "- batch_size: 4",
    ):
        assert text in md, text
    assert "Not run" not in md
    # deterministic: same inputs, same bytes
    before = (out / "report.md").read_bytes(), (out / "report.json").read_bytes()
    report(capsys, full_run["run"], out, *step_args)
    assert ((out / "report.md").read_bytes(), (out / "report.json").read_bytes()) == before


def test_report_with_nothing_run(tmp_path, capsys):
    run = tmp_path / "runs" / "manual__1"
    run.mkdir(parents=True)
    code, res = report(capsys, run, tmp_path / "out", "train=None", "promote=", "edgetpu=/nonexistent/x.json")
    assert code == 0 and res["summary"] == "nothing to report: no step results found"
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s["status"] for s in data["steps"].values()} == {"not run"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("Not run.") == 9  # 10 steps, float + int8 share one accuracy section


def test_report_partial_failed_preflight_from_well_known_files(full_run, capsys):
    """Files under the run dir are found without --step; a failed pre-flight explains what to do."""
    run, steps = full_run["run"], full_run["steps"]
    _json(run / "steps" / "train.json", steps["train"])
    _json(
        run / "preflight.json",
        {
            "preflight": {
                "ok": False,
                "reasons": ["CONV_2D version 6 is newer than Edge TPU compiler 16 accepts (max 3)"],
            },
            "compiled": None,
            "compiler": None,
        },
    )
    _json(run / "eval_float.json", steps["evaluate-float"])
    _json(
        run / "promote.json",
        {
            "promoted": False,
            "reason": "Edge TPU pre-flight failed: CONV_2D version 6",
            "metric": "map50",
            "new": 0.8,
            "current": 0.82,
            "version": None,
            "current_version": "0003",
            "model_dir": str(run),
        },
    )
    (run / "eval_int8.json").write_text("{truncated")  # unreadable auto-discovered file: shown, no crash
    code, res = report(capsys, run, run / "report")
    assert code == 0
    assert res["summary"] == (
        "float mAP@0.5 0.830 (int8 not evaluated); Edge TPU pre-flight FAILED; "
        "not promoted: Edge TPU pre-flight failed: CONV_2D version 6"
    )
    data = json.loads((run / "report" / "report.json").read_text())
    st = {k: v["status"] for k, v in data["steps"].items()}
    assert st["validate"] == "not run" and st["train"] == "done" and st["evaluate-int8"] == "unreadable"
    assert st["tflite"] == "done" and st["export"] == "done"  # model_int8.tflite / saved_model found by name
    md = (run / "report" / "report.md").read_text()
    assert "can NOT run on the Edge TPU" in md and "newer than Edge TPU compiler 16 accepts" in md
    assert "What to do:" in md and "pinned converter settings" in md
    assert "| int8 | unreadable |" in md and "version 0003) keeps serving" in md


def test_report_reads_artifact_files_and_step_aliases(full_run, capsys):
    run, root = full_run["run"], full_run["root"]
    ev = _json(root / "e" / "int8.json", full_run["steps"]["evaluate-int8"])
    code, res = report(
        capsys,
        run,
        root / "out",
        f"build_dataset={root / 'datasets/bccd/20261124/manifest.json'}",
        f"validate={root / 'validated/drop1/validation_report.json'}",
        f"evaluate={ev}",
        f"config={run / 'config.yaml'}",
    )
    assert code == 0
    data = json.loads((root / "out" / "report.json").read_text())["steps"]
    assert data["dataset"]["counts"]["test"]["images"] == 37 and data["dataset"]["seed"] == 7
    assert data["dataset"]["classes"] == ["Platelets", "RBC", "WBC"]
    assert data["validate"]["rejected"] == 2 and data["evaluate-int8"]["map50"] == 0.8
    assert data["config"]["settings"]["base_model"] == "mobilenet_v2_ssd"
    assert res["summary"].startswith("int8 mAP@0.5 0.800; Edge TPU: not run; promotion: not run")


def test_report_accepts_python_repr_from_jinja(tmp_path, capsys):
    """`{{ ti.xcom_pull(...) }}` of a dict renders Python repr; the report still reads it."""
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    value = repr(
        {
            "promoted": False,
            "reason": "int8 mAP@0.5 0.7 is below current",
            "version": None,
            "model_dir": str(run),
            "current_version": "0002",
        }
    )
    code, res = report(capsys, run, tmp_path / "o", f"promote={value}")
    assert code == 0 and res["summary"].endswith("not promoted: int8 mAP@0.5 0.7 is below current")


@pytest.mark.parametrize(
    "step, fragment", [("train={oops", "--step train"), ("nosuch={}", "unknown step"), ("train", "NAME=JSON")]
)
def test_report_bad_step_values_are_user_errors(tmp_path, capsys, step, fragment):
    code, res = report(capsys, tmp_path, tmp_path / "out", step)
    assert code == 2 and fragment in res["stderr"]


def test_report_missing_run_dir(tmp_path, capsys):
    """A run that failed before any step wrote its folder still gets a report: every step 'not run'."""
    code, res = report(capsys, tmp_path / "nope", tmp_path / "out")
    assert code == 0 and res["steps_run"] == []
    assert (tmp_path / "out" / "report.md").is_file()


def test_report_failed_edgetpu_step_reads_its_preflight(full_run, capsys):
    """The edgetpu step exits 2 on a failed pre-flight (no XCom): the report still explains it."""
    run = full_run["run"]
    _json(
        run / "edgetpu" / "preflight.json",
        {
            "ok": False,
            "reasons": [
                "op 3 QUANTIZE (v3) cannot run on the Edge TPU: version 3 is newer than compiler "
                "16 parses; fix: convert with the pinned converter"
            ],
            "expected_tpu_op_count": 2,
            "expected_cpu_op_count": 111,
            "expected_cpu_ops": {"CONV_2D": 51},
        },
    )
    code, res = report(capsys, run, run / "report", "edgetpu=null", "promote=null")
    assert code == 0 and "Edge TPU pre-flight FAILED" in res["summary"]
    md = (run / "report" / "report.md").read_text()
    assert "can NOT run on the Edge TPU" in md and "QUANTIZE (v3)" in md and "pre-flight estimate" in md
    assert (
        "the step passed no result"
        in json.loads((run / "report" / "report.json").read_text())["steps"]["edgetpu"]["note"]
    )


def test_report_unwraps_json_string_xcom_and_nothing_to_do(full_run, capsys):
    """A runner may push the raw JSON line (a str): `| tojson` then gives a JSON string of JSON."""
    run, steps = full_run["run"], full_run["steps"]
    wrapped = json.dumps(json.dumps(steps["evaluate-int8"]))
    skipped = json.dumps({"nothing_to_do": True, "reason": "no new labeled drop"})
    code, res = report(capsys, run, run / "r", f"evaluate-int8={wrapped}", f"validate={skipped}")
    assert code == 0 and res["summary"].startswith("int8 mAP@0.5 0.800")
    data = json.loads((run / "r" / "report.json").read_text())["steps"]
    assert data["validate"] == {"status": "skipped", "source": "inline", "note": "no new labeled drop"}
    assert "Skipped: no new labeled drop." in (run / "r" / "report.md").read_text()


def test_report_finds_the_dag_layout_of_failed_steps(full_run, capsys):
    """The DAG writes runs/<id>/validation/ and runs/<id>/train/train_result.json: found without XCom."""
    run = full_run["run"]
    _json(
        run / "validation" / "validation_report.json",
        {
            "summary": {"status": "failed: 3 of 4 files rejected", "accepted": 1, "rejected": 3},
            "files": [
                {"xml": "a.xml", "image": "a.jpg", "verdict": "accepted", "issues": []},
                *(
                    {
                        "xml": f"{n}.xml",
                        "image": f"{n}.jpg",
                        "verdict": "rejected",
                        "issues": [UNKNOWN_CLASS],
                    }
                    for n in "bcd"
                ),
            ],
        },
    )
    _json(
        run / "train" / "train_result.json",
        {
            "checkpoint": str(run / "train/checkpoints/ckpt-6"),
            "steps_done": 6,
            "loss": 1.25,
            "images_per_sec": 3.5,
        },
    )
    code, _ = report(capsys, run, run / "report", "validate=null", "train=null")
    assert code == 0
    steps = json.loads((run / "report" / "report.json").read_text())["steps"]
    assert steps["validate"]["status"] == "done" and steps["validate"]["rejected"] == 3
    assert steps["validate"]["source"].endswith("validation/validation_report.json")
    assert steps["train"]["status"] == "done" and steps["train"]["steps_done"] == 6
    md = (run / "report" / "report.md").read_text()
    assert "Validation status: failed: 3 of 4 files rejected." in md and "Trained 6 steps" in md
