"""Reading validate's output (accepted.json + label_map.pbtxt) for build-dataset, trusting nothing.

Every record is checked again (names unique, sizes positive, boxes integer pixels inside the image,
class/label pairs matching the label map, JPEG/PNG only), so a hand-edited accepted.json fails with
a message instead of writing a broken dataset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, read_json


def read_label_map(path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """[(id, name)] sorted by id, via labelmap.read_label_map (the one .pbtxt parser)."""
    from edgetpu_retrain.data.labelmap import read_label_map as _read

    return sorted((item.id, item.name) for item in _read(path))


def _read_accepted(vdir: Path) -> tuple[Path, dict[str, Any]]:
    accepted_path = vdir / "accepted.json"
    if not accepted_path.is_file():
        raise UserError(
            f"{accepted_path}: not found; run validate first (it writes accepted.json into its --out dir)"
        )
    accepted = read_json(accepted_path)
    if (
        not isinstance(accepted, dict)
        or accepted.get("version") != 1
        or not isinstance(accepted.get("images"), list)
    ):
        raise UserError(
            f"{accepted_path}: not an accepted.json version 1 with an 'images' list; run validate first"
        )
    return accepted_path, accepted


def _check_object(
    obj: Any, *, where: str, size: tuple[int, int], by_name: dict[str, int], label_map_name: str
) -> None:
    """One object record: a dict whose class/label match the label map and whose box fits the image."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: {obj!r} is not an object record; run validate first")
    cls: Any = obj.get("class")
    if by_name.get(cls) != obj.get("label"):
        raise UserError(
            f"{where}: class {cls!r} label {obj.get('label')!r} does not "
            f"match {label_map_name}; run validate first to rewrite both"
        )
    width, height = size
    box: list[Any] = [obj.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in box) or not (
        0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    ):
        raise UserError(
            f"{where}: box {box} is not integer pixels inside the "
            f"{width}x{height} image with min < max; run validate first to rewrite it"
        )


def _check_record(
    i: int, rec: Any, *, accepted_path: Path, by_name: dict[str, int], label_map_path: Path, seen: set[str]
) -> dict[str, Any]:
    """One image record, normalized (absolute path, format 'jpeg' | 'png'); adds its name to `seen`."""
    vdir = accepted_path.parent
    try:
        name = str(rec["filename"])
        width, height = int(rec["width"]), int(rec["height"])
        objects = list(rec.get("objects") or [])
        path = Path(rec["path"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{accepted_path}: image {i} lacks {exc}; run validate first to rewrite it") from exc
    if name in seen:
        raise UserError(f"{accepted_path}: file name {name!r} listed twice; run validate first to rewrite it")
    seen.add(name)
    if width <= 0 or height <= 0:
        raise UserError(f"{accepted_path}: {name}: bad size {width}x{height}; run validate first")
    if not path.is_absolute():
        path = vdir / path
    for j, obj in enumerate(objects):
        _check_object(
            obj,
            where=f"{accepted_path}: {name} object {j}",
            size=(width, height),
            by_name=by_name,
            label_map_name=label_map_path.name,
        )
    fmt = str(rec.get("format") or "jpeg").lower()
    if fmt not in ("jpeg", "jpg", "png"):
        raise UserError(f"{accepted_path}: {name}: format {fmt!r} is not jpeg or png; run validate first")
    return {
        **rec,
        "filename": name,
        "width": width,
        "height": height,
        "objects": objects,
        "path": str(path),
        "format": "jpeg" if fmt == "jpg" else fmt,
    }


def load_validated(
    validated_dir: str | os.PathLike[str],
) -> tuple[Path, list[dict], list[tuple[int, str]], Path]:
    """(validated dir, image records sorted by filename, label map items, label map path)."""
    vdir = Path(validated_dir)
    accepted_path, accepted = _read_accepted(vdir)
    label_map_path = vdir / str(accepted.get("label_map") or "label_map.pbtxt")
    if not label_map_path.is_file():
        raise UserError(
            f"{label_map_path}: label map not found; run validate first (it writes label_map.pbtxt)"
        )
    items = read_label_map(label_map_path)
    by_name = {name: idx for idx, name in items}
    images: list[dict] = []
    seen: set[str] = set()
    for i, rec in enumerate(accepted["images"]):
        images.append(
            _check_record(
                i, rec, accepted_path=accepted_path, by_name=by_name, label_map_path=label_map_path, seen=seen
            )
        )
    images.sort(key=lambda r: r["filename"])
    return vdir, images, items, label_map_path
