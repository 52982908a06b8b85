"""Waiting windows from the environment, the on-disk "already ingested" check, and the deployment publish."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow_env import use_private_airflow_home

use_private_airflow_home()  # before anything imports Airflow

from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.pipeline import drops  # noqa: E402
from edgetpu_retrain.pipeline.deploy import publish  # noqa: E402
from edgetpu_retrain.pipeline.sensor import DEFAULT_WAIT_S, wait_windows  # noqa: E402


def test_wait_windows_override_the_defaults() -> None:
    assert wait_windows("") == DEFAULT_WAIT_S
    assert (
        wait_windows("scheduled=20, manual=0")["scheduled"] == 20 and wait_windows("manual=0")["manual"] == 0
    )


@pytest.mark.parametrize("text", ["nightly=5", "scheduled=-1", "scheduled=soon", "scheduled"])
def test_bad_wait_windows_name_the_variable(text: str) -> None:
    with pytest.raises(UserError, match="EDGETPU_DROP_WAIT_SECONDS"):
        wait_windows(text)


def test_a_drop_with_a_dataset_built_after_its_marker_is_not_new(tmp_path: Path) -> None:
    drop = tmp_path / "incoming" / "d1"
    drop.mkdir(parents=True)
    (drop / "READY").write_text("")
    past = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    os.utime(drop / "READY", (past, past))
    found = drops.resolve_source(data_root=tmp_path, cutoff=datetime.now(UTC), run_id="r")
    assert found and not drops.built_from(found, datasets_dir=tmp_path / "datasets")
    (tmp_path / "datasets" / "any-name" / "d1").mkdir(parents=True)  # built by some run, any dataset name
    assert drops.built_from(found, datasets_dir=tmp_path / "datasets")
    again = drops.resolve_source(
        data_root=tmp_path, cutoff=datetime.now(UTC), run_id="r", datasets_dir=str(tmp_path / "datasets")
    )
    assert again is None
    future = (datetime.now(UTC) + timedelta(hours=1)).timestamp()
    os.utime(drop / "READY", (future, future))  # re-marked after the build: new again
    fresh = drops.resolve_source(
        data_root=tmp_path, cutoff=datetime.now(UTC) + timedelta(hours=2), run_id="r",
        datasets_dir=str(tmp_path / "datasets"),
    )  # fmt: skip
    assert fresh is not None and fresh["drop_id"] == "d1"


def test_publish_writes_a_release_and_switches_current(tmp_path: Path) -> None:
    version = tmp_path / "models" / "shapes" / "versions" / "0001"
    version.mkdir(parents=True)
    for name, text in (("model_int8.tflite", "int8"), ("labels.txt", "0 a\n"), ("model_card.md", "# card")):
        (version / name).write_text(text)
    deploy = tmp_path / "deploy"
    first = publish(model_dir=version, name="shapes", version="0001", deploy_dir=str(deploy))
    assert os.readlink(deploy / "shapes" / "current") == "releases/0001"
    assert (deploy / "shapes" / "current" / "model_int8.tflite").read_text() == "int8"
    assert first["files"] == ["model_int8.tflite", "labels.txt", "model_card.md"]
    (version / "model_int8_edgetpu.tflite").write_text("compiled")
    publish(model_dir=version, name="shapes", version="0002", deploy_dir=str(deploy))
    assert os.readlink(deploy / "shapes" / "current") == "releases/0002"
    assert (deploy / "shapes" / "current" / "model_int8_edgetpu.tflite").is_file()
    assert (deploy / "shapes" / "releases" / "0001" / "model_int8.tflite").is_file()  # old release kept


def test_publish_without_a_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no .tflite"):
        publish(model_dir=tmp_path, name="x", version="0001", deploy_dir=str(tmp_path / "deploy"))
