from __future__ import annotations

import shutil

import pytest
from hostile import GOOD_BOX, bomb_png, voc_xml

from edgetpu_retrain.data.annotations import images, voc
from edgetpu_retrain.data.annotations.boxes import check_objects, suggest_class

LABELS = {"Platelets": 1, "RBC": 2, "WBC": 3}


def objs(*specs):
    return tuple(
        voc.VocObject(i, name, tuple(str(v) for v in coords)) for i, (name, *coords) in enumerate(specs)
    )


def codes(issues):
    return [(i.code, i.object) for i in issues]


def test_parses_labelimg_and_other_tool_xml(bccd_dir):
    ann, issues = voc.read_voc(bccd_dir / "annotations" / "BloodImage_00338.xml")
    assert issues == [] and ann.filename == "BloodImage_00338.jpg" and (ann.width, ann.height) == (640, 480)
    assert ann.objects[12].coords == ("504", "337", "504", "337")
    other, issues = voc.read_voc(
        bccd_dir / "annotations" / "BloodImage_00171.xml"
    )  # verified="no", 2-space indent
    assert issues == [] and other.filename == "BloodImage_00171.jpg" and len(other.objects) > 0


def test_windows_path_is_ignored():
    ann, issues = voc.parse_voc(voc_xml("a.jpg", 640, 480, [GOOD_BOX], path="C:\\Users\\x\\a.jpg").encode())
    assert issues == [] and ann.filename == "a.jpg"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "bbbbbbbb"><!ENTITY c "&b;&b;&b;">]>'
            b"<annotation>&c;</annotation>",
            "xml_doctype",
        ),
        (
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation><filename>&x;</filename></annotation>',
            "xml_doctype",
        ),
        (b"<!doctype annotation><annotation/>", "xml_doctype"),
        (b"<annotation><filename>a.jpg</filename>", "xml_parse_error"),
        (b"\xff\xfe garbage", "xml_parse_error"),
        (b"", "xml_parse_error"),
        (b"<html/>", "xml_not_voc"),
        (b"<annotation>" + b" " * voc.MAX_XML_BYTES + b"</annotation>", "xml_too_large"),
    ],
)
def test_unsafe_or_broken_xml_is_rejected(data, code):
    ann, issues = voc.parse_voc(data, source="x.xml")
    assert ann is None and [i.code for i in issues] == [code]
    assert issues[0].severity == "error" and issues[0].fix


def test_oversized_xml_file_reports_its_real_size(tmp_path):
    path = tmp_path / "big.xml"
    path.write_bytes(b"<annotation>" + b" " * (3 * voc.MAX_XML_BYTES) + b"</annotation>")
    ann, issues = voc.read_voc(path)
    assert ann is None and [i.code for i in issues] == ["xml_too_large"]
    assert f"is {path.stat().st_size} bytes" in issues[0].message


def test_utf16_doctype_is_caught_after_parsing():
    text = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY b "x">]><annotation>&b;</annotation>'
    data = text.encode("utf-16")
    ann, issues = voc.parse_voc(data)
    assert ann is None and issues[0].code in ("xml_doctype", "xml_parse_error")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "sub/a.jpg", "C:\\img\\a.jpg", "..", "C:a.jpg"]
)
def test_filename_must_be_bare(name):
    assert voc.check_filename(name).code == "filename_unsafe"


def test_filename_ok_and_missing():
    assert voc.check_filename("IMG 0001.JPG") is None
    assert voc.check_filename(None).code == "filename_missing"


