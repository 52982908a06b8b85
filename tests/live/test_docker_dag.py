"""The whole DAG with EDGETPU_RUNNER=docker on the real engine, against the local runner on the same drop.

Real: Debian's dockerd (docker/engine.sh), the trainer image built from docker/Dockerfile.trainer
(docker/build.sh, cached by content hash), DockerOperator 4.6.1 through our DockerStepOperator, the
steps' own code, in-process `dag.test()` as tests/dags/test_dag_e2e.py does for the local runner.
Not real: the Edge TPU compiler image cannot be built here (no Coral apt repository), so the
`edgetpu` step runs in the trainer image (EDGETPU_COMPILER_IMAGE); it runs the pre-flight and reports
that no compiler is installed, as it does with the local runner. No step exits 99 today
(`NothingToDo` is unused), so the skip test runs a script that exits 99 through the runner's own
wrapper and operator. Skips with one line when no engine can be started; fails under CI=true.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

import pytest
from docker_engine import REPO, Engine, data_root_for_containers, docker_engine, trainer_image  # noqa: F401

from edgetpu_retrain.pipeline import runners

DAG_ID = "edgetpu_retrain"
CONF = {
    "dataset_name": "bccd",
    "split": "0.5,0.25,0.25",
    "config_overrides": {
        "model.input_size": 96,
        "model.backbone_weights": None,
        "train.steps": 4,
        "train.batch_size": 4,
        "train.warmup_steps": 1,
    },
}
# The files that differ between the two runs, and why: wall-clock data only (measured: the trained
# weights are identical, only the checkpoint's `last_ips` speed differs; the .tflite files converted
# from the SavedModel are byte-identical). Every other file must have the same bytes (run id replaced).
TIMES = "wall-clock data (time stamps, images/s, latency)"
EXCEPTIONS = {
    "datasets/bccd/<run>/manifest.json": "`created` time stamp",
    "runs/<run>/train/train_result.json": "images_per_sec",
    "runs/<run>/train/metrics.jsonl": "images_per_s",
    "runs/<run>/train/checkpoints/checkpoint": "checkpoint time stamps",
    "runs/<run>/train/checkpoints/ckpt-4.data-00000-of-00001": "the `last_ips` (images/s) variable",
    "runs/<run>/train/checkpoints/ckpt-4.index": "the `last_ips` (images/s) variable",
    "runs/<run>/train/tensorboard/events.out.tfevents.<stamp>": "wall times (name: time, host, pid)",
    "runs/<run>/saved_model/saved_model.pb": "differs; the .tflite files converted from it do not",
    "runs/<run>/saved_model/fingerprint.pb": "hashes of the SavedModel files",
    "runs/<run>/saved_model/variables/variables.data-00000-of-00001": "the `last_ips` variable",
    "runs/<run>/saved_model/variables/variables.index": "the `last_ips` variable",
    "runs/<run>/eval_float.json": "latency_ms",
    "runs/<run>/eval_int8.json": "latency_ms",
    "runs/<run>/report/report.json": TIMES,
    "runs/<run>/report/report.md": TIMES,
    "runs/<run>/report/report.html": TIMES,
}
# the JSON files above are equal without these keys
VOLATILE = {"images_per_sec", "images_per_s", "latency_ms", "created"}


@pytest.fixture(scope="module")
def airflow_db():
    from airflow.utils import db

    db.initdb()


def parse_dag(monkeypatch, root: Path, runner: str, **env: str):
    monkeypatch.setenv("EDGETPU_RUNNER", runner)
    monkeypatch.setenv("EDGETPU_DATA_ROOT", str(root))
    monkeypatch.setenv("EDGETPU_CLI", f"{sys.executable} -m edgetpu_retrain")
    monkeypatch.setenv("AIRFLOW_CONN_FS_DEFAULT", '{"conn_type": "fs", "extra": {"path": "/"}}')
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]


def states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}


def durations(dag_run) -> dict[str, float]:
    return {ti.task_id: round(ti.duration or 0.0, 1) for ti in dag_run.get_task_instances()}


def copy_drop(src: Path, dst: Path) -> Path:
    """The bccd fixture (images/ + annotations/) in LabelImg's layout (XML beside each image)."""
    dst.mkdir(parents=True)
    for sub in ("images", "annotations"):
        for path in sorted((src / sub).iterdir()):
            shutil.copy2(path, dst / path.name)
    return dst


def run_pipeline(dag, bccd_dir: Path, root: Path) -> tuple[object, float]:
    drop = copy_drop(bccd_dir, root / "labelimg" / "bccd")
    started = time.monotonic()
    dag_run = dag.test(run_conf={**CONF, "dataset_folder": str(drop)})
    return dag_run, time.monotonic() - started


