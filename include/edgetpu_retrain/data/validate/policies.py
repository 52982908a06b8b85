"""The policies validate applies to entries: image modes and sizes, label map, boxes, duplicates."""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from edgetpu_retrain.common import log
from edgetpu_retrain.data import labelmap as lm
from edgetpu_retrain.data.annotations import images as ai
from edgetpu_retrain.data.annotations.boxes import check_objects, normalize_class, suggest_class
from edgetpu_retrain.data.annotations.issues import ERROR, INFO, WARNING, Issue
from edgetpu_retrain.data.validate.entries import Entry

CONVERTED = "converted"


# ----------------------------------------------------------------------------------------- images
def check_images(paths: list[Path], workers: int) -> list[ai.ImageInfo]:
    """Decode every image, in a process pool when there are enough of them."""
    if workers > 1 and len(paths) > 8:
        from concurrent.futures import ProcessPoolExecutor

        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                return list(pool.map(ai.check_image, paths, chunksize=8))
        except (AssertionError, OSError, RuntimeError) as exc:  # e.g. inside a daemonic worker process
            log.warning("validate: process pool unavailable (%s); decoding in this process", exc)
    return [ai.check_image(p) for p in paths]


def _mode_issue(entry: Entry, info: ai.ImageInfo, *, policy: str, taken: set[str]) -> Issue | None:
    """Non-RGB or non-JPEG/PNG images: rejected, or marked for conversion (sets converted_name)."""
    other_format = info.pil_format in ai.CONVERTIBLE_FORMATS
    if info.mode == "RGB" and not other_format:
        return None
    what = f"{info.pil_format} mode {info.mode}"
    if policy == "reject":
        return Issue(
            "image_not_rgb",
            ERROR,
            f"{info.name} is {what}; the dataset takes RGB JPEG/PNG",
            "re-save it as an RGB JPEG/PNG, or run with --image-policy convert",
        )
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
    return Issue(
        "image_converted",
        WARNING,
        f"{info.name} is {what}; converted to {target} as {CONVERTED}/{entry.converted_name}"
        f"{' (' + ', '.join(notes) + ')' if notes else ''}; the dataset uses the converted copy",
        "re-save the original as an RGB JPEG/PNG to silence this",
    )


def _size_issue(entry: Entry, info: ai.ImageInfo) -> Issue | None:
    """The XML's <size> must match the decoded image; a missing size is only a warning."""
    ann = entry.ann
    if ann is None:
        return None
    if not ann.width or not ann.height:
        return Issue(
            "size_missing",
            WARNING,
            f"the XML has no usable <size> (width={ann.width}, height={ann.height}); "
            f"the decoded size {info.width}x{info.height} is used",
            "re-save the annotation in LabelImg to record the image size",
        )
    if (ann.width, ann.height) == (info.width, info.height):
        return None
    hint = ""
    if (ann.width, ann.height) == (info.height, info.width):
        hint = " (width and height swapped: the labeling tool probably showed the EXIF-rotated image)"
    return Issue(
        "size_mismatch",
        ERROR,
        f"the XML says {ann.width}x{ann.height} but {info.name} is {info.width}x{info.height}{hint}",
        "the image was resized/rotated after labeling or the XML belongs to another image: "
        "relabel the current image in LabelImg (or restore the original image)",
    )


def image_issues(entry: Entry, args: argparse.Namespace, taken: set[str]) -> None:
    """`taken`: lower-case input image names plus PNG names already given to converted images (updated)."""
    info = entry.info
    assert info is not None
    entry.issues.extend(info.issues)
    if not info.ok:
        return
    entry.issues.extend(ai.exif_issues(info, policy=args.exif_policy))
    for issue in (_mode_issue(entry, info, policy=args.image_policy, taken=taken), _size_issue(entry, info)):
        if issue is not None:
            entry.issues.append(issue)


# ------------------------------------------------------------------------------------- label map
def resolve_label_map(
    entries: list[Entry], args: argparse.Namespace
) -> tuple[list[lm.LabelItem], str, list[str]]:
    """(label map items, source "given" | "appended" | "generated", appended class names)."""
    counts: Counter[str] = Counter()
    for e in entries:
        if not e.rejected and e.ann is not None:
            counts.update(o.name for o in e.ann.objects if o.name)
    if args.label_map:
        existing = lm.read_label_map(args.label_map)
        known = [it.name for it in existing]
        known_norm = {normalize_class(k) for k in known}
        if args.append_labels:  # every name that is not a case/spacing variant of a mapped one
            new = [n for n in sorted(counts) if n not in known and normalize_class(n) not in known_norm]
        else:  # names close to a mapped one are misspellings (box rejected with a suggestion)
            new = [n for n in sorted(counts) if n not in known and suggest_class(n, known) is None]
        items = lm.merge(existing, new, append=args.append_labels, source=str(args.label_map))
        added = [it.name for it in items if it.name not in known]
        return items, ("appended" if added else "given"), added
    chosen, _ = lm.canonical_names(counts)
    if not chosen:
        return [], "generated", []
    return lm.generate(chosen), "generated", []


# ----------------------------------------------------------------------------------------- boxes
def _empty_issue(entry: Entry, *, objects: int, keep_empty: bool) -> Issue | None:
    """Every box rejected, or an XML without objects (background with --keep-empty)."""
    if objects and not entry.boxes:
        return Issue(
            "no_valid_boxes",
            ERROR,
            f"all {objects} box(es) were rejected (see the object issues)",
            "fix the boxes listed above in LabelImg",
        )
    if objects or entry.ann is None:
        return None
    if keep_empty:
        return Issue(
            "background_image",
            INFO,
            "the XML has no objects; kept as a background image",
            "nothing to do if the image really contains no objects; --drop-empty rejects these",
        )
    return Issue(
        "no_objects",
        ERROR,
        "the XML has no objects (--drop-empty)",
        "label the objects in LabelImg, or run with --keep-empty to use it as a background image",
    )


def apply_box_policy(entries: list[Entry], label_ids: dict[str, int], *, keep_empty: bool) -> None:
    """Check every decoded entry's boxes against its image and the label map (sets `boxes`)."""
    for e in entries:
        if e.rejected or e.info is None:
            continue
        objects = e.ann.objects if e.ann is not None else ()
        e.boxes, box_issues = check_objects(objects, e.info.width, e.info.height, label_ids=label_ids)
        e.issues.extend(box_issues)
        issue = _empty_issue(e, objects=len(objects), keep_empty=keep_empty)
        if issue is not None:
            e.issues.append(issue)


# ------------------------------------------------------------------------------------ duplicates
def _duplicate_issues(group: list[Entry]) -> None:
    """Byte-identical images: same labels -> keep the first; different labels -> reject them all."""
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
        return
    for e in group:
        others = ", ".join(o.image or "" for o in group if o is not e)
        e.issues.append(
            Issue(
                "duplicate_image_conflict",
                ERROR,
                f"{e.image} is byte-identical to {others} but their labels differ; all copies rejected",
                "keep one copy with the correct boxes and delete the others",
            )
        )


def dedupe(entries: list[Entry]) -> None:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        if not e.rejected and e.info is not None and e.info.sha256:
            groups[e.info.sha256].append(e)
    for group in groups.values():
        if len(group) >= 2:
            group.sort(key=lambda e: e.key)
            _duplicate_issues(group)
