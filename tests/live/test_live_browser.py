"""The trigger form of the real DAG in a real browser (Debian chromium + playwright) on the live Airflow.

Log in, open the trigger form: every "empty = default" param is nullable, so nothing is starred as
required and Trigger is ENABLED with the defaults. Filled with a folder and a tiny training, the form
submits empty fields as null and the run succeeds. Screenshots go to tests/live/artifacts/
(EDGETPU_LIVE_ARTIFACTS); docs/images/ui-run-succeeded.png is one of them, shrunk.
"""

from __future__ import annotations

import time

import pytest
from airflow_server import USERS
from browser import (
    SUBMIT,
    chromium_page,
    have_chromium,
    login,
    number_field,
    open_trigger_form,
    shot,
    text_field,
)
from test_live_pipeline import DAG_ID, demo_folder

pytestmark = pytest.mark.skipif(not have_chromium(), reason="needs /usr/bin/chromium and playwright")
NULLABLE = ("dataset_folder", "manifest", "backbone_weights")


@pytest.fixture(scope="module")
def ui(live_airflow):
    api = live_airflow.api()
    api.wait_dag(DAG_ID)
    with chromium_page() as page:
        login(page, live_airflow.url, username="admin", password=USERS["admin"][1])
        yield live_airflow, api, page


def test_trigger_form_submits_defaults_plus_a_folder_and_the_run_succeeds(ui, artifacts) -> None:
    server, api, page = ui
    folder = demo_folder(server.data_root / "labelimg" / "ui-shapes")
    open_trigger_form(page, server.url, DAG_ID)
    shot(page, artifacts, "ui-form-top")
    assert all(text_field(page, name).get_attribute("required") is None for name in NULLABLE)
    assert page.locator(SUBMIT).is_enabled()  # submittable with every default (issue 8)
    posted = []
    page.on(
        "request",
        lambda r: (
            posted.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith(f"/dags/{DAG_ID}/dagRuns")
            else None
        ),
    )
    text_field(page, "dataset_folder").fill(str(folder))
    text_field(page, "split").fill("0.5,0.25,0.25")  # 24 images: keep val/test non-empty
    for name, value in (("input_size", "96"), ("steps", "6"), ("batch_size", "4")):
        number_field(page, name).fill(value)  # a tiny training; the rest stays at its default
    text_field(page, "backbone_weights").fill("none")  # random init: the test stays offline and fast
    page.locator(SUBMIT).scroll_into_view_if_needed()
    shot(page, artifacts, "ui-form-filled")
    page.locator(SUBMIT).click()
    page.get_by_text("Dag Run Triggered").first.wait_for()  # the toast (and its live-region copy)
    conf = posted[0]["conf"]
    assert conf["manifest"] is None and conf["learning_rate"] is None  # empty field -> null
    run_id = (
        posted
        and max((r for r in api.runs(DAG_ID) if r["run_type"] == "manual"), key=lambda r: r["run_after"])[
            "dag_run_id"
        ]
    )
    started = time.monotonic()
    done = api.wait_run(DAG_ID, run_id, timeout=900)
    states = api.task_states(DAG_ID, run_id)
    page.goto(f"{server.url}/dags/{DAG_ID}/runs/{run_id}")
    page.get_by_text(f"{len(states)} Task Instances").first.wait_for()
    time.sleep(2)  # let the grid settle
    shot(page, artifacts, "ui-run-succeeded")
    assert done["state"] == "success", states
    assert states["download"] == "skipped" and states["train"] == "success", states
    # default floor 0.1: the tiny model is not promoted, so no model Asset event (skipped, not failed)
    assert states["promote"] == "success" and states["model_asset"] == "skipped", states
    print(f"UI run {run_id}: {time.monotonic() - started:.0f} s from trigger to success")
