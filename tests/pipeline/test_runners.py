"""pipeline/runners/: the one factory that turns a step into an Airflow task, for all three runners.

No Docker daemon and no Kubernetes cluster exist on this machine (and none may be started in CI), so
the docker/kubernetes operators are checked by their constructor arguments and by what our mixin
hands them at execute time, with the provider's own `execute` replaced by a fake. The local runner
is executed for real (a fake CLI script instead of the package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

import pytest  # noqa: E402

from edgetpu_retrain.pipeline import runners  # noqa: E402
from edgetpu_retrain.pipeline.runners import Flag, Opt, Repeat, RunnerSettings  # noqa: E402

ROOT = "/srv/edgetpu-data"


def settings(runner: str, **extra) -> RunnerSettings:
    env = {"EDGETPU_RUNNER": runner, "EDGETPU_DATA_ROOT": ROOT, **extra}
    return RunnerSettings.from_env(env)


@pytest.fixture()
def allow_direct_execute(monkeypatch):
    """Operators refuse `execute()` outside Airflow's task runner; unit tests call it directly."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)


# ---------------------------------------------------------------------------------- settings
def test_settings_from_env_defaults_and_overrides() -> None:
    s = RunnerSettings.from_env({})
    assert s.runner == "docker" and s.data_root == "/data/edgetpu"
    assert s.local_cli == (sys.executable, "-m", "edgetpu_retrain")
    s = settings(
        "local",
        EDGETPU_CLI="/opt/venv/bin/edgetpu-retrain -v",
        EDGETPU_TRAINER_IMAGE="reg/t:1",
        EDGETPU_COMPILER_IMAGE="reg/c:1",
        EDGETPU_DOCKER_URL="tcp://docker:2375",
    )
    assert s.local_cli == ("/opt/venv/bin/edgetpu-retrain", "-v")
    assert (s.trainer_image, s.compiler_image, s.docker_url) == ("reg/t:1", "reg/c:1", "tcp://docker:2375")
    assert RunnerSettings.from_env({"EDGETPU_RUNNER": " Kubernetes "}).runner == "kubernetes"
    with pytest.raises(ValueError, match="EDGETPU_RUNNER='podman'"):
        RunnerSettings.from_env({"EDGETPU_RUNNER": "podman"})


# ---------------------------------------------------------------------------------- arguments
def test_flatten_args_expands_opt_flag_repeat() -> None:
    args = [
        "--config",
        "/r/config.yaml",
        Opt("--label-map", ""),
        Opt("--label-map", "None"),
        Opt("--weights", "/w.h5"),
        Flag("--require-compiler", "True"),
        Flag("--allow-cpu-ops", "False"),
        Repeat("--set", '{"train.steps": 5, "model.input_size": 96, "model.backbone_weights": null}'),
        Repeat("--step", '["a=1", "b=2"]'),
        Repeat("--set", "{}"),
        Repeat("--set", ""),
        3,
        0.5,
    ]
    assert runners.flatten_args(args) == [
        "--config",
        "/r/config.yaml",
        "--weights",
        "/w.h5",
        "--require-compiler",
        "--set",
        "model.backbone_weights=null",
        "--set",
        "model.input_size=96",
        "--set",
        "train.steps=5",
        "--step",
        "a=1",
        "--step",
        "b=2",
        "3",
        "0.5",
    ]
    assert runners.flatten_args([Repeat("--set", {"a": True})]) == ["--set", "a=true"]


@pytest.mark.parametrize(
    "bad", [[None], [Repeat("--set", "{'a': 1}")], [Repeat("--set", "5")], [Flag("--x", "maybe")]]
)
def test_flatten_args_rejects_bad_values(bad) -> None:
    with pytest.raises(ValueError):
        runners.flatten_args(bad)


def test_parse_result_and_step_field() -> None:
    assert runners.parse_result('log\n{"a": 1}\n') == {"a": 1}
    assert runners.parse_result({"a": 1}) == {"a": 1}
    assert runners.parse_result(None) is None
    with pytest.raises(ValueError, match="task t: the last output line is not the step's JSON"):
        runners.parse_result("{}\nTraceback", task_id="t")
    assert runners.step_field('{"out_dir": "/x"}', "validate", "out_dir") == "/x"
    with pytest.raises(KeyError, match="task validate's result has no key 'dir'; its keys: \\['out_dir'\\]"):
        runners.step_field({"out_dir": "/x"}, "validate", "dir")
    with pytest.raises(ValueError, match="task validate has no JSON result"):
        runners.step_field(None, "validate", "out_dir")
    assert runners.from_step("validate", "out_dir") == (
        "{{ ti.xcom_pull(task_ids='validate') | step_field('validate', 'out_dir') }}"
    )


