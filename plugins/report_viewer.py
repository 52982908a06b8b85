"""Airflow plugin: each run's report.html in the Airflow UI, for logged-in users only.

* A FastAPI app mounted by the API server at /edgetpu-reports serves files under
  `<EDGETPU_DATA_ROOT>/runs/<run>/report/` and nothing else: `..`, absolute paths, symlinks that leave
  that report folder and anything that is not a regular file get 404. Every request needs the API
  server's authentication (the UI's `_token` cookie or an `Authorization: Bearer` JWT, checked by
  Airflow's own `get_user`) and read access to the DAG's runs: without it 401/403, before any path
  is looked at.
* An extra link "Run report" on the `report` and `promote` tasks of the edgetpu_retrain DAG opens
  that run's report.html (greyed out until the report exists).

Served with a strict Content-Security-Policy (no network at all: the report is self-contained).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse

URL_PREFIX = "/edgetpu-reports"
DAG_ID = "edgetpu_retrain"
LINK_TASKS = ("report", "promote")
DEFAULT_DATA_ROOT = "/data/edgetpu"  # the runners' default (RunnerSettings.data_root)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def data_root() -> Path:
    return Path(os.environ.get("EDGETPU_DATA_ROOT") or DEFAULT_DATA_ROOT)


def run_folder_name(run_id: str) -> str:
    """runs/<name> of an Airflow run id (the DAG names run folders with drops.path_safe)."""
    from edgetpu_retrain.pipeline.drops import path_safe

    return path_safe(run_id)


def report_file(root: Path, run: str, rel: str) -> Path | None:
    """The file `runs/<run>/report/<rel>` under root, or None when the request must get 404."""
    parts = rel.replace("\\", "/").split("/")
    if (
        not run
        or run in (".", "..")
        or "/" in run
        or "\\" in run
        or rel.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or "\x00" in rel + run
    ):
        return None
    runs = root.resolve() / "runs"
    base = runs / run / "report"
    try:
        real_base = base.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    # the report folder itself must be runs/<run>/report (no symlinked run or report folder), and the
    # file must stay inside it after every symlink is followed
    if real_base != runs.resolve() / run / "report" or not target.is_relative_to(real_base):
        return None
    return target if target.is_file() else None


async def require_reader(request: Request) -> Any:
    """A logged-in Airflow user allowed to read this DAG's runs (401 without credentials, 403 otherwise)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user

    user = await get_user(request, None, await bearer_scheme(request))
    if not get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=DAG_ID), user=user
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed to read this DAG's runs")
    return user


def create_app() -> FastAPI:
    app = FastAPI(title="edgetpu-retrain run reports", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/runs/{run}/report/{rel:path}", dependencies=[Depends(require_reader)])
    def report(run: str, rel: str) -> FileResponse:
        path = report_file(data_root(), run, rel)
        if path is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such report file")
        return FileResponse(path, headers=SECURITY_HEADERS)

    return app


class RunReportLink(BaseOperatorLink):
    """The "Run report" button of the report and promote tasks: that run's report.html."""

    name = "Run report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        if ti_key.dag_id != DAG_ID or operator.task_id not in LINK_TASKS:
            return ""
        run = run_folder_name(ti_key.run_id)
        if report_file(data_root(), run, "report.html") is None:
            return ""  # not written yet (or not visible to the API server): the button stays disabled
        from urllib.parse import urlsplit

        from airflow.configuration import conf

        # the path of the API server's base URL only: the link then opens on whatever host and port the
        # user reached the UI through (a proxy, a port forward), under the same sub-path
        base = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
        return f"{base}{URL_PREFIX}/runs/{run}/report/report.html"


class EdgeTpuReportPlugin(AirflowPlugin):
    name = "edgetpu_report_viewer"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "edgetpu-retrain run reports"}
    ]
    global_operator_extra_links: ClassVar[list[Any]] = [RunReportLink()]
