"""validation_report.json (every entry with its issues, and a summary) and its text rendering."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain.data import labelmap as lm
from edgetpu_retrain.data.annotations import boxes as ab
from edgetpu_retrain.data.annotations import images as ai
from edgetpu_retrain.data.annotations import voc
from edgetpu_retrain.data.annotations.issues import ERROR, INFO, WARNING, Issue
from edgetpu_retrain.data.validate.entries import Entry, Inputs

REPORT_JSON = "validation_report.json"
REPORT_TXT = "validation_report.txt"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class LabelMap:
    """The label map validate settled on, and where it came from."""

    items: list[lm.LabelItem]
    source: str  # "given" | "appended" | "generated"
    appended: list[str]


def _issue_order(i: Issue) -> tuple[bool, int, int, str]:
    """File issues first, then by object index, severity and code."""
    return (
        i.object is not None,
        i.object if i.object is not None else -1,
        SEVERITY_ORDER[i.severity],
        i.code,
    )


def _file_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "xml": e.xml,
            "image": e.image,
            "verdict": "rejected" if e.rejected else "accepted",
            "objects": len(e.boxes) if not e.rejected else 0,
            "issues": [i.to_json() for i in sorted(e.issues, key=_issue_order)],
        }
        for e in entries
    ]


def _issue_counts(all_issues: list[Issue]) -> dict[str, Any]:
    code_counts = Counter((i.code, i.severity) for i in all_issues)
    return {
        "errors": sum(1 for i in all_issues if i.severity == ERROR),
        "warnings": sum(1 for i in all_issues if i.severity == WARNING),
        "infos": sum(1 for i in all_issues if i.severity == INFO),
        "issue_counts": [
            {"code": c, "severity": s, "count": n}
            for (c, s), n in sorted(code_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    }


def _policies(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "keep_empty": args.keep_empty,
        "unlabeled": args.unlabeled,
        "exif": args.exif_policy,
        "image": args.image_policy,
        "rounding": "round half to even",
        "clip_tolerance": f"max({ab.CLIP_TOLERANCE_PX} px, {ab.CLIP_TOLERANCE_FRAC:.0%} of the side)",
        "near_duplicate_iou": ab.NEAR_DUPLICATE_IOU,
        "max_image_pixels": ai.MAX_IMAGE_PIXELS,
        "max_xml_bytes": voc.MAX_XML_BYTES,
    }


def _label_summary(accepted: list[Entry], labels: LabelMap) -> dict[str, Any]:
    per_class = Counter(b.name for e in accepted for b in e.boxes)
    for item in labels.items:
        per_class.setdefault(item.name, 0)
    return {
        "per_class": dict(sorted(per_class.items())),
        "classes_without_objects": sorted(n for n, c in per_class.items() if c == 0),
        "label_map_source": labels.source,
        "classes": lm.to_json(labels.items) if labels.items else [],
        "appended_classes": labels.appended,
    }


def build_report(
    entries: list[Entry],
    *,
    dirs: tuple[Path, Path],
    inputs: Inputs,
    labels: LabelMap,
    converted: int,
    failure: str | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The report object; `dirs` is (images folder, annotations folder)."""
    accepted = [e for e in entries if not e.rejected]
    rejected = len(entries) - len(accepted)
    all_issues = [i for e in entries for i in e.issues]
    counts = _issue_counts(all_issues)
    summary = {
        "status": "ok" if failure is None else f"failed: {failure}",
        "images_dir": str(dirs[0]),
        "annotations_dir": str(dirs[1]),
        "xml_files": len(inputs.xmls) + len(inputs.stray),
        "image_files": len(inputs.images),
        "entries": len(entries),
        "accepted": len(accepted),
        "rejected": rejected,
        "background_images": sum(1 for e in accepted if not e.boxes),
        "converted": converted,
        "duplicates_removed": sum(1 for i in all_issues if i.code == "duplicate_image"),
        "objects_accepted": sum(len(e.boxes) for e in accepted),
        "objects_dropped": sum(
            1 for e in accepted for i in e.issues if i.severity == ERROR and i.object is not None
        ),
        **_label_summary(accepted, labels),
        "errors": counts["errors"],
        "warnings": counts["warnings"],
        "infos": counts["infos"],
        "issue_counts": counts["issue_counts"],
        "rejected_fraction": round(rejected_fraction(entries), 6),
        "max_rejected_fraction": args.max_rejected_fraction,
        "ignored_files": inputs.ignored,
        "policies": _policies(args),
    }
    return {"summary": summary, "files": _file_rows(entries)}


