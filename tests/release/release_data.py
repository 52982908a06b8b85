"""Test data the gate and report tests share: per-class AP figures and a file writer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PER_CLASS = {
    "Platelets": {"ap": 0.31, "ap50": 0.62},
    "RBC": {"ap": 0.44, "ap50": 0.81},
    "WBC": {"ap": 0.63, "ap50": 0.97},
}


def write(path: Path, obj: Any) -> Path:
    """Write bytes or text as they are, anything else as JSON (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def bccd_manifest(*, seed: int, train_per_class: dict[str, int] | None = None) -> dict[str, Any]:
    """A dataset manifest.json of a 3-class BCCD snapshot (364 images: 291 / 36 / 37)."""
    train: dict[str, Any] = {"images": 291, "objects": 3890}
    if train_per_class is not None:
        train["per_class"] = train_per_class
    return {
        "version": 1,
        "label_map": "label_map.pbtxt",
        "num_classes": 3,
        "seed": seed,
        "split": [0.8, 0.1, 0.1],
        "classes": [{"id": 1, "name": "Platelets"}, {"id": 2, "name": "RBC"}, {"id": 3, "name": "WBC"}],
        "counts": {
            "train": train,
            "val": {"images": 36, "objects": 480},
            "test": {"images": 37, "objects": 500},
        },
        "created": "2026-11-24T02:00:00+00:00",
    }
