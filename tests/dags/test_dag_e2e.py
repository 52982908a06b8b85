"""End to end: `dag.test()` with the local runner (each step runs the real CLI in a subprocess).

1. A copy of the BCCD subset (tests/fixtures) as a labeled drop in incoming/: the sensor picks it (and not a
   drop that became ready after the run's cut-off), then validate + build_dataset run (the DAG cut
   with `partial_subset` after build_dataset). Asserts the XCom JSON and the TFRecords on disk.
2. The whole DAG on a small real dataset (microcontroller subset through the `dataset_folder` param)
   with a tiny model (96 px, a few steps, no downloaded weights); skipped until every step exists.

Airflow runs against a private sqlite DB in a temp AIRFLOW_HOME (never the developer's own).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow_env import use_private_airflow_home

REPO = Path(__file__).resolve().parents[2]
use_private_airflow_home()  # before anything imports Airflow

import pytest  # noqa: E402
from dag_tasks import TASKS  # noqa: E402
from testdata import TINY_RUN_OVERRIDES, copy_labelimg_folder  # noqa: E402  (tests/conftest.py)

DAG_ID = "edgetpu_retrain"
FULL_RUN_TASKS = TASKS


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.initdb()


@pytest.fixture()
def local_dag(tmp_path, monkeypatch, airflow_db):
    """The DAG parsed with the local runner and a data root in tmp_path (env read at parse time)."""
    root = tmp_path / "data"
    (root / "incoming").mkdir(parents=True)
    monkeypatch.setenv("EDGETPU_RUNNER", "local")
    monkeypatch.setenv("EDGETPU_DATA_ROOT", str(root))
    monkeypatch.setenv("EDGETPU_CLI", f"{sys.executable} -m edgetpu_retrain")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("AIRFLOW_CONN_FS_DEFAULT", '{"conn_type": "fs", "extra": {"path": "/"}}')
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID], root


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}


def result(dag_run, task_id: str):
    """The task's XCom return_value: the step's JSON line, parsed."""
    ti = dag_run.get_task_instance(task_id)
    value = ti.xcom_pull(task_ids=task_id)
    return json.loads(value) if isinstance(value, str) else value


def tfrecord_count(path: Path) -> int:
    """Records in a TFRecord file, read from its framing (length, crc, data, crc): no TensorFlow."""
    count, data = 0, path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8 + 4 + length + 4
        count += 1
    assert offset == len(data), f"{path}: truncated TFRecord"
    return count


def set_ready(folder: Path, moment: datetime) -> None:
    marker = folder / "READY"
    marker.write_text("")
    os.utime(marker, (moment.timestamp(), moment.timestamp()))


def test_bccd_drop_through_validate_and_build_dataset(local_dag, bccd_dir) -> None:
    dag, root = local_dag
    drop = copy_labelimg_folder(bccd_dir, root / "incoming" / "bccd-2026-11-23")
    set_ready(drop, datetime.now(UTC) - timedelta(hours=1))
    late = copy_labelimg_folder(bccd_dir, root / "incoming" / "zz-later", names=["BloodImage_00000"])
    set_ready(late, datetime.now(UTC) + timedelta(days=1))  # ready after this run's cut-off

    subset = dag.partial_subset(task_ids=["build_dataset"], include_upstream=True)
    # the report is the sensor's teardown, so a partial run still explains itself
    assert set(subset.task_dict) == {"download", "wait_for_drop", "validate", "build_dataset", "report"}
    started = time.monotonic()
    dag_run = subset.test(run_conf={"dataset_name": "bccd", "split": "0.8,0.1,0.1", "seed": 7})
    assert states(dag_run) == {
        "download": "skipped",
        "wait_for_drop": "success",
        "validate": "success",
        "build_dataset": "success",
        "report": "success",
    }, states(dag_run)
    report = json.loads(Path(result(dag_run, "report")["report_json"]).read_text())
    assert report["steps"]["train"]["status"] == "not run"  # outside the subset
    assert time.monotonic() - started < 240

    source = result(dag_run, "wait_for_drop")
    assert source["source"] == "incoming" and source["drop_id"] == "bccd-2026-11-23"
    assert source["folder"] == str(drop.resolve())

    validated = result(dag_run, "validate")
    run_dir = root / "runs" / json.loads(json.dumps(Path(validated["out_dir"]).parent.name))
    assert Path(validated["out_dir"]) == run_dir / "validation"
    assert (validated["accepted"], validated["rejected"]) == (
        45,
        0,
    )  # the 45 images of tests/fixtures/bccd_subset
    assert Path(validated["report"]).is_file() and Path(validated["annotations"]).is_file()

    built = result(dag_run, "build_dataset")
    dataset_dir = root / "datasets" / "bccd" / "bccd-2026-11-23"
    assert Path(built["dataset_dir"]) == dataset_dir
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["split"] == [0.8, 0.1, 0.1]
    assert {c["name"] for c in manifest["classes"]} == {"RBC", "WBC", "Platelets"}
    images = 0
    for split in ("train", "val", "test"):
        shards = [Path(p) for p in built["tfrecords"][split]]
        assert shards and all(p.parent == dataset_dir / "tfrecords" for p in shards)
        in_files = sum(tfrecord_count(p) for p in shards)
        assert in_files == built["counts"][split]["images"] > 0
        images += in_files
    assert images == validated["accepted"]
    assert (dataset_dir / "annotations.csv").read_text().startswith("filename,width,height,class,")


MODEL_STEPS = ("train", "export", "tflite", "edgetpu", "evaluate", "promote", "report")


def missing_steps() -> list[str]:
    from edgetpu_retrain.cli import VERBS

    return [verb for verb, (module, _) in VERBS.items() if importlib.util.find_spec(module) is None]


@pytest.mark.slow
def test_whole_pipeline_on_a_small_real_dataset(local_dag, microcontroller_dir, tmp_path) -> None:
    missing = missing_steps()
    if missing:
        pytest.skip(f"step modules not written yet: {', '.join(missing)}")
    dag, root = local_dag
    folder = copy_labelimg_folder(microcontroller_dir, root / "labelimg" / "boards", first=24)

    started = time.monotonic()
    dag_run = dag.test(
        run_conf={
            "dataset_folder": str(folder),
            "dataset_name": "boards",
            "split": "0.5,0.25,0.25",
            "min_map50": 0.0,  # 6 training steps: promote (and emit the model Asset) whatever the score
            "config_overrides": TINY_RUN_OVERRIDES,
        }
    )
    elapsed = time.monotonic() - started
    assert states(dag_run) == {t: "skipped" if t == "download" else "success" for t in FULL_RUN_TASKS}, (
        states(dag_run)
    )
    assert elapsed < 300, f"whole pipeline took {elapsed:.0f} s"

    source = result(dag_run, "wait_for_drop")
    assert source["source"] == "dataset_folder" and source["folder"] == str(folder.resolve())
    config = result(dag_run, "render_config")
    assert config["input_size"] == 96 and config["base_model"] == "mobilenet_v2_ssd"
    trained = result(dag_run, "train")
    assert trained["steps_done"] == 6 and Path(trained["out_dir"]).is_dir()
    tflite = result(dag_run, "tflite")
    assert Path(tflite["int8"]).is_file() and Path(tflite["float"]).is_file()
    assert "preflight" in result(dag_run, "edgetpu")
    for task_id in ("evaluate_float", "evaluate_int8"):
        evaluation = result(dag_run, task_id)
        assert 0.0 <= evaluation["map50"] <= 1.0 and Path(evaluation["out"]).is_file()
    promoted = result(dag_run, "promote")
    assert "promoted" in promoted
    report = result(dag_run, "report")
    assert Path(report["report"]).is_file() and Path(report["report_json"]).is_file()
    assert Path(report["report"]).parent.parent.parent == root / "runs"


def test_no_ready_drop_skips_the_run(tmp_path, monkeypatch, airflow_db) -> None:
    """Nothing ready before the end of the window: the sensor defers, then skips the rest of the run."""
    monkeypatch.setenv("EDGETPU_SENSOR_POKE_SECONDS", "1")
    monkeypatch.setenv("EDGETPU_DROP_WAIT_SECONDS", "manual=2")
    root = tmp_path / "data"
    pending = root / "incoming" / "still-labeling"  # no READY marker yet
    pending.mkdir(parents=True)
    monkeypatch.setenv("EDGETPU_RUNNER", "local")
    monkeypatch.setenv("EDGETPU_DATA_ROOT", str(root))
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags[DAG_ID]
    subset = dag.partial_subset(task_ids=["validate"], include_upstream=True)
    dag_run = subset.test()
    assert states(dag_run) == {
        "download": "skipped",
        "wait_for_drop": "skipped",
        "validate": "skipped",
        "report": "skipped",
    }
    assert not (root / "runs").exists()


def test_missing_dataset_folder_fails_the_sensor_with_the_path(local_dag, tmp_path) -> None:
    dag, _ = local_dag
    subset = dag.partial_subset(task_ids=["validate"], include_upstream=True)
    dag_run = subset.test(run_conf={"dataset_folder": str(tmp_path / "no-such-folder")})
    assert states(dag_run) == {
        "download": "skipped",
        "wait_for_drop": "failed",
        "validate": "upstream_failed",
        "report": "upstream_failed",
    }
