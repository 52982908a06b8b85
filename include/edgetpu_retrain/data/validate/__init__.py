"""`edgetpu-retrain validate`: check LabelImg VOC XML + images, write a per-file report and accepted.json.

Every XML and image in the input folders gets one report entry (an XML and its image share one)
with verdict "accepted" or "rejected" and issues {code, severity, message, fix, object}. Inputs are
never modified, moved or deleted. Outputs in OUT (docs/contracts.md "validate"):
validation_report.json, validation_report.txt, label_map.pbtxt, accepted.json, converted/ (images
the image policy re-saved), quarantine/ (copies of rejected files, with --quarantine).

Policies (box/XML rules: see the data/annotations package):
- Pairing: `<filename>` (a bare name, `<path>` ignored) in the images folder. Not found -> rejected,
  naming a case-only difference (.JPG vs .jpg) or the image that shares the XML's stem.
- Images without an XML: rejected as "unlabeled" (default) or kept as background images
  (--unlabeled background). XMLs with no <object>: kept as background (--keep-empty, default) or
  rejected (--drop-empty).
- EXIF orientation (--exif-policy): "stored" (default) accepts orientation 2..8 with a warning: LabelImg
  draws on the stored pixels, so boxes and TFRecords use the stored pixels as-is; "reject" rejects.
  Values outside 1..8 are a warning and ignored.
- Image modes (--image-policy): RGB JPEG/PNG are used as-is; L/LA/P/RGBA/CMYK/I;16/... are converted
  to RGB ("convert", default: alpha dropped, PNG stays PNG, JPEG becomes RGB JPEG quality 95) into
  OUT/converted/<same name>, a warning, and accepted.json points there; "reject" rejects them.
  BMP/GIF/TIFF/WEBP are converted the same way to RGB PNG named <stem>.png (first frame; <name>.png
  if <stem>.png already exists or an earlier image took it); accepted.json's `filename` is then the
  PNG's name.
- XML <size> must equal the decoded size (else rejected with both sizes); a missing/zero <size> is a
  warning and the real size is used.
- Byte-identical images (sha256): same labels -> the first (by name) is kept, the others rejected as
  duplicates (warning); different labels -> all rejected, each naming the others.
- Label map: --label-map FILE is used as given. A class name close to a mapped one (case/spacing or
  difflib >= 0.6) is a misspelling: the box is rejected with a suggestion. Other new names fail the
  step (exit 2, listing them) unless --append-labels adds them (ids max+1.., sorted); with
  --append-labels only case/spacing variants count as misspellings. Without a label map one is
  generated from the accepted images (sorted names, ids 1..N; a name differing from a more frequent
  one only by case/spacing counts as a misspelling).
- Box errors (object index set) drop that box only; file errors reject the entry. The rejected
  fraction counts every entry (XML/image pair, lone image, lone XML), duplicates included.
- Exit 2 (UserError) only when no image is accepted, or the rejected fraction (rejected entries /
  all entries) exceeds --max-rejected-fraction; the reports are still written, accepted.json is not.
Re-runs with the same inputs produce the same bytes (sorted, no timestamps, atomic writes).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, log, require_dir, write_json, write_text
from edgetpu_retrain.data import labelmap as lm
from edgetpu_retrain.data.validate import outputs, policies
from edgetpu_retrain.data.validate.entries import Entry, Inputs, collect, list_inputs
from edgetpu_retrain.data.validate.report import (
    REPORT_JSON,
    REPORT_TXT,
    LabelMap,
    build_report,
    rejected_fraction,
    summary_text,
)

ACCEPTED_JSON = "accepted.json"
LABEL_MAP = "label_map.pbtxt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n", 1)[0].split(": ", 1)[1]
    parser.epilog = "Policies" + __doc__.split("\nPolicies", 1)[1]
    parser.add_argument(
        "--images", required=True, metavar="DIR", help="folder of images (LabelImg layout: XML beside them)"
    )
    parser.add_argument("--annotations", metavar="DIR", help="folder of VOC XML (default: the images folder)")
    parser.add_argument(
        "--label-map", metavar="FILE", help="label map to use (default: generate from the data)"
    )
    parser.add_argument(
        "--append-labels", action="store_true", help="add classes missing from --label-map instead of failing"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (reports, accepted.json, label map)"
    )
    empty = parser.add_mutually_exclusive_group()
    empty.add_argument(
        "--keep-empty",
        dest="keep_empty",
        action="store_true",
        default=True,
        help="keep XMLs without objects as background images (default)",
    )
    empty.add_argument(
        "--drop-empty", dest="keep_empty", action="store_false", help="reject XMLs without objects"
    )
    parser.add_argument(
        "--unlabeled",
        choices=("reject", "background"),
        default="reject",
        help="images without any XML: reject (default) or keep as background images",
    )
    parser.add_argument("--quarantine", action="store_true", help="copy rejected files into OUT/quarantine/")
    parser.add_argument(
        "--max-rejected-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="fail if more than this fraction of entries is rejected (default 0.5)",
    )
    parser.add_argument(
        "--exif-policy",
        choices=("stored", "reject"),
        default="stored",
        help="EXIF-rotated JPEGs: use stored pixels with a warning (default) or reject",
    )
    parser.add_argument(
        "--image-policy",
        choices=("convert", "reject"),
        default="convert",
        help="non-RGB images (L, RGBA, P, CMYK...): convert to RGB into OUT/converted (default) or reject",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes decoding images (default: min(2, CPUs))",
    )


# -------------------------------------------------------------------------------------------- run
def _folders(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """(images, annotations, out) as absolute paths; OUT must not be an input folder."""
    images_dir = Path(os.path.abspath(require_dir(args.images, what="images")))
    ann_dir = Path(os.path.abspath(require_dir(args.annotations or args.images, what="annotations")))
    out = Path(os.path.abspath(args.out))
    if out.exists() and out.resolve() in (images_dir.resolve(), ann_dir.resolve()):
        raise UserError(
            f"{out}: --out must not be the input folder (outputs would mix with inputs); use a separate "
            "folder"
        )
    if not 0 <= args.max_rejected_fraction <= 1:
        raise UserError(f"--max-rejected-fraction {args.max_rejected_fraction}: must be between 0 and 1")
    return images_dir, ann_dir, out


def _decode(entries: list[Entry], *, inputs: Inputs, images_dir: Path, args: argparse.Namespace) -> None:
    """Decode the images of the entries still accepted and apply the image policies."""
    todo = [e for e in entries if not e.rejected and e.image]
    log.info(
        "validate: %d XML, %d images; decoding %d images with %d worker(s)",
        len(inputs.xmls),
        len(inputs.images),
        len(todo),
        args.workers,
    )
    taken = {n.lower() for n in inputs.images}
    paths = [images_dir / (e.image or "") for e in todo]
    for entry, checked in zip(todo, policies.check_images(paths, args.workers), strict=False):
        entry.info = checked
        policies.image_issues(entry, args, taken)


def _failure(
    entries: list[Entry], *, labels: LabelMap, images_dir: Path, out: Path, limit: float
) -> str | None:
    """Why the step fails (no image accepted, too many rejected, no class), or None."""
    rejected = sum(1 for e in entries if e.rejected)
    fraction = rejected_fraction(entries)
    if rejected == len(entries):
        return f"{images_dir}: no usable image left ({rejected} rejected); see {out / REPORT_TXT}"
    if fraction > limit:
        return (
            f"{images_dir}: {rejected} of {len(entries)} entries rejected ({fraction:.1%} > "
            f"--max-rejected-fraction {limit}); fix the files listed in {out / REPORT_TXT}"
        )
    if not labels.items:
        return f"{images_dir}: no class names in the accepted images; label some objects or pass --label-map"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    images_dir, ann_dir, out = _folders(args)
    inputs = list_inputs(images_dir, ann_dir)
    if not inputs.images and not inputs.xmls:
        raise UserError(
            f"{images_dir}: no images (.jpg/.png) or VOC XML files found; check --images/--annotations"
        )
    entries = collect(inputs, ann_dir, unlabeled=args.unlabeled)
    _decode(entries, inputs=inputs, images_dir=images_dir, args=args)
    labels = LabelMap(*policies.resolve_label_map(entries, args))
    policies.apply_box_policy(entries, {it.name: it.id for it in labels.items}, keep_empty=args.keep_empty)
    policies.dedupe(entries)
    failure = _failure(
        entries, labels=labels, images_dir=images_dir, out=out, limit=args.max_rejected_fraction
    )

    accepted = [e for e in entries if not e.rejected]
    rejected = [e for e in entries if e.rejected]
    out.mkdir(parents=True, exist_ok=True)
    converted = outputs.write_converted(accepted, images_dir=images_dir, out=out, write=failure is None)
    records = outputs.records(accepted, images_dir=images_dir, out=out)
    report = build_report(
        entries,
        dirs=(images_dir, ann_dir),
        inputs=inputs,
        labels=labels,
        converted=converted,
        failure=failure,
        args=args,
    )
    write_json(out / REPORT_JSON, report)
    write_text(out / REPORT_TXT, summary_text(report))
    outputs.write_quarantine(rejected, images_dir=images_dir, out=out, enabled=args.quarantine)
    if failure is not None:
        for stale in (out / ACCEPTED_JSON, out / LABEL_MAP):
            if stale.exists():
                stale.unlink()
        raise UserError(failure)
    lm.write_label_map(out / LABEL_MAP, labels.items)
    write_json(out / ACCEPTED_JSON, {"version": 1, "label_map": LABEL_MAP, "images": records})
    warnings = report["summary"]["warnings"]
    log.info(
        "validate: %d accepted, %d rejected, %d warnings -> %s", len(accepted), len(rejected), warnings, out
    )
    return {
        "report": str(out / REPORT_JSON),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "label_map": str(out / LABEL_MAP),
        "annotations": str(out / ACCEPTED_JSON),
        "out_dir": str(out),
        "warnings": warnings,
    }
