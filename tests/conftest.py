"""Shared fixtures: a real bccd subset in tests/fixtures/, and the full shared datasets when present.

`bccd_dir` is tests/fixtures/bccd_subset (45 BCCD images with their VOC XML, MIT license beside them),
so the suite runs on a fresh clone. The full datasets sit beside the checkout in
`../shared/datasets/{bccd,microcontroller}` (or `EDGETPU_SHARED_DATASETS`); tests that need them skip
with a one-line reason when they are absent, except under `CI=true`, where a missing dataset fails.
They are read-only: copy before writing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from testdata import (  # noqa: E402,F401  (re-exported for fixtures below)
    FIXTURES,
    REPO,
    SHARED_DATASETS,
    SHARED_EDGETPU,
    copy_labelimg_folder,
    require_shared,
)

# The session-wide tiny trained model, SavedModel and .tflite (tests/export, tests/evaluate).
from tiny_models import loaded_saved_model, micro_snapshot, tiny_run, tiny_tflite  # noqa: E402,F401

# The session-wide tiny pipeline run, every step's verb (tests/release, tests/live).
from tiny_pipeline import tiny_pipeline_run  # noqa: E402,F401


@pytest.fixture
def mlflow_off(monkeypatch) -> None:
    """No MLflow tracking in promote/report (a tracked call costs ~5 s of sqlite store set-up); the
    tracking tests pass their own store."""
    monkeypatch.setenv("EDGETPU_MLFLOW_URI", "off")


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """45 real BCCD images + XML (includes the zero-area boxes of 00338/00343 and other-tool XML)."""
    return FIXTURES / "bccd_subset"


@pytest.fixture(scope="session")
def bccd_full_dir() -> Path:
    return require_shared(SHARED_DATASETS / "bccd", "the full bccd dataset (364 images)")


@pytest.fixture(scope="session")
def microcontroller_dir() -> Path:
    return require_shared(SHARED_DATASETS / "microcontroller", "the microcontroller dataset")


@pytest.fixture(scope="session")
def edgetpu_reference_dir() -> Path:
    logs = require_shared(
        SHARED_EDGETPU / "compiler-logs", "the sample Edge TPU compiler logs, beside datasets/"
    )
    return logs.parent
