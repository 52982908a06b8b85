"""DropTrigger / NewDropTrigger run on their own (no triggerer): real drops in a temp data root.

The same classes run in a real triggerer in tests/live/test_live_proto.py; here their event logic
is checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

from edgetpu_retrain.pipeline import triggers  # noqa: E402


def make_drop(root: Path, name: str, ready_at: datetime) -> Path:
    folder = root / "incoming" / name
    folder.mkdir(parents=True)
    (folder / "READY").write_text("")
    os.utime(folder / "READY", (ready_at.timestamp(), ready_at.timestamp()))
    return folder


def first_event(trigger) -> dict:
    async def run():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(run(), 10))


def drop_trigger(root: Path, *, cutoff: datetime, until: datetime, previous=None) -> triggers.DropTrigger:
    return triggers.DropTrigger(
        data_root=str(root),
        cutoff=cutoff.isoformat(),
        run_id="manual__x",
        timeout_at=until.isoformat(),
        previous=previous,
        poke_interval=0.05,
    )


def test_found_event_carries_the_newest_drop_ready_inside_the_window(tmp_path) -> None:
    now = datetime.now(UTC)
    make_drop(tmp_path, "old", now - timedelta(hours=2))
    make_drop(tmp_path, "in-window", now - timedelta(minutes=5))  # after the cut-off, before the end
    payload = first_event(
        drop_trigger(tmp_path, cutoff=now - timedelta(hours=1), until=now + timedelta(hours=1))
    )
    assert payload["status"] == "found" and payload["result"]["drop_id"] == "in-window"


def test_timeout_event_names_the_cutoff_and_the_last_drop(tmp_path) -> None:
    now = datetime.now(UTC)
    make_drop(tmp_path, "used", now - timedelta(hours=3))
    previous = {"drop_id": "used", "ready_at": (now - timedelta(hours=3)).isoformat(), "source": "incoming"}
    cutoff = now - timedelta(hours=1)
    payload = first_event(
        drop_trigger(tmp_path, cutoff=cutoff, until=now + timedelta(seconds=0.2), previous=previous)
    )
    assert payload["status"] == "timeout"
    assert cutoff.isoformat() in payload["message"] and "the last run used used" in payload["message"]


def test_serialize_round_trips(tmp_path) -> None:
    now = datetime.now(UTC)
    trigger = drop_trigger(tmp_path, cutoff=now, until=now)
    path, kwargs = trigger.serialize()
    assert path == "edgetpu_retrain.pipeline.triggers.DropTrigger"
    assert triggers.DropTrigger(**kwargs).serialize() == (path, kwargs)
    assert triggers.NewDropTrigger(**triggers.NewDropTrigger(data_root="/d").serialize()[1]).data_root == "/d"


def test_new_drop_trigger_fires_for_new_drops_only(tmp_path) -> None:
    make_drop(tmp_path, "baseline", datetime.now(UTC) - timedelta(days=1))
    trigger = triggers.NewDropTrigger(data_root=str(tmp_path), poke_interval=0.05)

    async def run():
        stream = trigger.run()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        assert not first.done()  # the baseline drop is not an event
        make_drop(tmp_path, "fresh", datetime.now(UTC) - timedelta(seconds=1))
        return (await asyncio.wait_for(first, 5)).payload

    assert asyncio.run(run())["drop_id"] == "fresh"
