"""plugins/report_viewer.py inside Airflow's real API server app (create_app), with its real auth manager.

The app is built the way `airflow api-server` builds it (plugins folder = this repository's plugins/,
the default SimpleAuthManager, JWTs signed with a test secret), and called with FastAPI's TestClient:
no credentials -> 401, a forged or role-less token -> 403, `..` / absolute / symlinked paths -> 404,
a report file -> 200 with the no-network CSP. The browser test of the extra link is a live test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

from airflow_env import use_private_airflow_home

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "plugins"))  # `import report_viewer`, as Airflow's plugin loader does
use_private_airflow_home()  # before anything imports Airflow
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = "edgetpu-retrain-plugin-test-secret-" + "x" * 40  # >= 64 bytes

import pytest

RUN = "manual__2026-12-01T12_00_00_00_00"
PREFIX = "/edgetpu-reports"


def _clear_plugin_caches() -> None:
    from airflow import plugins_manager

    for fn in (
        plugins_manager._get_plugins,
        plugins_manager.get_fastapi_plugins,
        plugins_manager._get_extra_operators_links_plugins,
    ):
        fn.cache_clear()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """runs/<RUN>/report/ with a report, a symlink inside it (allowed) and ones leaving it (not)."""
    root = tmp_path_factory.mktemp("data")
    report = root / "runs" / RUN / "report"
    report.mkdir(parents=True)
    (report / "report.html").write_text("<!DOCTYPE html><p>report</p>")
    (report / "report.md").write_text("# report\n")
    (report / "alias.md").symlink_to(report / "report.md")
    (root / "runs" / RUN / "config.yaml").write_text("secret: not a report file\n")
    (root / "secret.txt").write_text("outside the runs tree\n")
    (report / "escape.txt").symlink_to(root / "secret.txt")
    (report / "up.yaml").symlink_to(root / "runs" / RUN / "config.yaml")
    outside = root / "elsewhere" / "report"
    outside.mkdir(parents=True)
    (outside / "report.html").write_text("<p>not under runs/</p>")
    (root / "runs" / "linked").mkdir()
    (root / "runs" / "linked" / "report").symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def api(data_root):
    """(TestClient of Airflow's API app with the plugin mounted, auth manager)."""
    from airflow import settings
    from airflow.utils import db

    db.initdb()
    os.environ["EDGETPU_DATA_ROOT"] = str(data_root)
    # Airflow reads the plugins folder once, when first imported (maybe by an earlier test module)
    folder, settings.PLUGINS_FOLDER = settings.PLUGINS_FOLDER, str(REPO / "plugins")
    _clear_plugin_caches()
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    purge_cached_app()
    app = create_app(apps="core")
    from airflow.api_fastapi.app import get_auth_manager

    yield TestClient(app), get_auth_manager()
    purge_cached_app()
    settings.PLUGINS_FOLDER = folder
    _clear_plugin_caches()
    os.environ.pop("EDGETPU_DATA_ROOT", None)


def token(auth_manager, role: str | None = "viewer") -> str:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return auth_manager.generate_jwt(SimpleAuthManagerUser(username="labeler", role=role))


def get(client, path: str, tok: str | None = None, *, cookie: bool = False):
    headers = {"Authorization": f"Bearer {tok}"} if tok and not cookie else {}
    client.cookies.clear()
    if tok and cookie:
        client.cookies.set("_token", tok)  # the cookie the Airflow UI keeps after login
    return client.get(f"{PREFIX}{path}", headers=headers)


def test_the_plugin_is_mounted_and_needs_a_logged_in_user(api) -> None:
    client, am = api
    good = f"/runs/{RUN}/report/report.html"
    assert get(client, good).status_code == 401  # no credentials at all
    assert get(client, good, "not-a-jwt").status_code == 403
    forged = token(am).rsplit(".", 1)[0] + ".c2lnbmF0dXJl"  # signature changed
    assert get(client, good, forged).status_code == 403
    assert get(client, good, token(am, role=None)).status_code == 403  # logged in, no permission
    # traversal attempts without credentials are refused before the path is looked at
    assert get(client, f"/runs/{RUN}/report/%2e%2e/config.yaml").status_code == 401


@pytest.mark.parametrize("cookie", [False, True], ids=["bearer", "cookie"])
def test_a_report_file_is_served_with_a_no_network_policy(api, cookie) -> None:
    client, am = api
    r = get(client, f"/runs/{RUN}/report/report.html", token(am), cookie=cookie)
    assert r.status_code == 200, r.text
    assert r.text == "<!DOCTYPE html><p>report</p>"
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert get(client, f"/runs/{RUN}/report/alias.md", token(am)).text == "# report\n"  # symlink inside: ok


@pytest.mark.parametrize(
    "path",
    [
        f"/runs/{RUN}/report/%2e%2e/config.yaml",  # .. out of report/
        f"/runs/{RUN}/report/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        f"/runs/{RUN}/report/..%2Fconfig.yaml",
        "/runs/%2e%2e/report/secret.txt",
        f"/runs/{RUN}/report/%2Fetc%2Fpasswd",  # absolute path
        f"/runs/{RUN}/report//etc/passwd",
        f"/runs/{RUN}/report/escape.txt",  # symlink leaving the tree
        f"/runs/{RUN}/report/up.yaml",  # symlink to the run folder, outside report/
        "/runs/linked/report/report.html",  # symlinked report folder
        f"/runs/{RUN}/report/missing.html",
        f"/runs/{RUN}/report/",  # a folder, not a file
        f"/runs/{RUN}/config.yaml",  # not under report/
        "/secret.txt",
    ],
)
def test_paths_outside_a_report_folder_get_404(api, data_root, path) -> None:
    client, am = api
    r = get(client, path, token(am))
    assert r.status_code == 404, (path, r.status_code, r.text)
    if path.startswith(f"/runs/{RUN}/report/") and path != f"/runs/{RUN}/report/":
        assert r.json()["detail"] == "no such report file"  # refused by the plugin's check, not unrouted


def test_the_path_check_itself(data_root) -> None:
    from report_viewer import report_file

    report = data_root / "runs" / RUN / "report"
    assert (report / ".." / "config.yaml").is_file()  # a naive join would serve it
    for rel in (
        "../config.yaml",
        "../../../secret.txt",
        "/etc/passwd",
        "escape.txt",
        "up.yaml",
        "a//b",
        "",
        ".",
        "..\\config.yaml",
    ):
        assert report_file(data_root, RUN, rel) is None, rel
    assert report_file(data_root, "..", "secret.txt") is None
    assert report_file(data_root, "linked", "report.html") is None
    assert report_file(data_root, RUN, "report.html") == (report / "report.html").resolve()
    assert report_file(data_root, RUN, "alias.md") == (report / "report.md").resolve()


def test_the_extra_link_points_at_the_runs_report(api, data_root) -> None:
    from airflow import plugins_manager
    from airflow.models.taskinstancekey import TaskInstanceKey

    links = [link for link in plugins_manager.get_global_operator_extra_links() if link.name == "Run report"]
    assert len(links) == 1
    link = links[0]

    def url(task_id: str, run_id: str = "manual__2026-12-01T12:00:00+00:00", dag_id: str = "edgetpu_retrain"):
        return link.get_link(
            SimpleNamespace(task_id=task_id), ti_key=TaskInstanceKey(dag_id, task_id, run_id, 1)
        )

    assert url("report") == f"{PREFIX}/runs/{RUN}/report/report.html"
    assert url("promote") == url("report")
    assert url("train") == "" and url("report", dag_id="other_dag") == ""
    assert url("report", run_id="manual__no-report-yet") == ""  # disabled until the report exists
    client, am = api
    assert get(client, url("report").removeprefix(PREFIX), token(am)).status_code == 200
