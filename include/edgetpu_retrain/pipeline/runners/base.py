"""What every runner's operator shares: the bash wrapper around the step command and the step mixin.

Every runner runs the same command inside a tiny bash wrapper that keeps the step's stdout aside
while its stderr (the logs) streams, then prints stdout last. So the last line of the task log is
always the step's JSON line, even if a library writes to stderr at exit. Exit code 99 (the steps'
"nothing to do", `common.EXIT_NOTHING_TO_DO`) becomes a skipped task in all three runners.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from typing import Any

from edgetpu_retrain.pipeline.runners.args import flatten_args, is_empty, parse_result, truthy
from edgetpu_retrain.pipeline.runners.settings import RunnerSettings

CONTAINER_CLI = ("edgetpu-retrain",)
K8S_XCOM_FILE = "/airflow/xcom/return.json"
# Where the docker runner's step container leaves its result line (read back with `retrieve_output`).
DOCKER_XCOM_FILE = "/tmp/edgetpu-step-result.json"

# stdout goes to a temp file while stderr streams; then stdout is printed, so its last line (the
# step's JSON) is the last line Airflow sees. "$@" is the command: nothing is re-parsed by a shell.
WRAPPER = 'out="$(mktemp)" || exit 1; trap \'rm -f "$out"\' EXIT; "$@" >"$out"; rc=$?; cat "$out"; exit "$rc"'


def result_file_wrapper(path: str) -> str:
    """`WRAPPER` that also writes the last stdout line (or ``null``) to `path`, whatever the exit code.

    For the container runners: a container's stdout and stderr reach Airflow as two streams copied
    separately, so the last log line is not reliably the step's JSON; a file is exact.
    """
    return (
        'out="$(mktemp)" || exit 1; trap \'rm -f "$out"\' EXIT; '
        '"$@" >"$out"; rc=$?; cat "$out"; mkdir -p "$(dirname ' + path + ')"; '
        'if [ -s "$out" ]; then tail -n 1 "$out" >' + path + "; "
        "else echo null >" + path + '; fi; exit "$rc"'
    )


# verb -> the flags whose (rendered) value is a path the step only reads (mounted read-only)
READ_ONLY_INPUTS = {"validate": ("--images",), "evaluate": ("--dataset",), "download": ("--manifest",)}


def read_only_paths(verb: str, argv: list[str], data_root: str) -> list[str]:
    """The existing input paths of a step to mount read-only (never the data root or a parent of it)."""
    flags = READ_ONLY_INPUTS.get(verb, ())
    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in flags]
    root = os.path.normpath(data_root)
    keep = []
    for path in (os.path.normpath(p) for p in paths if os.path.isabs(p)):
        if os.path.exists(path) and not (root + os.sep).startswith(path + os.sep) and path not in keep:
            keep.append(path)
    return keep


# The KubernetesPodOperator reads its XCom from a file (the XCom sidecar); the DockerOperator too.
K8S_WRAPPER = result_file_wrapper(K8S_XCOM_FILE)
DOCKER_WRAPPER = result_file_wrapper(DOCKER_XCOM_FILE)


class StepMixin:
    """Renders the step's arguments, hands the argv to the concrete operator, parses the result.

    Subclasses implement `_prepare(argv, gpu)` (set the operator's command/image/devices).
    """

    step_template_fields = ("step_args", "step_gpu", "step_skip_unless", "step_network")
    # set by the Airflow operator this mixin sits on
    log: Any
    task_id: str

    def _init_step(
        self,
        *,
        verb: str,
        args: Iterable[Any],
        gpu: Any,
        skip_unless: Any,
        settings: RunnerSettings,
        network: Any = None,
    ) -> None:
        self.step_verb = verb
        self.step_args = list(args)
        self.step_gpu = gpu
        self.step_skip_unless = skip_unless
        self.step_settings = settings
        self.step_network = network

    def needs_network(self) -> bool:
        """Whether the rendered ``network`` template asks for a network (container runners)."""
        return self.step_network is not None and truthy(self.step_network)

    def step_argv(self) -> list[str]:
        """The step command after rendering: ``[verb, *args]`` (no executable)."""
        return [self.step_verb, *flatten_args(self.step_args)]

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import AirflowSkipException

        if self.step_skip_unless is not None and is_empty(self.step_skip_unless):
            raise AirflowSkipException(f"{self.task_id}: not requested for this run (its input is empty)")
        gpu = truthy(self.step_gpu) if self.step_gpu is not None else False
        argv = self.step_argv()
        self.log.info("step: edgetpu-retrain %s", shlex.join(argv))
        self._prepare(argv, gpu)
        result = super().execute(context)  # type: ignore[misc]  # the operator's execute
        parsed = parse_result(result, task_id=self.task_id)
        for outlet in getattr(self, "outlets", None) or ():  # Asset outlets: the result is the event's extra
            context["outlet_events"][outlet].extra = asset_extra(parsed)
        return parsed

    def _prepare(self, argv: list[str], gpu: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def asset_extra(result: Any) -> dict[str, Any]:
    """The part of a step's JSON result an Asset event carries: paths, counts, metrics (no long lists)."""
    if not isinstance(result, dict):
        return {}

    def small(value: Any) -> bool:
        scalar = (str, int, float, bool, type(None))
        return isinstance(value, scalar) or (
            isinstance(value, dict) and all(isinstance(v, scalar) for v in value.values())
        )

    return {key: value for key, value in result.items() if small(value)}


def step_operator_base(operator: Any) -> Any:
    """`StepMixin` on an Airflow operator class: takes the step arguments, passes the rest on.

    A class made per operator, not a plain mixin: Airflow's operator metaclass only wraps an
    ``__init__`` that sits on an operator class (default_args, the missing-argument check).
    Subclasses adapt the operator's own arguments in `_operator_kwargs`.
    """

    class _StepOperator(StepMixin, operator):
        template_ext = ()  # an argument ending in .sh/.json is a path, not a template file

        def __init__(
            self,
            *,
            step_verb: str,
            step_args: Iterable[Any],
            step_gpu: Any = None,
            step_skip_unless: Any = None,
            step_settings: RunnerSettings,
            step_network: Any = None,
            **kwargs: Any,
        ) -> None:
            self._init_step(
                verb=step_verb,
                args=step_args,
                gpu=step_gpu,
                skip_unless=step_skip_unless,
                settings=step_settings,
                network=step_network,
            )
            super().__init__(**self._operator_kwargs(kwargs))

        def _operator_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            return kwargs

    return _StepOperator


def container_step_base(operator: Any) -> Any:
    """`step_operator_base` for a container operator (docker, kubernetes), plus `gpu_image`: it
    replaces the operator's image for a step that asks for a GPU."""

    class _ContainerStepOperator(step_operator_base(operator)):  # type: ignore[misc]
        template_fields = (*operator.template_fields, *StepMixin.step_template_fields)

        def _operator_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            self.gpu_image = kwargs.pop("gpu_image", None)
            return kwargs

    return _ContainerStepOperator
