"""The pipeline's Airflow Assets: new drops (watched), dataset versions, promoted models.

- `drops_asset`: `<data root>/incoming`, watched by `triggers.NewDropTrigger` in the triggerer: a new
  READY drop starts a retraining run within a poll interval (run type `asset_triggered`).
- `dataset_asset`: an outlet of build_dataset; each event's extra is the step's result (dataset_dir,
  manifest, label_map, counts).
- `model_asset`: an outlet of the `model_asset` task after promote, which emits an event only when a
  model was promoted (version, model_dir, the gate metric); `deploy_model` is scheduled on it.
Each name carries the data root: Airflow keeps one active Asset per name, so a fixed name with a
data-root-dependent URI would leave the second data root's Asset inactive (tasks fail on it) wherever
two roots meet one Airflow database (a moved data root, a test suite).
Imported by the DAG files at parse time: nothing heavy.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetWatcher, task

from edgetpu_retrain.pipeline.triggers import NewDropTrigger

MODEL_EXTRA = ("name", "version", "model_dir", "model_card", "metric", "new", "current", "compiled", "reason")


def drops_asset(*, data_root: str, poll_s: float) -> Asset:
    watcher = AssetWatcher(
        name="edgetpu_incoming", trigger=NewDropTrigger(data_root=data_root, poke_interval=poll_s)
    )
    return Asset(name=f"edgetpu_drops:{data_root}", uri=f"file://{data_root}/incoming", watchers=[watcher])


def dataset_asset(data_root: str) -> Asset:
    return Asset(name=f"edgetpu_dataset:{data_root}", uri=f"file://{data_root}/datasets")


def model_asset(data_root: str) -> Asset:
    return Asset(name=f"edgetpu_model:{data_root}", uri=f"file://{data_root}/models")


def model_asset_task(asset: Asset) -> Any:
    """The task after promote that emits the model Asset event (skipped when nothing was promoted)."""

    @task(task_id="model_asset", outlets=[asset])
    def emit(decision: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
        """A skipped task emits no event: deployment runs only for a newly promoted model."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not isinstance(decision, dict) or not decision.get("promoted"):
            reason = decision.get("reason") if isinstance(decision, dict) else "no promote result"
            print(f"no model promoted ({reason}): no model Asset event")
            raise AirflowSkipException(f"no model promoted: {reason}")
        extra = {key: decision.get(key) for key in MODEL_EXTRA}
        outlet_events[asset].extra = extra
        print(f"model Asset event: {extra}")
        return extra

    return emit
