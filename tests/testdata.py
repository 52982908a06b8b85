"""Paths and helpers the tests (and benchmarks) import by name.

They live here, not in conftest.py: pytest imports every conftest.py as the module `conftest`, so with
a second conftest (tests/live/) `from conftest import ...` would find whichever was imported last.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATASETS = Path(os.environ.get("EDGETPU_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SHARED_EDGETPU = SHARED_DATASETS.parent / "edgetpu"
# A 6-step run on a tiny input: fast enough for a whole-DAG test, not meant to be accurate.
TINY_RUN_OVERRIDES = {
    "model.input_size": 96,
    "model.backbone_weights": None,
    "train.steps": 6,
    "train.batch_size": 4,
    "train.warmup_steps": 1,
}
# --set items the training tests share: a tiny random-init model on a small input pipeline. Each test
# adds its own learning rate, warm-up, schedule and checkpoint settings.
TINY_TRAIN_SETS = [
    "model.input_size=96",
    "model.alpha=0.25",
    "model.backbone_weights=null",
    "train.batch_size=2",
    "train.optimizer=adam",
    "train.log_every=1",
    "train.shuffle_buffer=16",
    "train.max_boxes=8",
]


def require_shared(path: Path, what: str) -> Path:
    """`path` if it exists; else skip (fail under CI=true) naming what is missing."""
    if path.exists():
        return path
    message = f"{path} missing: {what} (EDGETPU_SHARED_DATASETS names the shared datasets folder)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def copy_labelimg_folder(
    src: Path, dst: Path, *, names: list[str] | None = None, first: int | None = None
) -> Path:
    """Copy a dataset (images/ + annotations/) into LabelImg's layout (XML beside each image) under `dst`:
    all images, those whose stem is in `names`, or the `first` N stems in sorted order."""
    dst.mkdir(parents=True, exist_ok=True)
    images = sorted((src / "images").iterdir())
    if first is not None:
        names = sorted(p.stem for p in images)[:first]
    if names is not None:
        wanted = set(names)
        images = [p for p in images if p.stem in wanted]
    for image in images:
        shutil.copy2(image, dst / image.name)
        xml = src / "annotations" / f"{image.stem}.xml"
        if xml.exists():
            shutil.copy2(xml, dst / xml.name)
    return dst


def train_only_snapshot(images: Path, work: Path, *, shards: int | None = None) -> Path:
    """`validate` + `build-dataset` (everything in train, one worker) with the real verbs -> work/ds."""
    from edgetpu_retrain import cli

    assert cli.main(["validate", "--images", str(images), "--out", str(work / "validated")]) == 0
    argv = ["build-dataset", "--validated", str(work / "validated"), "--out", str(work / "ds")]
    argv += ["--split", "1,0,0", "--workers", "1"]
    if shards is not None:
        argv += ["--shards", str(shards)]
    assert cli.main(argv) == 0
    return work / "ds"
