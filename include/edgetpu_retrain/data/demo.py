"""`edgetpu-retrain demo-data`: draw the built-in shapes dataset (JPEG + LabelImg VOC XML).

Writes OUT (atomically: built beside OUT, then renamed) as one labeled drop in LabelImg's layout:
`shapes_0000.jpg` + `shapes_0000.xml` ... and an empty `READY` marker written last (the marker the
drop sensor waits for, see pipeline/drops.py).

Each image (SIZE x SIZE, RGB) has a gradient, noise or striped background in muted colours and 1-4
large (18-45 % of the side), saturated shapes -- circle, square, triangle (pointing up or down) --
whose brightness is chosen far from the background's, placed without overlapping (a few pixels gap).
Boxes are tight pixel boxes, inside the image (never touching the border, so `truncated` is 0).
That is easy enough for a small SSD to learn in a few hundred steps.

Determinism: image i uses `random.Random(f"{seed}:{i}")` (only `random()`, whose sequence Python
guarantees) and a numpy PCG64 generator seeded from it for the noise; JPEG quality 90 with fixed
settings. The same OUT, count, size and seed give byte-identical files (the XML `<path>` holds the
image's absolute path, as LabelImg writes it, so a different OUT changes only that line).
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import random
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from edgetpu_retrain.common import UserError, atomic_dir

log = logging.getLogger("edgetpu_retrain.data.demo")

CLASSES = ("circle", "square", "triangle")
READY_MARKER = "READY"
MIN_SIZE = 64
MAX_SIZE = 4096
MAX_IMAGES = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", required=True, help="folder to write (replaced atomically): images + XML + READY"
    )
    parser.add_argument("--images", type=int, default=60, help="number of images (default 60)")
    parser.add_argument(
        "--size",
        type=int,
        default=320,
        help=f"image width = height in pixels ({MIN_SIZE}..{MAX_SIZE}, default 320)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")


def run(args: argparse.Namespace) -> dict:
    return make_demo(args.out, images=args.images, size=args.size, seed=args.seed)


# ------------------------------------------------------------------------------------------ drawing


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _background(rng: random.Random, size: int) -> Any:
    """A muted gradient, noisy or striped background as a uint8 [size, size, 3] array."""
    import numpy as np

    noise_rng = np.random.default_rng(int(rng.random() * 2**63))
    dark = rng.random() < 0.5  # dark or light scene; shapes get a brightness far from it
    base_v = 0.15 + 0.25 * rng.random() if dark else 0.65 + 0.25 * rng.random()
    c1 = np.array(_hsv(rng.random(), 0.1 + 0.3 * rng.random(), base_v), dtype=np.float32)
    c2 = np.array(
        _hsv(rng.random(), 0.1 + 0.3 * rng.random(), min(1.0, max(0.0, base_v + 0.2 * (rng.random() - 0.5)))),
        dtype=np.float32,
    )
    kind = rng.random()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    angle = 2 * math.pi * rng.random()
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / (abs(math.cos(angle)) + abs(math.sin(angle)))
    t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    if kind < 0.4:  # gradient
        img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
        sigma = 4.0
    elif kind < 0.7:  # noise over a flat colour
        img = np.broadcast_to(c1, (size, size, 3)).copy()
        sigma = 14.0
    else:  # soft stripes
        period = 8 + 24 * rng.random()
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * t * size / period)
        img = c1[None, None, :] * (1 - 0.5 * wave[..., None]) + c2[None, None, :] * (0.5 * wave[..., None])
        sigma = 6.0
    img = img + noise_rng.normal(0.0, sigma, size=(size, size, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _contrasting(
    colour: tuple[int, int, int], background_luma: float, *, delta: float = 90.0
) -> tuple[int, int, int]:
    """`colour` (same hue) brightened toward white or darkened toward black to a luma `delta` away
    from the background's."""
    luma = _luma(colour)
    if background_luma < 128:
        target = min(245.0, background_luma + delta)
        if luma >= target:
            return colour
        a = (target - luma) / (255.0 - luma)
        return tuple(round(c + (255 - c) * a) for c in colour)  # type: ignore[return-value]
    target = max(10.0, background_luma - delta)
    if luma <= target:
        return colour
    return tuple(round(c * target / luma) for c in colour)  # type: ignore[return-value]


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 <= b[2] + gap and b[0] <= x1 + gap and y0 <= b[3] + gap and b[1] <= y1 + gap for b in boxes)


