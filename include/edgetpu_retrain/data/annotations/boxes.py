"""The box and class-name policy for one image's VOC objects.

- Coordinates: parsed as floats and rounded with Python's round() (round half to even: 10.5 -> 10,
  11.5 -> 12); non-integers get an info issue. A coordinate outside the image by at most
  max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRAC * side) is clipped to the edge (warning); further out
  rejects the box. Boxes that are inverted (min > max) or have zero width/height after rounding and
  clipping are rejected. Rejected boxes are dropped from the image, which keeps its other boxes;
  if every box is rejected the image is rejected. xmax == width / ymax == height is valid.
- Class names must be in the label map; otherwise the box is rejected and the closest name is
  suggested (case/spacing-insensitive match first, then difflib).
- Same-class boxes with IoU > NEAR_DUPLICATE_IOU get a warning (both are kept).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgetpu_retrain.data.annotations.issues import ERROR, INFO, WARNING, Issue
from edgetpu_retrain.data.annotations.voc import VocObject

CLIP_TOLERANCE_PX = 2
CLIP_TOLERANCE_FRAC = 0.02
NEAR_DUPLICATE_IOU = 0.8

Coords = tuple[int, int, int, int]


@dataclass(frozen=True)
class Box:
    index: int
    name: str
    label: int
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    difficult: int = 0
    truncated: int = 0
    pose: str = "Unspecified"

    def record(self) -> dict[str, Any]:
        """The object record of accepted.json (docs/contracts.md)."""
        return {
            "class": self.name,
            "label": self.label,
            "xmin": self.xmin,
            "ymin": self.ymin,
            "xmax": self.xmax,
            "ymax": self.ymax,
            "difficult": self.difficult,
            "truncated": self.truncated,
            "pose": self.pose,
        }


def normalize_class(name: str) -> str:
    """Class name ignoring case, spaces, '_' and '-': names equal under this are the same class misspelled."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def suggest_class(name: str, known: list[str]) -> str | None:
    """Closest known class: same name ignoring case/spaces/_/-, else difflib's best match (>= 0.6)."""
    for k in sorted(known):
        if normalize_class(k) == normalize_class(name):
            return k
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return match[0] if match else None


def round_coord(value: float) -> int:
    """The documented rounding rule: Python round(), i.e. round half to even."""
    return int(round(value))


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a.xmax, b.xmax) - max(a.xmin, b.xmin))
    iy = max(0, min(a.ymax, b.ymax) - max(a.ymin, b.ymin))
    inter = ix * iy
    union = (a.xmax - a.xmin) * (a.ymax - a.ymin) + (b.xmax - b.xmin) * (b.ymax - b.ymin) - inter
    return inter / union if union > 0 else 0.0


def _numbers(obj: VocObject) -> list[float] | None:
    """The four coordinates as finite floats, or None when one is missing or not a number."""
    values: list[float] = []
    for raw in obj.coords:
        try:
            value = float((raw or "").strip())
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        values.append(value)
    return values


def _rounded(obj: VocObject) -> tuple[Coords | None, list[Issue]]:
    """Integer pixel coordinates (round half to even), or None with the error when unusable."""
    i, where = obj.index, f"object {obj.index}"
    values = _numbers(obj)
    if values is None or len(values) < 4:
        return None, [
            Issue(
                "box_bad_coordinates",
                ERROR,
                f"{where} ({obj.name}) has a missing or non-numeric coordinate {obj.coords}; box dropped",
                "redraw the box in LabelImg (bndbox needs numeric xmin, ymin, xmax, ymax)",
                i,
            )
        ]
    xmin, ymin, xmax, ymax = (round_coord(v) for v in values)
    rounded = (xmin, ymin, xmax, ymax)
    if all(v == r for v, r in zip(values, rounded, strict=False)):
        return rounded, []
    return rounded, [
        Issue(
            "float_coordinates",
            INFO,
            f"{where} ({obj.name}) has non-integer coordinates {obj.coords}; rounded half-to-even to "
            f"{rounded}",
            "nothing to do (pixel coordinates are rounded); export integer coordinates to silence this",
            i,
        )
    ]


