"""edgetpu_retrain: newly labeled LabelImg images -> SSD MobileNet -> Edge TPU model (wiring only).

Every step is one `edgetpu-retrain <verb>` command run by the runner in EDGETPU_RUNNER
(`edgetpu_retrain.pipeline.runners`); params, templates and the drop sensor live in
`edgetpu_retrain.pipeline`. Nothing heavy is imported here.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, chain

from edgetpu_retrain.pipeline import assets, templates
from edgetpu_retrain.pipeline.params import dag_params
from edgetpu_retrain.pipeline.runners import Flag, Repeat, RunnerSettings, from_step, step_task
from edgetpu_retrain.pipeline.sensor import WAIT_ENV, DropSensor, wait_windows
from edgetpu_retrain.pipeline.templates import CONFIG, DATASET, FLOAT_TFLITE, INT8_TFLITE, SOURCE


def _data_tasks(*, root: str, run_dir: str, runner: str, poke_s: float, wait_s: dict[str, float]) -> list:
    """download (optional) -> wait_for_drop -> validate -> build_dataset."""
    download = step_task(
        "download",
        ["--manifest", "{{ params.manifest }}", "--out", f"{root}/unlabeled/{{{{ params.dataset_name }}}}"],
        skip_unless="{{ params.manifest }}",
        doc_md=templates.TASK_DOCS["download"],
    )
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
        outlets=[assets.dataset_asset(root)],
    )  # fmt: skip
    wait_for_drop = DropSensor(
        task_id="wait_for_drop",
        data_root=root,
        runner=runner,
        dataset_folder="{{ params.dataset_folder }}",
        wait_s=wait_s,
        poke_interval=poke_s,
        trigger_rule="none_failed",  # download is skipped without a manifest
    )
    return [download, wait_for_drop, validate, build_dataset]


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
        ["--config", CONFIG, "--out", f"{run_dir}/train", templates.TRAIN_BUDGET],
        gpu="{{ params.use_gpu }}",
        pool=training_pool,
        retries=2,
        retry_delay=timedelta(minutes=2),
        doc_md=templates.TASK_DOCS["train"],
    )
    export = step_task(
        "export",
        ["--config", CONFIG, "--checkpoint", from_step("train", "checkpoint"),
         "--out", f"{run_dir}/saved_model"],
    )  # fmt: skip
    tflite = step_task(
        "tflite",
        ["--saved-model", from_step("export", "saved_model"), "--dataset", DATASET,
         "--out", f"{run_dir}/tflite"],
    )  # fmt: skip
    return [render_config, train, export, tflite]


def _release_tasks(*, root: str, run_dir: str) -> tuple[list, list, object]:
    """[edgetpu, evaluate_float, evaluate_int8] -> promote -> model_asset, and the report."""
    edgetpu = step_task(
        "edgetpu",
        ["--tflite", INT8_TFLITE, "--out", f"{run_dir}/edgetpu",
         Flag("--require-compiler", "{{ params.require_compile }}")],
    )  # fmt: skip
    evaluations = [
        step_task(
            "evaluate",
            ["--dataset", DATASET, "--split", "test", "--model", model,
             "--out", f"{run_dir}/eval_{kind}.json"],
            task_id=f"evaluate_{kind}",
        )
        for kind, model in (("float", FLOAT_TFLITE), ("int8", INT8_TFLITE))
    ]  # fmt: skip
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
            "--min-map50", "{{ params.min_map50 }}",
            Flag("--require-compiled", "{{ params.require_compile }}"),
            "--out", f"{run_dir}/promote.json",
            *templates.tracking_args(),
        ],
    )  # fmt: skip
    report_args = [
        "--run-dir", run_dir, "--out", f"{run_dir}/report", *templates.report_step_args(),
        *templates.tracking_args(),
    ]  # fmt: skip
    model = assets.model_asset_task(assets.model_asset(root))(promote.output)
    return [edgetpu, *evaluations], [promote, model], step_task("report", report_args)


def create_pipeline(
    *,
    dag_id: str,
    settings: RunnerSettings,
    training_pool: str,
    sensor_poke_s: float,
    wait_s: dict[str, float],
) -> DAG:
    """The retraining DAG; every deployment setting is a parameter (read from the environment below)."""
    root = settings.data_root
    run_dir = templates.run_dir(root)
    with DAG(
        dag_id=dag_id,
        description="Newly labeled LabelImg images -> SSD MobileNet -> int8 TFLite -> Edge TPU",
        # nightly at 02:00 (a safety net) OR as soon as the triggerer sees a new READY drop
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
            assets=assets.drops_asset(data_root=root, poll_s=sensor_poke_s),
        ),
        start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(hours=24),
        default_args={"retries": 0, "owner": "edgetpu-retrain"},
        tags=["edgetpu", "coral", "object-detection", "retrain"],
        doc_md=templates.dag_doc(pool=training_pool, root=root, runner=settings.runner),
        user_defined_filters=templates.template_filters(),
        params=dag_params(data_root=root),
    ) as dag:
        data = _data_tasks(
            root=root,
            run_dir=run_dir,
            runner=settings.runner,
            poke_s=sensor_poke_s,
            wait_s=wait_s,
        )
        model = _model_tasks(run_dir=run_dir, training_pool=training_pool)
        checks, (promote, model_asset), report = _release_tasks(root=root, run_dir=run_dir)
        # The report is a teardown of the drop sensor: it runs once everything else is done, also after a
        # failure (so a failed pre-flight or training is explained in plain words), is skipped with the
        # sensor when there was nothing to train on, and does not decide the run's state.
        report.as_teardown(setups=data[1])
        chain(*data, *model, checks, promote, model_asset, report)
        checks >> report
    return dag


dag = create_pipeline(
    dag_id="edgetpu_retrain",
    settings=RunnerSettings.from_env(),
    training_pool=os.environ.get("EDGETPU_TRAINING_POOL", "training"),
    sensor_poke_s=float(os.environ.get("EDGETPU_SENSOR_POKE_SECONDS", "60")),
    wait_s=wait_windows(os.environ.get(WAIT_ENV)),
)
