"""Headless Debian Chromium driven by playwright (never `playwright install`: the system browser).

`chromium_page(url_base, artifacts)` yields a logged-out page; `login`, `open_trigger_form` and
`shot` are the steps of the UI tests, with the selectors the Airflow 3.3 UI uses.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def have_chromium() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists()


@contextlib.contextmanager
def chromium_page(*, viewport=(1400, 1000)) -> Iterator:
    """A fresh browser (new user-data-dir, removed after) and one page."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="edgetpu-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(30_000)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def shot(page, artifacts: Path, name: str, *, full_page: bool = False) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


SUBMIT = "[data-testid=trigger-dag-submit]"  # the trigger dialog's Trigger button


def login(page, base: str, *, username: str, password: str) -> None:
    """The SimpleAuthManager login form (/auth/login), then the UI home."""
    page.goto(f"{base}/auth/login?next=%2F")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")  # "Sign in": enabled once both fields are filled
    page.wait_for_url(f"{base}/")


def open_trigger_form(page, base: str, dag_id: str) -> None:
    """The DAG page's Trigger button (aria-label "Trigger Dag") opens the dialog with the param form."""
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger Dag").click()
    page.get_by_role("dialog").wait_for()
    page.locator("#element_dataset_name").wait_for()  # the form is rendered


def text_field(page, param: str):
    """A string param's input: id `element_<param>` (its `required` attribute = shown starred)."""
    return page.locator(f"#element_{param}")


def number_field(page, param: str):
    """An integer/number param's input: the spin button the `element_<param>` +/- buttons control."""
    target = page.locator(f'[id="number-input:element_{param}:inc"]').get_attribute("aria-controls")
    return page.locator(f'[id="{target}"]')
