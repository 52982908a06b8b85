"""edgetpu_retrain: newly labeled LabelImg images -> SSD MobileNet -> Edge TPU model (wiring only).

Every step is one `edgetpu-retrain <verb>` command run by the runner in EDGETPU_RUNNER
(`edgetpu_retrain.pipeline.runners`); params and the drop sensor's logic live in
`edgetpu_retrain.pipeline`. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, PokeReturnValue, TriggerRule, chain, task

from edgetpu_retrain.pipeline import drops
from edgetpu_retrain.pipeline.params import config_sets, dag_params
from edgetpu_retrain.pipeline.runners import JINJA_FILTERS, Flag, Repeat, RunnerSettings, from_step, step_task

SOURCE = "ti.xcom_pull(task_ids='wait_for_drop')"
CONFIG = from_step("render_config", "config")
DATASET = from_step("build_dataset", "dataset_dir")
INT8_TFLITE = from_step("tflite", "int8")
FLOAT_TFLITE = from_step("tflite", "float")
REPORT_STEPS = {  # report step name -> task id whose JSON result it gets
    "validate": "validate", "dataset": "build_dataset", "config": "render_config", "train": "train",
    "export": "export", "tflite": "tflite", "edgetpu": "edgetpu", "evaluate-float": "evaluate_float",
    "evaluate-int8": "evaluate_int8", "promote": "promote",
}  # fmt: skip

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


def _data_tasks(*, root: str, run_dir: str, runner: str, poke_s: int, timeout_s: int) -> list:
    """download (optional) -> wait_for_drop -> validate -> build_dataset."""
    download = step_task(
        "download",
        ["--manifest", "{{ params.manifest }}", "--out", f"{root}/unlabeled/{{{{ params.dataset_name }}}}"],
        skip_unless="{{ params.manifest }}",
        doc_md="Downloads the images of the `manifest` param into unlabeled/<dataset_name>/ (resumable) "
        "for labeling in LabelImg; skipped when the param is empty. Labeled images come back as a drop.",
    )

    @task.sensor(
        task_id="wait_for_drop",
        mode="reschedule",
        poke_interval=poke_s,
        timeout=timeout_s,
        soft_fail=True,
        trigger_rule=TriggerRule.NONE_FAILED,
    )
    def wait_for_drop(**context) -> PokeReturnValue:
        """The folder this run trains on: `dataset_folder`, or the newest drop ready before the cut-off.

        A bad `dataset_folder` raises a plain error (the task fails: soft_fail only turns the timeout
        and Airflow's own fail exceptions into "skipped").
        """
        found = drops.poke(context, data_root=root, runner=runner)
        return PokeReturnValue(is_done=found is not None, xcom_value=found)

    validate = step_task(
        "validate", ["--images", f"{{{{ {SOURCE}['folder'] }}}}", "--out", f"{run_dir}/validation"]
    )
    build_dataset = step_task(
        "build-dataset",
        [
            "--validated", from_step("validate", "out_dir"),
            "--out", f"{root}/datasets/{{{{ params.dataset_name }}}}/{{{{ {SOURCE}['version'] }}}}",
            "--split", "{{ params.split | replace(' ', '') }}",
            "--seed", "{{ params.seed }}",
        ],
    )  # fmt: skip
    return [download, wait_for_drop(), validate, build_dataset]


def _model_tasks(*, run_dir: str, training_pool: str) -> list:
    """render_config -> train -> export -> tflite."""
    render_config = step_task(
        "render-config",
        [
            "--dataset", DATASET,
            "--base-model", "{{ params.base_model }}",
            "--out", f"{run_dir}/config.yaml",
            Repeat("--set", "{{ params | config_sets | tojson }}"),
        ],
    )  # fmt: skip
    train = step_task(
        "train",
        ["--config", CONFIG, "--out", f"{run_dir}/train"],
        gpu="{{ params.use_gpu }}",
        pool=training_pool,
        retries=2,
        retry_delay=timedelta(minutes=2),
        doc_md="Resumable: a retry continues from the last checkpoint in runs/<run_id>/train/checkpoints.",
    )
    export = step_task(
        "export",
        [
            "--config",
            CONFIG,
            "--checkpoint",
            from_step("train", "checkpoint"),
            "--out",
            f"{run_dir}/saved_model",
        ],
    )
    tflite = step_task(
        "tflite",
        [
            "--saved-model",
            from_step("export", "saved_model"),
            "--dataset",
            DATASET,
            "--out",
            f"{run_dir}/tflite",
        ],
    )
    return [render_config, train, export, tflite]


def _release_tasks(*, root: str, run_dir: str) -> tuple[list, object, object]:
    """[edgetpu, evaluate_float, evaluate_int8] -> promote, and the report."""
    edgetpu = step_task(
        "edgetpu",
        ["--tflite", INT8_TFLITE, "--out", f"{run_dir}/edgetpu",
         Flag("--require-compiler", "{{ params.require_compile }}")],
    )  # fmt: skip
    evaluations = [
        step_task(
            "evaluate",
            task_id=f"evaluate_{kind}",
            args=[
                "--dataset",
                DATASET,
                "--split",
                "test",
                "--model",
                model,
                "--out",
                f"{run_dir}/eval_{kind}.json",
            ],
        )
        for kind, model in (("float", FLOAT_TFLITE), ("int8", INT8_TFLITE))
    ]
    promote = step_task(
        "promote",
        [
            "--models-dir", f"{root}/models",
            "--name", "{{ params.dataset_name }}",
            "--int8-eval", from_step("evaluate_int8", "out"),
            "--float-eval", from_step("evaluate_float", "out"),
            "--tflite", INT8_TFLITE,
            "--edgetpu-dir", from_step("edgetpu", "out_dir"),
            "--dataset-manifest", from_step("build_dataset", "manifest"),
            "--config", CONFIG,
            "--training", f"{run_dir}/train/train_result.json",
            "--run-dir", run_dir,
            "--tolerance", "{{ params.promotion_tolerance }}",
            Flag("--require-compiled", "{{ params.require_compile }}"),
            "--out", f"{run_dir}/promote.json",
        ],
    )  # fmt: skip
    step_results = [
        arg
        for name, task_id in REPORT_STEPS.items()
        for arg in ("--step", f"{name}={{{{ ti.xcom_pull(task_ids={task_id!r}) | tojson }}}}")
    ]
    report = step_task("report", ["--run-dir", run_dir, "--out", f"{run_dir}/report", *step_results])
    return [edgetpu, *evaluations], promote, report


def create_pipeline(
    *, dag_id: str, settings: RunnerSettings, training_pool: str, sensor_poke_s: int, sensor_timeout_s: int
) -> DAG:
    """The retraining DAG; every deployment setting is a parameter (read from the environment below)."""
    root = settings.data_root
    run_dir = f"{root}/runs/{{{{ run_id | path_safe }}}}"
    with DAG(
        dag_id=dag_id,
        description="Newly labeled LabelImg images -> SSD MobileNet -> int8 TFLite -> Edge TPU",
        schedule="0 2 * * *",
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=24),
        default_args={"retries": 0, "owner": "edgetpu-retrain"},
        tags=["edgetpu", "coral", "object-detection", "retrain"],
        doc_md=DOC_MD.format(pool=training_pool, root=root, runner=settings.runner),
        user_defined_filters={**JINJA_FILTERS, "path_safe": drops.path_safe, "config_sets": config_sets},
        params=dag_params(data_root=root),
    ) as dag:
        data = _data_tasks(
            root=root,
            run_dir=run_dir,
            runner=settings.runner,
            poke_s=sensor_poke_s,
            timeout_s=sensor_timeout_s,
        )
        model = _model_tasks(run_dir=run_dir, training_pool=training_pool)
        checks, promote, report = _release_tasks(root=root, run_dir=run_dir)
        # The report is a teardown of the drop sensor: it runs once everything else is done, also after a
        # failure (so a failed pre-flight or training is explained in plain words), is skipped with the
        # sensor when there was nothing to train on, and does not decide the run's state.
        report.as_teardown(setups=data[1])
        chain(*data, *model, checks, promote, report)
        checks >> report
    return dag


dag = create_pipeline(
    dag_id="edgetpu_retrain",
    settings=RunnerSettings.from_env(),
    training_pool=os.environ.get("EDGETPU_TRAINING_POOL", "training"),
    sensor_poke_s=int(os.environ.get("EDGETPU_SENSOR_POKE_SECONDS", "300")),
    sensor_timeout_s=int(os.environ.get("EDGETPU_SENSOR_TIMEOUT_SECONDS", str(6 * 3600))),
)
