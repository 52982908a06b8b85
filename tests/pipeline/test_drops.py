"""drops.py: which labeled drops are ready by a cut-off, which one a run picks, and the run cut-off."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from edgetpu_retrain.pipeline import drops

T0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def make_drop(incoming: Path, name: str, ready_at: datetime | None) -> Path:
    folder = incoming / name
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"\xff\xd8")
    (folder / "a.xml").write_text("<annotation/>")
    if ready_at is not None:
        marker = folder / drops.READY_MARKER
        marker.write_text("")
        os.utime(marker, (ready_at.timestamp(), ready_at.timestamp()))
    return folder


def test_only_drops_with_a_marker_older_than_the_cutoff_count(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    make_drop(incoming, "2026-02-27", T0 - timedelta(days=2))
    make_drop(incoming, "2026-02-28", T0 - timedelta(hours=1))
    make_drop(incoming, "2026-03-01", T0)  # exactly at the cut-off: not "older than"
    make_drop(incoming, "late", T0 + timedelta(hours=3))
    make_drop(incoming, "unlabeled-yet", None)  # no READY marker
    make_drop(incoming, ".partial", T0 - timedelta(days=5))  # sync tool's temp folder
    make_drop(incoming, "_staging", T0 - timedelta(days=5))
    (incoming / "stray-file").write_text("x")

    ready = drops.find_ready_drops(incoming, T0)

    assert [d.drop_id for d in ready] == ["2026-02-27", "2026-02-28"]  # oldest first
    assert ready[-1].ready_at == T0 - timedelta(hours=1)
    assert ready[-1].path == (incoming / "2026-02-28").resolve()
    assert [d.drop_id for d in drops.find_ready_drops(incoming)] == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "late",
    ]


def test_marker_that_is_a_folder_is_not_ready(tmp_path: Path) -> None:
    folder = make_drop(tmp_path, "d", None)
    (folder / drops.READY_MARKER).mkdir()
    assert drops.find_ready_drops(tmp_path, T0) == []


def test_missing_incoming_folder_means_no_drops(tmp_path: Path) -> None:
    assert drops.find_ready_drops(tmp_path / "nope", T0) == []
    assert drops.pick_drop([]) is None


def test_pick_newest_marker_then_larger_id(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    make_drop(incoming, "b", T0 - timedelta(hours=2))
    make_drop(incoming, "a", T0 - timedelta(hours=1))
    assert drops.pick_drop(drops.find_ready_drops(incoming, T0)).drop_id == "a"
    make_drop(incoming, "c", T0 - timedelta(hours=1))  # same moment as "a": the larger id wins
    assert drops.pick_drop(drops.find_ready_drops(incoming, T0)).drop_id == "c"


def test_backfill_reproduces_each_dates_drop(tmp_path: Path) -> None:
    """Nightly drops: the run of each past date sees exactly the drop that was ready that night."""
    incoming = tmp_path / "incoming"
    for day in range(1, 5):
        make_drop(incoming, f"day{day}", T0 + timedelta(days=day, hours=-3))  # ready at 23:00 the day before
    picked = []
    for day in range(1, 5):
        cutoff = drops.cutoff_for_run(
            run_type="backfill", data_interval_end=T0 + timedelta(days=day), run_after=T0 + timedelta(days=30)
        )
        picked.append(drops.pick_drop(drops.find_ready_drops(incoming, cutoff)).drop_id)
    assert picked == ["day1", "day2", "day3", "day4"]


def test_cutoff_for_scheduled_manual_and_api_runs() -> None:
    end, after = T0, T0 + timedelta(hours=5)
    assert drops.cutoff_for_run(run_type="scheduled", data_interval_end=end, run_after=after) == end
    assert drops.cutoff_for_run(run_type="backfill", data_interval_end=end, run_after=after) == end
    # manual / API runs: Airflow 3 gives them no logical date (data interval may be None): run_after
    assert drops.cutoff_for_run(run_type="manual", data_interval_end=None, run_after=after) == after
    assert drops.cutoff_for_run(run_type="manual", data_interval_end=end, run_after=after) == after
    assert drops.cutoff_for_run(run_type="asset_triggered", data_interval_end=None, run_after=after) == after

    class RunType:  # DagRunType enum members expose .value
        value = "scheduled"

    assert drops.cutoff_for_run(run_type=RunType(), data_interval_end=end, run_after=after) == end
    now = T0 + timedelta(days=1)
    assert drops.cutoff_for_run(run_type=None, data_interval_end=None, run_after=None, now=now) == now
    other_tz = timezone(timedelta(hours=2))
    assert (
        drops.cutoff_for_run(
            run_type="manual", data_interval_end=None, run_after=after.astimezone(other_tz)
        ).tzinfo
        == UTC
    )
    with pytest.raises(ValueError, match="naive"):
        drops.cutoff_for_run(run_type="manual", data_interval_end=None, run_after=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("manual__2026-11-24T05:24:37.951683+00:00", "manual__2026-11-24T05_24_37.951683_00_00"),
        ("scheduled__2026-01-01T02:00:00+00:00", "scheduled__2026-01-01T02_00_00_00_00"),
        ("drop 7/ä", "drop_7"),
        ("ok-name_1.2", "ok-name_1.2"),
    ],
)
def test_path_safe(text: str, safe: str) -> None:
    assert drops.path_safe(text) == safe


def test_path_safe_rejects_nothing_left() -> None:
    with pytest.raises(ValueError):
        drops.path_safe("../")


def test_resolve_source_priority(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_drop(root / "incoming", "d1", T0 - timedelta(hours=1))
    own = tmp_path / "my-labelimg"
    own.mkdir()
    run_id = "manual__2026-03-01T02:00:00+00:00"

    got = drops.resolve_source(data_root=root, cutoff=T0, run_id=run_id, dataset_folder=str(own))
    assert got["source"] == "dataset_folder" and got["folder"] == str(own.resolve())
    assert got["version"] == "manual__2026-03-01T02_00_00_00_00"

    got = drops.resolve_source(data_root=root, cutoff=T0, run_id=run_id)
    assert got["source"] == "incoming" and got["drop_id"] == "d1" and got["version"] == "d1"
    assert got["cutoff"] == T0.isoformat()

    assert drops.resolve_source(data_root=root, cutoff=T0 - timedelta(days=1), run_id=run_id) is None
    with pytest.raises(FileNotFoundError, match="dataset_folder"):
        drops.resolve_source(
            data_root=root, cutoff=T0, run_id=run_id, dataset_folder=str(tmp_path / "missing")
        )


def test_scheduled_runs_wait_for_a_drop_the_last_run_did_not_use(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_drop(root / "incoming", "d1", T0 - timedelta(hours=1))
    last_night = drops.resolve_source(data_root=root, cutoff=T0, run_id="scheduled__1")
    assert drops.needs_new_drop("scheduled") and not drops.needs_new_drop("backfill")
    assert not drops.needs_new_drop("manual") and not drops.needs_new_drop(None)
    # the same drop (same marker time) is not new: keep waiting
    assert (
        drops.resolve_source(
            data_root=root, cutoff=T0 + timedelta(days=1), run_id="scheduled__2", previous=last_night
        )
        is None
    )
    # a newer drop, or the same folder marked READY again, is new
    make_drop(root / "incoming", "d2", T0 + timedelta(hours=3))
    got = drops.resolve_source(
        data_root=root, cutoff=T0 + timedelta(days=1), run_id="s3", previous=last_night
    )
    assert got["drop_id"] == "d2"
    assert not drops.same_drop(last_night, {**last_night, "ready_at": (T0 + timedelta(hours=5)).isoformat()})
    # a folder given by the user is always used
    own = tmp_path / "own"
    own.mkdir()
    assert drops.resolve_source(
        data_root=root, cutoff=T0, run_id="s4", dataset_folder=str(own), previous=last_night
    )


def test_is_inside(tmp_path: Path) -> None:
    assert drops.is_inside(tmp_path / "a" / "b", tmp_path)
    assert drops.is_inside(tmp_path, tmp_path)
    assert not drops.is_inside(tmp_path.parent, tmp_path)
    assert not drops.is_inside(tmp_path / ".." / "x", tmp_path)