def test_rounding_is_half_to_even_and_reported():
    boxes, issues = check_objects(
        objs(("RBC", "10.5", "11.5", "100.4", "200.6"), ("RBC", 1, 2, 30, 40)), 640, 480, label_ids=LABELS
    )
    assert [(b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes] == [(10, 12, 100, 201), (1, 2, 30, 40)]
    assert codes(issues) == [("float_coordinates", 0)] and issues[0].severity == "info"


def test_edges_clipping_and_outside():
    boxes, issues = check_objects(
        objs(
            ("RBC", 540, 380, 640, 480),  # touches right/bottom exactly: valid, no issue
            ("RBC", -3, -2, 645, 100),  # within max(2 px, 2%) = 13 x 10 px: clipped
            ("RBC", 0, 0, 654, 100),  # 14 px past the edge: dropped
            ("WBC", 10, 10, 20, 491),  # 11 px below (> 10): dropped
        ),
        640,
        480,
        label_ids=LABELS,
    )
    assert [(b.index, b.xmin, b.ymin, b.xmax, b.ymax) for b in boxes] == [
        (0, 540, 380, 640, 480),
        (1, 0, 0, 640, 100),
    ]
    assert codes(issues) == [("box_clipped", 1), ("box_outside_image", 2), ("box_outside_image", 3)]
    assert "13x10 px" in issues[1].message


def test_bad_boxes_are_dropped_not_the_image():
    boxes, issues = check_objects(
        objs(
            ("RBC", 504, 337, 504, 337),
            ("RBC", 200, 100, 100, 200),
            ("RBC", 1, 1, "x", 5),
            ("", 1, 1, 5, 5),
            ("Plateletts", 1, 1, 9, 9),
            ("rbc", 1, 1, 9, 9),
            ("Dog", 1, 1, 9, 9),
            ("WBC", 1, 1, 9, 9),
            ("RBC", 700, 500, 720, 520),
        ),
        640,
        480,
        label_ids=LABELS,
    )
    assert [b.index for b in boxes] == [7]
    assert codes(issues) == [
        ("box_zero_area", 0),
        ("box_inverted", 1),
        ("box_bad_coordinates", 2),
        ("box_missing_class", 3),
        ("unknown_class", 4),
        ("unknown_class", 5),
        ("unknown_class", 6),
        ("box_outside_image", 8),
    ]
    assert "did you mean 'Platelets'?" in issues[4].fix
    assert "did you mean 'RBC'?" in issues[5].fix
    assert "did you mean" not in issues[6].fix


def test_near_duplicates_warn_and_keep_both():
    boxes, issues = check_objects(
        objs(("RBC", 100, 100, 200, 200), ("RBC", 101, 102, 201, 200), ("WBC", 100, 100, 200, 200)),
        640,
        480,
        label_ids=LABELS,
    )
    assert len(boxes) == 3
    assert codes(issues) == [("near_duplicate_boxes", 1)] and issues[0].severity == "warning"
    assert "objects 0 and 1" in issues[0].message


def test_suggest_class():
    assert suggest_class("wbc", ["RBC", "WBC"]) == "WBC"
    assert suggest_class("Raspberry Pi 3", ["Raspberry_Pi_3"]) == "Raspberry_Pi_3"
    assert suggest_class("Elephant", ["RBC", "WBC"]) is None


def test_check_image_good_truncated_bomb_garbage(tmp_path, bccd_dir):
    src = bccd_dir / "images" / "BloodImage_00000.jpg"
    good = images.check_image(src)
    assert good.ok and (good.format, good.width, good.height, good.mode) == ("jpeg", 640, 480, "RGB")
    data = src.read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 3])
    assert [i.code for i in images.check_image(tmp_path / "t.jpg").issues] == ["image_corrupt"]
    (tmp_path / "b.png").write_bytes(bomb_png())
    assert [i.code for i in images.check_image(tmp_path / "b.png").issues] == ["decompression_bomb"]
    (tmp_path / "small_bomb.png").write_bytes(bomb_png(5000, 5000))  # under Pillow's limit, over ours
    assert [i.code for i in images.check_image(tmp_path / "small_bomb.png", max_pixels=1_000_000).issues] == [
        "decompression_bomb"
    ]
    (tmp_path / "g.jpg").write_bytes(b"not an image")
    assert [i.code for i in images.check_image(tmp_path / "g.jpg").issues] == ["image_unreadable"]
    shutil.copy(src, tmp_path / "x.png")
    info = images.check_image(tmp_path / "x.png")
    assert info.ok and info.format == "jpeg" and [i.code for i in info.issues] == ["extension_mismatch"]


@pytest.mark.parametrize(
    ("value", "policy", "expected"),
    [
        (None, "stored", []),
        (1, "stored", []),
        (6, "stored", [("exif_rotated", "warning")]),
        (6, "reject", [("exif_rotated", "error")]),
        (0, "stored", [("exif_orientation_invalid", "warning")]),
        (9, "reject", [("exif_orientation_invalid", "warning")]),
    ],
)
def test_exif_policy(value, policy, expected):
    info = images.ImageInfo(name="a.jpg", orientation=value)
    assert [(i.code, i.severity) for i in images.exif_issues(info, policy=policy)] == expected
