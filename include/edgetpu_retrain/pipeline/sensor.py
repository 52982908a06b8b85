"""The `wait_for_drop` task: `DropSensor`, which picks the folder a run trains on, deferring while it waits.

It checks once on the worker: a `dataset_folder`, or a drop already ready, returns at once (a bad folder
fails there). Otherwise it defers to `triggers.DropTrigger`: the task shows `deferred`, holds no worker
slot, and the triggerer logs why it waits into the task log. Each run type has its own waiting window
(`wait_windows`, env `EDGETPU_DROP_WAIT_SECONDS`); the end of the window ends the run `skipped`, with
the reason as the last log line. Imported by the DAG file at parse time: nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowSkipException

from edgetpu_retrain.common import UserError, is_none
from edgetpu_retrain.pipeline import drops
from edgetpu_retrain.pipeline.triggers import DropTrigger, waiting_reason

# Seconds a run of each type waits for a drop after its cut-off. Short on purpose: with
# max_active_runs=1 a waiting run holds the DAG's only run slot (not a worker slot). New drops start
# their own run through the drop Asset (run type asset_triggered: the drop is there, no wait); the
# nightly run is the safety net; a backfill reproduces a past date, so it never waits.
DEFAULT_WAIT_S = {"scheduled": 300.0, "manual": 600.0, "backfill": 0.0, "asset_triggered": 0.0}
WAIT_ENV = "EDGETPU_DROP_WAIT_SECONDS"


def wait_windows(text: str | None) -> dict[str, float]:
    """`DEFAULT_WAIT_S` updated from `scheduled=300,manual=600,...` (the env setting; empty = defaults)."""
    windows = dict(DEFAULT_WAIT_S)
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        kind, _, value = item.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if kind.strip() not in DEFAULT_WAIT_S or not seconds >= 0:
            raise UserError(
                f"{WAIT_ENV}={text!r}: {item!r} is not <run type>=<seconds >= 0> with a run type in "
                f"{sorted(DEFAULT_WAIT_S)}; fix the environment variable, e.g. scheduled=300,manual=600"
            )
        windows[kind.strip()] = seconds
    return windows


class DropSensor(BaseSensorOperator):
    """The drop a run trains on: `dataset_folder` at once, else the newest ready drop (deferring).

    `wait_s` maps a run type (scheduled, backfill, manual, asset_triggered) to its waiting window.
    soft_fail: the end of the window skips the run.
    """

    template_fields = ("dataset_folder",)
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        data_root: str,
        runner: str = "local",
        dataset_folder: str = "",
        wait_s: Mapping[str, float] | None = None,
        poke_interval: float = 60.0,
        **kwargs: Any,
    ) -> None:
        self.wait_s = dict(DEFAULT_WAIT_S, **(wait_s or {}))
        kwargs.setdefault("soft_fail", True)
        super().__init__(poke_interval=poke_interval, timeout=max(self.wait_s.values()) + 300, **kwargs)
        self.data_root = data_root
        self.runner = runner
        self.dataset_folder = dataset_folder

    def _window(self, context: Any) -> tuple[datetime, datetime, str]:
        """The run's cut-off, the end of its waiting window, and its run type."""
        dag_run = context["dag_run"]
        kind = str(getattr(dag_run.run_type, "value", dag_run.run_type) or "manual")
        cutoff = drops.cutoff_for_run(
            run_type=dag_run.run_type,
            data_interval_end=dag_run.data_interval_end,
            run_after=dag_run.run_after,
        )
        window = float(self.wait_s.get(kind, self.wait_s["manual"]))
        return cutoff, cutoff + timedelta(seconds=window), kind

    def _nightly_check(self, context: Any) -> tuple[dict | None, str | None]:
        """What is not new for a scheduled / asset-triggered run: the last scheduled run's drop (XCom)
        and every drop with a dataset version on disk (also those of manual and REST runs)."""
        run_type = context["dag_run"].run_type
        if not drops.needs_new_drop(run_type):
            return None, None
        previous = None
        if str(getattr(run_type, "value", run_type)) == "scheduled":
            previous = context["ti"].xcom_pull(task_ids=self.task_id, include_prior_dates=True)
        return (previous if isinstance(previous, dict) else None), f"{self.data_root}/datasets"

    def _source(self, context: Any, *, limit: datetime) -> tuple[dict | None, dict | None, str | None]:
        previous, datasets_dir = self._nightly_check(context)
        folder = None if is_none(self.dataset_folder) else self.dataset_folder
        found = drops.resolve_source(
            data_root=self.data_root,
            cutoff=limit,
            run_id=context["dag_run"].run_id,
            dataset_folder=folder,
            previous=previous,
            datasets_dir=datasets_dir,
        )
        if found and self.runner != "local" and not drops.is_inside(found["folder"], self.data_root):
            raise ValueError(
                f"{found['folder']}: outside the data root {self.data_root}; the {self.runner} runner only "
                "mounts the data root. Copy the folder under it (e.g. incoming/<name>/) and point "
                "dataset_folder there."
            )
        return found, previous, datasets_dir

    def poke(self, context: Any) -> bool:
        _, until, _ = self._window(context)
        return self._source(context, limit=min(datetime.now(UTC), until))[0] is not None

    def execute(self, context: Any) -> dict | None:
        cutoff, until, kind = self._window(context)
        now = datetime.now(UTC)
        found, previous, datasets_dir = self._source(context, limit=min(now, until))
        if found is not None:
            return found
        reason = waiting_reason(data_root=self.data_root, cutoff=cutoff, previous=previous)
        if until <= now:
            self._skip(
                f"{reason}; this {kind} run's waiting window ended at {until.isoformat()}: skipping it"
            )
        self.log.info("%s; waiting in the triggerer until %s (%s run)", reason, until.isoformat(), kind)
        trigger = DropTrigger(
            data_root=self.data_root,
            cutoff=cutoff.isoformat(),
            run_id=context["dag_run"].run_id,
            timeout_at=until.isoformat(),
            previous=previous,
            poke_interval=self.poke_interval,
            datasets_dir=datasets_dir,
        )
        # the trigger ends the wait; the defer timeout is only a backstop
        self.defer(
            trigger=trigger, method_name="execute_complete", timeout=until - now + timedelta(minutes=5)
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict:
        if event.get("status") == "found":
            return event["result"]
        self._skip(event.get("message", "no drop before the end of the waiting window"))

    def _skip(self, message: str) -> NoReturn:
        """Log the reason, then skip: Airflow 3.3 logs only "Skipping task.", not the exception's text."""
        self.log.warning(message)
        raise AirflowSkipException(message)
