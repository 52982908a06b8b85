"""The ``docker`` runner (the default): DockerOperator running the trainer image (the compiler image
for the ``edgetpu`` verb), with the data root bind-mounted at the SAME path, ``auto_remove='success'``,
``mount_tmp_dir=False`` and, for a GPU step whose ``gpu`` template renders true, the GPU image and
``device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]``.

Container options (network mode, read-only mounts, limits) go in `task_kwargs`, read from
`RunnerSettings`.
"""

from __future__ import annotations

from typing import Any

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO
from edgetpu_retrain.pipeline.runners.base import CONTAINER_CLI, WRAPPER, container_step_base
from edgetpu_retrain.pipeline.runners.settings import RunnerSettings

CLASS_NAME = "DockerStepOperator"


def build_class() -> type:
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest

    class DockerStepOperator(container_step_base(DockerOperator)):  # type: ignore[misc]
        """A step in a container of the trainer (or compiler) image, data root mounted at the same path."""

        ui_color = "#e3f2fd"

        def _prepare(self, argv: list[str], gpu: bool) -> None:
            self.command = ["bash", "-c", WRAPPER, "edgetpu-retrain-step", *CONTAINER_CLI, *argv]
            if gpu:
                if self.gpu_image:
                    self.image = self.gpu_image
                self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                self.device_requests = None  # type: ignore[assignment]  # the operator accepts None

    return DockerStepOperator


def task_kwargs(settings: RunnerSettings, *, verb: str, gpu: Any) -> dict[str, Any]:
    """The DockerOperator arguments of a step (the command is set when it runs)."""
    from docker.types import Mount

    return dict(
        image=settings.step_image(verb),
        gpu_image=settings.gpu_image(gpu),
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