# ---------------------------------------------------------------------------------- wrappers
def run_wrapper(script: str, command: list[str]) -> subprocess.CompletedProcess:
    """Run a wrapper with stderr merged into stdout, as the BashOperator/DockerOperator logs are."""
    return subprocess.run(
        ["bash", "-c", script, "wrapper", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
    )


NOISY_STEP = (
    "import json, sys; print('early stdout'); sys.stdout.flush(); print('log', file=sys.stderr);"
    "print(json.dumps({'argv': sys.argv[1:]})); sys.stdout.flush();"
    "print('late stderr after the JSON line', file=sys.stderr); sys.exit(int(sys.argv[1]))"
)


@pytest.mark.parametrize("code", [0, 99, 3])
def test_wrapper_prints_stdout_last_and_keeps_exit_code(code: int) -> None:
    proc = run_wrapper(runners.WRAPPER, [sys.executable, "-c", NOISY_STEP, str(code), "a b"])
    # stderr streams first (even what is written after the JSON line), the JSON line is last
    assert proc.returncode == code
    assert proc.stdout.splitlines()[-1] == json.dumps({"argv": [str(code), "a b"]})
    assert "late stderr after the JSON line" in proc.stdout


def test_kubernetes_wrapper_writes_the_xcom_file(tmp_path: Path) -> None:
    xcom = tmp_path / "airflow" / "xcom" / "return.json"
    script = runners.K8S_WRAPPER.replace(runners.K8S_XCOM_FILE, str(xcom))
    proc = run_wrapper(script, [sys.executable, "-c", NOISY_STEP, "0"])
    assert proc.returncode == 0
    assert json.loads(xcom.read_text()) == {"argv": ["0"]}
    proc = run_wrapper(script, ["false"])
    assert proc.returncode == 1 and xcom.read_text().strip() == "null"


# ---------------------------------------------------------------------------------- factory
STEP_ARGS = ["--config", "{{ params.cfg }}", "--out", "/srv/edgetpu-data/runs/r/train"]


def test_local_runner_builds_a_bash_operator() -> None:
    from airflow.providers.standard.operators.bash import BashOperator

    op = runners.step_task(
        "train", STEP_ARGS, settings=settings("local"), gpu="{{ params.use_gpu }}", pool="training", retries=2
    )
    assert isinstance(op, BashOperator) and type(op).__name__ == "LocalStepOperator"
    assert op.task_id == "train" and op.pool == "training" and op.retries == 2
    assert op.skip_on_exit_code == [99]
    assert op.env["EDGETPU_DATA_ROOT"] == ROOT and op.append_env is True
    assert op.env["PYTHONPATH"].split(os.pathsep)[0] == str(runners.INCLUDE_DIR)
    assert "step_args" in op.template_fields and "bash_command" not in op.template_fields
    assert op.step_args == STEP_ARGS and op.step_gpu == "{{ params.use_gpu }}"
    assert runners.step_task("build-dataset", [], settings=settings("local")).task_id == "build_dataset"


def test_docker_runner_builds_a_docker_operator() -> None:
    # Only the operator object is built: DockerOperator contacts the daemon in execute(), never here.
    from airflow.providers.docker.operators.docker import DockerOperator

    op = runners.step_task("train", STEP_ARGS, settings=settings("docker"), gpu="{{ params.use_gpu }}")
    assert isinstance(op, DockerOperator)
    assert (
        op.image == "edgetpu-retrain/trainer:latest" and op.gpu_image == "edgetpu-retrain/trainer-gpu:latest"
    )
    assert op.auto_remove == "never" and op.mount_tmp_dir is False  # the runner removes it (docker.py)
    assert op.skip_on_exit_code == [99] and op.do_xcom_push is True and op.xcom_all is False
    assert op.retrieve_output is True and op.retrieve_output_path == runners.DOCKER_XCOM_FILE
    assert op.network_mode == "none"
    assert op.docker_url == "unix://var/run/docker.sock"
    [mount] = op.mounts
    assert (mount["Source"], mount["Target"], mount["Type"]) == (ROOT, ROOT, "bind")  # same path inside
    assert op.environment["EDGETPU_DATA_ROOT"] == ROOT
    assert op.device_requests is None  # decided at run time from the use_gpu param
    compiler = runners.step_task("edgetpu", [], settings=settings("docker", EDGETPU_COMPILER_IMAGE="c:16"))
    assert compiler.image == "c:16" and compiler.gpu_image is None


def test_kubernetes_runner_builds_a_pod_operator() -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    op = runners.step_task(
        "export",
        STEP_ARGS,
        settings=settings("kubernetes", EDGETPU_K8S_PVC="data-pvc", EDGETPU_K8S_NAMESPACE="ml"),
    )
    assert isinstance(op, KubernetesPodOperator)
    assert op.image == "edgetpu-retrain/trainer:latest" and op.namespace == "ml"
    assert op.skip_on_exit_code == [99] and op.do_xcom_push is True
    [volume] = op.volumes
    [mount] = op.volume_mounts
    assert volume.persistent_volume_claim.claim_name == "data-pvc"
    assert (mount.name, mount.mount_path) == (volume.name, ROOT)


# ------------------------------------------------------------------------- execute (rendered)
RENDERED = [
    "--config",
    "/srv/edgetpu-data/runs/r/config.yaml",
    Flag("--fast", "False"),
    Repeat("--set", '{"train.steps": 3}'),
]
EXPECTED_ARGV = ["train", "--config", "/srv/edgetpu-data/runs/r/config.yaml", "--set", "train.steps=3"]


def rendered(op, *, gpu: str | None = "False", skip_unless=None, network: str | None = "False"):
    """What Airflow's template rendering leaves on the operator right before execute()."""
    op.step_args, op.step_gpu, op.step_skip_unless = list(RENDERED), gpu, skip_unless
    op.step_network = network
    return op


@pytest.mark.parametrize("gpu", ["True", "False"])
def test_docker_execute_sets_command_image_and_gpus(monkeypatch, allow_direct_execute, gpu) -> None:
    from airflow.providers.docker.operators.docker import DockerOperator

    seen = {}

    def fake_execute(self, context):  # the daemon cannot exist here: record what would be sent
        seen.update(command=self.command, image=self.image, device_requests=self.device_requests)
        return '{"checkpoint": "/srv/edgetpu-data/runs/r/train/checkpoints/ckpt-3"}'

    monkeypatch.setattr(DockerOperator, "execute", fake_execute)
    op = rendered(
        runners.step_task("train", [], settings=settings("docker"), gpu="{{ params.use_gpu }}"), gpu=gpu
    )
    assert op.execute({}) == {"checkpoint": "/srv/edgetpu-data/runs/r/train/checkpoints/ckpt-3"}
    assert seen["command"] == [
        "bash",
        "-c",
        runners.DOCKER_WRAPPER,
        "edgetpu-retrain-step",
        "edgetpu-retrain",
        *EXPECTED_ARGV,
    ]
    if gpu == "True":
        assert seen["image"] == "edgetpu-retrain/trainer-gpu:latest"
        [request] = seen["device_requests"]
        assert (request["Count"], request["Capabilities"]) == (-1, [["gpu"]])
    else:
        assert seen["image"] == "edgetpu-retrain/trainer:latest" and seen["device_requests"] is None


def test_kubernetes_execute_sets_cmds_arguments_and_gpu(monkeypatch, allow_direct_execute) -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    seen = {}

    def fake_execute(self, context):  # no cluster here: the sidecar would return the parsed file
        seen.update(
            cmds=self.cmds, arguments=self.arguments, resources=self.container_resources, image=self.image
        )
        return {"ok": True}

    monkeypatch.setattr(KubernetesPodOperator, "execute", fake_execute)
    op = rendered(runners.step_task("train", [], settings=settings("kubernetes"), gpu="x"), gpu="true")
    assert op.execute({}) == {"ok": True}
    assert seen["cmds"] == ["bash", "-c", runners.K8S_WRAPPER, "edgetpu-retrain-step"]
    assert seen["arguments"] == ["edgetpu-retrain", *EXPECTED_ARGV]
    assert seen["resources"].limits == {"nvidia.com/gpu": "1"} and seen["image"].endswith(
        "trainer-gpu:latest"
    )


def test_skip_unless_skips_without_running(monkeypatch, allow_direct_execute) -> None:
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.sdk.exceptions import AirflowSkipException

    monkeypatch.setattr(DockerOperator, "execute", lambda self, context: pytest.fail("must not run"))
    op = rendered(
        runners.step_task("download", [], settings=settings("docker"), skip_unless="x"), skip_unless=""
    )
    with pytest.raises(AirflowSkipException):
        op.execute({})


FAKE_CLI = """\
import json, sys
print("working on", sys.argv[1], file=sys.stderr)
print("some library chatter on stdout")
print(json.dumps({"verb": sys.argv[1], "args": sys.argv[2:]}))
sys.stdout.flush()
print("stderr written after the JSON line", file=sys.stderr)
sys.exit(99 if "--nothing" in sys.argv else 2 if "--fail" in sys.argv else 0)
"""


def local_op(tmp_path: Path, *extra):
    cli = tmp_path / "fake_cli.py"
    cli.write_text(FAKE_CLI)
    op = runners.step_task("train", [], settings=settings("local", EDGETPU_CLI=f"{sys.executable} {cli}"))
    op.step_args = ["--out", "/a dir/with 'quotes'", *extra]
    return op


def test_local_execute_runs_the_cli_and_returns_its_json(tmp_path, allow_direct_execute) -> None:
    op = local_op(tmp_path)
    assert op.execute({}) == {"verb": "train", "args": ["--out", "/a dir/with 'quotes'"]}


def test_local_execute_maps_99_to_skip_and_other_codes_to_failure(tmp_path, allow_direct_execute) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowSkipException

    with pytest.raises(AirflowSkipException):
        local_op(tmp_path, "--nothing").execute({})
    with pytest.raises(AirflowException, match="exit code 2"):
        local_op(tmp_path, "--fail").execute({})


def test_operator_classes_are_importable_by_name() -> None:
    assert runners.LocalStepOperator is runners.operator_class("local")
    assert runners.LocalStepOperator.__module__ == "edgetpu_retrain.pipeline.runners"
    with pytest.raises(AttributeError):
        runners.NoSuchOperator  # noqa: B018
