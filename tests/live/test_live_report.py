"""The run report in a REAL Airflow UI: the report task's extra link "Run report", opened in Debian's
Chromium (playwright), shows report.html with every image decoded; without a login the plugin says no.

Uses the session's live Airflow (conftest.live_airflow, with this repository's plugins/ folder). A run
whose report succeeded is reused (test_live_pipeline.py leaves one); without one, a tiny run is
triggered on a demo folder. Screenshots go to tests/live/artifacts/.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import pytest
from browser import chromium_page, have_chromium, login, shot
from test_live_pipeline import DAG_ID, TINY_CONF, demo_folder

from edgetpu_retrain.pipeline.drops import path_safe

LINK = "Run report"


@pytest.fixture(scope="module")
def api(live_airflow):
    client = live_airflow.api()
    client.wait_dag(DAG_ID)
    return client


@pytest.fixture(scope="module")
def reported_run(api, live_airflow) -> str:
    """The id of a run whose report task succeeded and wrote report.html."""

    def has_report(run: dict) -> bool:
        html = live_airflow.data_root / "runs" / path_safe(run["dag_run_id"]) / "report" / "report.html"
        return api.task_states(DAG_ID, run["dag_run_id"]).get("report") == "success" and html.is_file()

    done = [r for r in api.runs(DAG_ID, state="success") if has_report(r)]
    if done:
        return done[-1]["dag_run_id"]
    api.unpause(DAG_ID)
    folder = demo_folder(live_airflow.data_root / "labelimg" / "report-demo")
    run_id = api.trigger(DAG_ID, conf={**TINY_CONF, "dataset_folder": str(folder)})["dag_run_id"]
    finished = api.wait_run(DAG_ID, run_id, timeout=900)
    assert finished["state"] == "success", api.task_states(DAG_ID, run_id)
    api.wait_task(DAG_ID, run_id, "report", states={"success"}, timeout=300)  # a teardown: may end last
    assert has_report(finished), api.task_states(DAG_ID, run_id)
    return run_id


def link_url(api, run_id: str, task_id: str) -> str:
    found = api._json("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/links")
    url = found["extra_links"].get(LINK)
    assert url, f"{task_id}: no {LINK!r} URL in {found}"
    return url


def test_the_plugin_needs_a_login(api, live_airflow, reported_run) -> None:
    url = live_airflow.url + link_url(api, reported_run, "report")
    assert "/edgetpu-reports/runs/" in url
    assert httpx.get(url, timeout=30).status_code in (401, 403)  # no token, no cookie
    assert httpx.get(url, headers={"Authorization": "Bearer forged"}, timeout=30).status_code in (401, 403)
    assert api.http.get(url).status_code == 200  # the same URL with the admin's token
    outside = url.replace("/report/report.html", "/report/%2e%2e/config.yaml")
    assert api.http.get(outside).status_code == 404


def test_the_extra_link_opens_the_report_with_every_image(api, live_airflow, reported_run, artifacts) -> None:
    if not have_chromium():
        pytest.skip("Debian chromium or playwright missing (.ci/apt-packages.txt, requirements-dev.txt)")
    assert link_url(api, reported_run, "promote") == link_url(api, reported_run, "report")
    base = live_airflow.url
    with chromium_page() as page:
        response = page.goto(base + link_url(api, reported_run, "report"))
        assert response is not None and response.status in (401, 403)  # logged out: refused
        login(page, base, username="viewer", password="viewer-pass")
        # the task instance's Details tab lists its extra links
        page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(reported_run, safe='')}/tasks/report/details")
        button = page.get_by_role("link", name=LINK)
        try:
            button.first.wait_for(timeout=60_000)
        finally:
            shot(page, artifacts, "live-report-task", full_page=True)
        started = time.monotonic()
        button.first.click()  # a same-origin link: the UI opens it in the same tab
        page.wait_for_url("**/edgetpu-reports/runs/**", wait_until="load")
        report = page
        assert "/edgetpu-reports/runs/" in report.url and report.title().startswith("Run report")
        widths = report.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth)")
        shot(report, artifacts, "live-report-page", full_page=True)
        seconds = time.monotonic() - started
    assert len(widths) >= 10 and all(w and w > 0 for w in widths), widths
    print(f"report opened from the extra link in {seconds:.1f} s with {len(widths)} images")
