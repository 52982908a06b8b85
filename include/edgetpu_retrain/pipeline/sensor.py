"""The `wait_for_drop` sensor task: which folder a run trains on (the logic is `drops.poke`).

Reschedule mode (no worker slot is held while waiting); nothing ready before the timeout ends the run
skipped (`soft_fail`): no new data is not an error. Imported by the DAG file at parse time.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import PokeReturnValue, TriggerRule, task

from edgetpu_retrain.pipeline import drops


def drop_sensor(*, data_root: str, runner: str, poke_s: int, timeout_s: int) -> Any:
    """The sensor task (call inside the DAG); its XCom is the chosen folder's `drops` result."""

    @task.sensor(
        task_id="wait_for_drop",
        mode="reschedule",
        poke_interval=poke_s,
        timeout=timeout_s,
        soft_fail=True,
        trigger_rule=TriggerRule.NONE_FAILED,
    )
    def wait_for_drop(**context: Any) -> PokeReturnValue:
        """The folder this run trains on: `dataset_folder`, or the newest drop ready before the cut-off.

        A bad `dataset_folder` raises a plain error (the task fails: soft_fail only turns the timeout
        and Airflow's own fail exceptions into "skipped").
        """
        found = drops.poke(context, data_root=data_root, runner=runner)
        return PokeReturnValue(is_done=found is not None, xcom_value=found)

    return wait_for_drop()
