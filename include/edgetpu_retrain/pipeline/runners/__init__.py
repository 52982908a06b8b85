"""How a pipeline step becomes an Airflow task: the ONE factory, `step_task(verb, args)`.

The runner is chosen by the environment variable EDGETPU_RUNNER (read when the DAG is parsed), in
`factory.py`; one module per runner:

- ``docker`` (default, `docker.py`): DockerOperator, the data root bind-mounted at the same path;
- ``local`` (`local.py`): BashOperator running the CLI on the worker itself;
- ``kubernetes`` (`kubernetes.py`): KubernetesPodOperator with the data root on a PVC.

`base.py` holds what they share (the bash wrappers that make the step's JSON line the last log line
and, for the container runners, write it to a result file; the step mixin; the read-only inputs),
`args.py` the templated arguments (Opt/Flag/Repeat) and the result parsing, and
`settings.py` the environment. The XCom ``return_value`` of every step task is the parsed JSON object
(a dict) in every runner.

This package imports no operator at import time: the DAG file can import it for free; the operator
classes (`LocalStepOperator`, `DockerStepOperator`, `KubernetesStepOperator`) are built on first use.
"""

from __future__ import annotations

from typing import Any

from edgetpu_retrain.pipeline.runners.args import (
    JINJA_FILTERS,
    Flag,
    Opt,
    Repeat,
    flatten_args,
    from_step,
    parse_result,
    step_field,
    truthy,
)
from edgetpu_retrain.pipeline.runners.base import (
    CONTAINER_CLI,
    DOCKER_WRAPPER,
    DOCKER_XCOM_FILE,
    K8S_WRAPPER,
    K8S_XCOM_FILE,
    WRAPPER,
    StepMixin,
    container_step_base,
)
from edgetpu_retrain.pipeline.runners.factory import CLASS_NAMES, operator_class, step_task
from edgetpu_retrain.pipeline.runners.local import INCLUDE_DIR
from edgetpu_retrain.pipeline.runners.settings import DEFAULT_RUNNER, NETWORK_STEPS, RUNNERS, RunnerSettings

__all__ = [
    "CONTAINER_CLI",
    "DEFAULT_RUNNER",
    "DOCKER_WRAPPER",
    "DOCKER_XCOM_FILE",
    "INCLUDE_DIR",
    "JINJA_FILTERS",
    "K8S_WRAPPER",
    "K8S_XCOM_FILE",
    "NETWORK_STEPS",
    "RUNNERS",
    "WRAPPER",
    "Flag",
    "Opt",
    "Repeat",
    "RunnerSettings",
    "StepMixin",
    "container_step_base",
    "flatten_args",
    "from_step",
    "operator_class",
    "parse_result",
    "step_field",
    "step_task",
    "truthy",
]


def __getattr__(name: str) -> Any:  # PEP 562: runners.DockerStepOperator etc. import lazily
    if name in CLASS_NAMES:
        return operator_class(CLASS_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
