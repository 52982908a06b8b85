"""Report entries: which XML goes with which image, before any image is decoded.

Pairing: `<filename>` (a bare name, `<path>` ignored) in the images folder. Not found -> rejected,
naming a case-only difference (.JPG vs .jpg) or the image that shares the XML's stem. One image
claimed by several XMLs: the XML sharing the image's stem keeps it, the others are rejected.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetpu_retrain.data.annotations import images as ai
from edgetpu_retrain.data.annotations import voc
from edgetpu_retrain.data.annotations.boxes import Box
from edgetpu_retrain.data.annotations.issues import ERROR, INFO, Issue


@dataclass
class Entry:
    xml: str | None
    image: str | None
    issues: list[Issue] = field(default_factory=list)
    xml_dir: Path | None = None
    ann: voc.VocAnnotation | None = None
    info: ai.ImageInfo | None = None
    boxes: list[Box] = field(default_factory=list)
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


@dataclass(frozen=True)
class Inputs:
    """What the input folders hold: image and XML names, stray XMLs, files that are neither."""

    images: list[str]
    xmls: list[str]
    stray: list[Entry]
    ignored: list[str]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _stray_xml(name: str, images_dir: Path, ann_dir: Path) -> Entry:
    issue = Issue(
        "xml_outside_annotations_dir",
        ERROR,
        f"{name} is in the images folder but annotations are read from {ann_dir}",
        f"move it into {ann_dir}, or drop --annotations if the XMLs sit beside the images",
    )
    return Entry(xml=name, image=None, xml_dir=images_dir, issues=[issue])


def list_inputs(images_dir: Path, ann_dir: Path) -> Inputs:
    """Sort the folders' files into images, XMLs (from the annotations folder), strays and others."""
    images: list[str] = []
    ignored: list[str] = []
    stray: list[Entry] = []
    same = images_dir.resolve() == ann_dir.resolve()
    for name in _files(images_dir):
        suffix = Path(name).suffix.lower()
        if suffix in ai.IMAGE_EXTENSIONS:
            images.append(name)
        elif suffix == ".xml":
            if not same:
                stray.append(_stray_xml(name, images_dir, ann_dir))
        else:
            ignored.append(name)
    xmls = []
    for name in _files(ann_dir):
        if Path(name).suffix.lower() == ".xml":
            xmls.append(name)
        elif not same:
            ignored.append(f"{ann_dir.name}/{name}")
    return Inputs(images=images, xmls=xmls, stray=stray, ignored=sorted(ignored))


class _ImageIndex:
    """The images folder's names, looked up exactly, ignoring case, and by stem."""

    def __init__(self, images: list[str]) -> None:
        self.names = set(images)
        self.by_lower: dict[str, list[str]] = defaultdict(list)
        self.by_stem: dict[str, list[str]] = defaultdict(list)
        for name in images:
            self.by_lower[name.lower()].append(name)
            self.by_stem[Path(name).stem].append(name)

    def beside(self, xml: str) -> str | None:
        """The first image sharing the XML's stem."""
        same_stem = self.by_stem.get(Path(xml).stem, [])
        return same_stem[0] if same_stem else None


def _match(xml: str, fn: str, index: _ImageIndex) -> tuple[str | None, Issue | None]:
    """(image, issue) for a safe `<filename>` `fn`: exact match, case-only match, stem match, none."""
    if fn in index.names:
        return fn, None
    if index.by_lower.get(fn.lower()):
        actual = index.by_lower[fn.lower()][0]
        return actual, Issue(
            "filename_case_mismatch",
            ERROR,
            f"<filename> is {fn!r} but the folder has {actual!r} (names differ only in upper/lower case; "
            "Linux file names are case-sensitive)",
            f"rename the image to {fn!r} or set <filename> to {actual!r}",
        )
    beside = index.beside(xml)
    if beside is not None:
        return beside, Issue(
            "filename_mismatch",
            ERROR,
            f"<filename> is {fn!r}, which is not in the images folder; the image beside this XML "
            f"is {beside!r}",
            f"set <filename> to {beside!r} (re-save in LabelImg) or rename the image to {fn!r}",
        )
    return None, Issue(
        "image_missing",
        ERROR,
        f"<filename> {fn!r} is not in the images folder and no image shares the stem {Path(xml).stem!r}",
        "copy the image into the images folder, or delete this XML if the image was removed",
    )


def _pair_one(xml: str, ann_dir: Path, index: _ImageIndex) -> Entry:
    ann, issues = voc.read_voc(ann_dir / xml)
    entry = Entry(xml=xml, image=None, ann=ann, issues=list(issues), xml_dir=ann_dir)
    if ann is None:
        entry.image = index.beside(xml)
        return entry
    bad = voc.check_filename(ann.filename)
    if bad is None:
        entry.image, issue = _match(xml, ann.filename or "", index)
        entry.issues += [issue] if issue is not None else []
        return entry
    entry.image = index.beside(xml)
    if entry.image is not None:
        fix = f"set <filename> to {entry.image!r} (the image beside this XML)"
        bad = Issue(bad.code, bad.severity, bad.message, fix)
    entry.issues.append(bad)
    return entry


def _reject_double_claims(entries: list[Entry]) -> None:
    """One image, several XMLs: the XML sharing the image's stem keeps it, the others are rejected."""
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
            others = ", ".join(o.xml or "" for o in group if o is not e)
            e.issues.append(
                Issue(
                    "image_claimed_twice",
                    ERROR,
                    f"{e.xml} and {others} all point at {image}",
                    "keep one XML per image: delete or fix the <filename> of the extra XML(s)",
                )
            )


def pair(xmls: list[str], ann_dir: Path, images: list[str]) -> tuple[list[Entry], set[str]]:
    """(one entry per XML with its image, the image names some XML claims)."""
    index = _ImageIndex(images)
    entries = [_pair_one(xml, ann_dir, index) for xml in xmls]
    _reject_double_claims(entries)
    return entries, {e.image for e in entries if e.image}


def unlabeled_entry(name: str, *, background: bool) -> Entry:
    """An image without an XML: kept as background (--unlabeled background) or rejected."""
    if background:
        issue = Issue(
            "unlabeled_background",
            INFO,
            f"{name} has no XML; kept as a background image (--unlabeled background)",
            "nothing to do if the image really contains no objects; otherwise label it in LabelImg",
        )
    else:
        issue = Issue(
            "unlabeled",
            ERROR,
            f"{name} has no XML annotation",
            "label it in LabelImg (save even with no boxes to mark a background image), "
            "or run with --unlabeled background",
        )
    return Entry(xml=None, image=name, issues=[issue])


def collect(inputs: Inputs, ann_dir: Path, *, unlabeled: str) -> list[Entry]:
    """Every entry (XML pairs, stray XMLs, lone images), sorted by stem."""
    entries, claimed = pair(inputs.xmls, ann_dir, inputs.images)
    entries += inputs.stray
    background = unlabeled == "background"
    entries += [unlabeled_entry(n, background=background) for n in inputs.images if n not in claimed]
    entries.sort(key=lambda e: e.key)
    return entries
