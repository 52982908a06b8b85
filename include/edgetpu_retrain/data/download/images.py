"""Is a downloaded body a usable image? Decoded fully before it may touch the disk."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from edgetpu_retrain.data.download.records import FetchError

# Pillow format -> the extension the file gets. Formats outside this table are rejected: the training
# pipeline (TF OD API) reads JPEG/PNG, and validate can convert the other common ones.
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
}
# Pillow's name for camera JPEGs carrying extra frames (MPF): still JPEG files for every reader.
FORMAT_ALIASES: dict[str, str] = {"MPO": "JPEG"}


@dataclass(frozen=True)
class ImageInfo:
    """What Pillow found in a body: the format decides the extension, the size goes in the report."""

    format: str
    width: int
    height: int


def extension_for(image_format: str) -> str:
    return FORMAT_EXTENSIONS[image_format.upper()]


def inspect_image(data: bytes) -> ImageInfo:
    """Decode `data` fully with Pillow; raise FetchError (not retryable) when it is not a usable image.

    `verify()` checks structure (PNG CRCs); `load()` on a fresh open decodes the pixels, which also
    catches truncated JPEGs. Decompression-bomb warnings are errors: a tiny file claiming gigapixels
    would exhaust memory in every later step.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                image_format, (width, height) = image.format or "", image.size
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not an image"
        raise FetchError(
            f"body is {kind} (Pillow cannot identify it); the URL must point at the image "
            "file itself, not a web page about it",
            retryable=False,
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise FetchError(f"image too large to decode safely ({exc})", retryable=False) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FetchError(
            f"image is corrupt or truncated ({exc}); re-export or re-upload it", retryable=False
        ) from None
    image_format = FORMAT_ALIASES.get(image_format.upper(), image_format.upper())
    if image_format not in FORMAT_EXTENSIONS:
        raise FetchError(
            f"image format {image_format or 'unknown'} is not supported; convert it to JPEG or PNG",
            retryable=False,
        )
    return ImageInfo(format=image_format.lower(), width=width, height=height)
