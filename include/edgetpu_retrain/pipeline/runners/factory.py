"""The ONE place a runner is chosen: `step_task(verb, args)` builds the task with the configured runner.

A runner module has `CLASS_NAME`, `build_class()` (its operator class; the provider is imported then)
and `task_kwargs(settings, *, verb, gpu, task_id)` (the operator arguments of one step).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import cache
from types import ModuleType
from typing import Any

from edgetpu_retrain.pipeline.runners import docker, kubernetes, local
from edgetpu_retrain.pipeline.runners.settings import NETWORK_STEPS, RunnerSettings

PACKAGE = "edgetpu_retrain.pipeline.runners"  # where the operator classes are importable from
RUNNER_MODULES: dict[str, ModuleType] = {"local": local, "docker": docker, "kubernetes": kubernetes}
CLASS_NAMES = {module.CLASS_NAME: runner for runner, module in RUNNER_MODULES.items()}


@cache
def operator_class(runner: str) -> type:
    """The operator class of a runner, built (and its provider imported) on first use."""
    module = RUNNER_MODULES[runner]
    cls = module.build_class()
    cls.__module__ = PACKAGE
    cls.__qualname__ = module.CLASS_NAME
    setattr(sys.modules[PACKAGE], module.CLASS_NAME, cls)
    return cls


def step_task(
    verb: str,
    args: Iterable[Any] = (),
    *,
    task_id: str | None = None,
    settings: RunnerSettings | None = None,
    gpu: Any = None,
    skip_unless: Any = None,
    network: Any = None,
    **operator_kwargs: Any,
) -> Any:
    """Build the Airflow task that runs ``edgetpu-retrain <verb> <args>`` with the configured runner.

    ``args`` are templated (see Opt/Flag/Repeat). ``gpu`` is a template rendering a boolean (e.g.
    ``"{{ params.use_gpu }}"``): when true the docker/kubernetes runners use the GPU image and ask
    for GPUs. ``skip_unless`` is a template: when it renders empty the task is skipped without
    running anything. ``network`` is a template rendering a boolean: when true a container step gets
    the network EDGETPU_DOCKER_NETWORK names, else none (default: `settings.NETWORK_STEPS`, i.e.
    download, and train with ``imagenet`` weights). Other keyword arguments (pool, retries,
    trigger_rule, ...) go to the operator.
    """
    settings = settings or RunnerSettings.from_env()
    task_id = task_id or verb.replace("-", "_")
    kwargs = RUNNER_MODULES[settings.runner].task_kwargs(settings, verb=verb, gpu=gpu, task_id=task_id)
    kwargs.update(operator_kwargs)
    return operator_class(settings.runner)(
        task_id=task_id,
        step_verb=verb,
        step_args=list(args),
        step_gpu=gpu,
        step_skip_unless=skip_unless,
        step_settings=settings,
        step_network=NETWORK_STEPS.get(verb) if network is None else network,
        do_xcom_push=True,
        **kwargs,
    )
