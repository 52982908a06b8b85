"""MLflow tracking: one MLflow run per Airflow DAG run, and the Model Registry for promoted models.

Who calls what: `promote` registers a promoted model (`register_promoted`: the int8 .tflite as the run's
`model/` artifact, a registered model named after the dataset, the version tagged with our registry
version `models/<name>/versions/NNNN`, alias `current`); `report`, the last step, logs everything else
(`log_report`: params = the rendered config flattened, the per-step training series of metrics.jsonl,
float/int8 mAP, mAP@.5, per-class AP, latency, op coverage and the pre-flight verdict, and the config,
report.html/md/json, model card and .tflite files as artifacts). Both find the MLflow run by the tag
`airflow_run_id` (created by whichever comes first), so a re-run adds to the same run.

Where: `--tracking-uri`, else env EDGETPU_MLFLOW_URI, else `sqlite:///<data root>/mlflow/mlflow.db` with
artifacts in `<data root>/mlflow/artifacts` (the Model Registry works without a server). `off` turns
tracking off. Look at the runs with `mlflow ui --backend-store-uri sqlite:///<data root>/mlflow/mlflow.db`.

MLflow problems (unreachable server, bad URI, a store error) never fail a step: one warning line, and
the step goes on (HTTP retries are capped so an unreachable server costs seconds, not minutes).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgetpu_retrain.release.metrics import is_number
from edgetpu_retrain.release.report.collect import RunReport

log = logging.getLogger(__name__)

ENV_URI = "EDGETPU_MLFLOW_URI"
EXPERIMENT = "edgetpu-retrain"
RUN_TAG = "airflow_run_id"
OFF = {"off", "none", "false", "0", "disabled"}
SERIES = ("loss", "box_loss", "cls_loss", "lr", "images_per_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking URI (default: env {ENV_URI}, else sqlite under the data root; "
        "'off' = no tracking)",
    )
    parser.add_argument(
        "--airflow-run-id",
        default=None,
        help="Airflow run id tagged on the MLflow run (default: env AIRFLOW_CTX_DAG_RUN_ID, "
        "else the run folder's name)",
    )


def never_fails(fn: Callable[..., Any]) -> Callable[..., Any]:
    """MLflow is a side channel: any error becomes one warning line and a None result."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a pipeline step
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            log.warning("MLflow tracking skipped (%s: %s); the step goes on", type(exc).__name__, first)
            return None

    return wrapper


# ---------------------------------------------------------------------------------------- settings
def data_root(run_dir: Path) -> Path:
    """EDGETPU_DATA_ROOT, else the root above runs/<run_id>."""
    env = os.environ.get("EDGETPU_DATA_ROOT")
    if env:
        return Path(env).resolve()
    run_dir = Path(run_dir).resolve()
    return run_dir.parent.parent if run_dir.parent.name == "runs" else run_dir


