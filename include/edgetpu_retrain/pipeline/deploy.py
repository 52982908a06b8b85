"""Publishing a promoted model to a deployment folder, atomically (the `deploy_model` DAG's step).

Layout: `<deploy dir>/<name>/releases/<version>/` (model_int8.tflite, the compiled
`*_edgetpu.tflite` when present, labels.txt, model_card.md/.json) and `<deploy dir>/<name>/current`, a
relative symlink to the release. A release folder is written beside its final name and renamed in;
`current` is switched by `os.replace` of a new symlink over the old one, so a device syncing the folder
sees the old release or the new one, never a mix. Re-publishing a version rewrites the same bytes.
Standard library only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, atomic_dir
from edgetpu_retrain.pipeline.drops import path_safe

SHIPPED = ("labels.txt", "model_card.md", "model_card.json")
CURRENT = "current"


def shipped(model_dir: Path) -> list[Path]:
    """The files of a registry version that a device needs: every .tflite, the labels, the card."""
    files = sorted(model_dir.glob("*.tflite")) + [model_dir / n for n in SHIPPED if (model_dir / n).is_file()]
    if not any(f.name.endswith(".tflite") for f in files):
        raise UserError(f"{model_dir}: no .tflite model in the promoted version; re-run promote")
    return files


def publish(*, model_dir: str | os.PathLike[str], name: str, version: str, deploy_dir: str) -> dict[str, Any]:
    """Copy the version's files into releases/<version>/ and point `current` at it."""
    source = Path(model_dir)
    target = Path(deploy_dir) / path_safe(name)
    release = target / "releases" / path_safe(version)
    files = shipped(source)
    with atomic_dir(release) as tmp:
        for f in files:
            shutil.copy2(f, tmp / f.name)
    link = target / CURRENT
    staging = target / f".{CURRENT}.tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(Path("releases") / release.name)
    os.replace(staging, link)  # atomic switch: readers follow the old or the new release
    return {
        "release": str(release),
        "current": str(link),
        "files": [f.name for f in files],
        "version": version,
    }
