"""Pascal VOC XML (as LabelImg writes it) and image checks: pure functions, no output files.

Every problem becomes an `Issue(code, severity, message, fix, object)`; `object` is the 0-based
index of the <object> element in the XML (e.g. BloodImage_00338 object 12 of BCCD has a zero-area
box), or None for file-level issues.

Policies (validate.py applies them; docs in its --help):
- XML: parsed by lxml with resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False;
  files over MAX_XML_BYTES, any <!DOCTYPE>/<!ENTITY>, and anything that does not parse are rejected.
  `<path>` is ignored (often a Windows path); `<filename>` must be a bare file name (no folders, no
  "..") resolved in the images folder.
- Coordinates: parsed as floats and rounded with Python's round() (round half to even: 10.5 -> 10,
  11.5 -> 12); non-integers get an info issue. A coordinate outside the image by at most
  max(CLIP_TOLERANCE_PX, CLIP_TOLERANCE_FRAC * side) is clipped to the edge (warning); further out
  rejects the box. Boxes that are inverted (min > max) or have zero width/height after rounding and
  clipping are rejected. Rejected boxes are dropped from the image, which keeps its other boxes;
  if every box is rejected the image is rejected. xmax == width / ymax == height is valid.
- Class names must be in the label map; otherwise the box is rejected and the closest name is
  suggested (case/spacing-insensitive match first, then difflib).
- Same-class boxes with IoU > NEAR_DUPLICATE_IOU get a warning (both are kept).
- Images: JPEG (incl. MPO) and PNG are used as they are; BMP/GIF/TIFF/WEBP are flagged for
  conversion to PNG (validate.py does it); anything else is rejected. Every image is decoded fully
  (verify + load) so truncated files are caught; more than MAX_IMAGE_PIXELS pixels is a
  decompression bomb (rejected before decoding).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_XML_BYTES = 1 << 20
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default limit (~ 9459 x 9459)
CLIP_TOLERANCE_PX = 2
CLIP_TOLERANCE_FRAC = 0.02
NEAR_DUPLICATE_IOU = 0.8
SUPPORTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}
CONVERTIBLE_FORMATS = ("BMP", "GIF", "TIFF", "WEBP")  # decoded, first frame re-saved as RGB PNG
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
EXIF_ORIENTATION_TAG = 0x0112

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Issue:
    code: str
    severity: str
    message: str
    fix: str
    object: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass
class ImageInfo:
    name: str
    sha256: str | None = None
    format: str | None = None  # "jpeg" | "png" when supported
    pil_format: str | None = None
    width: int = 0
    height: int = 0
    mode: str | None = None
    orientation: Any = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.severity == ERROR for i in self.issues)


# ------------------------------------------------------------------------------------------- XML
_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


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


def parse_voc(data: bytes, *, source: str = "<xml>") -> tuple[VocAnnotation | None, list[Issue]]:
    """Parse VOC XML bytes safely. Returns (annotation, issues); annotation is None when rejected."""
    from lxml import etree

    if len(data) > MAX_XML_BYTES:
        return None, [_too_large(len(data), source)]
    if _DTD_RE.search(data):
        return None, [
            Issue(
                "xml_doctype",
                ERROR,
                f"{source} declares a DOCTYPE or ENTITY (refused: entity expansion / external entity "
                "attacks)",
                "remove the <!DOCTYPE ...> block and any entity references; LabelImg never writes them",
            )
        ]
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except (etree.XMLSyntaxError, ValueError) as exc:
        return None, [
            Issue(
                "xml_parse_error",
                ERROR,
                f"{source} is not well-formed XML: {exc}",
                "re-save the annotation in LabelImg (or delete the broken file and relabel the image)",
            )
        ]
    if root is None:
        return None, [
            Issue("xml_parse_error", ERROR, f"{source} is empty", "re-save the annotation in LabelImg")
        ]
    tree = root.getroottree()
    if (
        tree.docinfo.doctype
        or tree.docinfo.internalDTD is not None
        or any(True for _ in root.iter(etree.Entity))
    ):
        return None, [
            Issue(
                "xml_doctype",
                ERROR,
                f"{source} declares a DOCTYPE or uses entities (refused)",
                "remove the <!DOCTYPE ...> block and any entity references; LabelImg never writes them",
            )
        ]
    if root.tag != "annotation":
        return None, [
            Issue(
                "xml_not_voc",
                ERROR,
                f"{source}: root element is <{root.tag}>, not <annotation>",
                "this is not a Pascal VOC annotation; save it from LabelImg in PascalVOC format",
            )
        ]
    filename = root.findtext("filename")
    filename = filename.strip() if filename is not None else None
    size = root.find("size")
    width = _int_or_none(size.findtext("width")) if size is not None else None
    height = _int_or_none(size.findtext("height")) if size is not None else None
    depth = _int_or_none(size.findtext("depth")) if size is not None else None
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (
            (bnd.findtext(k) if bnd is not None else None) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        coords = (xmin, ymin, xmax, ymax)
        pose = (obj.findtext("pose") or "").strip() or "Unspecified"
        objects.append(
            VocObject(
                index,
                name,
                coords,
                _flag(obj.findtext("difficult")),
                _flag(obj.findtext("truncated")),
                pose,
            )
        )
    return VocAnnotation(filename or None, width, height, depth, tuple(objects)), []


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


# ------------------------------------------------------------------------------------------ boxes
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


def check_objects(
    objects: tuple[VocObject, ...] | list[VocObject],
    width: int,
    height: int,
    label_ids: dict[str, int],
    *,
    tolerance_px: int = CLIP_TOLERANCE_PX,
    tolerance_frac: float = CLIP_TOLERANCE_FRAC,
    near_duplicate_iou: float = NEAR_DUPLICATE_IOU,
) -> tuple[list[Box], list[Issue]]:
    """Apply the box policy (module doc) to one image's objects: (kept boxes, issues)."""
    kept: list[Box] = []
    issues: list[Issue] = []
    tol_x = max(tolerance_px, math.ceil(tolerance_frac * width))
    tol_y = max(tolerance_px, math.ceil(tolerance_frac * height))
    known = sorted(label_ids)
    for obj in objects:
        i = obj.index
        where = f"object {i}"
        if not obj.name:
            issues.append(
                Issue(
                    "box_missing_class",
                    ERROR,
                    f"{where} has no <name>; box dropped",
                    "select the object in LabelImg and set its class",
                    i,
                )
            )
            continue
        values: list[float] = []
        bad = False
        for _key, raw in zip(("xmin", "ymin", "xmax", "ymax"), obj.coords, strict=False):
            try:
                v = float((raw or "").strip())
                if not math.isfinite(v):
                    raise ValueError
            except ValueError:
                bad = True
                break
            values.append(v)
        if bad:
            issues.append(
                Issue(
                    "box_bad_coordinates",
                    ERROR,
                    f"{where} ({obj.name}) has a missing or non-numeric coordinate {obj.coords}; box dropped",
                    "redraw the box in LabelImg (bndbox needs numeric xmin, ymin, xmax, ymax)",
                    i,
                )
            )
            continue
        rounded = [round_coord(v) for v in values]
        if any(v != r for v, r in zip(values, rounded, strict=False)):
            issues.append(
                Issue(
                    "float_coordinates",
                    INFO,
                    f"{where} ({obj.name}) has non-integer coordinates {obj.coords}; rounded half-to-even to "
                    f"{tuple(rounded)}",
                    "nothing to do (pixel coordinates are rounded); export integer coordinates to silence "
                    "this",
                    i,
                )
            )
        xmin, ymin, xmax, ymax = rounded
        if xmin > xmax or ymin > ymax:
            issues.append(
                Issue(
                    "box_inverted",
                    ERROR,
                    f"{where} ({obj.name}) is inverted (xmin,ymin,xmax,ymax = {xmin},{ymin},{xmax},{ymax}); "
                    "box dropped",
                    "redraw the box (min must be <= max), or swap the values in the XML",
                    i,
                )
            )
            continue
        outside = xmin < -tol_x or ymin < -tol_y or xmax > width + tol_x or ymax > height + tol_y
        if outside:
            issues.append(
                Issue(
                    "box_outside_image",
                    ERROR,
                    f"{where} ({obj.name}) ({xmin},{ymin},{xmax},{ymax}) lies outside the {width}x{height} "
                    "image "
                    f"by more than the clip tolerance ({tol_x}x{tol_y} px); box dropped",
                    "redraw the box inside the image, or check that the XML belongs to this image",
                    i,
                )
            )
            continue
        clipped = (
            max(0, min(xmin, width)),
            max(0, min(ymin, height)),
            max(0, min(xmax, width)),
            max(0, min(ymax, height)),
        )
        if clipped != (xmin, ymin, xmax, ymax):
            issues.append(
                Issue(
                    "box_clipped",
                    WARNING,
                    f"{where} ({obj.name}) ({xmin},{ymin},{xmax},{ymax}) reaches past the {width}x{height} "
                    "image edge; "
                    f"clipped to {clipped}",
                    "redraw the box inside the image to silence this",
                    i,
                )
            )
            xmin, ymin, xmax, ymax = clipped
        if xmin == xmax or ymin == ymax:
            issues.append(
                Issue(
                    "box_zero_area",
                    ERROR,
                    f"{where} ({obj.name}) has zero area ({xmin},{ymin},{xmax},{ymax}); box dropped",
                    "delete the stray box in LabelImg (a click without a drag) or redraw it",
                    i,
                )
            )
            continue
        if obj.name not in label_ids:
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
            issues.append(
                Issue(
                    "unknown_class",
                    ERROR,
                    f"{where} has class {obj.name!r}, which is not in the label map ({', '.join(known)}); "
                    "box dropped",
                    fix,
                    i,
                )
            )
            continue
        kept.append(
            Box(
                i,
                obj.name,
                label_ids[obj.name],
                xmin,
                ymin,
                xmax,
                ymax,
                obj.difficult,
                obj.truncated,
                obj.pose,
            )
        )
    for a_pos, a in enumerate(kept):
        for b in kept[a_pos + 1 :]:
            if a.name == b.name:
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
    return kept, issues


