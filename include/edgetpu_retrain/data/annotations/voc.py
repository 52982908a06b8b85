"""Pascal VOC XML as LabelImg writes it, parsed without trusting it.

lxml runs with resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False; files over
MAX_XML_BYTES, any <!DOCTYPE>/<!ENTITY>, and anything that does not parse are rejected. `<path>` is
ignored (often a Windows path); `<filename>` must be a bare file name (no folders, no "..") resolved
in the images folder.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain.data.annotations.issues import ERROR, Issue

MAX_XML_BYTES = 1 << 20
_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# lxml parser settings: no entity expansion, no network, no DTD, no huge trees, no comments/PIs.
_SAFE_PARSER = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "dtd_validation": False,
    "remove_comments": True,
    "remove_pis": True,
}
_NO_DOCTYPE_FIX = "remove the <!DOCTYPE ...> block and any entity references; LabelImg never writes them"


@dataclass(frozen=True)
class VocObject:
    index: int
    name: str
    coords: tuple[str | None, str | None, str | None, str | None]  # raw xmin, ymin, xmax, ymax text
    difficult: int = 0
    truncated: int = 0
    pose: str = "Unspecified"


@dataclass(frozen=True)
class VocAnnotation:
    filename: str | None
    width: int | None
    height: int | None
    depth: int | None
    objects: tuple[VocObject, ...]


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(round(value))


def _flag(text: str | None) -> int:
    value = _int_or_none(text)
    return 1 if value else 0


def _too_large(size: int, source: str) -> Issue:
    return Issue(
        "xml_too_large",
        ERROR,
        f"{source} is {size} bytes, over the {MAX_XML_BYTES}-byte limit for one annotation",
        "a LabelImg XML is a few KiB: replace it with the XML LabelImg writes",
    )


def _parse_tree(data: bytes, source: str) -> tuple[Any, Issue | None]:
    """(root element, None) or (None, the issue): size, DTD text and well-formedness checks."""
    from lxml import etree

    if len(data) > MAX_XML_BYTES:
        return None, _too_large(len(data), source)
    if _DTD_RE.search(data):
        return None, Issue(
            "xml_doctype",
            ERROR,
            f"{source} declares a DOCTYPE or ENTITY (refused: entity expansion / external entity attacks)",
            _NO_DOCTYPE_FIX,
        )
    parser = etree.XMLParser(**_SAFE_PARSER)
    try:
        root = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        return None, Issue(
            "xml_parse_error",
            ERROR,
            f"{source} is not well-formed XML: {exc}",
            "re-save the annotation in LabelImg (or delete the broken file and relabel the image)",
        )
    if root is None:
        return None, Issue(
            "xml_parse_error", ERROR, f"{source} is empty", "re-save the annotation in LabelImg"
        )
    return root, None


def _check_root(root: Any, source: str) -> Issue | None:
    """A parsed tree must carry no DTD or entities and be a VOC <annotation>."""
    from lxml import etree

    tree = root.getroottree()
    if (
        tree.docinfo.doctype
        or tree.docinfo.internalDTD is not None
        or any(True for _ in root.iter(etree.Entity))
    ):
        return Issue(
            "xml_doctype", ERROR, f"{source} declares a DOCTYPE or uses entities (refused)", _NO_DOCTYPE_FIX
        )
    if root.tag != "annotation":
        return Issue(
            "xml_not_voc",
            ERROR,
            f"{source}: root element is <{root.tag}>, not <annotation>",
            "this is not a Pascal VOC annotation; save it from LabelImg in PascalVOC format",
        )
    return None


def _read_object(index: int, obj: Any) -> VocObject:
    bnd = obj.find("bndbox")
    xmin, ymin, xmax, ymax = (
        (bnd.findtext(k) if bnd is not None else None) for k in ("xmin", "ymin", "xmax", "ymax")
    )
    return VocObject(
        index,
        (obj.findtext("name") or "").strip(),
        (xmin, ymin, xmax, ymax),
        _flag(obj.findtext("difficult")),
        _flag(obj.findtext("truncated")),
        (obj.findtext("pose") or "").strip() or "Unspecified",
    )


def parse_voc(data: bytes, *, source: str = "<xml>") -> tuple[VocAnnotation | None, list[Issue]]:
    """Parse VOC XML bytes safely. Returns (annotation, issues); annotation is None when rejected."""
    root, issue = _parse_tree(data, source)
    if issue is None:
        issue = _check_root(root, source)
    if issue is not None:
        return None, [issue]
    filename = root.findtext("filename")
    filename = filename.strip() if filename is not None else None
    size = root.find("size")
    width, height, depth = (
        _int_or_none(size.findtext(key)) if size is not None else None for key in ("width", "height", "depth")
    )
    objects = tuple(_read_object(index, obj) for index, obj in enumerate(root.findall("object")))
    return VocAnnotation(filename or None, width, height, depth, objects), []


def read_voc(path: str | os.PathLike[str]) -> tuple[VocAnnotation | None, list[Issue]]:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_XML_BYTES:  # refused without reading it
            return None, [_too_large(size, path.name)]
        data = path.read_bytes()
    except OSError as exc:
        return None, [
            Issue(
                "xml_unreadable", ERROR, f"{path.name} cannot be read: {exc}", "check the file's permissions"
            )
        ]
    return parse_voc(data, source=path.name)


def check_filename(filename: str | None) -> Issue | None:
    """`<filename>` must be a bare file name; folders, drive letters and '..' are refused."""
    if not filename:
        return Issue(
            "filename_missing",
            ERROR,
            "the XML has no <filename>",
            "add <filename>NAME.jpg</filename> (the image's file name) or re-save it in LabelImg",
        )
    if (
        "/" in filename
        or "\\" in filename
        or filename in (".", "..")
        or ":" in filename
        or "\x00" in filename
    ):
        return Issue(
            "filename_unsafe",
            ERROR,
            f"<filename> {filename!r} is not a bare file name (folders, drive letters and '..' are refused)",
            "set <filename> to the image's own file name, e.g. IMG_0001.jpg; the image must sit in the "
            "images folder",
        )
    return None
