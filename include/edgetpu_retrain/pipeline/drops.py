"""Labeled drops under `<data root>/incoming/`: which ones are ready, and which one a DAG run uses.

A drop is a LabelImg folder `incoming/<drop_id>/` (images + VOC XML beside them). The labeler (or the
sync job) writes an empty `READY` file LAST; the marker's modification time is the moment the drop
became ready. A run only sees drops whose marker is strictly older than its cut-off:

- scheduled and backfill runs: the end of the run's data interval, so re-running or back-filling a
  past date picks the same drop it picked (or would have picked) that night;
- manual / API runs (no logical date in Airflow 3): the run's `run_after`.

The sensor (`sensor.DropSensor`) waits a short window after the cut-off and moves the limit along:
a drop ready before `min(now, cut-off + window)` counts, so a re-run of a date still picks its drop.

Among the ready drops the newest marker wins (ties: the larger drop id). A scheduled (nightly) or
asset-triggered run waits for a NEWLY labeled drop: the drop the previous run trained on (same id,
same marker time) or one whose dataset version was already built after its marker (`built_from`, on
disk: also sees REST runs) does not count again, so nights without new labels end skipped instead of
retraining the same data.
Backfill and manual runs always take the newest ready drop, so a past date is reproduced and a click
retrains. Standard library only: the sensor and the triggers call these functions at run time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

READY_MARKER = "READY"
INCOMING = "incoming"

# Airflow run types whose cut-off is the data interval end (the values of DagRunType).
INTERVAL_RUN_TYPES = frozenset({"scheduled", "backfill"})

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Drop:
    drop_id: str
    path: Path
    ready_at: datetime  # UTC, from the READY marker's mtime

    def as_result(self, *, cutoff: datetime | None) -> dict[str, Any]:
        return {
            "source": "incoming",
            "folder": str(self.path),
            "drop_id": self.drop_id,
            "version": path_safe(self.drop_id),
            "ready_at": self.ready_at.isoformat(),
            "cutoff": cutoff.isoformat() if cutoff else None,
        }


def path_safe(text: str) -> str:
    """A file-name-safe form of a run id or drop id.

    `manual__2026-01-01T00:00:00+00:00` -> `manual__2026-01-01T00_00_00_00_00`.
    """
    safe = _UNSAFE.sub("_", str(text)).strip("._")
    if not safe:
        raise ValueError(f"{text!r} has no file-name-safe characters")
    return safe


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} is a naive datetime; pass an aware (UTC) datetime")
    return moment.astimezone(UTC)


def find_ready_drops(incoming: str | os.PathLike[str], cutoff: datetime | None = None) -> list[Drop]:
    """Drops under `incoming` with a READY marker strictly older than `cutoff` (all if None), oldest first.

    Hidden or temporary folders (`.name`, `_name`) are ignored, so a sync tool that writes into
    `.tmp-xyz/` and renames is never picked half-way. A missing `incoming` folder means no drops.
    """
    incoming = Path(incoming)
    if not incoming.is_dir():
        return []
    limit = _utc(cutoff) if cutoff is not None else None
    drops: list[Drop] = []
    for child in incoming.iterdir():
        if child.name.startswith((".", "_")) or not child.is_dir():
            continue
        marker = child / READY_MARKER
        try:
            mtime = marker.stat().st_mtime
        except FileNotFoundError:
            continue
        if not marker.is_file():
            continue
        ready_at = datetime.fromtimestamp(mtime, tz=UTC)
        if limit is not None and ready_at >= limit:
            continue
        drops.append(Drop(drop_id=child.name, path=child.resolve(), ready_at=ready_at))
    drops.sort(key=lambda d: (d.ready_at, d.drop_id))
    return drops


def pick_drop(drops: list[Drop]) -> Drop | None:
    """The drop a run trains on: the newest marker, ties broken by the larger drop id."""
    if not drops:
        return None
    return max(drops, key=lambda d: (d.ready_at, d.drop_id))


def cutoff_for_run(
    *,
    run_type: str | None,
    data_interval_end: datetime | None,
    run_after: datetime | None,
    now: datetime | None = None,
) -> datetime:
    """The moment a run's drops must be ready by.

    Scheduled/backfill runs use the data interval end; manual and API runs (which may have no
    logical date or data interval in Airflow 3) use `run_after`; `now` is the last resort.
    """
    kind = str(getattr(run_type, "value", run_type) or "").lower()
    if kind in INTERVAL_RUN_TYPES and data_interval_end is not None:
        return _utc(data_interval_end)
    if run_after is not None:
        return _utc(run_after)
    if data_interval_end is not None:
        return _utc(data_interval_end)
    return _utc(now or datetime.now(UTC))


def folder_result(folder: str | os.PathLike[str], *, source: str, version: str) -> dict[str, Any]:
    """The sensor's result for a folder given directly (the `dataset_folder` param)."""
    path = Path(folder).expanduser()
    return {
        "source": source,
        "folder": str(path.resolve()),
        "drop_id": None,
        "version": path_safe(version),
        "ready_at": None,
        "cutoff": None,
    }


