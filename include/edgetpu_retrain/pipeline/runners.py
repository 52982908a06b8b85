"""How a pipeline step becomes an Airflow task: the ONE factory, `step_task(verb, args)`.

The runner is chosen by the environment variable EDGETPU_RUNNER (read when the DAG is parsed):

- ``docker`` (default): DockerOperator running the trainer image (the compiler image for the
  ``edgetpu`` verb), with the data root bind-mounted at the SAME path, ``auto_remove='success'``,
  ``mount_tmp_dir=False`` and, for a GPU step whose ``gpu`` template renders true, the GPU image and
  ``device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]``.
- ``local``: BashOperator running the CLI on the worker itself (tests, the demo, a single machine).
  The executable is EDGETPU_CLI (shell words) or ``<airflow python> -m edgetpu_retrain``.
- ``kubernetes``: KubernetesPodOperator (imported only for this runner) with the data root on a
  PersistentVolumeClaim mounted at the same path; the result line goes to /airflow/xcom/return.json.

Every runner runs the same command inside a tiny bash wrapper that keeps the step's stdout aside
while its stderr (the logs) streams, then prints stdout last. So the last line of the task log is
always the step's JSON line, even if a library writes to stderr at exit. Exit code 99 (the steps'
"nothing to do", `common.EXIT_NOTHING_TO_DO`) becomes a skipped task in all three runners.

Arguments are templated (Jinja, rendered by Airflow right before the task runs) and may use three
helpers that expand after rendering: ``Opt(flag, value)`` (dropped when the value renders empty),
``Flag(flag, value)`` (a bare flag when the value renders true) and ``Repeat(flag, value)`` (the value
renders a JSON object -> ``flag k=v`` per key, or a JSON list -> ``flag item`` per item). The XCom
``return_value`` of every step task is the parsed JSON object (a dict) in every runner.

This module imports no operator at import time: the DAG file can import it for free.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO

RUNNERS = ("docker", "local", "kubernetes")
DEFAULT_RUNNER = "docker"
CONTAINER_CLI = ("edgetpu-retrain",)
K8S_XCOM_FILE = "/airflow/xcom/return.json"
INCLUDE_DIR = Path(__file__).resolve().parents[2]  # .../include (for PYTHONPATH in the local runner)

# stdout goes to a temp file while stderr streams; then stdout is printed, so its last line (the
# step's JSON) is the last line Airflow sees. "$@" is the command: nothing is re-parsed by a shell.
WRAPPER = 'out="$(mktemp)" || exit 1; trap \'rm -f "$out"\' EXIT; "$@" >"$out"; rc=$?; cat "$out"; exit "$rc"'
# The KubernetesPodOperator reads its XCom from a file, written whatever the exit code.
K8S_WRAPPER = (
    'out="$(mktemp)" || exit 1; trap \'rm -f "$out"\' EXIT; '
    '"$@" >"$out"; rc=$?; cat "$out"; mkdir -p "$(dirname ' + K8S_XCOM_FILE + ')"; '
    'if [ -s "$out" ]; then tail -n 1 "$out" >' + K8S_XCOM_FILE + "; "
    "else echo null >" + K8S_XCOM_FILE + '; fi; exit "$rc"'
)


# ----------------------------------------------------------------------------------- arguments
class Opt(NamedTuple):
    """``flag value``, or nothing when the value renders empty (``""``/``None``)."""

    flag: str
    value: Any


class Flag(NamedTuple):
    """A bare ``flag`` when the value renders true (``True``/``true``/``1``/``yes``/``on``)."""

    flag: str
    value: Any


class Repeat(NamedTuple):
    """``flag k=v`` for each key of a JSON object (sorted), or ``flag item`` for each list item."""

    flag: str
    value: Any


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "", "none", "null"}


def truthy(value: Any) -> bool:
    """Interpret a rendered template value as a boolean (Jinja renders Python bools as True/False)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean; use true or false")


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _parse_structured(value: Any, flag: str) -> Any:
    if isinstance(value, (Mapping, list, tuple)) or value is None:
        return value
    text = str(value).strip()
    if text in ("", "None", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{flag}: {text!r} is not JSON; render it with the `tojson` filter (e.g. "
            "'{{ params.config_overrides | tojson }}')"
        ) from exc


def flatten_args(args: Iterable[Any]) -> list[str]:
    """Turn rendered step arguments (strings, numbers, Opt/Flag/Repeat) into an argv list."""
    argv: list[str] = []
    for arg in args:
        if isinstance(arg, Opt):
            if not _is_empty(arg.value):
                argv += [arg.flag, _scalar_text(arg.value)]
        elif isinstance(arg, Flag):
            if truthy(arg.value):
                argv.append(arg.flag)
        elif isinstance(arg, Repeat):
            items = _parse_structured(arg.value, arg.flag)
            if items is None:
                continue
            if isinstance(items, Mapping):
                for key in sorted(items):
                    argv += [arg.flag, f"{key}={_scalar_text(items[key])}"]
            elif isinstance(items, (list, tuple)):
                for item in items:
                    argv += [arg.flag, _scalar_text(item)]
            else:
                raise ValueError(f"{arg.flag}: expected a JSON object or list, got {items!r}")
        elif arg is None:
            raise ValueError("a step argument is None; use Opt(flag, value) for optional values")
        else:
            argv.append(_scalar_text(arg))
    return argv


def parse_result(value: Any, *, task_id: str = "step") -> Any:
    """The step's JSON line (a str from docker/local, already parsed by kubernetes) as a dict."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    lines = [line for line in str(value).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    try:
        return json.loads(last)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"task {task_id}: the last output line is not the step's JSON result ({last[:200]!r}); "
            "a step must print one JSON object as its last stdout line (docs/contracts.md)"
        ) from exc


def step_field(value: Any, task_id: str, key: str) -> Any:
    """Jinja filter: one key of an upstream step's result, with an error that names both."""
    result = parse_result(value, task_id=task_id)
    if not isinstance(result, dict):
        raise ValueError(
            f"task {task_id} has no JSON result in XCom (got {result!r}); did it run and succeed?"
        )
    if key not in result:
        raise KeyError(f"task {task_id}'s result has no key {key!r}; its keys: {sorted(result)}")
    return result[key]


def from_step(task_id: str, key: str) -> str:
    """The Jinja template for ``key`` of ``task_id``'s JSON result (needs the `step_field` filter)."""
    return f"{{{{ ti.xcom_pull(task_ids={task_id!r}) | step_field({task_id!r}, {key!r}) }}}}"


JINJA_FILTERS = {"step_field": step_field}


# ------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class RunnerSettings:
    """Everything the runners read from the environment, read once when the DAG is parsed."""

    runner: str = DEFAULT_RUNNER
    data_root: str = "/data/edgetpu"
    trainer_image: str = "edgetpu-retrain/trainer:latest"
    trainer_gpu_image: str = "edgetpu-retrain/trainer-gpu:latest"
    compiler_image: str = "edgetpu-retrain/edgetpu-compiler:latest"
    local_cli: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "edgetpu_retrain"))
    docker_url: str = "unix://var/run/docker.sock"
    docker_user: str | None = None
    docker_conn_id: str | None = None
    k8s_namespace: str = "default"
    k8s_pvc: str = "edgetpu-data"
    k8s_service_account: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunnerSettings:
        env = os.environ if env is None else env
        runner = env.get("EDGETPU_RUNNER", DEFAULT_RUNNER).strip().lower() or DEFAULT_RUNNER
        if runner not in RUNNERS:
            raise ValueError(f"EDGETPU_RUNNER={runner!r}: choose one of {', '.join(RUNNERS)}")
        defaults = cls()
        cli = env.get("EDGETPU_CLI", "").strip()
        data_root = env.get("EDGETPU_DATA_ROOT", defaults.data_root).strip() or defaults.data_root
        return cls(
            runner=runner,
            data_root=str(Path(data_root).expanduser().absolute()),
            trainer_image=env.get("EDGETPU_TRAINER_IMAGE", defaults.trainer_image),
            trainer_gpu_image=env.get("EDGETPU_TRAINER_GPU_IMAGE", defaults.trainer_gpu_image),
            compiler_image=env.get("EDGETPU_COMPILER_IMAGE", defaults.compiler_image),
            local_cli=tuple(shlex.split(cli)) if cli else defaults.local_cli,
            docker_url=env.get("EDGETPU_DOCKER_URL") or env.get("DOCKER_HOST") or defaults.docker_url,
            docker_user=env.get("EDGETPU_DOCKER_USER") or None,
            docker_conn_id=env.get("EDGETPU_DOCKER_CONN_ID") or None,
            k8s_namespace=env.get("EDGETPU_K8S_NAMESPACE", defaults.k8s_namespace),
            k8s_pvc=env.get("EDGETPU_K8S_PVC", defaults.k8s_pvc),
            k8s_service_account=env.get("EDGETPU_K8S_SERVICE_ACCOUNT") or None,
        )

    def step_env(self) -> dict[str, str]:
        return {"EDGETPU_DATA_ROOT": self.data_root, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


# ----------------------------------------------------------------------------------- operators
class _StepMixin:
    """Renders the step's arguments, hands the argv to the concrete operator, parses the result.

    Subclasses implement `_prepare(argv, gpu)` (set the operator's command/image/devices).
    """

    step_template_fields = ("step_args", "step_gpu", "step_skip_unless")

    def _init_step(self, *, verb, args, gpu, skip_unless, settings) -> None:
        self.step_verb = verb
        self.step_args = list(args)
        self.step_gpu = gpu
        self.step_skip_unless = skip_unless
        self.step_settings = settings

    def step_argv(self) -> list[str]:
        """The step command after rendering: ``[verb, *args]`` (no executable)."""
        return [self.step_verb, *flatten_args(self.step_args)]

    def execute(self, context):
        from airflow.sdk.exceptions import AirflowSkipException

        if self.step_skip_unless is not None and _is_empty(self.step_skip_unless):
            raise AirflowSkipException(f"{self.task_id}: not requested for this run (its input is empty)")
        gpu = truthy(self.step_gpu) if self.step_gpu is not None else False
        argv = self.step_argv()
        self.log.info("step: edgetpu-retrain %s", shlex.join(argv))
        self._prepare(argv, gpu)
        result = super().execute(context)
        return parse_result(result, task_id=self.task_id)

    def _prepare(self, argv: list[str], gpu: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _local_class():
    from airflow.providers.standard.operators.bash import BashOperator

    class LocalStepOperator(_StepMixin, BashOperator):
        """A step run by the worker's own Python (BashOperator)."""

        template_fields = ("env", "cwd", *_StepMixin.step_template_fields)
        template_ext = ()  # an argument ending in .sh is a path, not a template file
        ui_color = "#e8f0fe"

        def __init__(
            self, *, step_verb, step_args, step_gpu=None, step_skip_unless=None, step_settings, **kwargs
        ):
            self._init_step(
                verb=step_verb,
                args=step_args,
                gpu=step_gpu,
                skip_unless=step_skip_unless,
                settings=step_settings,
            )
            super().__init__(bash_command=self.display_command(), **kwargs)

        def display_command(self) -> str:
            return shlex.join([*self.step_settings.local_cli, self.step_verb, "..."])

        def _prepare(self, argv, gpu):
            if gpu:
                self.log.info("use_gpu: the local runner uses whatever TensorFlow the worker has")
            command = shlex.join([*self.step_settings.local_cli, *argv])
            self.bash_command = f"set -- {command}\n{WRAPPER}\n"

    return LocalStepOperator


def _container_step_base(operator: Any) -> type:
    """`_StepMixin` on a container operator (docker, kubernetes): the step arguments plus `gpu_image`.

    `gpu_image` replaces the operator's image for a step that asks for a GPU. A class made per
    operator, not a plain mixin: Airflow's operator metaclass only wraps an ``__init__`` that the
    class itself defines (default_args, the missing-argument check), so it must sit on an operator.
    """

    class _ContainerStepOperator(_StepMixin, operator):
        template_fields = (*operator.template_fields, *_StepMixin.step_template_fields)
        template_ext = ()

        def __init__(
            self,
            *,
            step_verb,
            step_args,
            step_gpu=None,
            step_skip_unless=None,
            step_settings,
            gpu_image=None,
            **kwargs,
        ):
            self._init_step(
                verb=step_verb,
                args=step_args,
                gpu=step_gpu,
                skip_unless=step_skip_unless,
                settings=step_settings,
            )
            self.gpu_image = gpu_image
            super().__init__(**kwargs)

    return _ContainerStepOperator


def _docker_class():
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest

    class DockerStepOperator(_container_step_base(DockerOperator)):
        """A step in a container of the trainer (or compiler) image, data root mounted at the same path."""

        ui_color = "#e3f2fd"

        def _prepare(self, argv, gpu):
            self.command = ["bash", "-c", WRAPPER, "edgetpu-retrain-step", *CONTAINER_CLI, *argv]
            if gpu:
                if self.gpu_image:
                    self.image = self.gpu_image
                self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                self.device_requests = None

    return DockerStepOperator


def _kubernetes_class():
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    class KubernetesStepOperator(_container_step_base(KubernetesPodOperator)):
        """A step in a pod of the trainer (or compiler) image, data root PVC mounted at the same path."""

        ui_color = "#e8f5e9"

        def _prepare(self, argv, gpu):
            self.cmds = ["bash", "-c", K8S_WRAPPER, "edgetpu-retrain-step"]
            self.arguments = [*CONTAINER_CLI, *argv]
            if gpu:
                if self.gpu_image:
                    self.image = self.gpu_image
                self.container_resources = k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"})

    return KubernetesStepOperator


_CLASS_BUILDERS = {
    "local": ("LocalStepOperator", _local_class),
    "docker": ("DockerStepOperator", _docker_class),
    "kubernetes": ("KubernetesStepOperator", _kubernetes_class),
}


@cache
def operator_class(runner: str) -> type:
    """The operator class of a runner, built (and its provider imported) on first use."""
    name, build = _CLASS_BUILDERS[runner]
    cls = build()
    cls.__module__ = __name__
    cls.__qualname__ = name
    globals()[name] = cls
    return cls


def __getattr__(name: str) -> Any:  # PEP 562: runners.DockerStepOperator etc. import lazily
    for runner, (class_name, _) in _CLASS_BUILDERS.items():
        if name == class_name:
            return operator_class(runner)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def step_task(
    verb: str,
    args: Iterable[Any] = (),
    *,
    task_id: str | None = None,
    settings: RunnerSettings | None = None,
    gpu: Any = None,
    skip_unless: Any = None,
    **operator_kwargs: Any,
):
    """Build the Airflow task that runs ``edgetpu-retrain <verb> <args>`` with the configured runner.

    ``args`` are templated (see Opt/Flag/Repeat). ``gpu`` is a template rendering a boolean (e.g.
    ``"{{ params.use_gpu }}"``): when true the docker/kubernetes runners use the GPU image and ask
    for GPUs. ``skip_unless`` is a template: when it renders empty the task is skipped without
    running anything. Other keyword arguments (pool, retries, trigger_rule, ...) go to the operator.
    """
    settings = settings or RunnerSettings.from_env()
    task_id = task_id or verb.replace("-", "_")
    cls = operator_class(settings.runner)
    common = dict(
        task_id=task_id,
        step_verb=verb,
        step_args=list(args),
        step_gpu=gpu,
        step_skip_unless=skip_unless,
        step_settings=settings,
        do_xcom_push=True,
    )
    image = settings.compiler_image if verb == "edgetpu" else settings.trainer_image
    gpu_image = settings.trainer_gpu_image if gpu is not None else None
    if settings.runner == "local":
        env = dict(settings.step_env())
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(INCLUDE_DIR), os.environ.get("PYTHONPATH", "")) if p
        )
        kwargs = dict(env=env, append_env=True, skip_on_exit_code=EXIT_NOTHING_TO_DO)
    elif settings.runner == "docker":
        from docker.types import Mount

        kwargs = dict(
            image=image,
            gpu_image=gpu_image,
            command=None,
            docker_url=settings.docker_url,
            docker_conn_id=settings.docker_conn_id,
            mounts=[Mount(target=settings.data_root, source=settings.data_root, type="bind")],
            environment=settings.step_env(),
            user=settings.docker_user,
            auto_remove="success",
            mount_tmp_dir=False,
            skip_on_exit_code=EXIT_NOTHING_TO_DO,
            xcom_all=False,
            tty=False,
        )
    else:
        from kubernetes.client import models as k8s

        kwargs = dict(
            image=image,
            gpu_image=gpu_image,
            name=f"edgetpu-{verb}",
            namespace=settings.k8s_namespace,
            service_account_name=settings.k8s_service_account,
            env_vars=settings.step_env(),
            volumes=[
                k8s.V1Volume(
                    name="edgetpu-data",
                    persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
                        claim_name=settings.k8s_pvc
                    ),
                )
            ],
            volume_mounts=[k8s.V1VolumeMount(name="edgetpu-data", mount_path=settings.data_root)],
            get_logs=True,
            skip_on_exit_code=EXIT_NOTHING_TO_DO,
            on_finish_action="delete_succeeded_pod",
        )
    kwargs.update(operator_kwargs)
    return cls(**common, **kwargs)