def resolve_uri(uri: str | None, run_dir: Path) -> tuple[str, str | None] | None:
    """(tracking URI, artifact location for a new experiment) or None when tracking is off.

    A tracking server keeps its own artifact store (None); a database URI gets a folder on disk (never
    MLflow's default ./mlruns in whatever the working directory is): beside a sqlite file, else under
    <data root>/mlflow/artifacts."""
    uri = (uri if uri not in (None, "") else os.environ.get(ENV_URI, "")).strip()
    if uri.lower() in OFF:
        return None
    root = data_root(run_dir) / "mlflow"
    if not uri:
        root.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https", "databricks", "databricks-uc", "uc", "file", ""):
        return uri, None
    if scheme == "sqlite" and uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return uri, (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return uri, (root / "artifacts").as_uri()


def airflow_run_id(value: str | None, run_dir: Path) -> str:
    return value or os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or Path(run_dir).name


def client(uri: str):
    # cap HTTP retries (MLflow's default backs off for minutes); a user's own setting wins
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    for name in ("mlflow", "alembic"):  # MLflow sets its loggers to INFO on import: keep stderr to warnings
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def find_run(mlf: Any, *, artifact_location: str | None, run_tag: str, run_name: str) -> str:
    """The MLflow run id tagged with this Airflow run id, created (with its experiment) if needed."""
    exp = mlf.get_experiment_by_name(EXPERIMENT)
    exp_id = (
        exp.experiment_id if exp else mlf.create_experiment(EXPERIMENT, artifact_location=artifact_location)
    )
    quoted = run_tag.replace("\\", "\\\\").replace("'", "\\'")
    found = mlf.search_runs(
        [exp_id],
        filter_string=f"tags.{RUN_TAG} = '{quoted}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    return mlf.create_run(exp_id, run_name=run_name, tags={RUN_TAG: run_tag}).info.run_id


def open_run(uri: str | None, run_dir: Path, run_id: str | None) -> tuple[Any, str, str] | None:
    """(client, MLflow run id, tracking URI) or None when tracking is off."""
    where = resolve_uri(uri, run_dir)
    if where is None:
        return None
    mlf = client(where[0])
    return (
        mlf,
        find_run(
            mlf,
            artifact_location=where[1],
            run_tag=airflow_run_id(run_id, run_dir),
            run_name=Path(run_dir).name,
        ),
        where[0],
    )


# ---------------------------------------------------------------------------------------- helpers
def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"model.input_size": "320", ...}, values as MLflow param strings."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for key in sorted(obj, key=str):
            out.update(flatten(obj[key], f"{prefix}{key}." if prefix or key else ""))
        return out
    return {prefix.rstrip("."): str(obj)[:6000]} if prefix else {}


def metric_key(*parts: str) -> str:
    """An MLflow-safe metric name (letters, digits, _ - . / and spaces)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", p) for p in parts)


def final_metrics(steps: dict[str, Any]) -> dict[str, float]:
    """The run's summary figures from the report's normalized steps."""
    out: dict[str, float] = {}
    for kind in ("float", "int8"):
        e = steps.get(f"evaluate-{kind}") or {}
        if e.get("status") != "done":
            continue
        for key in ("map", "map50", "latency_ms"):
            if is_number(e.get(key)):
                out[metric_key(kind, key)] = float(e[key])
        for name, c in sorted((e.get("per_class") or {}).items()):
            for key in ("ap", "ap50"):
                if is_number((c or {}).get(key)) and c[key] >= 0:
                    out[metric_key(kind, key, name)] = float(c[key])
    t = steps.get("edgetpu") or {}
    if t.get("status") == "done":
        if isinstance(t.get("preflight_ok"), bool):
            out["edgetpu/preflight_ok"] = 1.0 if t["preflight_ok"] else 0.0
        for key in ("tpu", "cpu", "total", "tpu_percent"):
            if is_number((t.get("op_coverage") or {}).get(key)):
                out[metric_key("edgetpu", f"ops_{key}" if key != "tpu_percent" else key)] = float(
                    t["op_coverage"][key]
                )
    return out


def _batch(mlf: Any, run_id: str, *, metrics: Sequence[Any] = (), params: Sequence[Any] = ()) -> None:
    for i in range(0, max(len(metrics), len(params)), 100):  # MLflow's per-call limits
        mlf.log_batch(
            run_id,
            metrics=metrics[i : i + 100] if i < len(metrics) else [],
            params=params[i : i + 100] if i < len(params) else [],
        )


def log_series(mlf: Any, run_id: str, rows: list[dict[str, Any]]) -> int:
    """metrics.jsonl rows as train/<key> series; rows already logged (re-run) are skipped."""
    from mlflow.entities import Metric

    done = {m.step for m in mlf.get_metric_history(run_id, "train/loss")}
    now = int(time.time() * 1000)
    new = [
        Metric(f"train/{k}", float(r[k]), now, int(r["step"]))
        for r in rows
        if r["step"] not in done
        for k in SERIES
        if is_number(r.get(k))
    ]
    _batch(mlf, run_id, metrics=new)
    return len(new)


# ------------------------------------------------------------------------------------ report step
def _config_params(config_path: Any) -> dict[str, str]:
    if not isinstance(config_path, str) or not Path(config_path).is_file():
        return {}
    import yaml

    return flatten(yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {})


def _params(mlf: Any, run_id: str, params: dict[str, str]) -> None:
    """New params only: MLflow refuses to change a logged param (a re-run logs the same config)."""
    from mlflow.entities import Param

    have = mlf.get_run(run_id).data.params
    _batch(mlf, run_id, params=[Param(k, v) for k, v in sorted(params.items()) if k not in have])


def _artifacts(steps: dict[str, Any], html: Path | None, out_dir: Path) -> list[tuple[Path, str]]:
    """(file, artifact folder) pairs that exist: config, report files, model card, .tflite models."""
    files: list[tuple[Any, str]] = [((steps.get("config") or {}).get("config"), "config")]
    files += [(html, "report")] + [(out_dir / n, "report") for n in ("report.md", "report.json")]
    card = (steps.get("promote") or {}).get("model_dir")
    if card:
        files += [(Path(card) / n, "model_card") for n in ("model_card.json", "model_card.md")]
    for name, model in sorted(((steps.get("tflite") or {}).get("models") or {}).items()):
        if "int8" in name:
            files.append((model.get("path"), "tflite"))
    files.append(((steps.get("edgetpu") or {}).get("compiled"), "tflite"))
    return [(Path(f), d) for f, d in files if isinstance(f, (str, Path)) and str(f) and Path(f).is_file()]


def _verdict(ok: Any) -> str:
    return "passed" if ok is True else "failed" if ok is False else "not run"


@never_fails
def log_report(
    report: RunReport,
    *,
    out_dir: Path,
    html: Path | None,
    uri: str | None = None,
    run_id: str | None = None,
    metrics_rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """Everything the report knows, into the DAG run's MLflow run; returns {tracking_uri, mlflow_run_id}."""
    steps, run_dir = report.steps, Path(report.run_dir)
    opened = open_run(uri, run_dir, run_id)
    if opened is None:
        return None
    mlf, mlflow_run, where = opened
    from mlflow.entities import Metric, RunTag

    _params(mlf, mlflow_run, _config_params((steps.get("config") or {}).get("config")))
    series = log_series(mlf, mlflow_run, metrics_rows or [])
    now = int(time.time() * 1000)
    _batch(mlf, mlflow_run, metrics=[Metric(k, v, now, 0) for k, v in sorted(final_metrics(steps).items())])
    edgetpu, promote = steps.get("edgetpu") or {}, steps.get("promote") or {}
    tags = {
        "run_dir": str(run_dir),
        "summary": report.summary[:5000],
        "dataset": str((steps.get("dataset") or {}).get("snapshot") or ""),
        "edgetpu.preflight": _verdict(edgetpu.get("preflight_ok")),
        "promoted": str(promote.get("promoted")) if promote.get("status") == "done" else "not run",
    }
    mlf.log_batch(mlflow_run, tags=[RunTag(k, v) for k, v in sorted(tags.items())])
    for path, folder in _artifacts(steps, html, Path(out_dir)):
        mlf.log_artifact(mlflow_run, str(path), artifact_path=folder)
    stopped = any(s.get("status") != "done" for s in steps.values())
    mlf.set_terminated(mlflow_run, status="FAILED" if stopped else "FINISHED")
    log.info("MLflow: run %s in %s (%d series points)", mlflow_run, where, series)
    return {"tracking_uri": where, "mlflow_run_id": mlflow_run}


# ----------------------------------------------------------------------------------- promote step
def _existing_version(mlf: Any, name: str, registry_version: str) -> Any:
    for mv in mlf.search_model_versions(f"name = '{name}'"):
        if (mv.tags or {}).get("registry_version") == registry_version:
            return mv
    return None


@never_fails
def register_promoted(
    decision: dict[str, Any],
    *,
    tflite: Path,
    run_dir: Path,
    uri: str | None = None,
    run_id: str | None = None,
    compiled: str | None = None,
) -> dict[str, Any] | None:
    """A promoted model -> Model Registry `<name>`, version tagged registry_version=NNNN, alias `current`."""
    if not decision.get("promoted") or not decision.get("version"):
        return None
    opened = open_run(uri, run_dir, run_id)
    if opened is None:
        return None
    mlf, mlflow_run, where = opened
    name, version = str(decision["name"]), str(decision["version"])
    mv = _existing_version(mlf, name, version)
    if mv is None:
        for path in (tflite, compiled):
            if path and Path(path).is_file():
                mlf.log_artifact(mlflow_run, str(path), artifact_path="model")
        try:
            mlf.get_registered_model(name)
        except Exception:  # noqa: BLE001 - not registered yet (RestException RESOURCE_DOES_NOT_EXIST)
            mlf.create_registered_model(name, description="Edge TPU SSD detector promoted by edgetpu-retrain")
        source = f"{mlf.get_run(mlflow_run).info.artifact_uri}/model"
        mv = mlf.create_model_version(
            name,
            source,
            run_id=mlflow_run,
            tags={
                "registry_version": version,
                "registry_dir": str(decision.get("model_dir") or ""),
                "metric": str(decision.get("metric")),
                "value": str(decision.get("new")),
            },
        )
    mlf.set_registered_model_alias(name, "current", mv.version)
    mlf.set_tag(mlflow_run, "registry_version", version)
    log.info("MLflow: %s version %s = registry version %s (%s)", name, mv.version, version, where)
    return {
        "tracking_uri": where,
        "mlflow_run_id": mlflow_run,
        "registered_model": name,
        "registered_version": str(mv.version),
    }
