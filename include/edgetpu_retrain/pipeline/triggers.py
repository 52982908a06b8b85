"""The triggerer's side of waiting for drops: `DropTrigger` (the sensor's wait), `NewDropTrigger` (the Asset).

Waiting holds no worker slot: `sensor.DropSensor` defers to `DropTrigger`.

A run's waiting window starts at its cut-off (`drops.cutoff_for_run`: the data interval end, or the
trigger time of a manual run) and lasts `wait_s[run_type]`: the run trains on the newest drop ready
before `min(now, cut-off + window)`. So a nightly run at 02:00 with a 10 minute window also takes a
drop that became ready at 02:05, and re-running that date later still picks the same drop, while a
run whose window is already over (a backfill of a past date, a late-created scheduled run) checks
once and ends at once.

The sensor checks once on the worker: a `dataset_folder`, or a drop that is already ready, returns
at once; a bad folder fails there. Otherwise it defers: the task shows as `deferred`, the triggerer
polls `<data root>/incoming/` with the same rules (`drops.resolve_source`) and logs why it is still
waiting into the task's log. At the end of the window the trigger sends a `timeout` event and the
task ends `skipped` with that reason as its last log line; a drop that arrives in time resumes the
task with the drop as its XCom.

The triggerer imports `DropTrigger` by its class path (`serialize()`), so this module must be
importable by the triggerer's Python: the installed package (`pip install .`, the image) or
PYTHONPATH=include. It imports no TensorFlow and nothing heavy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from edgetpu_retrain.pipeline import drops

LOG_EVERY_S = 600.0  # while waiting, repeat the "why" line this often (and whenever it changes)


def waiting_reason(*, data_root: str, cutoff: datetime, previous: dict | None) -> str:
    """The one line that tells a user why a run is waiting (and, at the end, why it was skipped)."""
    last = f" (the last run used {previous.get('drop_id')})" if isinstance(previous, dict) else ""
    return f"no new drop in {data_root}/incoming/ with a READY marker older than {cutoff.isoformat()}{last}"


class DropTrigger(BaseTrigger):
    """Polls the data root until a drop is ready (event `found`) or `timeout_at` passes (`timeout`)."""

    def __init__(
        self,
        *,
        data_root: str,
        cutoff: str,
        run_id: str,
        timeout_at: str,
        previous: dict | None = None,
        poke_interval: float = 60.0,
        datasets_dir: str | None = None,
    ) -> None:
        """`cutoff` is the run's own (for the message); drops ready before `timeout_at` count."""
        super().__init__()
        self.data_root = data_root
        self.cutoff = cutoff
        self.run_id = run_id
        self.timeout_at = timeout_at
        self.previous = previous
        self.poke_interval = poke_interval
        self.datasets_dir = datasets_dir

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "data_root": self.data_root,
                "cutoff": self.cutoff,
                "run_id": self.run_id,
                "timeout_at": self.timeout_at,
                "previous": self.previous,
                "poke_interval": self.poke_interval,
                "datasets_dir": self.datasets_dir,
            },
        )

    def _check(self) -> dict | None:
        limit = min(datetime.now(UTC), datetime.fromisoformat(self.timeout_at))
        return drops.resolve_source(
            data_root=self.data_root,
            cutoff=limit,
            run_id=self.run_id,
            previous=self.previous,
            datasets_dir=self.datasets_dir,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        cutoff, deadline = datetime.fromisoformat(self.cutoff), datetime.fromisoformat(self.timeout_at)
        reason = waiting_reason(data_root=self.data_root, cutoff=cutoff, previous=self.previous)
        last_log = float("-inf")
        loop = asyncio.get_running_loop()
        while True:
            found = await asyncio.to_thread(self._check)  # a directory scan: keep the event loop free
            if found is not None:
                self.log.info("drop %s is ready (%s): resuming the task", found["drop_id"], found["folder"])
                yield TriggerEvent({"status": "found", "result": found})
                return
            now = datetime.now(UTC)
            if now >= deadline:
                message = f"{reason}; waited until {deadline.isoformat()}: skipping this run"
                self.log.info(message)
                yield TriggerEvent({"status": "timeout", "message": message})
                return
            if loop.time() - last_log >= LOG_EVERY_S:
                self.log.info("%s; waiting until %s", reason, deadline.isoformat())
                last_log = loop.time()
            await asyncio.sleep(min(self.poke_interval, (deadline - now).total_seconds()))


class NewDropTrigger(BaseEventTrigger):
    """Event-driven scheduling: one event per drop that becomes ready while the triggerer watches.

    Used as `Asset(..., watchers=[AssetWatcher(name=..., trigger=NewDropTrigger(...))])`; the event's
    payload (the drop, as the sensor returns it) lands in the Asset event's extra. Drops ready before
    the watch (re)started are the baseline, not events: a triggerer restart does not retrain old
    drops, and a drop that arrived while no triggerer ran is picked up by the nightly schedule.
    """

    def __init__(self, *, data_root: str, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.data_root = data_root
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"data_root": self.data_root, "poke_interval": self.poke_interval},
        )

    def _ready(self) -> list[drops.Drop]:
        return drops.find_ready_drops(f"{self.data_root}/{drops.INCOMING}", datetime.now(UTC))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        seen = {(d.drop_id, d.ready_at) for d in await asyncio.to_thread(self._ready)}
        self.log.info("watching %s/incoming/ (%d drops ready already)", self.data_root, len(seen))
        while True:
            await asyncio.sleep(self.poke_interval)
            ready = await asyncio.to_thread(self._ready)
            new = [d for d in ready if (d.drop_id, d.ready_at) not in seen]
            seen |= {(d.drop_id, d.ready_at) for d in ready}
            drop = drops.pick_drop(new)
            if drop is not None:
                self.log.info("new drop %s ready at %s", drop.drop_id, drop.ready_at.isoformat())
                yield TriggerEvent(drop.as_result(cutoff=None))
