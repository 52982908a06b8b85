"""The release tests: MLflow off unless a test turns it on (each tracked report or promote costs ~5 s
of sqlite store set-up); the tracking tests pass their own store with --tracking-uri."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _mlflow_off(monkeypatch) -> None:
    monkeypatch.setenv("EDGETPU_MLFLOW_URI", "off")