def is_inside(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """True if `path` is `root` or below it (after resolving symlinks)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


def needs_new_drop(run_type: str | None) -> bool:
    """Scheduled and asset-triggered runs insist on a drop no run trained on (see module docstring)."""
    return str(getattr(run_type, "value", run_type) or "").lower() in ("scheduled", "asset_triggered")


def same_drop(found: dict[str, Any] | None, previous: dict[str, Any] | None) -> bool:
    """True if `found` is the drop of `previous` (a prior run's sensor result), marker time included.

    Re-touching READY (or replacing the folder and writing READY again) makes the drop new again.
    """
    if not found or not isinstance(previous, dict) or found.get("source") != "incoming":
        return False
    return (previous.get("drop_id"), previous.get("ready_at")) == (
        found.get("drop_id"),
        found.get("ready_at"),
    )


def built_from(found: dict[str, Any] | None, *, datasets_dir: str | os.PathLike[str]) -> bool:
    """True if a dataset version of `found` (a drop) was already built after its READY marker.

    The duplicate check on disk: `<datasets_dir>/<any name>/<version>/` newer than the marker means
    some run (scheduled, manual or REST, whose XCom a scheduled run cannot see) already ingested it.
    """
    if not found or found.get("source") != "incoming" or not found.get("ready_at"):
        return False
    ready_at = datetime.fromisoformat(found["ready_at"])
    for built in Path(datasets_dir).glob(f"*/{found['version']}"):
        if built.is_dir() and datetime.fromtimestamp(built.stat().st_mtime, tz=UTC) >= ready_at:
            return True
    return False


def resolve_source(
    *,
    data_root: str | os.PathLike[str],
    cutoff: datetime,
    run_id: str,
    dataset_folder: str | None = None,
    previous: dict[str, Any] | None = None,
    datasets_dir: str | None = None,
) -> dict[str, Any] | None:
    """What a run trains on, or None (keep waiting).

    1. `dataset_folder` (the user's own LabelImg folder): used as is; the dataset version is the run.
    2. else the newest drop under `<data_root>/incoming/` ready before `cutoff`; the version is the
       drop id. (Images fetched by the download step are unlabeled: they reach a run only after
       someone labels them and drops them into incoming/ with a READY marker.)
    3. `previous` (scheduled runs: the last run's sensor result) or a dataset version of the drop
       already built under `datasets_dir` (scheduled and asset-triggered runs): not new, keep waiting.
    """
    if dataset_folder:
        path = Path(dataset_folder).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path}: dataset_folder is not a folder; point it at a LabelImg folder (images + XML) "
                "that the workers can read (inside the data root for the docker/kubernetes runners)"
            )
        return folder_result(path, source="dataset_folder", version=run_id)
    drop = pick_drop(find_ready_drops(Path(data_root) / INCOMING, cutoff))
    found = drop.as_result(cutoff=cutoff) if drop else None
    if same_drop(found, previous):
        return None
    return None if datasets_dir and built_from(found, datasets_dir=datasets_dir) else found
