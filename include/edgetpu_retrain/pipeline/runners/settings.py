"""Everything the runners read from the environment, read once when the DAG is parsed.

New runner options belong here as fields with their EDGETPU_* variable, and in the runner module that
passes them to its operator. Container steps run with no network, except the steps of
`NETWORK_STEPS` when their template renders true (they get EDGETPU_DOCKER_NETWORK); per-step
resource limits come from EDGETPU_DOCKER_LIMITS (see `parse_limits`).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RUNNERS = ("docker", "local", "kubernetes")
DEFAULT_RUNNER = "docker"
# Steps that may need the network, with a template rendering whether they do: `download` always;
# `train` only for Keras' `imagenet` backbone weights (a download; the bundled weights need none),
# named by the DAG param, a config override or render-config's result.
_OVERRIDES = "params.get('config_overrides')"
_CONFIG = "ti.xcom_pull(task_ids='render_config')"
_WEIGHTS_NAMED = (
    "params.get('backbone_weights')",
    f"({_OVERRIDES} if {_OVERRIDES} is mapping else {{}}).get('model.backbone_weights')",
    f"({_CONFIG} if {_CONFIG} is mapping else {{}}).get('backbone_weights')",
)
NETWORK_STEPS = {
    "download": "true",
    "train": "{{ 'imagenet' in [" + ", ".join(_WEIGHTS_NAMED) + "] }}",
}
# EDGETPU_DOCKER_LIMITS keys -> what they cap (docker: DockerOperator/HostConfig options).
LIMIT_KEYS = {
    "mem_limit": "memory, e.g. '8g' (over it the step is OOM-killed, exit 137)",
    "shm_size": "/dev/shm size, e.g. '1g'",
    "cpus": "CPU cores, e.g. 2 or 0.5 (a hard cap: HostConfig NanoCpus)",
    "pids_limit": "processes/threads in the container, e.g. 1024",
}


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
    docker_network: str = "bridge"
    docker_limits: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

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
            docker_network=env.get("EDGETPU_DOCKER_NETWORK", "").strip() or defaults.docker_network,
            docker_limits=parse_limits(env.get("EDGETPU_DOCKER_LIMITS", "")),
        )

    def step_env(self) -> dict[str, str]:
        return {"EDGETPU_DATA_ROOT": self.data_root, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

    def container_env(self) -> dict[str, str]:
        """`step_env` plus what a container needs: a weights cache that outlives the container."""
        return {**self.step_env(), "EDGETPU_WEIGHTS_CACHE": f"{self.data_root}/cache/weights"}

    def step_limits(self, verb: str, task_id: str) -> dict[str, object]:
        """The limits of one step: ``"*"``, then the verb's, then the task id's entry win in turn."""
        limits = self.docker_limits
        return {**limits.get("*", {}), **limits.get(verb, {}), **limits.get(task_id, {})}

    def step_image(self, verb: str) -> str:
        """The image of a step: the compiler image for `edgetpu`, the trainer image otherwise."""
        return self.compiler_image if verb == "edgetpu" else self.trainer_image

    def gpu_image(self, gpu: object) -> str | None:
        """The GPU image for a step that may ask for a GPU (its `gpu` template is set), else None."""
        return self.trainer_gpu_image if gpu is not None else None


def parse_limits(text: str) -> dict[str, dict[str, object]]:
    """EDGETPU_DOCKER_LIMITS: a JSON object, step (verb, task id or ``"*"``) -> {limit: value}.

    E.g. ``{"train": {"mem_limit": "8g", "cpus": 2}, "*": {"pids_limit": 2048}}``; keys: `LIMIT_KEYS`.
    """
    if not text.strip():
        return {}
    try:
        limits = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f'EDGETPU_DOCKER_LIMITS is not JSON ({exc}); e.g. {{"train": {{"mem_limit": "8g"}}}}'
        ) from exc
    if not isinstance(limits, dict) or not all(isinstance(v, dict) for v in limits.values()):
        raise ValueError('EDGETPU_DOCKER_LIMITS: a JSON object of step -> {limit: value}, e.g. {"train": {}}')
    for step, values in limits.items():
        unknown = sorted(set(values) - set(LIMIT_KEYS))
        if unknown:
            raise ValueError(
                f"EDGETPU_DOCKER_LIMITS[{step!r}]: unknown limit(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(LIMIT_KEYS)}"
            )
    return limits
