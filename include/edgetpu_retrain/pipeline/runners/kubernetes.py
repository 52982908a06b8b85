"""The ``kubernetes`` runner: KubernetesPodOperator (its provider is imported only for this runner)
with the data root on a PersistentVolumeClaim mounted at the same path; the step's result line goes
to /airflow/xcom/return.json for the XCom sidecar, and a GPU step asks for ``nvidia.com/gpu: 1``.
The step's read-only inputs on the PVC are mounted again read-only at their path (subPath); the pod
carries the `NETWORK_LABEL` for a NetworkPolicy. Memory/CPU limits: the operator's own
``container_resources`` (pass it to `step_task`); EDGETPU_DOCKER_LIMITS is for the docker runner.
"""

from __future__ import annotations

from typing import Any

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO
from edgetpu_retrain.pipeline.runners.base import (
    CONTAINER_CLI,
    K8S_WRAPPER,
    container_step_base,
    read_only_paths,
)
from edgetpu_retrain.pipeline.runners.settings import RunnerSettings

CLASS_NAME = "KubernetesStepOperator"
VOLUME = "edgetpu-data"
# A pod has no network_mode: it always gets the cluster network. The runner labels each step pod
# (`none`, or `egress` for the steps that need the network) so a NetworkPolicy can enforce it
# (docker/k8s-network-policy.yaml denies all traffic of the `none` pods).
NETWORK_LABEL = "edgetpu-retrain/network"


def build_class() -> type:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    class KubernetesStepOperator(container_step_base(KubernetesPodOperator)):  # type: ignore[misc]
        """A step in a pod of the trainer (or compiler) image, data root PVC mounted at the same path."""

        ui_color = "#e8f5e9"

        def _prepare(self, argv: list[str], gpu: bool) -> None:
            self.cmds = ["bash", "-c", K8S_WRAPPER, "edgetpu-retrain-step"]
            self.arguments = [*CONTAINER_CLI, *argv]
            network = "egress" if self.needs_network() else "none"
            labels: dict[str, str] = dict(getattr(self, "labels", None) or {})
            self.labels = {**labels, NETWORK_LABEL: network}
            root = self.step_settings.data_root
            for path in read_only_paths(self.step_verb, argv, root):
                if path.startswith(root.rstrip("/") + "/"):  # only what the PVC holds
                    sub = path[len(root.rstrip("/")) + 1 :]
                    self.volume_mounts.append(
                        k8s.V1VolumeMount(name=VOLUME, mount_path=path, sub_path=sub, read_only=True)
                    )
            if gpu:
                if self.gpu_image:
                    self.image = self.gpu_image
                self.container_resources = k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"})

    return KubernetesStepOperator


def task_kwargs(settings: RunnerSettings, *, verb: str, gpu: Any, task_id: str) -> dict[str, Any]:
    """The KubernetesPodOperator arguments of a step (the command is set when it runs)."""
    from kubernetes.client import models as k8s

    claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.k8s_pvc)
    return dict(
        image=settings.step_image(verb),
        gpu_image=settings.gpu_image(gpu),
        name=f"edgetpu-{verb}",
        namespace=settings.k8s_namespace,
        service_account_name=settings.k8s_service_account,
        env_vars=settings.step_env(),
        volumes=[k8s.V1Volume(name=VOLUME, persistent_volume_claim=claim)],
        volume_mounts=[k8s.V1VolumeMount(name=VOLUME, mount_path=settings.data_root)],
        get_logs=True,
        skip_on_exit_code=EXIT_NOTHING_TO_DO,
        on_finish_action="delete_succeeded_pod",
    )
