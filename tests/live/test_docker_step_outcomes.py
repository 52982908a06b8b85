"""Outcomes of one docker-runner step on the real engine: success, exit 99 (skipped), failure (kept).

The operator is the runner's own (`step_task` with EDGETPU_RUNNER=docker), executed directly on the
real engine and trainer image. No verb exits 99 today (`NothingToDo` is unused), so for that case
the step command is a script that prints a JSON line and exits 99, run through the same wrapper.
Skips with one line when no engine can be started; fails under CI=true.
"""

from __future__ import annotations

from pathlib import Path

from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

import pytest
from docker_engine import Engine, data_root_for_containers, docker_engine, trainer_image  # noqa: F401

from edgetpu_retrain.pipeline import runners
from edgetpu_retrain.pipeline.runners import RunnerSettings


@pytest.fixture()
def allow_direct_execute(monkeypatch):
    """Operators refuse `execute()` outside Airflow's task runner; these tests call it directly."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)


def step(engine: Engine, image: str, root: Path, verb: str, args: list[str]):
    settings = RunnerSettings.from_env(
        {"EDGETPU_RUNNER": "docker", "EDGETPU_DATA_ROOT": str(root), "DOCKER_HOST": engine.docker_host,
         "EDGETPU_TRAINER_IMAGE": image}
    )  # fmt: skip
    return runners.step_task(verb, args, settings=settings, task_id=f"{verb}_{len(args)}")


def containers(engine: Engine) -> set[str]:
    return {c.id for c in engine.client().containers.list(all=True)}


def test_success_skip_and_failure(
    docker_engine: Engine,  # noqa: F811
    trainer_image: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch,
    allow_direct_execute,
    capfd,
) -> None:
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.sdk.exceptions import AirflowSkipException

    root = data_root_for_containers(tmp_path / "data")
    before = containers(docker_engine)
    drop = root / "incoming" / "d1"

    # success: the XCom is the step's dict, read from the result file; the container is removed
    demo = step(docker_engine, trainer_image, root, "demo-data", ["--out", str(drop), "--images", "3"])
    result = demo.execute({})
    assert isinstance(result, dict) and result["images"] == 3
    cid = demo.container["Id"]
    assert f"container {cid} created from image {trainer_image}" in capfd.readouterr().out  # task log
    assert containers(docker_engine) == before

    # failure (a drop with no images): DockerContainerFailedException, the container is kept
    (root / "incoming" / "empty").mkdir()
    failing = step(
        docker_engine, trainer_image, root, "validate",
        ["--images", str(root / "incoming" / "empty"), "--out", str(root / "runs" / "r" / "validation")],
    )  # fmt: skip
    with pytest.raises(DockerContainerFailedException):
        failing.execute({})
    cid = failing.container["Id"]
    assert f"kept the failed container {cid}: docker logs {cid}" in capfd.readouterr().out
    kept = docker_engine.client().containers.get(cid)
    try:
        assert "error:" in kept.logs().decode()  # `docker logs <id>` works on the kept container
        assert kept.attrs["HostConfig"]["NetworkMode"] == "none"
        mounts = {m["Destination"]: m["RW"] for m in kept.attrs["Mounts"]}
        assert mounts == {str(root): True, str(root / "incoming" / "empty"): False}  # input read-only
    finally:
        kept.remove(force=True)

    # exit 99: skipped, and the container is removed
    script = "import json, sys; print(json.dumps({'nothing_to_do': True})); sys.exit(99)"
    monkeypatch.setattr(runners.docker, "CONTAINER_CLI", ("python", "-c", script))
    nothing = step(docker_engine, trainer_image, root, "validate", [])
    with pytest.raises(AirflowSkipException):
        nothing.execute({})
    assert containers(docker_engine) == before
