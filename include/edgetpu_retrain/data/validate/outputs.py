"""What validate writes besides the reports: converted images, accepted.json records, quarantine."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import atomic_dir, sha256_file
from edgetpu_retrain.data.validate.entries import Entry
from edgetpu_retrain.data.validate.policies import CONVERTED

QUARANTINE = "quarantine"


def convert_image(src: Path, dst: Path, fmt: str) -> None:
    """Re-save `src` as RGB: PNG stays PNG (lossless), JPEG becomes RGB JPEG quality 95."""
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


def write_converted(accepted: list[Entry], *, images_dir: Path, out: Path, write: bool) -> int:
    """Fill OUT/converted with the accepted images that need it (or remove it); returns their count."""
    needs_convert = [e for e in accepted if e.convert]
    converted_dir = out / CONVERTED
    if needs_convert and write:
        with atomic_dir(converted_dir) as tmp:
            for e in needs_convert:
                assert e.image is not None and e.converted_name is not None and e.info is not None
                assert e.info.format is not None
                convert_image(images_dir / e.image, tmp / e.converted_name, e.info.format)
    elif converted_dir.exists():
        shutil.rmtree(converted_dir)
    return len(needs_convert)


def records(accepted: list[Entry], *, images_dir: Path, out: Path) -> list[dict[str, Any]]:
    """accepted.json's image records, sorted by file name (also stored on each entry)."""
    converted_dir = out / CONVERTED
    found = []
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
        found.append(e.record)
    return sorted(found, key=lambda r: r["filename"])


def write_quarantine(rejected: list[Entry], *, images_dir: Path, out: Path, enabled: bool) -> None:
    """Copy the rejected files into OUT/quarantine (--quarantine), or remove a stale one."""
    quarantine_dir = out / QUARANTINE
    if enabled and rejected:
        with atomic_dir(quarantine_dir) as tmp:
            for e in rejected:
                if e.xml:
                    assert e.xml_dir is not None
                    shutil.copy2(e.xml_dir / e.xml, tmp / e.xml)
                if e.image and not (tmp / e.image).exists():
                    shutil.copy2(images_dir / e.image, tmp / e.image)
    elif quarantine_dir.exists():
        shutil.rmtree(quarantine_dir)
