"""The docker runner's container options, rendered: network, read-only inputs, limits, GPUs, removal.

No engine here (tests/live/test_docker_*.py run the same operator on a real one): DockerOperator's
`execute` is replaced by a fake that records what would be sent to the daemon; the GPU case cannot
run for real on this machine (no GPU), so it is only checked rendered.
"""

from __future__ import annotations

from pathlib import Path

from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

import pytest  # noqa: E402

from edgetpu_retrain.pipeline import runners  # noqa: E402
from edgetpu_retrain.pipeline.runners import RunnerSettings  # noqa: E402
from edgetpu_retrain.pipeline.runners.settings import parse_limits  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def allow_direct_execute(monkeypatch):
    from airflow.sdk.bases.operator import ExecutorSafeguard

    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)


@pytest.fixture()
def sent(monkeypatch):
    """What the DockerOperator would send (its execute replaced: no daemon here)."""
    from airflow.providers.docker.operators.docker import DockerOperator

    seen: dict = {}

    def fake_execute(self, context):
        seen.update(
            network=self.network_mode,
            mounts=list(self.mounts),
            devices=self.device_requests,
            image=self.image,
        )
        return '{"ok": true}'

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    return seen


def settings(root: Path, **env: str) -> RunnerSettings:
    return RunnerSettings.from_env({"EDGETPU_RUNNER": "docker", "EDGETPU_DATA_ROOT": str(root), **env})


def run(op, *, args: list[str], network: str | None = None, gpu: str | None = None):
    """Execute as Airflow would after rendering the templates."""
    op.step_args, op.step_network, op.step_gpu = args, network, gpu
    return op.execute({})


def test_steps_have_no_network_unless_they_need_it(tmp_path, allow_direct_execute, sent) -> None:
    s = settings(tmp_path, EDGETPU_DOCKER_NETWORK="host")
    op = runners.step_task("validate", [], settings=s)
    assert op.network_mode == "none" and op.step_network is None
    assert run(op, args=[]) == {"ok": True} and sent["network"] == "none"
    download = runners.step_task("download", [], settings=s)
    assert download.step_network == "true"
    run(download, args=[], network="true")
    assert sent["network"] == "host"
    train = runners.step_task("train", [], settings=s)
    assert "imagenet" in train.step_network  # a template: the DAG param, an override or render-config
    run(train, args=[], network="False")
    assert sent["network"] == "none"
    run(train, args=[], network="True")
    assert sent["network"] == "host"
    assert settings(tmp_path).docker_network == "bridge"  # the default for the steps that need one


def test_network_template_of_train_renders_from_params_and_render_config() -> None:
    from jinja2 import Environment

    template = Environment().from_string(runners.NETWORK_STEPS["train"])

    class TI:
        def __init__(self, result):
            self.result = result

        def xcom_pull(self, task_ids):
            return self.result

    def render(params, result=None) -> bool:
        return runners.truthy(template.render(params=params, ti=TI(result)))

    assert not render({"backbone_weights": "none"})
    assert render({"backbone_weights": "imagenet"})
    assert render({"config_overrides": {"model.backbone_weights": "imagenet"}})
    assert not render({"config_overrides": "not a mapping"})
    assert render({}, {"backbone_weights": "imagenet"}) and not render({}, {"config": "/x.yaml"})


def test_read_only_inputs_are_nested_mounts(tmp_path, allow_direct_execute, sent) -> None:
    root = tmp_path / "data"
    drop, dataset = root / "incoming" / "d1", root / "datasets" / "d" / "v1"
    drop.mkdir(parents=True)
    dataset.mkdir(parents=True)
    s = settings(root)
    run(
        runners.step_task("validate", [], settings=s), args=["--images", str(drop), "--out", f"{root}/runs/r"]
    )
    assert [(m["Target"], m["Source"], m["ReadOnly"]) for m in sent["mounts"]] == [
        (str(root), str(root), False),
        (str(drop), str(drop), True),
    ]
    evaluate = runners.step_task("evaluate", [], settings=s, task_id="evaluate_int8")
    run(evaluate, args=["--dataset", str(dataset), "--model", f"{root}/runs/r/m.tflite"])
    assert [(m["Target"], m["ReadOnly"]) for m in sent["mounts"]][1:] == [(str(dataset), True)]
    # a missing input is left to the step's own error; the data root itself is never made read-only
    run(runners.step_task("validate", [], settings=s), args=["--images", str(root / "nope")])
    assert len(sent["mounts"]) == 1
    run(runners.step_task("validate", [], settings=s), args=["--images", str(root)])
    assert len(sent["mounts"]) == 1


def test_limits_per_step(tmp_path) -> None:
    limits = (
        '{"*": {"pids_limit": 2048}, "train": {"mem_limit": "8g", "cpus": 1.5}, "evaluate_int8": {"cpus": 1}}'
    )
    s = settings(tmp_path, EDGETPU_DOCKER_LIMITS=limits)
    train = runners.step_task("train", [], settings=s)
    assert train.mem_limit == "8g" and train.host_extra == {"nano_cpus": 1_500_000_000, "pids_limit": 2048}
    int8 = runners.step_task("evaluate", [], settings=s, task_id="evaluate_int8")
    assert int8.mem_limit is None and int8.host_extra == {"nano_cpus": 1_000_000_000, "pids_limit": 2048}

    class API:
        def create_host_config(self, **kwargs):
            return kwargs

    client = runners.docker.LoggingClient(API(), log=None, host_extra=train.host_extra)
    assert client.create_host_config(mem_limit="8g") == {"mem_limit": "8g", **train.host_extra}
    for bad in ("{", '["train"]', '{"train": {"memory": "8g"}}'):
        with pytest.raises(ValueError, match="EDGETPU_DOCKER_LIMITS"):
            parse_limits(bad)


def test_gpu_only_for_train_with_use_gpu(tmp_path, monkeypatch, allow_direct_execute, sent) -> None:
    monkeypatch.setenv("EDGETPU_RUNNER", "docker")
    monkeypatch.setenv("EDGETPU_DATA_ROOT", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags["edgetpu_retrain"]
    assert {t.task_id for t in dag.tasks if getattr(t, "step_gpu", None) is not None} == {"train"}
    train = dag.get_task("train")
    run(train, args=[], gpu="False", network="False")
    assert sent["devices"] is None and sent["image"] == "edgetpu-retrain/trainer:latest"
    run(train, args=[], gpu="True", network="False")  # (a task try is a fresh operator in Airflow)
    [request] = sent["devices"]
    assert (request["Count"], request["Capabilities"]) == (-1, [["gpu"]])
    assert sent["image"] == "edgetpu-retrain/trainer-gpu:latest"
    assert dag.get_task("export").environment["EDGETPU_WEIGHTS_CACHE"] == f"{tmp_path}/cache/weights"