def artifacts(root: Path, run_id: str) -> dict[str, bytes]:
    """Every file the run wrote (datasets/, runs/<run>/, models/), by path, the run id replaced."""
    safe = Path(next((root / "runs").iterdir())).name
    files = {}
    for top in ("datasets", "runs", "models"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                rel = str(path.relative_to(root)).replace(safe, "<run>")
                rel = re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.<stamp>", rel)
                data = path.read_bytes().replace(safe.encode(), b"<run>")
                files[rel] = data.replace(run_id.encode(), b"<run>")
    return files


def test_whole_dag_in_containers_equals_the_local_runner(
    docker_engine: Engine,  # noqa: F811
    trainer_image: str,  # noqa: F811
    bccd_dir: Path,
    tmp_path: Path,
    monkeypatch,
    airflow_db,
) -> None:
    from docker import APIClient

    # Both runs use the same data root path (the DAG's Assets are named by it): the local run's root is
    # moved aside before the docker run.
    root = tmp_path / "data"
    local_root = tmp_path / "local"
    local_dag = parse_dag(monkeypatch, root, "local")
    tasks = [t.task_id for t in local_dag.tasks]
    steps = [t.task_id for t in local_dag.tasks if hasattr(t, "step_verb")]  # the edgetpu-retrain verbs
    local_run, local_s = run_pipeline(local_dag, bccd_dir, root)
    root.rename(local_root)
    assert {t: states(local_run)[t] for t in steps} == {
        t: "skipped" if t == "download" else "success" for t in steps
    }

    root = data_root_for_containers(root)
    dag = parse_dag(
        monkeypatch,
        root,
        "docker",
        DOCKER_HOST=docker_engine.docker_host,
        EDGETPU_TRAINER_IMAGE=trainer_image,
        EDGETPU_COMPILER_IMAGE=trainer_image,  # the compiler image cannot be built here (no Coral repo)
        EDGETPU_DOCKER_LIMITS='{"*": {"pids_limit": 4096}, "train": {"mem_limit": "6g"}}',
    )
    inspected: list[dict] = []  # every step container, inspected right before the runner removes it
    cls = runners.operator_class("docker")
    remove = cls._remove_container

    def spy(self) -> None:
        if self.container:
            inspected.append({"task": self.task_id, **self.cli.inspect_container(self.container["Id"])})
        remove(self)

    monkeypatch.setattr(cls, "_remove_container", spy)
    docker_run, docker_s = run_pipeline(dag, bccd_dir, root)
    table = {t: (states(docker_run)[t], durations(docker_run)[t], durations(local_run)[t]) for t in tasks}
    print(
        f"\ntask: (docker state, docker s, local s); whole run docker {docker_s:.0f} s, local {local_s:.0f} s"
    )
    print("\n".join(f"  {t}: {v}" for t, v in table.items()))
    assert states(docker_run) == states(local_run), table

    # every step but the sensor (in Airflow itself) and the skipped download ran in a container
    container_tasks = [t for t in steps if t != "download"]
    assert sorted(c["task"] for c in inspected) == sorted(container_tasks)
    image_id = APIClient(base_url=docker_engine.docker_host).inspect_image(trainer_image)["Id"]
    for c in inspected:
        assert c["Image"] == image_id and c["State"]["ExitCode"] == 0, c["task"]
        assert c["HostConfig"]["NetworkMode"] == "none", c["task"]
        assert c["HostConfig"]["PidsLimit"] == 4096, c["task"]
        mounts = {m["Destination"]: m for m in c["Mounts"]}
        assert mounts[str(root)]["Source"] == str(root) and mounts[str(root)]["RW"], c["task"]
    by_task = {c["task"]: c for c in inspected}
    assert by_task["train"]["HostConfig"]["Memory"] == 6 * 1024**3
    drop = str(root / "labelimg" / "bccd")
    assert not {m["Destination"]: m for m in by_task["validate"]["Mounts"]}[drop]["RW"]  # read-only
    dataset = docker_run.get_task_instance("build_dataset").xcom_pull(task_ids="build_dataset")["dataset_dir"]
    for task in ("evaluate_float", "evaluate_int8"):
        assert not {m["Destination"]: m for m in by_task[task]["Mounts"]}[dataset]["RW"]

    for task in container_tasks:  # each XCom is the step's JSON dict
        value = docker_run.get_task_instance(task).xcom_pull(task_ids=task)
        assert isinstance(value, dict) and value, (task, value)
    owners = {(p.stat().st_uid, p.stat().st_gid) for top in ("datasets", "runs", "models")
              for p in (root / top).rglob("*")}  # fmt: skip
    assert owners == {(50000, 0)}

    local = artifacts(local_root, local_run.run_id)  # its files name the same root path
    in_docker = artifacts(root, docker_run.run_id)
    assert sorted(local) == sorted(in_docker)
    differ = sorted(rel for rel in local if local[rel] != in_docker[rel])
    print(f"{len(local)} files, {len(local) - len(differ)} same bytes; differ: {differ}")
    assert set(differ) == set(EXCEPTIONS), differ
    for rel in (
        "runs/<run>/train/train_result.json",
        "runs/<run>/eval_float.json",
        "runs/<run>/eval_int8.json",
    ):
        assert without_volatile(local[rel]) == without_volatile(in_docker[rel]), rel
    for a, b in zip(local["runs/<run>/train/metrics.jsonl"].splitlines(),
                    in_docker["runs/<run>/train/metrics.jsonl"].splitlines(), strict=True):  # fmt: skip
        assert without_volatile(a) == without_volatile(b)


def without_volatile(data: bytes) -> object:
    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(data))
