"""The real DAG under a REAL Airflow (scheduler, dag-processor, triggerer, api-server), driven by REST.

Everything runs in a private network namespace (tests/live/airflow_server.py); the steps run through
the local runner (BashOperator -> the CLI). Nothing is faked: the training is only made tiny. The tests
share one Airflow (session fixture) and run in file order: each leaves the data root as the next expects.
Windows (conftest.step_env): scheduled 20 s, manual 180 s, backfill 0, asset-triggered 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from testdata import TINY_RUN_OVERRIDES

DAG_ID, DEPLOY_ID = "edgetpu_retrain", "deploy_model"
TINY_CONF = {
    "dataset_name": "shapes",
    "split": "0.5,0.25,0.25",
    "min_map50": 0.0,  # a 6-step model scores ~0: promote it anyway, so the model Asset and deploy run
    "config_overrides": TINY_RUN_OVERRIDES,
}


def demo_folder(folder: Path, images: int = 24) -> Path:
    """A LabelImg folder of demo images (no READY marker: not a drop yet)."""
    subprocess.run(
        [sys.executable, "-m", "edgetpu_retrain", "demo-data", "--out", str(folder), "--images", str(images)],
        check=True,
        capture_output=True,
    )
    return folder


def make_ready(folder: Path, moment: datetime | None = None) -> None:
    marker = folder / "READY"
    marker.write_text("")
    if moment is not None:
        os.utime(marker, (moment.timestamp(), moment.timestamp()))


def xcom(api, run_id: str, task_id: str):
    value = api.xcom(DAG_ID, run_id, task_id)
    return json.loads(value) if isinstance(value, str) else value


def record(artifacts: Path, name: str, api, dag_id: str, run_id: str, **extra) -> dict:
    table = {ti["task_id"]: [ti["state"], ti.get("duration")] for ti in api.task_instances(dag_id, run_id)}
    data = {"run": run_id, "tasks": table, **extra}
    (artifacts / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


@pytest.fixture(scope="module")
def api(live_airflow):
    client = live_airflow.api()
    client.wait_dag(DAG_ID)
    client.wait_dag(DEPLOY_ID)
    assert client.import_errors() == []
    return client


def test_unpausing_creates_a_nightly_run_that_ends_skipped_at_once(api, live_airflow, artifacts) -> None:
    """Last night's 02:00 run (created on unpause) has no drop and its window is over: skipped in seconds."""
    api.unpause(DEPLOY_ID)
    started = time.monotonic()
    api.unpause(DAG_ID)
    deadline = time.monotonic() + 120
    while not (nightly := [r for r in api.runs(DAG_ID) if r["run_type"] == "scheduled"]):
        assert time.monotonic() < deadline, "no scheduled run after unpausing"
        time.sleep(1)
    run_id = nightly[0]["dag_run_id"]
    api.wait_task(DAG_ID, run_id, "wait_for_drop", states={"skipped"}, timeout=120)
    api.wait_run(DAG_ID, run_id, timeout=60, states={"success", "failed"})
    log = api.task_log(DAG_ID, run_id, "wait_for_drop")
    assert "no new drop in" in log and "waiting window ended" in log, log[-2000:]
    record(
        artifacts, "live-nightly-skipped", api, DAG_ID, run_id, seconds=round(time.monotonic() - started, 1)
    )


def test_rest_run_defers_resumes_on_a_drop_succeeds_and_deploys(api, live_airflow, artifacts) -> None:
    """No drop yet: the sensor defers (triggerer); a drop arrives: it resumes, trains, promotes, deploys."""
    root = live_airflow.data_root
    run = api.trigger(DAG_ID, conf=TINY_CONF)
    run_id = run["dag_run_id"]
    api.wait_task(DAG_ID, run_id, "wait_for_drop", states={"deferred"}, timeout=120)
    folder = demo_folder(root / "incoming" / "shapes-24")
    make_ready(folder)
    resumed = time.monotonic()
    done = api.wait_run(DAG_ID, run_id, timeout=900)
    data = record(
        artifacts, "live-rest-run", api, DAG_ID, run_id, seconds=round(time.monotonic() - resumed, 1)
    )
    states = {task: state for task, (state, _) in data["tasks"].items()}
    assert done["state"] == "success", states
    assert states.pop("download") == "skipped" and set(states.values()) == {"success"}, states
    source = xcom(api, run_id, "wait_for_drop")
    assert source["drop_id"] == "shapes-24" and source["folder"] == str(folder.resolve())
    assert "waiting in the triggerer" in api.task_log(DAG_ID, run_id, "wait_for_drop")
    # Assets: the dataset version and the promoted model, with paths and metrics as extra
    events = {e["asset_id"]: e for e in api.asset_events(source_dag_id=DAG_ID, source_run_id=run_id)}
    extras = [e["extra"] for e in events.values()]
    assert any(x.get("dataset_dir", "").endswith("/datasets/shapes/shapes-24") for x in extras), extras
    model = next(x for x in extras if "version" in x)
    assert model["version"] == "0001" and model["metric"] == "map50" and "new" in model
    # deploy_model ran on that event: releases/0001/ + current -> releases/0001
    deadline = time.monotonic() + 180
    current = root / "deploy" / "shapes" / "current"
    while not (current / "model_int8.tflite").is_file():
        assert time.monotonic() < deadline, f"not deployed: {api.runs(DEPLOY_ID)}"
        time.sleep(2)
    assert os.readlink(current) == "releases/0001"
    assert {"model_int8.tflite", "labels.txt", "model_card.md"} <= {p.name for p in current.iterdir()}


