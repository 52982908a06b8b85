"""Build a hostile LabelImg folder from real BCCD images: every case the validator must turn into a verdict.

`build_hostile_corpus(bccd_dir, dst)` writes images + XML into `dst` (LabelImg layout, flat) and
returns `{case: Expected}`; each Expected names the report entry (xml, image), its verdict and the
issue codes it must carry. Validate it with `HOSTILE_LABEL_MAP` (Platelets, RBC, WBC) as the label map.
Other tests may reuse it (e.g. build-dataset on the accepted part).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HOSTILE_LABEL_MAP = (
    "item {\n  id: 1\n  name: 'Platelets'\n}\n\n"
    "item {\n  id: 2\n  name: 'RBC'\n}\n\n"
    "item {\n  id: 3\n  name: 'WBC'\n}\n"
)
GOOD_BOX = ("RBC", 100, 100, 200, 200)


@dataclass(frozen=True)
class Expected:
    xml: str | None
    image: str | None
    verdict: str
    codes: frozenset[str] = field(default_factory=frozenset)
    # object index -> issue code, for box-level issues
    objects: tuple[tuple[int, str], ...] = ()


def voc_xml(
    filename: str,
    width: int,
    height: int,
    objects: list[tuple] | tuple = (),
    *,
    path: str | None = None,
    depth: int = 3,
    head: str = "",
) -> str:
    """A LabelImg-style XML; objects are (name, xmin, ymin, xmax, ymax) with any value types."""
    windows_path = path or "C:\\Users\\me\\images\\" + filename
    parts = [
        head,
        "<annotation>\n\t<folder>images</folder>\n",
        f"\t<filename>{filename}</filename>\n",
        f"\t<path>{windows_path}</path>\n",
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n",
        f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>{depth}</depth>\n\t</size>\n",
        "\t<segmented>0</segmented>\n",
    ]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
            f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A ~100-byte PNG whose header declares width x height pixels (never decoded by a safe reader)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def build_hostile_corpus(bccd_dir: Path, dst: Path) -> dict[str, Expected]:
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    sources = sorted((bccd_dir / "images").glob("*.jpg"))
    it = iter(sources)
    expected: dict[str, Expected] = {}

    def base() -> Path:
        return next(it)

    def put_xml(name: str, text: str | bytes) -> None:
        data = text.encode("utf-8") if isinstance(text, str) else text
        (dst / name).write_bytes(data)

    def resave(name: str, *, mode: str | None = None, fmt: str = "JPEG", **save) -> tuple[int, int]:
        with Image.open(base()) as im:
            im = im.convert(mode) if mode else im.copy()
            im.save(dst / name, format=fmt, **save)
            return im.size

    def case(key: str, xml: str | None, image: str | None, verdict: str, *codes: str, objects=()) -> None:
        expected[key] = Expected(xml, image, verdict, frozenset(codes), tuple(objects))

    # good copies (LabelImg's own files)
    for k in range(2):
        src = base()
        shutil.copy2(src, dst / src.name)
        shutil.copy2(bccd_dir / "annotations" / f"{src.stem}.xml", dst / f"{src.stem}.xml")
        case(f"good_{k}", f"{src.stem}.xml", src.name, "accepted")

    # truncated JPEG
    data = base().read_bytes()
    (dst / "truncated.jpg").write_bytes(data[: len(data) // 2])
    put_xml("truncated.xml", voc_xml("truncated.jpg", 640, 480, [GOOD_BOX]))
    case("truncated", "truncated.xml", "truncated.jpg", "rejected", "image_corrupt")

    # EXIF orientation 0..8 and invalid values
    for value in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535):
        name = f"exif_{value}"
        exif = Image.Exif()
        exif[0x0112] = value
        w, h = resave(f"{name}.jpg", exif=exif.tobytes(), quality=90)
        put_xml(f"{name}.xml", voc_xml(f"{name}.jpg", w, h, [GOOD_BOX]))
        code = () if value == 1 else ("exif_rotated",) if 2 <= value <= 8 else ("exif_orientation_invalid",)
        case(name, f"{name}.xml", f"{name}.jpg", "accepted", *code)

    # formats and modes
    for name, mode, fmt, ext, codes in (
        ("png_rgb", "RGB", "PNG", "png", ()),
        ("gray", "L", "JPEG", "jpg", ("image_converted",)),
        ("cmyk", "CMYK", "JPEG", "jpg", ("image_converted",)),
        ("rgba", "RGBA", "PNG", "png", ("image_converted",)),
        ("palette", "P", "PNG", "png", ("image_converted",)),
        ("gray_png", "L", "PNG", "png", ("image_converted",)),
        ("png_named_jpg", "RGB", "PNG", "jpg", ("extension_mismatch",)),
        ("bitmap", "RGB", "BMP", "bmp", ("image_converted",)),
        ("gif", "P", "GIF", "gif", ("image_converted",)),
        ("webp", "RGB", "WEBP", "webp", ("image_converted",)),
    ):
        w, h = resave(f"{name}.{ext}", mode=mode, fmt=fmt)
        put_xml(f"{name}.xml", voc_xml(f"{name}.{ext}", w, h, [GOOD_BOX]))
        case(name, f"{name}.xml", f"{name}.{ext}", "accepted", *codes)

    # XML attacks and breakage (each with a valid image of the same stem)
    laughs = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
        ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
        ' <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">\n]>\n'
    )
    xml_cases = {
        "billion_laughs": voc_xml("billion_laughs.jpg", 640, 480, [("&lol3;", 1, 1, 9, 9)], head=laughs),
        "doctype": voc_xml(
            "doctype.jpg",
            640,
            480,
            [GOOD_BOX],
            head='<!DOCTYPE annotation SYSTEM "http://example.com/x.dtd">\n',
        ),
        "xxe": voc_xml(
            "&xxe;", 640, 480, [GOOD_BOX], head='<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        ),
        "garbage": "\x00\x01 this is not XML at all <<<",
        "not_voc": "<html><body>hello</body></html>",
        "too_large": voc_xml("too_large.jpg", 640, 480, [GOOD_BOX]).replace(
            "<segmented>", "<!--" + "x" * (1 << 20) + "--><segmented>"
        ),
    }
    xml_codes = {
        "billion_laughs": "xml_doctype",
        "doctype": "xml_doctype",
        "xxe": "xml_doctype",
        "garbage": "xml_parse_error",
        "not_voc": "xml_not_voc",
        "too_large": "xml_too_large",
    }
    for name, text in xml_cases.items():
        resave(f"{name}.jpg")
        put_xml(f"{name}.xml", text)
        case(name, f"{name}.xml", f"{name}.jpg", "rejected", xml_codes[name])

    # <filename> problems
    resave("traversal.jpg")
    put_xml("traversal.xml", voc_xml("../../etc/passwd", 640, 480, [GOOD_BOX]))
    case("traversal", "traversal.xml", "traversal.jpg", "rejected", "filename_unsafe")
    resave("case.JPG")
    put_xml("case.xml", voc_xml("case.jpg", 640, 480, [GOOD_BOX]))
    case("case_mismatch", "case.xml", "case.JPG", "rejected", "filename_case_mismatch")
    resave("renamed.jpg")
    put_xml("renamed.xml", voc_xml("IMG_0001.jpg", 640, 480, [GOOD_BOX]))
    case("filename_mismatch", "renamed.xml", "renamed.jpg", "rejected", "filename_mismatch")
    put_xml("orphan.xml", voc_xml("orphan.jpg", 640, 480, [GOOD_BOX]))
    case("orphan_xml", "orphan.xml", None, "rejected", "image_missing")
    resave("lonely.jpg")
    case("unlabeled", None, "lonely.jpg", "rejected", "unlabeled")

    # coordinates and classes
    resave("floats.jpg")
    put_xml(
        "floats.xml", voc_xml("floats.jpg", 640, 480, [("RBC", "10.5", "11.5", "100.4", "200.6"), GOOD_BOX])
    )
    case(
        "floats",
        "floats.xml",
        "floats.jpg",
        "accepted",
        "float_coordinates",
        objects=[(0, "float_coordinates")],
    )
    resave("outside.jpg")
    put_xml(
        "outside.xml",
        voc_xml(
            "outside.jpg",
            640,
            480,
            [
                ("RBC", -3, 10, 645, 100),  # within tolerance: clipped to (0, 10, 640, 100)
                ("WBC", 500, 300, 760, 470),  # 120 px past the right edge: dropped
                ("RBC", 540, 380, 640, 480),  # touches right/bottom edge exactly: valid
            ],
        ),
    )
    case(
        "outside",
        "outside.xml",
        "outside.jpg",
        "accepted",
        "box_clipped",
        "box_outside_image",
        objects=[(0, "box_clipped"), (1, "box_outside_image")],
    )
    resave("inverted.jpg")
    put_xml("inverted.xml", voc_xml("inverted.jpg", 640, 480, [("RBC", 200, 200, 100, 100), GOOD_BOX]))
    case(
        "inverted", "inverted.xml", "inverted.jpg", "accepted", "box_inverted", objects=[(0, "box_inverted")]
    )
    resave("all_bad.jpg")
    put_xml(
        "all_bad.xml", voc_xml("all_bad.jpg", 640, 480, [("RBC", 50, 50, 50, 80), ("WBC", 10, 10, "abc", 40)])
    )
    case(
        "all_bad",
        "all_bad.xml",
        "all_bad.jpg",
        "rejected",
        "no_valid_boxes",
        "box_zero_area",
        "box_bad_coordinates",
        objects=[(0, "box_zero_area"), (1, "box_bad_coordinates")],
    )
    resave("misspelled.jpg")
    put_xml("misspelled.xml", voc_xml("misspelled.jpg", 640, 480, [("Plateletts", 10, 10, 40, 40), GOOD_BOX]))
    case(
        "misspelled",
        "misspelled.xml",
        "misspelled.jpg",
        "accepted",
        "unknown_class",
        objects=[(0, "unknown_class")],
    )
    resave("lowercase_class.jpg")
    put_xml("lowercase_class.xml", voc_xml("lowercase_class.jpg", 640, 480, [("rbc", 10, 10, 40, 40)]))
    case(
        "lowercase_class",
        "lowercase_class.xml",
        "lowercase_class.jpg",
        "rejected",
        "unknown_class",
        "no_valid_boxes",
    )
    resave("empty.jpg")
    put_xml("empty.xml", voc_xml("empty.jpg", 640, 480, []))
    case("empty", "empty.xml", "empty.jpg", "accepted", "background_image")
    resave("size_mismatch.jpg")
    put_xml("size_mismatch.xml", voc_xml("size_mismatch.jpg", 800, 600, [GOOD_BOX]))
    case("size_mismatch", "size_mismatch.xml", "size_mismatch.jpg", "rejected", "size_mismatch")

    # images that are not images
    (dst / "bomb.png").write_bytes(bomb_png())
    put_xml("bomb.xml", voc_xml("bomb.png", 100_000, 100_000, [GOOD_BOX]))
    case("bomb", "bomb.xml", "bomb.png", "rejected", "decompression_bomb")
    (dst / "noise.jpg").write_bytes(bytes(range(256)) * 8)
    put_xml("noise.xml", voc_xml("noise.jpg", 640, 480, [GOOD_BOX]))
    case("noise_image", "noise.xml", "noise.jpg", "rejected", "image_unreadable")

    # byte-identical images: different labels (both rejected), same labels (one kept)
    src = base()
    for name, box in (("dup_a", GOOD_BOX), ("dup_b", ("WBC", 300, 300, 400, 400))):
        shutil.copy2(src, dst / f"{name}.jpg")
        put_xml(f"{name}.xml", voc_xml(f"{name}.jpg", 640, 480, [box]))
        case(name, f"{name}.xml", f"{name}.jpg", "rejected", "duplicate_image_conflict")
    src = base()
    for name in ("same_a", "same_b"):
        shutil.copy2(src, dst / f"{name}.jpg")
        put_xml(f"{name}.xml", voc_xml(f"{name}.jpg", 640, 480, [GOOD_BOX]))
    case("same_a", "same_a.xml", "same_a.jpg", "accepted")
    case("same_b", "same_b.xml", "same_b.jpg", "rejected", "duplicate_image")

    # not an input: listed as ignored
    (dst / "README.txt").write_text("notes from the labeling team\n")
    return expected
