"""edgetpu_retrain: newly labeled LabelImg images -> SSD MobileNet -> Edge TPU model (wiring only).

Every step is one `edgetpu-retrain <verb>` command run by the runner in EDGETPU_RUNNER (see
include/edgetpu_retrain/pipeline/runners.py); this file only wires them. Nothing heavy is imported here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import timedelta
from pathlib import Path


def _use_step_package() -> None:
    """Make `import edgetpu_retrain` mean the step package, not this file.

    This DAG file has the package's name, and Airflow puts the dags folder on sys.path; when the
    package is not installed (or the dags folder comes first) use the project's include/ folder.
    """
    spec = importlib.util.find_spec("edgetpu_retrain")
    if spec is not None and spec.submodule_search_locations is not None:
        return  # the package (pip install -e . or the image's install)
    include = Path(__file__).resolve().parents[1] / "include"
    sys.path.insert(0, str(include))
    importlib.invalidate_caches()
    shadow = sys.modules.get("edgetpu_retrain")
    if shadow is not None and getattr(shadow, "__path__", None) is None:
        del sys.modules["edgetpu_retrain"]  # this DAG file imported under the package's name


_use_step_package()

import pendulum
from airflow.sdk import DAG, Param, PokeReturnValue, TriggerRule, chain, task

from edgetpu_retrain.pipeline import drops
from edgetpu_retrain.pipeline.runners import JINJA_FILTERS, Flag, Repeat, RunnerSettings, from_step, step_task

SETTINGS = RunnerSettings.from_env()
ROOT = SETTINGS.data_root
TRAINING_POOL = os.environ.get("EDGETPU_TRAINING_POOL", "training")
SENSOR_POKE_S = int(os.environ.get("EDGETPU_SENSOR_POKE_SECONDS", "300"))
SENSOR_TIMEOUT_S = int(os.environ.get("EDGETPU_SENSOR_TIMEOUT_SECONDS", str(6 * 3600)))

# Typed params -> render-config `--set` keys. A param left empty (null) keeps the base model's value.
PARAM_CONFIG_KEYS = {
    "input_size": "model.input_size",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "backbone_weights": "model.backbone_weights",
}


def config_sets(params) -> dict:
    """Jinja filter: the `--set` overrides of a run (typed params first, config_overrides win)."""
    sets = {key: params[name] for name, key in PARAM_CONFIG_KEYS.items() if params.get(name) not in (None, "")}
    if str(sets.get("model.backbone_weights", "")).lower() in ("none", "null"):
        sets["model.backbone_weights"] = None  # random initialisation (no download)
    sets.update(params.get("config_overrides") or {})
    return sets


# ------------------------------------------------------------------------------------ templates
RUN_DIR = f"{ROOT}/runs/{{{{ run_id | path_safe }}}}"
SOURCE = "ti.xcom_pull(task_ids='wait_for_drop')"
DATASET_DIR = f"{ROOT}/datasets/{{{{ params.dataset_name }}}}/{{{{ {SOURCE}['version'] }}}}"
CONFIG = from_step("render_config", "config")
INT8_TFLITE = from_step("tflite", "int8")
FLOAT_TFLITE = from_step("tflite", "float")
EVAL_FLOAT = f"{RUN_DIR}/eval_float.json"
EVAL_INT8 = f"{RUN_DIR}/eval_int8.json"
REPORT_STEPS = {  # report step name -> task id whose JSON result it gets
    "validate": "validate", "dataset": "build_dataset", "config": "render_config", "train": "train",
    "export": "export", "tflite": "tflite", "edgetpu": "edgetpu", "evaluate-float": "evaluate_float",
    "evaluate-int8": "evaluate_int8", "promote": "promote",
}

DOC_MD = f"""
### Retrain an Edge TPU detector from newly labeled images

`download` (only with a `manifest`) -> `wait_for_drop` -> `validate` -> `build_dataset` ->
`render_config` -> `train` (pool `{TRAINING_POOL}`) -> `export` -> `tflite` -> `edgetpu` ->
`evaluate_float` + `evaluate_int8` -> `promote` -> `report`.

* **Data**: set `dataset_folder` to your LabelImg folder, or let the sensor pick the newest
  `{ROOT}/incoming/<drop_id>/` whose `READY` marker is older than the run's data interval end
  (manual runs: older than the trigger time). Nothing ready before the timeout -> the run is skipped.
* **Artifacts**: `{ROOT}/datasets/<dataset_name>/<version>/`, `{ROOT}/runs/<run_id>/`,
  `{ROOT}/models/<dataset_name>/`.
