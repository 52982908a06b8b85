"""The Jinja templates the DAG's task arguments are made of, its filters and its doc text.

Every later step reads an earlier step's result through `from_step(task_id, key)` (XCom + the
`step_field` filter, which names the task and the key when a result changes shape). Imported by the
DAG file at parse time: nothing heavy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from edgetpu_retrain.pipeline.drops import path_safe
from edgetpu_retrain.pipeline.params import config_sets, max_seconds
from edgetpu_retrain.pipeline.runners import JINJA_FILTERS, Opt, from_step

SOURCE = "ti.xcom_pull(task_ids='wait_for_drop')"  # the sensor's result: folder, version, drop_id
CONFIG = from_step("render_config", "config")
DATASET = from_step("build_dataset", "dataset_dir")
INT8_TFLITE = from_step("tflite", "int8")
FLOAT_TFLITE = from_step("tflite", "float")
# train's time budget from the `train_max_minutes` param; nothing when it is empty
TRAIN_BUDGET = Opt("--max-seconds", "{{ params.train_max_minutes | max_seconds }}")
REPORT_STEPS = {  # report step name -> task id whose JSON result it gets
    "validate": "validate", "dataset": "build_dataset", "config": "render_config", "train": "train",
    "export": "export", "tflite": "tflite", "edgetpu": "edgetpu", "evaluate-float": "evaluate_float",
    "evaluate-int8": "evaluate_int8", "promote": "promote",
}  # fmt: skip

TASK_DOCS = {
    "download": "Downloads the images of the `manifest` param into unlabeled/<dataset_name>/ (resumable) "
    "for labeling in LabelImg; skipped when the param is empty. Labeled images come back as a drop.",
    "train": "Resumable: a retry continues from the last checkpoint in runs/<run_id>/train/checkpoints "
    "(with a `train_max_minutes` budget: the same planned schedule, each attempt capped at the budget).",
}

DOC_MD = """
### Retrain an Edge TPU detector from newly labeled images

`download` (only with a `manifest`) -> `wait_for_drop` -> `validate` -> `build_dataset` ->
`render_config` -> `train` (pool `{pool}`) -> `export` -> `tflite` -> `edgetpu` ->
`evaluate_float` + `evaluate_int8` -> `promote` -> `report`.

* **Data**: set `dataset_folder` to your LabelImg folder, or let the sensor pick the newest
  `{root}/incoming/<drop_id>/` whose `READY` marker is older than the run's data interval end
  (manual runs: older than the trigger time). Nothing ready before the timeout -> the run is skipped.
* **Artifacts**: `{root}/datasets/<dataset_name>/<version>/`, `{root}/runs/<run_id>/`,
  `{root}/models/<dataset_name>/`.
* **Runner**: `{runner}` (env `EDGETPU_RUNNER` = docker | local | kubernetes).
* Each step's XCom `return_value` is its JSON result line; later steps read paths from it.
"""


def dag_doc(*, pool: str, root: str, runner: str) -> str:
    return DOC_MD.format(pool=pool, root=root, runner=runner)


def run_dir(root: str) -> str:
    """The run's folder, `<root>/runs/<run id, file-name safe>`."""
    return f"{root}/runs/{{{{ run_id | path_safe }}}}"


def template_filters() -> dict[str, Callable[..., Any]]:
    """The DAG's `user_defined_filters`: step_field, path_safe, config_sets, max_seconds."""
    return {**JINJA_FILTERS, "path_safe": path_safe, "config_sets": config_sets, "max_seconds": max_seconds}


def report_step_args() -> list[str]:
    """`--step NAME=<that task's XCom as JSON>` for every step the report explains."""
    return [
        arg
        for name, task_id in REPORT_STEPS.items()
        for arg in ("--step", f"{name}={{{{ ti.xcom_pull(task_ids={task_id!r}) | tojson }}}}")
    ]


def tracking_args() -> list[Any]:
    """promote's and report's MLflow flags: the DAG run id as the MLflow run's tag, and the store in
    EDGETPU_MLFLOW_URI when set at parse time (unset: sqlite under the data root; "off": no tracking).
    A flag, not the environment: the docker and kubernetes runners pass only their own variables."""
    uri = os.environ.get("EDGETPU_MLFLOW_URI", "")
    return [Opt("--tracking-uri", uri), "--airflow-run-id", "{{ run_id }}"]