def rejected_fraction(entries: list[Entry]) -> float:
    """Rejected entries / all entries (1.0 when there are none)."""
    return sum(1 for e in entries if e.rejected) / len(entries) if entries else 1.0


# ------------------------------------------------------------------------------------------- text
def _header_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        "edgetpu-retrain validate report",
        f"images folder:      {s['images_dir']}",
        f"annotations folder: {s['annotations_dir']}",
        f"status: {s['status']}",
        f"inputs: {s['xml_files']} XML, {s['image_files']} images -> {s['entries']} entries",
        f"accepted: {s['accepted']} ({s['background_images']} background, {s['converted']} converted)",
        f"rejected: {s['rejected']} (fraction {s['rejected_fraction']:.4f}, limit "
        f"{s['max_rejected_fraction']})",
        f"objects: {s['objects_accepted']} accepted, {s['objects_dropped']} dropped",
        f"issues: {s['errors']} errors, {s['warnings']} warnings, {s['infos']} info",
        f"label map ({s['label_map_source']}): "
        + ", ".join(f"{c['id']}={c['name']}" for c in s["classes"])
        + (f"; appended: {', '.join(s['appended_classes'])}" if s["appended_classes"] else ""),
        "",
        "accepted objects per class:",
    ]
    for name, n in sorted(s["per_class"].items()):
        lines.append(f"  {name:<24} {n:>7}")
    if s["classes_without_objects"]:
        lines.append(
            "  WARNING: no accepted objects for "
            + ", ".join(s["classes_without_objects"])
            + " (the detector cannot learn them; label some or drop them from the label map)"
        )
    lines += ["", "issues by code (most frequent first):"]
    for row in s["issue_counts"]:
        lines.append(f"  {row['code']:<28} {row['severity']:<8} {row['count']:>6}")
    return lines


def _file_lines(files: list[dict[str, Any]]) -> list[str]:
    rejected = [f for f in files if f["verdict"] == "rejected"]
    lines = ["", f"rejected entries ({len(rejected)}):"]
    for f in rejected:
        first = next(
            (i for i in f["issues"] if i["severity"] == ERROR and i["object"] is None), f["issues"][0]
        )
        lines.append(
            f"  {f['xml'] or '-'} | {f['image'] or '-'}: [{first['code']}] {first['message']} -> "
            f"{first['fix']}"
        )
    dropped = [
        (f, i) for f in files if f["verdict"] == "accepted" for i in f["issues"] if i["severity"] == ERROR
    ]
    lines += ["", f"dropped boxes in accepted images ({len(dropped)}):"]
    for f, i in dropped:
        lines.append(f"  {f['xml']} object {i['object']}: [{i['code']}] {i['message']} -> {i['fix']}")
    warns = [(f, i) for f in files for i in f["issues"] if i["severity"] == WARNING]
    lines += ["", f"warnings ({len(warns)}, first 100):"]
    for f, i in warns[:100]:
        obj = f" object {i['object']}" if i["object"] is not None else ""
        lines.append(f"  {f['xml'] or f['image']}{obj}: [{i['code']}] {i['message']}")
    return lines


def summary_text(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = _header_lines(s) + _file_lines(report["files"])
    if s["ignored_files"]:
        lines += ["", "ignored (not images or XML): " + ", ".join(s["ignored_files"])]
    return "\n".join(lines) + "\n"
