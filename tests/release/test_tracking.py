"""MLflow tracking on the tiny pipeline run with a real local store (sqlite + artifact folder), read back
with MlflowClient; and MLflow failures (unreachable server, bad URI) that must not fail the step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from tiny_pipeline import RUN_ID, TRAIN_SETS, promote_args

from edgetpu_retrain.cli import main


@pytest.fixture(autouse=True)
def _mlflow_default(monkeypatch, tmp_path) -> None:
    """Tracking on (the release conftest turns it off) and any new experiment under tmp_path."""
    monkeypatch.delenv("EDGETPU_MLFLOW_URI", raising=False)
    monkeypatch.setenv("EDGETPU_DATA_ROOT", str(tmp_path))


def cli(capsys, *args: str) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def report_args(run: Path, out: Path, *flags: str) -> list[str]:
    return ["report", "--run-dir", str(run), "--out", str(out), *flags]


def test_promote_registers_and_report_logs_into_one_run(tiny_pipeline_run, tmp_path, capsys) -> None:
    from mlflow import MlflowClient

    run_dir, uri = tiny_pipeline_run, store(tmp_path)
    flags = ["--tracking-uri", uri, "--airflow-run-id", RUN_ID]
    promoted = cli(capsys, *promote_args(run_dir, tmp_path / "models"), *flags)
    assert promoted["promoted"] and promoted["version"] == "0001"
    assert promoted["mlflow"]["registered_model"] == "shapes"
    rep = cli(capsys, *report_args(run_dir, tmp_path / "report", *flags))
    assert rep["mlflow"]["mlflow_run_id"] == promoted["mlflow"]["mlflow_run_id"]  # found again by its tag

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("edgetpu-retrain")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.airflow_run_id = '{RUN_ID}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.input_size"] == str(TRAIN_SETS["model.input_size"])
    assert run.data.params["train.steps"] == str(TRAIN_SETS["train.steps"])
    int8 = json.loads((run_dir / "eval_int8.json").read_text())
    flt = json.loads((run_dir / "eval_float.json").read_text())
    assert run.data.metrics["int8/map50"] == pytest.approx(int8["map50"])
    assert run.data.metrics["float/map"] == pytest.approx(flt["map"])
    assert run.data.metrics["int8/latency_ms"] == pytest.approx(int8["latency_ms"])
    for name, c in int8["per_class"].items():
        if c["ap50"] is not None:
            assert run.data.metrics[f"int8/ap50/{name}"] == pytest.approx(c["ap50"])
    assert run.data.metrics["edgetpu/preflight_ok"] == 1.0 and run.data.metrics["edgetpu/ops_tpu"] > 0
    assert run.data.tags["edgetpu.preflight"] == "passed" and run.data.tags["registry_version"] == "0001"

    rows = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "box_loss", "cls_loss", "lr", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, f"train/{key}")
        assert sorted((m.step, m.value) for m in history) == [
            (r["step"], pytest.approx(r[key])) for r in rows
        ]

    folders = ("config", "report", "tflite", "model", "model_card")
    artifacts = {f.path for folder in folders for f in client.list_artifacts(run.info.run_id, folder)}
    expected = {
        "config/config.yaml", "report/report.html", "report/report.md", "report/report.json",
        "tflite/model_int8.tflite", "model/model_int8.tflite", "model_card/model_card.json",
    }  # fmt: skip
    assert expected <= artifacts
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())  # beside the sqlite file
    assert not (Path.cwd() / "mlruns").exists()  # never MLflow's default folder in the working directory
    local = Path(client.download_artifacts(run.info.run_id, "report/report.html", str(tmp_path / "dl")))
    assert local.read_bytes() == (tmp_path / "report" / "report.html").read_bytes()

    (version,) = client.search_model_versions("name = 'shapes'")
    assert version.tags["registry_version"] == "0001" and version.run_id == run.info.run_id
    assert version.tags["registry_dir"] == promoted["model_dir"]
    assert client.get_model_version_by_alias("shapes", "current").version == version.version

    # a re-run of report and promote adds nothing twice
    cli(capsys, *report_args(run_dir, tmp_path / "report", *flags))
    again = cli(capsys, *promote_args(run_dir, tmp_path / "models"), *flags)
    assert again["version"] == "0001" and again["mlflow"]["registered_version"] == str(version.version)
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == len(rows)
    assert len(client.search_model_versions("name = 'shapes'")) == 1


def test_default_store_is_sqlite_under_the_data_root(tiny_pipeline_run, tmp_path, capsys) -> None:
    rep = cli(capsys, *report_args(tiny_pipeline_run, tmp_path / "report"))
    assert rep["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert list((tmp_path / "mlflow" / "artifacts").rglob("report.html"))


def test_env_var_and_off(tiny_pipeline_run, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("EDGETPU_MLFLOW_URI", store(tmp_path / "env"))
    rep = cli(capsys, *report_args(tiny_pipeline_run, tmp_path / "a"))
    assert rep["mlflow"]["tracking_uri"] == store(tmp_path / "env")
    monkeypatch.setenv("EDGETPU_MLFLOW_URI", "off")
    assert cli(capsys, *report_args(tiny_pipeline_run, tmp_path / "b"))["mlflow"] is None
    assert not (tmp_path / "mlflow").exists()


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:9", "bogus-scheme://nowhere/x", "sqlite:////proc/no-such-dir/m.db"],
    ids=["unreachable", "bad-scheme", "unwritable-sqlite"],
)
def test_mlflow_errors_never_fail_a_step(tiny_pipeline_run, tmp_path, capsys, caplog, uri) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="edgetpu_retrain.release.tracking"):
        flags = ["--tracking-uri", uri]
        rep = cli(capsys, *report_args(tiny_pipeline_run, tmp_path / "report", *flags))
        promoted = cli(capsys, *promote_args(tiny_pipeline_run, tmp_path / "models"), *flags)
    assert rep["mlflow"] is None and Path(rep["report_html"]).is_file()
    assert promoted["promoted"] and promoted["mlflow"] is None
    warnings = [r for r in caplog.records if r.name == "edgetpu_retrain.release.tracking"]
    assert len(warnings) == 2 and all("MLflow tracking skipped" in r.getMessage() for r in warnings)
    assert all("\n" not in r.getMessage() for r in warnings)  # one line each
    assert time.monotonic() - started < 120  # HTTP retries capped (MLflow's default backs off for minutes)
