"""A real, tiny pipeline run: every step's verb on the shapes demo data, as the DAG runs them.

`build_run(root)` writes <root>/incoming/shapes (the drop, plus one image without XML and one broken
XML so validation rejects something), <root>/datasets/shapes/v1, <root>/runs/<run folder>/ with each
step's JSON line saved as steps/<name>.json (the files `report` discovers), promotes into
<root>/models and writes the report (MLflow off). The verbs run in-process (TensorFlow is imported
once), on the smallest settings that still train: 30 images of 128 px, a 96 px alpha-0.35 detector,
12 steps. Shared by the report, tracking, plugin and live report tests (`tiny_pipeline_run`, one per
session); `EDGETPU_TEST_TINY_RUN=DIR` keeps it in DIR across sessions (development: build once).

    PYTHONPATH=include python tests/tiny_pipeline.py /tmp/some-root
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from edgetpu_retrain.pipeline.drops import path_safe

RUN_ID = "manual__2026-12-01T12:00:00+00:00"
TRAIN_SETS = {
    "model.input_size": 96,
    "model.alpha": 0.35,
    "model.backbone_weights": "null",
    "train.steps": 12,
    "train.batch_size": 8,
    "train.warmup_steps": 3,
    "train.log_every": 2,
    "train.checkpoint_every": 12,
    "train.augmentation.scale_crop": "false",
}
BUILD_SECONDS: dict[str, float] = {}  # how long the session's run took (reported by the tests)


def _verb(*argv: str) -> dict:
    from tiny_models import cli_json

    return cli_json(list(argv))


def _save(run_dir: Path, name: str, result: dict) -> dict:
    (run_dir / "steps").mkdir(parents=True, exist_ok=True)
    (run_dir / "steps" / f"{name}.json").write_text(json.dumps(result, sort_keys=True))
    return result


def _drop(root: Path, images: int) -> Path:
    drop = root / "incoming" / "shapes"
    _verb("demo-data", "--out", str(drop), "--images", str(images), "--size", "128")
    first = min(drop.glob("*.jpg"))
    shutil.copyfile(first, drop / "zz_unlabeled.jpg")  # an image nobody labeled: rejected
    (drop / "zz_broken.xml").write_text("<annotation><filename>zz_broken.jpg</filename>")  # not XML
    shutil.copyfile(first, drop / "zz_broken.jpg")
    return drop


def _model_steps(run_dir: Path, dataset: dict) -> dict[str, dict]:
    """render-config, train, export, tflite, edgetpu (no compiler here: pre-flight only)."""
    sets = [a for k, v in TRAIN_SETS.items() for a in ("--set", f"{k}={v}")]
    c = _save(run_dir, "config", _verb("render-config", "--dataset", dataset["dataset_dir"],
                                       "--base-model", "mobilenet_v2_ssd",
                                       "--out", str(run_dir / "config.yaml"), *sets))  # fmt: skip
    t = _save(run_dir, "train", _verb("train", "--config", c["config"], "--out", str(run_dir / "train")))
    e = _save(run_dir, "export", _verb("export", "--config", c["config"], "--checkpoint", t["checkpoint"],
                                       "--out", str(run_dir / "saved_model")))  # fmt: skip
    q = _save(run_dir, "tflite", _verb("tflite", "--saved-model", e["saved_model"],
                                       "--dataset", dataset["dataset_dir"], "--out", str(run_dir / "tflite"),
                                       "--num-calibration", "8"))  # fmt: skip
    _save(run_dir, "edgetpu", _verb("edgetpu", "--tflite", q["int8"], "--out", str(run_dir / "edgetpu")))
    return {"config": c, "tflite": q}


def build_run(root: Path, *, images: int = 30, run_id: str = RUN_ID) -> Path:
    """validate .. promote and report on a fresh demo drop under `root`; returns the run folder."""
    root = Path(root).resolve()
    run_dir = root / "runs" / path_safe(run_id)
    drop = _drop(root, images)
    v = _save(
        run_dir, "validate", _verb("validate", "--images", str(drop), "--out", str(run_dir / "validation"))
    )
    snapshot = str(root / "datasets" / "shapes" / "v1")
    d = _save(run_dir, "dataset", _verb("build-dataset", "--validated", v["out_dir"], "--out", snapshot,
                                        "--split", "0.6,0.2,0.2"))  # fmt: skip
    q = _model_steps(run_dir, d)["tflite"]
    for kind in ("float", "int8"):
        _save(run_dir, f"evaluate-{kind}", _verb("evaluate", "--dataset", d["dataset_dir"], "--split", "test",
                                                 "--model", q[kind],
                                                 "--out", str(run_dir / f"eval_{kind}.json")))  # fmt: skip
    promote = [*promote_args(run_dir, root / "models"), "--out", str(run_dir / "promote.json")]
    _save(run_dir, "promote", _verb(*promote, "--tracking-uri", "off"))
    _verb("report", "--run-dir", str(run_dir), "--out", str(run_dir / "report"), "--tracking-uri", "off")
    return run_dir


def promote_args(run_dir: Path, models_dir: Path) -> list[str]:
    """`promote ...` of the run as the DAG passes it (without --out and the tracking flags)."""
    steps = {p.stem: json.loads(p.read_text()) for p in (run_dir / "steps").glob("*.json")}
    return ["promote", "--models-dir", str(models_dir), "--name", "shapes",
            "--int8-eval", str(run_dir / "eval_int8.json"), "--float-eval", str(run_dir / "eval_float.json"),
            "--tflite", steps["tflite"]["int8"], "--edgetpu-dir", steps["edgetpu"]["out_dir"],
            "--dataset-manifest", steps["dataset"]["manifest"], "--config", steps["config"]["config"],
            "--training", str(run_dir / "train" / "train_result.json"),
            "--run-dir", str(run_dir)]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory) -> Path:
    """The session's tiny run folder (runs/<run>/ under its own data root), built on first use."""
    pytest.importorskip("tensorflow")
    keep = os.environ.get("EDGETPU_TEST_TINY_RUN")
    if keep and (Path(keep) / "runs" / path_safe(RUN_ID) / "report" / "report.html").is_file():
        return (Path(keep) / "runs" / path_safe(RUN_ID)).resolve()
    started = time.perf_counter()
    run_dir = build_run(Path(keep) if keep else tmp_path_factory.mktemp("tiny-pipeline"))
    BUILD_SECONDS["tiny_pipeline_run"] = time.perf_counter() - started
    print(f"\ntiny_pipeline_run built in {BUILD_SECONDS['tiny_pipeline_run']:.1f} s", file=sys.stderr)
    return run_dir


if __name__ == "__main__":
    began = time.perf_counter()
    print(build_run(Path(sys.argv[1])), f"{time.perf_counter() - began:.1f} s")
