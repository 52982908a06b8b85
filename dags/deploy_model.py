"""deploy_model: publish each newly promoted model to a deployment folder (wiring only).

Scheduled on the model Asset that `edgetpu_retrain`'s `model_asset` task emits after a promotion: the
event's extra names the registry version folder; `pipeline.deploy.publish` copies model_int8.tflite,
the compiled model when present, labels.txt and the model card into
`$EDGETPU_DEPLOY_DIR/<name>/releases/<version>/` and switches the `current` symlink atomically. An
example: point your devices' sync job at `<name>/current/`.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from edgetpu_retrain.pipeline.assets import model_asset
from edgetpu_retrain.pipeline.runners import RunnerSettings

ROOT = RunnerSettings.from_env().data_root
MODEL = model_asset(ROOT)
DEPLOY_DIR = os.environ.get("EDGETPU_DEPLOY_DIR", f"{ROOT}/deploy")

with DAG(
    dag_id="deploy_model",
    description="Publish the promoted Edge TPU model to a deployment folder (releases/<version> + current)",
    schedule=[MODEL],
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["edgetpu", "deploy"],
    doc_md=__doc__,
):

    @task
    def publish(*, triggering_asset_events: Any = None) -> dict[str, Any]:
        """The newest model event's version -> the deployment folder."""
        from edgetpu_retrain.pipeline.deploy import publish as publish_files

        extra = triggering_asset_events[MODEL][-1].extra
        done = publish_files(
            model_dir=extra["model_dir"], name=extra["name"], version=extra["version"], deploy_dir=DEPLOY_DIR
        )
        print(
            f"published {extra['name']} version {extra['version']} ({extra['metric']} {extra['new']}): {done}"
        )
        return done

    publish()
