"""`edgetpu-retrain validate`: check LabelImg VOC XML + images, write a per-file report and accepted.json.

Every XML and image in the input folders gets one report entry (an XML and its image share one)
with verdict "accepted" or "rejected" and issues {code, severity, message, fix, object}. Inputs are
never modified, moved or deleted. Outputs in OUT (docs/contracts.md "validate"):
validation_report.json, validation_report.txt, label_map.pbtxt, accepted.json, converted/ (images
the image policy re-saved), quarantine/ (copies of rejected files, with --quarantine).

Policies (box/XML rules: see annotations.py):
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
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import (
    UserError,
    atomic_dir,
    log,
    require_dir,
    sha256_file,
    write_json,
    write_text,
)
from edgetpu_retrain.data import annotations as va
from edgetpu_retrain.data import labelmap as lm
from edgetpu_retrain.data.annotations import ERROR, INFO, WARNING, Issue

REPORT_JSON = "validation_report.json"
REPORT_TXT = "validation_report.txt"
ACCEPTED_JSON = "accepted.json"
LABEL_MAP = "label_map.pbtxt"
CONVERTED = "converted"
QUARANTINE = "quarantine"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass
class Entry:
    xml: str | None
    image: str | None
    issues: list[Issue] = field(default_factory=list)
    xml_dir: Path | None = None
    ann: va.VocAnnotation | None = None
    info: va.ImageInfo | None = None
    boxes: list[va.Box] = field(default_factory=list)
    convert: bool = False
    converted_name: str | None = None  # file name in OUT/converted (and accepted.json) when converted
    duplicate_of: str | None = None  # byte-identical copy (same labels) of this accepted image
    record: dict[str, Any] | None = None

    @property
    def rejected(self) -> bool:
        """Errors about the file reject it; errors about one object (index set) only drop that box."""
        return self.duplicate_of is not None or any(
            i.severity == ERROR and i.object is None for i in self.issues
        )

    @property
    def key(self) -> tuple[str, str, str]:
        primary = self.image or self.xml or ""
        return (Path(primary).stem, self.xml or "", self.image or "")


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


# ------------------------------------------------------------------------------------------ steps
def _list_inputs(images_dir: Path, ann_dir: Path) -> tuple[list[str], list[str], list[Entry], list[str]]:
    """(image names, xml names, entries for stray XMLs, ignored file names)."""

    def files(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_file())

    images: list[str] = []
    ignored: list[str] = []
    stray: list[Entry] = []
    same = images_dir.resolve() == ann_dir.resolve()
    for name in files(images_dir):
        suffix = Path(name).suffix.lower()
        if suffix in va.IMAGE_EXTENSIONS:
            images.append(name)
        elif suffix == ".xml":
            if not same:
                stray.append(
                    Entry(
                        xml=name,
                        image=None,
                        xml_dir=images_dir,
                        issues=[
                            Issue(
                                "xml_outside_annotations_dir",
                                ERROR,
                                f"{name} is in the images folder but annotations are read from {ann_dir}",
                                f"move it into {ann_dir}, or drop --annotations if the XMLs sit beside the "
                                "images",
                            )
                        ],
                    )
                )
        else:
            ignored.append(name)
    xmls = []
    for name in files(ann_dir):
        if Path(name).suffix.lower() == ".xml":
            xmls.append(name)
        elif not same:
            ignored.append(f"{ann_dir.name}/{name}")
    return images, xmls, stray, sorted(ignored)


def _pair(xmls: list[str], ann_dir: Path, images: list[str]) -> tuple[list[Entry], set[str]]:
    image_set = set(images)
    by_lower: dict[str, list[str]] = defaultdict(list)
    by_stem: dict[str, list[str]] = defaultdict(list)
    for name in images:
        by_lower[name.lower()].append(name)
        by_stem[Path(name).stem].append(name)
    entries: list[Entry] = []
    for xml in xmls:
        stem = Path(xml).stem
        ann, issues = va.read_voc(ann_dir / xml)
        entry = Entry(xml=xml, image=None, ann=ann, issues=list(issues), xml_dir=ann_dir)
        same_stem = by_stem.get(stem, [])
        if ann is None:
            entry.image = same_stem[0] if same_stem else None
        else:
            bad = va.check_filename(ann.filename)
            fn = ann.filename or ""
            if bad is not None:
                entry.issues.append(bad)
                entry.image = same_stem[0] if same_stem else None
                if same_stem:
                    entry.issues[-1] = Issue(
                        bad.code,
                        bad.severity,
                        bad.message,
                        f"set <filename> to {same_stem[0]!r} (the image beside this XML)",
                    )
            elif fn in image_set:
                entry.image = fn
            elif by_lower.get(fn.lower()):
                actual = by_lower[fn.lower()][0]
                entry.image = actual
                entry.issues.append(
                    Issue(
                        "filename_case_mismatch",
                        ERROR,
                        f"<filename> is {fn!r} but the folder has {actual!r} (names differ only in "
                        "upper/lower case; "
                        "Linux file names are case-sensitive)",
                        f"rename the image to {fn!r} or set <filename> to {actual!r}",
                    )
                )
            elif same_stem:
                actual = same_stem[0]
                entry.image = actual
                entry.issues.append(
                    Issue(
                        "filename_mismatch",
                        ERROR,
                        f"<filename> is {fn!r}, which is not in the images folder; the image beside this XML "
                        f"is {actual!r}",
                        f"set <filename> to {actual!r} (re-save in LabelImg) or rename the image to {fn!r}",
                    )
                )
            else:
                entry.issues.append(
                    Issue(
                        "image_missing",
                        ERROR,
                        f"<filename> {fn!r} is not in the images folder and no image shares the stem "
                        f"{stem!r}",
                        "copy the image into the images folder, or delete this XML if the image was removed",
                    )
                )
        entries.append(entry)
    # one image, several XMLs: the XML sharing the image's stem keeps it, the others are rejected
    claims: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if e.image:
            claims[e.image].append(e)
    for image, group in claims.items():
        if len(group) < 2:
            continue
        owners = [e for e in group if Path(e.xml or "").stem == Path(image).stem and not e.rejected]
        for e in group:
            if owners and e is owners[0]:
                continue
            others = ", ".join(o.xml for o in group if o is not e)  # type: ignore[misc]
            e.issues.append(
                Issue(
                    "image_claimed_twice",
                    ERROR,
                    f"{e.xml} and {others} all point at {image}",
                    "keep one XML per image: delete or fix the <filename> of the extra XML(s)",
                )
            )
    claimed = {e.image for e in entries if e.image}
    return entries, claimed


def _check_images(paths: list[Path], workers: int) -> list[va.ImageInfo]:
    if workers > 1 and len(paths) > 8:
        from concurrent.futures import ProcessPoolExecutor

        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(va.check_image, paths, chunksize=8))
        except (AssertionError, OSError, RuntimeError) as exc:  # e.g. inside a daemonic worker process
            log.warning("validate: process pool unavailable (%s); decoding in this process", exc)
    return [va.check_image(p) for p in paths]


def _image_issues(entry: Entry, args: argparse.Namespace, taken: set[str]) -> None:
    """`taken`: lower-case input image names plus PNG names already given to converted images (updated)."""
    info = entry.info
    assert info is not None
    entry.issues.extend(info.issues)
    if not info.ok:
        return
    entry.issues.extend(va.exif_issues(info, policy=args.exif_policy))
    other_format = info.pil_format in va.CONVERTIBLE_FORMATS
    if info.mode != "RGB" or other_format:
        what = f"{info.pil_format} mode {info.mode}"
        if args.image_policy == "reject":
            entry.issues.append(
                Issue(
                    "image_not_rgb",
                    ERROR,
                    f"{info.name} is {what}; the dataset takes RGB JPEG/PNG",
                    "re-save it as an RGB JPEG/PNG, or run with --image-policy convert",
                )
            )
        else:
            entry.convert = True
            entry.converted_name = info.name
            if other_format:
                stem_png = f"{Path(info.name).stem}.png"
                entry.converted_name = info.name + ".png" if stem_png.lower() in taken else stem_png
                taken.add(entry.converted_name.lower())  # a.bmp and a.gif must not both become a.png
            target = "RGB JPEG (quality 95)" if info.format == "jpeg" else "RGB PNG (lossless)"
            notes = []
            if "A" in (info.mode or "") or (info.mode or "").startswith("P"):
                notes.append("transparency dropped")
            if other_format:
                notes.append("first frame only")
            entry.issues.append(
                Issue(
                    "image_converted",
                    WARNING,
                    f"{info.name} is {what}; converted to {target} as {CONVERTED}/{entry.converted_name}"
                    f"{' (' + ', '.join(notes) + ')' if notes else ''}; the dataset uses the converted copy",
                    "re-save the original as an RGB JPEG/PNG to silence this",
                )
            )
    ann = entry.ann
    if ann is None:
        return
    if not ann.width or not ann.height:
        entry.issues.append(
            Issue(
                "size_missing",
                WARNING,
                f"the XML has no usable <size> (width={ann.width}, height={ann.height}); "
                f"the decoded size {info.width}x{info.height} is used",
                "re-save the annotation in LabelImg to record the image size",
            )
        )
    elif (ann.width, ann.height) != (info.width, info.height):
        hint = ""
        if (ann.width, ann.height) == (info.height, info.width):
            hint = " (width and height swapped: the labeling tool probably showed the EXIF-rotated image)"
        entry.issues.append(
            Issue(
                "size_mismatch",
                ERROR,
                f"the XML says {ann.width}x{ann.height} but {info.name} is {info.width}x{info.height}{hint}",
                "the image was resized/rotated after labeling or the XML belongs to another image: "
                "relabel the current image in LabelImg (or restore the original image)",
            )
        )


def _resolve_label_map(
    entries: list[Entry], args: argparse.Namespace
) -> tuple[list[lm.LabelItem], str, list[str]]:
    counts: Counter[str] = Counter()
    for e in entries:
        if not e.rejected and e.ann is not None:
            counts.update(o.name for o in e.ann.objects if o.name)
    if args.label_map:
        existing = lm.read_label_map(args.label_map)
        known = [it.name for it in existing]
        known_norm = {va.normalize_class(k) for k in known}
        if args.append_labels:  # every name that is not a case/spacing variant of a mapped one
            new = [n for n in sorted(counts) if n not in known and va.normalize_class(n) not in known_norm]
        else:  # names close to a mapped one are misspellings (box rejected with a suggestion)
            new = [n for n in sorted(counts) if n not in known and va.suggest_class(n, known) is None]
        items = lm.merge(existing, new, append=args.append_labels, source=str(args.label_map))
        added = [it.name for it in items if it.name not in known]
        return items, ("appended" if added else "given"), added
    chosen, _ = lm.canonical_names(counts)
    if not chosen:
        return [], "generated", []
    return lm.generate(chosen), "generated", []


def _convert(src: Path, dst: Path, fmt: str) -> None:
    from PIL import Image

    with Image.open(src) as opened:
        opened.load()
        im: Image.Image = opened
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        if im.mode.startswith("I;16"):  # 16-bit gray: keep the high byte
            im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        elif im.mode in ("I", "F"):
            im = im.convert("L")
        rgb = im.convert("RGB")
        if fmt == "png":
            rgb.save(dst, format="PNG")
        else:
            rgb.save(dst, format="JPEG", quality=95)


def _dedupe(entries: list[Entry]) -> None:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if not e.rejected and e.info is not None and e.info.sha256:
            groups[e.info.sha256].append(e)
    for group in groups.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda e: e.key)
        signatures = {tuple(sorted((b.name, b.xmin, b.ymin, b.xmax, b.ymax) for b in e.boxes)) for e in group}
        if len(signatures) == 1:
            keep = group[0]
            for e in group[1:]:
                e.duplicate_of = keep.image
                e.issues.append(
                    Issue(
                        "duplicate_image",
                        WARNING,
                        f"{e.image} is byte-identical to {keep.image} with the same labels; {keep.image} is "
                        "kept, this copy is left out",
                        f"delete {e.image} (and its XML) to silence this",
                    )
                )
        else:
            for e in group:
                others = ", ".join(o.image for o in group if o is not e)  # type: ignore[misc]
                e.issues.append(
                    Issue(
                        "duplicate_image_conflict",
                        ERROR,
                        f"{e.image} is byte-identical to {others} but their labels differ; all copies "
                        "rejected",
                        "keep one copy with the correct boxes and delete the others",
                    )
                )


def _summary_text(report: dict[str, Any]) -> str:
    s = report["summary"]
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
    rejected = [f for f in report["files"] if f["verdict"] == "rejected"]
    lines += ["", f"rejected entries ({len(rejected)}):"]
    for f in rejected:
        first = next(
            (i for i in f["issues"] if i["severity"] == ERROR and i["object"] is None), f["issues"][0]
        )
        lines.append(
            f"  {f['xml'] or '-'} | {f['image'] or '-'}: [{first['code']}] {first['message']} -> "
            f"{first['fix']}"
        )
    dropped = [
        (f, i)
        for f in report["files"]
        if f["verdict"] == "accepted"
        for i in f["issues"]
        if i["severity"] == ERROR
    ]
    lines += ["", f"dropped boxes in accepted images ({len(dropped)}):"]
    for f, i in dropped:
        lines.append(f"  {f['xml']} object {i['object']}: [{i['code']}] {i['message']} -> {i['fix']}")
    warns = [(f, i) for f in report["files"] for i in f["issues"] if i["severity"] == WARNING]
    lines += ["", f"warnings ({len(warns)}, first 100):"]
    for f, i in warns[:100]:
        obj = f" object {i['object']}" if i["object"] is not None else ""
        lines.append(f"  {f['xml'] or f['image']}{obj}: [{i['code']}] {i['message']}")
    if s["ignored_files"]:
        lines += ["", "ignored (not images or XML): " + ", ".join(s["ignored_files"])]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
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

    images, xmls, stray, ignored = _list_inputs(images_dir, ann_dir)
    if not images and not xmls:
        raise UserError(
            f"{images_dir}: no images (.jpg/.png) or VOC XML files found; check --images/--annotations"
        )
    entries, claimed = _pair(xmls, ann_dir, images)
    entries += stray
    for name in images:
        if name in claimed:
            continue
        if args.unlabeled == "background":
            entries.append(
                Entry(
                    xml=None,
                    image=name,
                    issues=[
                        Issue(
                            "unlabeled_background",
                            INFO,
                            f"{name} has no XML; kept as a background image (--unlabeled background)",
                            "nothing to do if the image really contains no objects; otherwise label it in "
                            "LabelImg",
                        )
                    ],
                )
            )
        else:
            entries.append(
                Entry(
                    xml=None,
                    image=name,
                    issues=[
                        Issue(
                            "unlabeled",
                            ERROR,
                            f"{name} has no XML annotation",
                            "label it in LabelImg (save even with no boxes to mark a background image), "
                            "or run with --unlabeled background",
                        )
                    ],
                )
            )
    entries.sort(key=lambda e: e.key)

    todo = [e for e in entries if not e.rejected and e.image]
    log.info(
        "validate: %d XML, %d images; decoding %d images with %d worker(s)",
        len(xmls),
        len(images),
        len(todo),
        args.workers,
    )
    taken = {n.lower() for n in images}
    paths = [images_dir / e.image for e in todo]  # type: ignore[operator]
    for entry, checked in zip(todo, _check_images(paths, args.workers), strict=False):
        entry.info = checked
        _image_issues(entry, args, taken)

    items, lm_source, appended = _resolve_label_map(entries, args)
    label_ids = {it.name: it.id for it in items}
    for e in entries:
        if e.rejected or e.info is None:
            continue
        objects = e.ann.objects if e.ann is not None else ()
        e.boxes, box_issues = va.check_objects(objects, e.info.width, e.info.height, label_ids)
        e.issues.extend(box_issues)
        if objects and not e.boxes:
            e.issues.append(
                Issue(
                    "no_valid_boxes",
                    ERROR,
                    f"all {len(objects)} box(es) were rejected (see the object issues)",
                    "fix the boxes listed above in LabelImg",
                )
            )
        elif not objects and e.ann is not None:
            if args.keep_empty:
                e.issues.append(
                    Issue(
                        "background_image",
                        INFO,
                        "the XML has no objects; kept as a background image",
                        "nothing to do if the image really contains no objects; --drop-empty rejects these",
                    )
                )
            else:
                e.issues.append(
                    Issue(
                        "no_objects",
                        ERROR,
                        "the XML has no objects (--drop-empty)",
                        "label the objects in LabelImg, or run with --keep-empty to use it as a background "
                        "image",
                    )
                )
    _dedupe(entries)

    accepted = [e for e in entries if not e.rejected]
    rejected = [e for e in entries if e.rejected]
    fraction = len(rejected) / len(entries) if entries else 1.0
    failure = None
    if not accepted:
        failure = f"{images_dir}: no usable image left ({len(rejected)} rejected); see {out / REPORT_TXT}"
    elif fraction > args.max_rejected_fraction:
        failure = (
            f"{images_dir}: {len(rejected)} of {len(entries)} entries rejected ({fraction:.1%} > "
            f"--max-rejected-fraction {args.max_rejected_fraction}); fix the files listed in "
            f"{out / REPORT_TXT}"
        )
    elif not items:
        failure = (
            f"{images_dir}: no class names in the accepted images; label some objects or pass --label-map"
        )

    out.mkdir(parents=True, exist_ok=True)
    # converted images, then records
    needs_convert = [e for e in accepted if e.convert]
    converted_dir = out / CONVERTED
    if needs_convert and failure is None:
        with atomic_dir(converted_dir) as tmp:
            for e in needs_convert:
                _convert(images_dir / e.image, tmp / e.converted_name, e.info.format)  # type: ignore[operator,union-attr,arg-type]
    elif converted_dir.exists():
        shutil.rmtree(converted_dir)
    records = []
    for e in accepted:
        info = e.info
        assert info is not None and e.image is not None
        name = e.converted_name if e.convert and e.converted_name else e.image
        path = (converted_dir / name) if e.convert else (images_dir / e.image)
        sha = sha256_file(path) if (e.convert and path.exists()) else info.sha256
        e.record = {
            "filename": name,
            "path": str(path),
            "sha256": sha,
            "format": info.format,
            "width": info.width,
            "height": info.height,
            "source_xml": str(e.xml_dir / e.xml) if e.xml and e.xml_dir else None,
            "objects": [b.record() for b in e.boxes],
        }
        records.append(e.record)
    records.sort(key=lambda r: r["filename"])

    # report
    all_issues = [(e, i) for e in entries for i in e.issues]
    code_counts = Counter((i.code, i.severity) for _, i in all_issues)
    per_class = Counter(b.name for e in accepted for b in e.boxes)
    for name in label_ids:
        per_class.setdefault(name, 0)
    files = []
    for e in entries:
        issues = sorted(
            e.issues,
            key=lambda i: (
                i.object is not None,
                i.object if i.object is not None else -1,
                SEVERITY_ORDER[i.severity],
                i.code,
            ),
        )
        files.append(
            {
                "xml": e.xml,
                "image": e.image,
                "verdict": "rejected" if e.rejected else "accepted",
                "objects": len(e.boxes) if not e.rejected else 0,
                "issues": [i.to_json() for i in issues],
            }
        )
    summary = {
        "status": "ok" if failure is None else f"failed: {failure}",
        "images_dir": str(images_dir),
        "annotations_dir": str(ann_dir),
        "xml_files": len(xmls) + len(stray),
        "image_files": len(images),
        "entries": len(entries),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "background_images": sum(1 for e in accepted if not e.boxes),
        "converted": len(needs_convert),
        "duplicates_removed": sum(1 for _, i in all_issues if i.code == "duplicate_image"),
        "objects_accepted": sum(len(e.boxes) for e in accepted),
        "objects_dropped": sum(
            1 for e in accepted for i in e.issues if i.severity == ERROR and i.object is not None
        ),
        "per_class": dict(sorted(per_class.items())),
        "classes_without_objects": sorted(n for n, c in per_class.items() if c == 0),
        "label_map_source": lm_source,
        "classes": lm.to_json(items) if items else [],
        "appended_classes": appended,
        "errors": sum(1 for _, i in all_issues if i.severity == ERROR),
        "warnings": sum(1 for _, i in all_issues if i.severity == WARNING),
        "infos": sum(1 for _, i in all_issues if i.severity == INFO),
        "issue_counts": [
            {"code": c, "severity": s, "count": n}
            for (c, s), n in sorted(code_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "rejected_fraction": round(fraction, 6),
        "max_rejected_fraction": args.max_rejected_fraction,
        "ignored_files": ignored,
        "policies": {
            "keep_empty": args.keep_empty,
            "unlabeled": args.unlabeled,
            "exif": args.exif_policy,
            "image": args.image_policy,
            "rounding": "round half to even",
            "clip_tolerance": f"max({va.CLIP_TOLERANCE_PX} px, {va.CLIP_TOLERANCE_FRAC:.0%} of the side)",
            "near_duplicate_iou": va.NEAR_DUPLICATE_IOU,
            "max_image_pixels": va.MAX_IMAGE_PIXELS,
            "max_xml_bytes": va.MAX_XML_BYTES,
        },
    }
    report = {"summary": summary, "files": files}
    write_json(out / REPORT_JSON, report)
    write_text(out / REPORT_TXT, _summary_text(report))

    quarantine_dir = out / QUARANTINE
    if args.quarantine and rejected:
        with atomic_dir(quarantine_dir) as tmp:
            for e in rejected:
                if e.xml:
                    shutil.copy2(e.xml_dir / e.xml, tmp / e.xml)  # type: ignore[operator]
                if e.image and not (tmp / e.image).exists():
                    shutil.copy2(images_dir / e.image, tmp / e.image)
    elif quarantine_dir.exists():
        shutil.rmtree(quarantine_dir)

    if failure is not None:
        for stale in (out / ACCEPTED_JSON, out / LABEL_MAP):
            if stale.exists():
                stale.unlink()
        raise UserError(failure)
    lm.write_label_map(out / LABEL_MAP, items)
    write_json(out / ACCEPTED_JSON, {"version": 1, "label_map": LABEL_MAP, "images": records})
    log.info(
        "validate: %d accepted, %d rejected, %d warnings -> %s",
        len(accepted),
        len(rejected),
        summary["warnings"],
        out,
    )
    return {
        "report": str(out / REPORT_JSON),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "label_map": str(out / LABEL_MAP),
        "annotations": str(out / ACCEPTED_JSON),
        "out_dir": str(out),
        "warnings": summary["warnings"],
    }
