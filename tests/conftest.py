"""Shared fixtures: the real labeled datasets in ../shared/datasets (read-only; copy before writing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("EDGETPU_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_EDGETPU = SHARED_DATASETS.parent / "edgetpu"


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.fail(f"{path} missing: the shared datasets must sit beside the checkout (see README)")
    return path


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    return _shared_dataset("bccd")


@pytest.fixture(scope="session")
def microcontroller_dir() -> Path:
    return _shared_dataset("microcontroller")


@pytest.fixture(scope="session")
def edgetpu_reference_dir() -> Path:
    return SHARED_EDGETPU


def copy_labelimg_folder(src: Path, dst: Path, *, names: list[str] | None = None) -> Path:
    """Copy a shared dataset into LabelImg's layout (XML beside each image) under `dst`."""
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
