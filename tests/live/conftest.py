"""Fixtures of the live tests: a real Airflow in a private network namespace (see airflow_server.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from airflow_server import LiveAirflow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EDGETPU_LIVE_ARTIFACTS", REPO / "tests" / "live" / "artifacts"))


def pytest_collection_modifyitems(items) -> None:
    """Everything under tests/live is `live`: `pytest -m "not live"` runs the fast suite only."""
    for item in items:
        if "/tests/live/" in str(item.fspath):
            item.add_marker("live")


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-rn", "--pid", "--mount-proc", "--fork", "true"], capture_output=True)
    return probe.returncode == 0


def step_env(**extra: str) -> dict[str, str]:
    """The DAG's environment: the local runner on this checkout's package, short sensor windows."""
    include = str(REPO / "include")
    env = {
        "EDGETPU_RUNNER": "local",
        "EDGETPU_CLI": f"{sys.executable} -m edgetpu_retrain",
        "PYTHONPATH": os.pathsep.join(p for p in (include, os.environ.get("PYTHONPATH", "")) if p),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "EDGETPU_SENSOR_POKE_SECONDS": "3",  # the drop trigger's and the drop Asset watcher's poll
        "EDGETPU_DROP_WAIT_SECONDS": "scheduled=20,manual=180,backfill=0,asset_triggered=0",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),  # the Run report link + file server
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def live_airflow(tmp_path_factory, artifacts):
    """Scheduler + dag-processor + triggerer + api-server on the repository's dags/ (one per session:
    every live test module shares it, so Airflow starts once)."""
    if not _can_unshare():
        pytest.skip("unshare -rn --pid is not permitted here: the live tests need a private namespace")
    server = LiveAirflow.start(
        dags_folder=REPO / "dags", env=step_env(), tmp=tmp_path_factory.mktemp("live-airflow")
    )
    try:
        yield server
    finally:
        server.stop(keep=True)  # tmp_path_factory cleans up; keep the logs for a failed test
        for component in ("scheduler", "dag-processor", "triggerer", "api-server", "supervisor"):
            log = server.tmp / f"{component}.log"
            if log.exists():
                shutil.copy2(log, artifacts / f"{component}.log")