# ----------------------------------------------------------------------------------------- images
def check_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Hash, identify and fully decode one image. Never raises for bad files: issues say what is wrong."""
    from PIL import Image, UnidentifiedImageError

    from edgetpu_retrain.common import sha256_file

    path = Path(path)
    info = ImageInfo(name=path.name)
    try:
        info.sha256 = sha256_file(path)
    except OSError as exc:
        info.issues.append(
            Issue(
                "image_unreadable",
                ERROR,
                f"{path.name} cannot be read: {exc}",
                "check the file's permissions",
            )
        )
        return info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                info.pil_format, info.mode = im.format, im.mode
                info.width, info.height = im.size
                if info.width * info.height > max_pixels:
                    raise Image.DecompressionBombError("declared size over the limit")
                try:
                    info.orientation = im.getexif().get(EXIF_ORIENTATION_TAG)
                except Exception:  # noqa: BLE001 - a broken EXIF block is reported, not fatal
                    info.issues.append(
                        Issue(
                            "exif_unreadable",
                            WARNING,
                            f"{path.name}: the EXIF block cannot be read",
                            "re-save the image without EXIF metadata to silence this",
                        )
                    )
            with Image.open(path) as im:  # verify() must directly follow open()
                im.verify()
            with Image.open(path) as im:  # verify() leaves the image unusable: decode from a fresh open
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        declared = (
            f"{info.width}x{info.height} = {info.width * info.height} pixels"
            if info.width
            else f"too many pixels ({exc})"
        )
        info.issues.append(
            Issue(
                "decompression_bomb",
                ERROR,
                f"{path.name} declares {declared}, over the "
                f"{max_pixels}-pixel limit (decompression bomb protection); not decoded",
                "resize the image below the limit (detector inputs are ~320 px anyway) or remove it",
            )
        )
        return info
    except UnidentifiedImageError:
        info.issues.append(
            Issue(
                "image_unreadable",
                ERROR,
                f"{path.name} is not an image Pillow can identify",
                "replace it with the original JPEG/PNG, or remove it from the folder",
            )
        )
        return info
    except Exception as exc:  # noqa: BLE001 - any decoder failure (truncated, corrupt) is a verdict
        info.issues.append(
            Issue(
                "image_corrupt",
                ERROR,
                f"{path.name} does not decode ({type(exc).__name__}: {exc})",
                "the file is truncated or damaged: copy it again from the source (camera/phone/export)",
            )
        )
        return info
    info.format = SUPPORTED_FORMATS.get(info.pil_format or "")
    if info.format is None and info.pil_format in CONVERTIBLE_FORMATS:
        info.format = "png"
        return info
    if info.format is None:
        info.issues.append(
            Issue(
                "unsupported_format",
                ERROR,
                f"{path.name} is {info.pil_format}; only JPEG and PNG (or BMP/GIF/TIFF/WEBP, converted) are "
                "supported",
                "re-save it as JPEG or PNG (and update <filename> in its XML)",
            )
        )
        return info
    ext = path.suffix.lower()
    expected_ext = {"jpeg": (".jpg", ".jpeg", ".jpe"), "png": (".png",)}[info.format]
    if ext not in expected_ext:
        info.issues.append(
            Issue(
                "extension_mismatch",
                WARNING,
                f"{path.name} is really {info.format.upper()} (by its content) despite its extension; "
                f"recorded as format {info.format!r}",
                f"rename it to {path.stem}{expected_ext[0]} (and update <filename> in its XML)",
            )
        )
    return info


def exif_issues(info: ImageInfo, *, policy: str = "stored") -> list[Issue]:
    """EXIF orientation policy. "stored": 2..8 accepted with a warning, boxes and pixels used as stored."""
    o = info.orientation
    if o is None or o == 1:
        return []
    if not isinstance(o, int) or not 1 <= o <= 8:
        return [
            Issue(
                "exif_orientation_invalid",
                WARNING,
                f"{info.name} has an invalid EXIF orientation value {o!r} (valid: 1..8); ignored, stored "
                "pixels used",
                "re-save the image without EXIF orientation (e.g. `exiftool -Orientation= FILE`)",
            )
        ]
    if policy == "reject":
        return [
            Issue(
                "exif_rotated",
                ERROR,
                f"{info.name} has EXIF orientation {o}: viewers show it rotated/flipped, LabelImg labels the "
                "stored pixels",
                "re-save it with the rotation applied (e.g. PIL ImageOps.exif_transpose) and relabel, "
                "or run with --exif-policy stored if the boxes were drawn in LabelImg",
            )
        ]
    return [
        Issue(
            "exif_rotated",
            WARNING,
            f"{info.name} has EXIF orientation {o}; LabelImg labels the stored pixels, so the boxes and the "
            "TFRecord keep the stored (unrotated) pixels",
            "nothing to do if you labeled in LabelImg; if the boxes were drawn on the displayed (rotated) "
            "image, "
            "re-save it with the rotation applied and relabel",
        )
    ]
