"""The ``docker`` runner (the default): DockerOperator running the trainer image (the compiler image
for the ``edgetpu`` verb) as the image's user (50000:0 unless EDGETPU_DOCKER_USER), with

- the data root bind-mounted at the SAME path, and the step's read-only inputs (base `READ_ONLY_INPUTS`:
  the drop folder of validate, the dataset of evaluate, download's manifest) bind-mounted read-only
  at their own path on top of it; outputs go to the run folder through the data-root mount;
- ``network_mode="none"``, except a step whose ``network`` template renders true (settings
  `NETWORK_STEPS`): it gets EDGETPU_DOCKER_NETWORK (default ``bridge``; ``host`` or a named network);
- the limits of EDGETPU_DOCKER_LIMITS (memory, shm, a hard CPU cap, pids) for that step;
- its result read from a file in the container (`DOCKER_XCOM_FILE`, ``retrieve_output``), not from
  the log stream, whose stdout/stderr order the daemon does not keep;
- ``auto_remove="never"``: the runner removes the container itself after success or skip (exit 99)
  and KEEPS a failed one for ``docker logs <id>`` (the id is logged when the container is created);
- for a step whose ``gpu`` template renders true (the DAG sets it on ``train`` only), the GPU image
  and ``device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])]``.
"""

from __future__ import annotations

from typing import Any

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO
from edgetpu_retrain.pipeline.runners.base import (
    CONTAINER_CLI,
    DOCKER_WRAPPER,
    DOCKER_XCOM_FILE,
    container_step_base,
    read_only_paths,
)
from edgetpu_retrain.pipeline.runners.settings import RunnerSettings

CLASS_NAME = "DockerStepOperator"


class TextResult:
    """What `retrieve_output` deserializes the result file with: its text (parsed by `parse_result`)."""

    @staticmethod
    def load(file: Any) -> str:
        return file.read().decode("utf-8", "replace")


class LoggingClient:
    """The operator's Docker API client plus: each new container's id is logged, and HostConfig
    options DockerOperator has no argument for (a hard CPU cap, pids) are added."""

    def __init__(self, api: Any, *, log: Any, host_extra: dict[str, Any]) -> None:
        self._api, self._log, self._host_extra = api, log, host_extra

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._api.create_host_config(**kwargs, **self._host_extra)

    def create_container(self, **kwargs: Any) -> Any:
        container = self._api.create_container(**kwargs)
        self._log.info("container %s created from image %s", container["Id"], kwargs.get("image"))
        return container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


def host_config_extra(limits: dict[str, Any]) -> dict[str, Any]:
    """The limits DockerOperator cannot pass itself, as docker-py HostConfig arguments."""
    extra: dict[str, Any] = {}
    if limits.get("cpus") is not None:
        extra["nano_cpus"] = int(float(str(limits["cpus"])) * 1e9)
    if limits.get("pids_limit") is not None:
        extra["pids_limit"] = int(str(limits["pids_limit"]))
    return extra


def build_class() -> type:
    from airflow.providers.docker.operators.docker import DockerOperator
    from airflow.sdk.exceptions import AirflowSkipException
    from docker.types import DeviceRequest, Mount

    class DockerStepOperator(container_step_base(DockerOperator)):  # type: ignore[misc]
        """A step in a container of the trainer (or compiler) image, data root mounted at the same path."""

        ui_color = "#e3f2fd"
        pickling_library = TextResult  # retrieve_output: the result file as text, not a pickle

        def _operator_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
            kwargs = super()._operator_kwargs(kwargs)
            self.host_extra = kwargs.pop("host_extra", {})
            return kwargs

        @property
        def cli(self) -> Any:
            return LoggingClient(self.hook.api_client, log=self.log, host_extra=self.host_extra)

        def _prepare(self, argv: list[str], gpu: bool) -> None:
            self.command = ["bash", "-c", DOCKER_WRAPPER, "edgetpu-retrain-step", *CONTAINER_CLI, *argv]
            self.network_mode = self.step_settings.docker_network if self.needs_network() else "none"
            self.log.info("network: %s", self.network_mode)
            targets = {m["Target"] for m in self.mounts}
            for path in read_only_paths(self.step_verb, argv, self.step_settings.data_root):
                if path not in targets:
                    self.mounts.append(Mount(target=path, source=path, type="bind", read_only=True))
                    self.log.info("read-only input: %s", path)
            if gpu:
                if self.gpu_image:
                    self.image = self.gpu_image
                self.device_requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                self.device_requests = None  # type: ignore[assignment]  # the operator accepts None

        def _run_image_with_mounts(self, target_mounts: Any, add_tmp_variable: bool) -> Any:
            self.container = None
            try:
                result = super()._run_image_with_mounts(target_mounts, add_tmp_variable)
            except AirflowSkipException:
                self._remove_container()
                raise
            except BaseException:
                if self.container:
                    cid = self.container["Id"]
                    self.log.error(
                        "kept the failed container %s: docker logs %s; docker rm %s", cid, cid, cid
                    )
                raise
            self._remove_container()
            return result

        def _remove_container(self) -> None:
            if self.container:
                self.cli.remove_container(self.container["Id"])
                self.log.info("removed container %s", self.container["Id"])

    return DockerStepOperator


def task_kwargs(settings: RunnerSettings, *, verb: str, gpu: Any, task_id: str) -> dict[str, Any]:
    """The DockerOperator arguments of a step (the command, network and input mounts are set when it
    runs)."""
    from docker.types import Mount

    limits = settings.step_limits(verb, task_id)
    return dict(
        image=settings.step_image(verb),
        gpu_image=settings.gpu_image(gpu),
        command=None,
        docker_url=settings.docker_url,
        docker_conn_id=settings.docker_conn_id,
        mounts=[Mount(target=settings.data_root, source=settings.data_root, type="bind")],
        environment=settings.container_env(),
        user=settings.docker_user,
        network_mode="none",
        mem_limit=limits.get("mem_limit"),
        shm_size=limits.get("shm_size"),
        host_extra=host_config_extra(limits),
        auto_remove="never",
        mount_tmp_dir=False,
        retrieve_output=True,
        retrieve_output_path=DOCKER_XCOM_FILE,
        skip_on_exit_code=EXIT_NOTHING_TO_DO,
        xcom_all=False,
        tty=False,
    )