def _fitted(
    obj: VocObject, box: Coords, *, width: int, height: int, tol: tuple[int, int]
) -> tuple[Coords | None, Issue | None]:
    """The box inside the image (clipped within the tolerance), or None with the error."""
    i, where = obj.index, f"object {obj.index}"
    xmin, ymin, xmax, ymax = box
    tol_x, tol_y = tol
    if xmin > xmax or ymin > ymax:
        return None, Issue(
            "box_inverted",
            ERROR,
            f"{where} ({obj.name}) is inverted (xmin,ymin,xmax,ymax = {xmin},{ymin},{xmax},{ymax}); "
            "box dropped",
            "redraw the box (min must be <= max), or swap the values in the XML",
            i,
        )
    if xmin < -tol_x or ymin < -tol_y or xmax > width + tol_x or ymax > height + tol_y:
        return None, Issue(
            "box_outside_image",
            ERROR,
            f"{where} ({obj.name}) ({xmin},{ymin},{xmax},{ymax}) lies outside the {width}x{height} image "
            f"by more than the clip tolerance ({tol_x}x{tol_y} px); box dropped",
            "redraw the box inside the image, or check that the XML belongs to this image",
            i,
        )
    clipped = (
        max(0, min(xmin, width)),
        max(0, min(ymin, height)),
        max(0, min(xmax, width)),
        max(0, min(ymax, height)),
    )
    if clipped == box:
        return box, None
    return clipped, Issue(
        "box_clipped",
        WARNING,
        f"{where} ({obj.name}) ({xmin},{ymin},{xmax},{ymax}) reaches past the {width}x{height} image edge; "
        f"clipped to {clipped}",
        "redraw the box inside the image to silence this",
        i,
    )


def _zero_area(obj: VocObject, box: Coords) -> Issue | None:
    xmin, ymin, xmax, ymax = box
    if xmin != xmax and ymin != ymax:
        return None
    return Issue(
        "box_zero_area",
        ERROR,
        f"object {obj.index} ({obj.name}) has zero area ({xmin},{ymin},{xmax},{ymax}); box dropped",
        "delete the stray box in LabelImg (a click without a drag) or redraw it",
        obj.index,
    )


def _unknown_class(obj: VocObject, known: list[str]) -> Issue:
    hint = suggest_class(obj.name, known)
    if hint and normalize_class(hint) == normalize_class(obj.name):
        fix = (
            f"did you mean {hint!r}? rename the class in LabelImg "
            "(names differing only in case/spacing are never added)"
        )
    elif hint:
        fix = (
            f"did you mean {hint!r}? rename the class in LabelImg, "
            "or run with --append-labels if it is a new class"
        )
    else:
        fix = "rename the class in LabelImg, or add it to the label map (--append-labels)"
    return Issue(
        "unknown_class",
        ERROR,
        f"object {obj.index} has class {obj.name!r}, which is not in the label map ({', '.join(known)}); "
        "box dropped",
        fix,
        obj.index,
    )


def _check_object(
    obj: VocObject, *, width: int, height: int, tol: tuple[int, int], label_ids: dict[str, int]
) -> tuple[Box | None, list[Issue]]:
    """One object through the policy, in order: class name, numbers, geometry, label map."""
    if not obj.name:
        missing = Issue(
            "box_missing_class",
            ERROR,
            f"object {obj.index} has no <name>; box dropped",
            "select the object in LabelImg and set its class",
            obj.index,
        )
        return None, [missing]
    rounded, issues = _rounded(obj)
    if rounded is None:
        return None, issues
    fitted, issue = _fitted(obj, rounded, width=width, height=height, tol=tol)
    issues += [issue] if issue is not None else []
    if fitted is None:
        return None, issues
    issue = _zero_area(obj, fitted)
    if issue is None and obj.name not in label_ids:
        issue = _unknown_class(obj, sorted(label_ids))
    if issue is not None:
        return None, [*issues, issue]
    box = Box(obj.index, obj.name, label_ids[obj.name], *fitted, obj.difficult, obj.truncated, obj.pose)
    return box, issues


def _near_duplicates(kept: Sequence[Box], near_duplicate_iou: float) -> list[Issue]:
    issues = []
    for a_pos, a in enumerate(kept):
        for b in kept[a_pos + 1 :]:
            if a.name != b.name:
                continue
            overlap = iou(a, b)
            if overlap > near_duplicate_iou:
                issues.append(
                    Issue(
                        "near_duplicate_boxes",
                        WARNING,
                        f"objects {a.index} and {b.index} ({a.name}) overlap with IoU {overlap:.2f} "
                        f"(> {near_duplicate_iou}); probably the same object labeled twice (both kept)",
                        f"delete one of the two boxes in LabelImg (object {b.index} is the later one)",
                        b.index,
                    )
                )
    return issues


def check_objects(
    objects: tuple[VocObject, ...] | list[VocObject],
    width: int,
    height: int,
    *,
    label_ids: dict[str, int],
    tolerance_px: int = CLIP_TOLERANCE_PX,
    tolerance_frac: float = CLIP_TOLERANCE_FRAC,
    near_duplicate_iou: float = NEAR_DUPLICATE_IOU,
) -> tuple[list[Box], list[Issue]]:
    """Apply the box policy (module doc) to one image's objects: (kept boxes, issues)."""
    kept: list[Box] = []
    issues: list[Issue] = []
    tol = (
        max(tolerance_px, math.ceil(tolerance_frac * width)),
        max(tolerance_px, math.ceil(tolerance_frac * height)),
    )
    for obj in objects:
        box, found = _check_object(obj, width=width, height=height, tol=tol, label_ids=label_ids)
        issues.extend(found)
        if box is not None:
            kept.append(box)
    return kept, issues + _near_duplicates(kept, near_duplicate_iou)