* **Runner**: `{SETTINGS.runner}` (env `EDGETPU_RUNNER` = docker | local | kubernetes).
* Each step's XCom `return_value` is its JSON result line; later steps read paths from it.
"""


# ----------------------------------------------------------------------------------------- DAG
with DAG(
    dag_id="edgetpu_retrain",
    description="Newly labeled LabelImg images -> SSD MobileNet -> int8 TFLite -> Edge TPU",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=24),
    default_args={"retries": 0, "owner": "edgetpu-retrain"},
    tags=["edgetpu", "coral", "object-detection", "retrain"],
    doc_md=DOC_MD,
    user_defined_filters={**JINJA_FILTERS, "path_safe": drops.path_safe, "config_sets": config_sets},
    params={
        "dataset_folder": Param(
            "", type="string", title="LabelImg folder",
            description="Your own LabelImg folder (images + VOC XML beside them). Empty: wait for the newest "
            f"ready drop in {ROOT}/incoming/. With the docker/kubernetes runners it must be inside {ROOT}.",
        ),
        "dataset_name": Param(
            "default", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", title="Dataset / model name",
            description="datasets/<name>/<version>/ and models/<name>/",
        ),
        "manifest": Param(
            "", type="string", title="URL manifest",
            description="Optional: a URL list or CSV (url[,sha256][,filename]) whose images are fetched into "
            f"{ROOT}/unlabeled/<dataset_name>/ for labeling (they train once labeled and dropped into "
            "incoming/). Empty: the download task is skipped.",
        ),
        "split": Param(
            "0.8,0.1,0.1", type="string", title="train,val,test ratios",
            pattern=r"^\s*(0|1|0?\.\d+|1\.0*)\s*,\s*(0|1|0?\.\d+|1\.0*)\s*,\s*(0|1|0?\.\d+|1\.0*)\s*$",
            description="Three numbers in 0..1 summing to 1, e.g. 0.8,0.1,0.1",
        ),
        "seed": Param(0, type="integer", minimum=0, title="Split seed"),
        "base_model": Param(
            "mobilenet_v2_ssd", type="string", enum=["mobilenet_v1_ssd", "mobilenet_v2_ssd"], title="Base model",
        ),
        "input_size": Param(None, type=["null", "integer"], minimum=64, maximum=1024, title="Input size (px)",
                            description="Empty: the base model's (300 for v1, 320 for v2)"),
        "steps": Param(None, type=["null", "integer"], minimum=1, title="Training steps",
                       description="Empty: the base model's default"),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=512, title="Batch size"),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Learning rate"),
        "backbone_weights": Param(
            "", type="string", title="Backbone weights",
            description="A local .h5/.keras backbone weights file (inside the data root), 'imagenet' "
            "(downloaded by the trainer), or 'none' (random init). Empty: the base model's default (imagenet).",
        ),
        "config_overrides": Param(
            {}, type="object", title="Config overrides",
            description='Extra render-config keys, e.g. {"train.warmup_steps": 50} (each becomes --set k=v; '
            "they win over the typed params above)",
        ),
        "use_gpu": Param(False, type="boolean", title="Train on GPU (docker/kubernetes runners)"),
        "require_compile": Param(
            False, type="boolean", title="Require the Edge TPU compiler",
            description="Fail if edgetpu_compiler is missing and refuse promotion without a compiled model",
        ),
        "promotion_tolerance": Param(
            0.0, type="number", minimum=-1, maximum=1, title="Promotion tolerance (mAP@.5)",
            description="Promote if new >= current - tolerance",
        ),
    },
) as dag:
    download = step_task(
        "download",
        ["--manifest", "{{ params.manifest }}", "--out", f"{ROOT}/unlabeled/{{{{ params.dataset_name }}}}"],
        skip_unless="{{ params.manifest }}",
        doc_md="Downloads the images of the `manifest` param into unlabeled/<dataset_name>/ (resumable) "
        "for labeling in LabelImg; skipped when the param is empty. Labeled images come back as a drop.",
    )

    @task.sensor(
        task_id="wait_for_drop",
        mode="reschedule",
        poke_interval=SENSOR_POKE_S,
        timeout=SENSOR_TIMEOUT_S,
        soft_fail=True,
        trigger_rule=TriggerRule.NONE_FAILED,
    )
    def wait_for_drop(**context) -> PokeReturnValue:
        """The folder this run trains on: `dataset_folder`, or the newest drop ready before the cut-off.

        A bad `dataset_folder` raises a plain error (the task fails: soft_fail only turns the timeout
        and Airflow's own fail exceptions into "skipped").
        """
        params, dag_run = context["params"], context["dag_run"]
        cutoff = drops.cutoff_for_run(
            run_type=dag_run.run_type, data_interval_end=dag_run.data_interval_end, run_after=dag_run.run_after
        )
        previous = None
        if drops.needs_new_drop(dag_run.run_type):  # nightly: wait for a drop the last run did not use
            previous = context["ti"].xcom_pull(task_ids="wait_for_drop", include_prior_dates=True)
        found = drops.resolve_source(
            data_root=ROOT,
            cutoff=cutoff,
            run_id=dag_run.run_id,
            dataset_folder=params.get("dataset_folder") or None,
            previous=previous,
        )
        if found and SETTINGS.runner != "local" and not drops.is_inside(found["folder"], ROOT):
            raise ValueError(
                f"{found['folder']}: outside the data root {ROOT}; the {SETTINGS.runner} runner only mounts "
                "the data root. Copy the folder under it (e.g. incoming/<name>/) and point dataset_folder there."
            )
        if found is None:
            print(f"no new drop in {ROOT}/incoming/ with a READY marker older than {cutoff.isoformat()}"
                  + (f" (the last run used {previous.get('drop_id')})" if isinstance(previous, dict) else ""))
        return PokeReturnValue(is_done=found is not None, xcom_value=found)

    wait = wait_for_drop()

    validate = step_task(
        "validate",
        ["--images", f"{{{{ {SOURCE}['folder'] }}}}", "--out", f"{RUN_DIR}/validation"],
    )
    build_dataset = step_task(
        "build-dataset",
        [
            "--validated", from_step("validate", "out_dir"),
            "--out", DATASET_DIR,
            "--split", "{{ params.split | replace(' ', '') }}",
            "--seed", "{{ params.seed }}",
        ],
    )
    render_config = step_task(
        "render-config",
        [
            "--dataset", from_step("build_dataset", "dataset_dir"),
            "--base-model", "{{ params.base_model }}",
            "--out", f"{RUN_DIR}/config.yaml",
            Repeat("--set", "{{ params | config_sets | tojson }}"),
        ],
    )
    train = step_task(
        "train",
        ["--config", CONFIG, "--out", f"{RUN_DIR}/train"],
        gpu="{{ params.use_gpu }}",
        pool=TRAINING_POOL,
        retries=2,
        retry_delay=timedelta(minutes=2),
        doc_md="Resumable: a retry continues from the last checkpoint in runs/<run_id>/train/checkpoints.",
    )
    export = step_task(
        "export",
        ["--config", CONFIG, "--checkpoint", from_step("train", "checkpoint"), "--out", f"{RUN_DIR}/saved_model"],
    )
    tflite = step_task(
        "tflite",
        [
            "--saved-model", from_step("export", "saved_model"),
            "--dataset", from_step("build_dataset", "dataset_dir"),
            "--out", f"{RUN_DIR}/tflite",
        ],
    )
    edgetpu = step_task(
        "edgetpu",
        ["--tflite", INT8_TFLITE, "--out", f"{RUN_DIR}/edgetpu", Flag("--require-compiler", "{{ params.require_compile }}")],
    )
    evaluate_float = step_task(
        "evaluate",
        task_id="evaluate_float",
        args=["--dataset", from_step("build_dataset", "dataset_dir"), "--split", "test",
              "--model", FLOAT_TFLITE, "--out", EVAL_FLOAT],
    )
    evaluate_int8 = step_task(
        "evaluate",
        task_id="evaluate_int8",
        args=["--dataset", from_step("build_dataset", "dataset_dir"), "--split", "test",
              "--model", INT8_TFLITE, "--out", EVAL_INT8],
    )
    promote = step_task(
        "promote",
        [
            "--models-dir", f"{ROOT}/models",
            "--name", "{{ params.dataset_name }}",
            "--int8-eval", from_step("evaluate_int8", "out"),
            "--float-eval", from_step("evaluate_float", "out"),
            "--tflite", INT8_TFLITE,
            "--edgetpu-dir", from_step("edgetpu", "out_dir"),
            "--dataset-manifest", from_step("build_dataset", "manifest"),
            "--config", CONFIG,
            "--training", f"{RUN_DIR}/train/train_result.json",
            "--run-dir", RUN_DIR,
            "--tolerance", "{{ params.promotion_tolerance }}",
            Flag("--require-compiled", "{{ params.require_compile }}"),
            "--out", f"{RUN_DIR}/promote.json",
        ],
    )
    report = step_task(
        "report",
        [
            "--run-dir", RUN_DIR,
            "--out", f"{RUN_DIR}/report",
            *(
                arg
                for name, task_id in REPORT_STEPS.items()
                for arg in ("--step", f"{name}={{{{ ti.xcom_pull(task_ids={task_id!r}) | tojson }}}}")
            ),
        ],
    )
    # The report is a teardown of the drop sensor: it runs once everything else is done, also after a
    # failure (so a failed pre-flight or training is explained in plain words), is skipped with the
    # sensor when there was nothing to train on, and does not decide the run's state.
    report.as_teardown(setups=wait)

    chain(download, wait, validate, build_dataset, render_config, train, export, tflite,
          [edgetpu, evaluate_float, evaluate_int8], promote, report)
    [edgetpu, evaluate_float, evaluate_int8] >> report
