"""Image checks: hash, identify and fully decode one image file; the EXIF orientation policy.

JPEG (incl. MPO) and PNG are used as they are; BMP/GIF/TIFF/WEBP are flagged for conversion to PNG
(validate does it); anything else is rejected. Every image is decoded fully (verify + load) so
truncated files are caught; more than MAX_IMAGE_PIXELS pixels is a decompression bomb (rejected
before decoding).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetpu_retrain.data.annotations.issues import ERROR, WARNING, Issue

MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default limit (~ 9459 x 9459)
SUPPORTED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png"}
CONVERTIBLE_FORMATS = ("BMP", "GIF", "TIFF", "WEBP")  # decoded, first frame re-saved as RGB PNG
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
EXIF_ORIENTATION_TAG = 0x0112


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


def _read_header(im: Any, info: ImageInfo, *, max_pixels: int) -> None:
    """Format, mode, size and EXIF orientation from an opened image; a declared bomb raises."""
    from PIL import Image

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
                f"{info.name}: the EXIF block cannot be read",
                "re-save the image without EXIF metadata to silence this",
            )
        )


def _decode_issue(path: Path, info: ImageInfo, *, max_pixels: int) -> Issue | None:
    """Open, verify and load the image (filling `info`); the issue when it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _read_header(im, info, max_pixels=max_pixels)
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
        return Issue(
            "decompression_bomb",
            ERROR,
            f"{path.name} declares {declared}, over the "
            f"{max_pixels}-pixel limit (decompression bomb protection); not decoded",
            "resize the image below the limit (detector inputs are ~320 px anyway) or remove it",
        )
    except UnidentifiedImageError:
        return Issue(
            "image_unreadable",
            ERROR,
            f"{path.name} is not an image Pillow can identify",
            "replace it with the original JPEG/PNG, or remove it from the folder",
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure (truncated, corrupt) is a verdict
        return Issue(
            "image_corrupt",
            ERROR,
            f"{path.name} does not decode ({type(exc).__name__}: {exc})",
            "the file is truncated or damaged: copy it again from the source (camera/phone/export)",
        )
    return None


def _format_issue(path: Path, info: ImageInfo) -> Issue | None:
    """Set `info.format` from the decoded format; the issue for an unsupported or misnamed file."""
    info.format = SUPPORTED_FORMATS.get(info.pil_format or "")
    if info.format is None and info.pil_format in CONVERTIBLE_FORMATS:
        info.format = "png"
        return None
    if info.format is None:
        return Issue(
            "unsupported_format",
            ERROR,
            f"{path.name} is {info.pil_format}; only JPEG and PNG (or BMP/GIF/TIFF/WEBP, converted) are "
            "supported",
            "re-save it as JPEG or PNG (and update <filename> in its XML)",
        )
    expected_ext = {"jpeg": (".jpg", ".jpeg", ".jpe"), "png": (".png",)}[info.format]
    if path.suffix.lower() in expected_ext:
        return None
    return Issue(
        "extension_mismatch",
        WARNING,
        f"{path.name} is really {info.format.upper()} (by its content) despite its extension; "
        f"recorded as format {info.format!r}",
        f"rename it to {path.stem}{expected_ext[0]} (and update <filename> in its XML)",
    )


def check_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Hash, identify and fully decode one image. Never raises for bad files: issues say what is wrong."""
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
    issue = _decode_issue(path, info, max_pixels=max_pixels)
    if issue is None:
        issue = _format_issue(path, info)
    if issue is not None:
        info.issues.append(issue)
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
