"""The ``local`` runner: BashOperator running the CLI on the worker itself (tests, the demo, one machine).

The executable is EDGETPU_CLI (shell words) or ``<airflow python> -m edgetpu_retrain``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO
from edgetpu_retrain.pipeline.runners.base import WRAPPER, StepMixin, step_operator_base
from edgetpu_retrain.pipeline.runners.settings import RunnerSettings

CLASS_NAME = "LocalStepOperator"
INCLUDE_DIR = Path(__file__).resolve().parents[3]  # .../include (for PYTHONPATH in the local runner)


def build_class() -> type:
    from airflow.providers.standard.operators.bash import BashOperator

    class LocalStepOperator(step_operator_base(BashOperator)):  # type: ignore[misc]
        """A step run by the worker's own Python (BashOperator)."""

        template_fields = ("env", "cwd", *StepMixin.step_template_fields)
        ui_color = "#e8f0fe"

        def _operator_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            return {"bash_command": self.display_command(), **kwargs}

        def display_command(self) -> str:
            return shlex.join([*self.step_settings.local_cli, self.step_verb, "..."])

        def _prepare(self, argv: list[str], gpu: bool) -> None:
            if gpu:
                self.log.info("use_gpu: the local runner uses whatever TensorFlow the worker has")
            command = shlex.join([*self.step_settings.local_cli, *argv])
            self.bash_command = f"set -- {command}\n{WRAPPER}\n"

    return LocalStepOperator


def task_kwargs(settings: RunnerSettings, *, verb: str, gpu: Any, task_id: str) -> dict[str, Any]:
    """The BashOperator arguments of a step: the step environment, with this package on PYTHONPATH."""
    env = dict(settings.step_env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INCLUDE_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return dict(env=env, append_env=True, skip_on_exit_code=EXIT_NOTHING_TO_DO)
