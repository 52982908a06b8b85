"""Everything the runners read from the environment, read once when the DAG is parsed.

New runner options (e.g. DockerOperator network mode, read-only mounts, resource limits) belong here
as fields with their EDGETPU_* variable, and in the runner module that passes them to its operator.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RUNNERS = ("docker", "local", "kubernetes")
DEFAULT_RUNNER = "docker"


@dataclass(frozen=True)
class RunnerSettings:
    """The runner and its options (defaults = the documented defaults of the EDGETPU_* variables)."""

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

    def step_image(self, verb: str) -> str:
        """The image of a step: the compiler image for `edgetpu`, the trainer image otherwise."""
        return self.compiler_image if verb == "edgetpu" else self.trainer_image

    def gpu_image(self, gpu: object) -> str | None:
        """The GPU image for a step that may ask for a GPU (its `gpu` template is set), else None."""
        return self.trainer_gpu_image if gpu is not None else None