def test_the_drop_asset_run_for_an_ingested_drop_ends_skipped(api) -> None:
    """The watcher saw shapes-24 arrive: its asset-triggered run finds it already built and ends at once."""
    deadline = time.monotonic() + 180
    while not (runs := [r for r in api.runs(DAG_ID) if r["run_type"] == "asset_triggered"]):
        assert time.monotonic() < deadline, "the drop Asset started no run"
        time.sleep(2)
    done = api.wait_run(DAG_ID, runs[0]["dag_run_id"], timeout=180)
    assert api.task_states(DAG_ID, runs[0]["dag_run_id"])["wait_for_drop"] == "skipped", done


def test_defaults_plus_dataset_folder_start_at_once(api, live_airflow, artifacts) -> None:
    """conf = only a folder, and "" for the other "empty = default" params: the run starts at once and
    renders the base model's config. Training with the base model's defaults takes hours here, so the
    test stops the run once training has started (PATCH state=failed)."""
    folder = demo_folder(live_airflow.data_root / "labelimg" / "own-folder")
    conf = {"dataset_folder": str(folder), "manifest": "", "backbone_weights": ""}
    run_id = api.trigger(DAG_ID, conf=conf)["dag_run_id"]
    started = time.monotonic()
    api.wait_task(DAG_ID, run_id, "train", states={"running"}, timeout=300)
    queued_to_train = time.monotonic() - started
    api.set_run_state(DAG_ID, run_id, "failed")
    states = api.task_states(DAG_ID, run_id)
    record(artifacts, "live-defaults-folder", api, DAG_ID, run_id, seconds_to_train=round(queued_to_train, 1))
    assert states["download"] == "skipped" and states["wait_for_drop"] == "success", states
    assert xcom(api, run_id, "wait_for_drop")["source"] == "dataset_folder"
    config = xcom(api, run_id, "render_config")
    assert config["base_model"] == "mobilenet_v2_ssd" and config["input_size"] == 320, config
    api.wait_run(DAG_ID, run_id, timeout=120)


def test_backfill_two_past_dates_each_with_its_own_drop_and_a_rerun_ingests_nothing_twice(
    api, live_airflow, artifacts
) -> None:
    root = live_airflow.data_root
    for name, ready in (("night-27", "2026-11-27T12:00:00"), ("night-28", "2026-11-28T12:00:00")):
        make_ready(demo_folder(root / "incoming" / name), datetime.fromisoformat(ready).replace(tzinfo=UTC))
    window = {"from_date": "2026-11-28T00:00:00Z", "to_date": "2026-11-29T02:00:00Z"}  # to_date inclusive
    planned = api.backfill_dry_run(DAG_ID, **window)
    assert [d["logical_date"][:16] for d in planned["backfills"]] == ["2026-11-28T02:00", "2026-11-29T02:00"]
    api.backfill(DAG_ID, **window, conf=TINY_CONF)
    deadline = time.monotonic() + 120
    while len(runs := [r for r in api.runs(DAG_ID) if r["run_type"] == "backfill"]) < 2:
        assert time.monotonic() < deadline, runs
        time.sleep(2)
    picked = {}
    for run in sorted(runs, key=lambda r: r["logical_date"]):
        done = api.wait_run(DAG_ID, run["dag_run_id"], timeout=900)
        assert done["state"] == "success", api.task_states(DAG_ID, run["dag_run_id"])
        picked[run["logical_date"][:10]] = xcom(api, run["dag_run_id"], "wait_for_drop")["drop_id"]
    assert picked == {"2026-11-28": "night-27", "2026-11-29": "night-28"}
    snapshots = root / "datasets" / "shapes"
    manifest = snapshots / "night-27" / "manifest.json"
    before = (sorted(p.name for p in snapshots.iterdir()), hashlib.sha256(manifest.read_bytes()).hexdigest())
    # re-run the first date's data tasks: the same drop, the same snapshot bytes, no new version
    first = min(runs, key=lambda r: r["logical_date"])["dag_run_id"]
    api.clear(DAG_ID, run_id=first, task_ids=["wait_for_drop", "validate", "build_dataset"])
    api.wait_task(DAG_ID, first, "build_dataset", states={"success"}, timeout=300)
    after = (sorted(p.name for p in snapshots.iterdir()), hashlib.sha256(manifest.read_bytes()).hexdigest())
    assert xcom(api, first, "wait_for_drop")["drop_id"] == "night-27" and after == before
    record(artifacts, "live-backfill", api, DAG_ID, first, picked=picked, snapshots=before[0])
