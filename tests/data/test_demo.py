"""demo-data (demo.py): the built-in shapes dataset."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError
from edgetpu_retrain.data import demo


def sha_tree(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "drop"
    return out, demo.make_demo(out, images=24, size=256, seed=3)


def test_layout_and_json(demo_dir):
    out, result = demo_dir
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"shapes_{i:04d}.{ext}" for i in range(24) for ext in ("jpg", "xml")] + ["READY"])
    assert (out / "READY").read_bytes() == b""
    assert result["out_dir"] == str(out.resolve()) and result["images"] == 24
    assert result["classes"] == ["circle", "square", "triangle"]
    assert result["objects"] == sum(result["per_class"].values())
    assert all(n > 0 for n in result["per_class"].values())


def test_xml_is_labelimg_voc_and_boxes_inside(demo_dir):
    from lxml import etree
    from PIL import Image

    out, result = demo_dir
    total = 0
    for xml in sorted(out.glob("*.xml")):
        root = etree.parse(str(xml)).getroot()
        assert [c.tag for c in root][:7] == [
            "folder",
            "filename",
            "path",
            "source",
            "size",
            "segmented",
            "object",
        ]
        assert root.findtext("folder") == out.name
        assert root.findtext("filename") == xml.with_suffix(".jpg").name
        assert root.findtext("path") == str(xml.with_suffix(".jpg").resolve())
        assert root.findtext("source/database") == "Unknown"
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        assert (w, h, root.findtext("size/depth")) == (256, 256, "3")
        with Image.open(xml.with_suffix(".jpg")) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (w, h)
        objects = root.findall("object")
        assert 1 <= len(objects) <= 4
        boxes = []
        for obj in objects:
            assert [c.tag for c in obj] == ["name", "pose", "truncated", "difficult", "bndbox"]
            assert obj.findtext("name") in demo.CLASSES
            assert (obj.findtext("pose"), obj.findtext("truncated"), obj.findtext("difficult")) == (
                "Unspecified",
                "0",
                "0",
            )
            b = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= b[0] < b[2] <= w - 1 and 1 <= b[1] < b[3] <= h - 1
            assert b[2] - b[0] >= 0.1 * w  # large objects
            for other in boxes:  # no overlaps
                assert b[0] > other[2] or other[0] > b[2] or b[1] > other[3] or other[1] > b[3]
            boxes.append(b)
        total += len(objects)
        assert xml.read_text().startswith("<annotation>\n\t<folder>")
    assert total == result["objects"]


def test_shapes_contrast_with_background(demo_dir):
    """The drawn shape differs clearly from the pixels just outside its box."""
    import numpy as np
    from lxml import etree
    from PIL import Image

    out, _ = demo_dir
    for xml in sorted(out.glob("*.xml"))[:8]:
        pixels = np.asarray(Image.open(xml.with_suffix(".jpg")).convert("L"), dtype=np.float32)
        for obj in etree.parse(str(xml)).getroot().findall("object"):
            x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            inside = pixels[cy - 2 : cy + 3, cx - 2 : cx + 3].mean()
            ring = np.concatenate([pixels[max(0, y0 - 2), x0:x1], pixels[min(255, y1 + 2), x0:x1]])
            assert abs(inside - ring.mean()) > 40, (xml.name, obj.findtext("name"))


def test_deterministic(demo_dir, tmp_path):
    out, _ = demo_dir
    before = sha_tree(out)
    demo.make_demo(out, images=24, size=256, seed=3)  # same OUT: byte-identical
    assert sha_tree(out) == before
    other = tmp_path / "drop"
    demo.make_demo(other, images=24, size=256, seed=3)  # other OUT: only <folder>/<path> differ
    again = sha_tree(other)
    assert {k: v for k, v in again.items() if k.endswith(".jpg")} == {
        k: v for k, v in before.items() if k.endswith(".jpg")
    }
    xml_a = (
        (out / "shapes_0005.xml").read_text().replace(str(out.resolve()), "X").replace(f">{out.name}<", ">F<")
    )
    xml_b = (
        (other / "shapes_0005.xml")
        .read_text()
        .replace(str(other.resolve()), "X")
        .replace(f">{other.name}<", ">F<")
    )
    assert xml_a == xml_b
    demo.make_demo(other, images=24, size=256, seed=4)
    assert sha_tree(other)["shapes_0000.jpg"] != before["shapes_0000.jpg"]


def test_validate_accepts_demo_data(demo_dir, tmp_path, capsys):
    out, result = demo_dir
    assert cli.main(["validate", "--images", str(out), "--out", str(tmp_path / "v")]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["accepted"] == 24 and line["rejected"] == 0 and line["warnings"] == 0


def test_cli_and_errors(tmp_path, capsys):
    assert (
        cli.main(["demo-data", "--out", str(tmp_path / "d"), "--images", "3", "--size", "128", "--seed", "1"])
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line) >= {"out_dir", "images", "objects", "classes"}
    assert line["images"] == 3 and Path(line["out_dir"], "READY").is_file()
    assert cli.main(["demo-data", "--out", str(tmp_path / "e"), "--size", "10"]) == 2
    assert "--size 10" in capsys.readouterr().err
    with pytest.raises(UserError, match="--images 0"):
        demo.make_demo(tmp_path / "f", images=0)
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()