def draw_image(rng: random.Random, size: int) -> tuple[Any, list[dict]]:
    """One RGB PIL image and its objects [{"class", "xmin", "ymin", "xmax", "ymax"}] (pixel boxes)."""
    from PIL import Image, ImageDraw

    pixels = _background(rng, size)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    wanted = 1 + int(rng.random() * 4)
    boxes: list[tuple[int, int, int, int]] = []
    objects: list[dict] = []
    margin = 2
    for _ in range(wanted):
        for _attempt in range(40):
            side = int(size * (0.18 + 0.27 * rng.random()))
            if len(boxes) >= 2:
                side = int(side * 0.8)
            x0 = margin + int(rng.random() * (size - 2 * margin - side))
            y0 = margin + int(rng.random() * (size - 2 * margin - side))
            box = (x0, y0, x0 + side - 1, y0 + side - 1)
            if not _overlaps(box, boxes, gap=4):
                break
        else:
            continue
        cls = CLASSES[int(rng.random() * len(CLASSES))]
        x0, y0, x1, y1 = box
        region = pixels[y0 : y1 + 1, x0 : x1 + 1].reshape(-1, 3).mean(axis=0)
        colour = _contrasting(_hsv(rng.random(), 0.7 + 0.3 * rng.random(), 1.0), _luma(tuple(region)))
        if cls == "circle":
            draw.ellipse(box, fill=colour)
        elif cls == "square":
            draw.rectangle(box, fill=colour)
        else:
            if rng.random() < 0.5:
                points = [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)]  # pointing up
            else:
                points = [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)]  # pointing down
            draw.polygon(points, fill=colour)
        boxes.append(box)
        objects.append({"class": cls, "xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1})
    return image, objects


def voc_xml(
    *, folder: str, filename: str, path: str, width: int, height: int, objects: list[dict], depth: int = 3
) -> bytes:
    """Pascal VOC XML exactly as LabelImg writes it (tab indentation, no XML declaration)."""
    lines = [
        "<annotation>",
        f"\t<folder>{escape(folder)}</folder>",
        f"\t<filename>{escape(filename)}</filename>",
        f"\t<path>{escape(path)}</path>",
        "\t<source>",
        "\t\t<database>Unknown</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        f"\t\t<depth>{depth}</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for obj in objects:
        # LabelImg marks a box touching the image border as truncated
        truncated = int(obj["xmin"] <= 1 or obj["ymin"] <= 1 or obj["xmax"] >= width or obj["ymax"] >= height)
        lines += [
            "\t<object>",
            f"\t\t<name>{escape(obj['class'])}</name>",
            "\t\t<pose>Unspecified</pose>",
            f"\t\t<truncated>{truncated}</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{obj['xmin']}</xmin>",
            f"\t\t\t<ymin>{obj['ymin']}</ymin>",
            f"\t\t\t<xmax>{obj['xmax']}</xmax>",
            f"\t\t\t<ymax>{obj['ymax']}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return ("\n".join(lines) + "\n").encode("utf-8")


def make_demo(out_dir: str | os.PathLike[str], *, images: int = 60, size: int = 320, seed: int = 0) -> dict:
    """Draw the shapes dataset into OUT; returns the JSON-line dict."""
    if not 1 <= images <= MAX_IMAGES:
        raise UserError(f"--images {images}: must be 1..{MAX_IMAGES}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"--size {size}: must be {MIN_SIZE}..{MAX_SIZE} pixels (shapes need room)")
    out = Path(out_dir).resolve()
    per_class = dict.fromkeys(CLASSES, 0)
    total = 0
    with atomic_dir(out) as tmp:
        for i in range(images):
            rng = random.Random(f"{seed}:{i}")
            image, objects = draw_image(rng, size)
            name = f"shapes_{i:04d}"
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90, optimize=False, progressive=False, subsampling=0)
            (tmp / f"{name}.jpg").write_bytes(buf.getvalue())
            xml = voc_xml(
                folder=out.name,
                filename=f"{name}.jpg",
                path=str(out / f"{name}.jpg"),
                width=size,
                height=size,
                objects=objects,
            )
            (tmp / f"{name}.xml").write_bytes(xml)
            for obj in objects:
                per_class[obj["class"]] += 1
            total += len(objects)
        (tmp / READY_MARKER).write_bytes(b"")  # last: the drop is complete
    log.info("demo-data %s: %d images, %d objects %s", out, images, total, per_class)
    return {
        "out_dir": str(out),
        "images": images,
        "objects": total,
        "classes": list(CLASSES),
        "per_class": per_class,
    }
