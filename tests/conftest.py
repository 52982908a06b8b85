"""Shared fixtures: a real bccd subset in tests/fixtures/, and the full shared datasets when present.

`bccd_dir` is tests/fixtures/bccd_subset (20 BCCD images with their VOC XML, MIT license beside them),
so the suite runs on a fresh clone. The full datasets sit beside the checkout in
`../shared/datasets/{bccd,microcontroller}` (or `EDGETPU_SHARED_DATASETS`); tests that need them skip
with a one-line reason when they are absent, except under `CI=true`, where a missing dataset fails.
They are read-only: copy before writing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATASETS = Path(os.environ.get("EDGETPU_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_EDGETPU = SHARED_DATASETS.parent / "edgetpu"

# The session-wide tiny trained model, SavedModel and .tflite (tests/export, tests/evaluate).
from tiny_models import loaded_saved_model, micro_snapshot, tiny_run, tiny_tflite  # noqa: E402,F401

# The session-wide tiny pipeline run, every step's verb (tests/release, tests/live).
from tiny_pipeline import tiny_pipeline_run  # noqa: E402,F401


@pytest.fixture
def mlflow_off(monkeypatch) -> None:
    """No MLflow tracking in promote/report (a tracked call costs ~5 s of sqlite store set-up); the
    tracking tests pass their own store."""
    monkeypatch.setenv("EDGETPU_MLFLOW_URI", "off")


def require_shared(path: Path, what: str) -> Path:
    """`path` if it exists; else skip (fail under CI=true) naming what is missing."""
    if path.exists():
        return path
    message = f"{path} missing: {what} (EDGETPU_SHARED_DATASETS names the shared datasets folder)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """20 real BCCD images + XML (includes the zero-area boxes of 00338/00343 and other-tool XML)."""
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


def copy_labelimg_folder(src: Path, dst: Path, *, names: list[str] | None = None) -> Path:
    """Copy a dataset (images/ + annotations/) into LabelImg's layout (XML beside each image) under `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    images = sorted((src / "images").iterdir())
    if names is not None:
        wanted = set(names)
        images = [p for p in images if p.stem in wanted]
    for image in images:
        shutil.copy2(image, dst / image.name)
        xml = src / "annotations" / f"{image.stem}.xml"
        if xml.exists():
            shutil.copy2(xml, dst / xml.name)
    return dst
