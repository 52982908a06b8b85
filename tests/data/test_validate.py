from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hostile import HOSTILE_LABEL_MAP, build_hostile_corpus, voc_xml
from testdata import copy_labelimg_folder

from edgetpu_retrain import cli

JSON_KEYS = {"report", "accepted", "rejected", "label_map", "annotations", "out_dir", "warnings"}


def run_validate(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = cli.main(["validate", *argv])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


def load(path: Path):
    return json.loads(Path(path).read_text())


def entry(report: dict, xml: str | None = None, image: str | None = None) -> dict:
    found = [
        f
        for f in report["files"]
        if (xml is None or f["xml"] == xml) and (image is None or f["image"] == image)
    ]
    assert len(found) == 1, (xml, image, found)
    return found[0]


# ------------------------------------------------------------------------------------------- bccd
@pytest.fixture(scope="module")
def bccd_run(tmp_path_factory, bccd_full_dir):
    import time

    data = copy_labelimg_folder(bccd_full_dir, tmp_path_factory.mktemp("bccd") / "drop")
    out = data.parent / "validated"
    argv = ["validate", "--images", str(data), "--out", str(out)]
    start = time.perf_counter()
    assert cli.main(argv) == 0
    seconds = time.perf_counter() - start
    return data, out, seconds


def test_bccd_report(bccd_run, capsys):
    data, out, seconds = bccd_run
    report = load(out / "validation_report.json")
    s = report["summary"]
    assert (s["entries"], s["accepted"], s["rejected"], s["xml_files"], s["image_files"]) == (
        364,
        364,
        0,
        364,
        364,
    )
    # README numbering is 0-based (object 12 of 00338 is the 13th <object>); the report uses the same index
    dropped = [
        (f["xml"], i["object"], i["code"])
        for f in report["files"]
        for i in f["issues"]
        if i["severity"] == "error"
    ]
    assert dropped == [
        ("BloodImage_00338.xml", 12, "box_zero_area"),
        ("BloodImage_00343.xml", 3, "box_zero_area"),
    ]
    near = sorted(
        f["xml"][11:16] for f in report["files"] for i in f["issues"] if i["code"] == "near_duplicate_boxes"
    )
    assert near == ["00013", "00020", "00100", "00104", "00251", "00284", "00331", "00403"]
    assert s["warnings"] == 8 and s["per_class"] == {"Platelets": 361, "RBC": 4155 - 2, "WBC": 372}
    for stem in ("00171", "00178", "00228"):  # other tool's XML: parsed, accepted, every object kept
        f = entry(report, xml=f"BloodImage_{stem}.xml")
        assert f["verdict"] == "accepted" and f["issues"] == [] and f["objects"] > 0
    txt = (out / "validation_report.txt").read_text()
    assert "BloodImage_00338.xml object 12: [box_zero_area]" in txt and "RBC" in txt
    print(f"bccd validate: 364 images in {seconds:.2f} s ({364 / seconds:.0f} images/s)")


def test_bccd_accepted_json_and_rerun_is_byte_identical(bccd_run, capsys):
    data, out, _ = bccd_run
    accepted = load(out / "accepted.json")
    assert accepted["version"] == 1 and accepted["label_map"] == "label_map.pbtxt"
    images = accepted["images"]
    assert [r["filename"] for r in images] == sorted(p.name for p in data.glob("*.jpg"))
    first = images[0]
    assert set(first) == {"filename", "path", "sha256", "format", "width", "height", "source_xml", "objects"}
    assert first["path"] == str(data / first["filename"]) and first["source_xml"] == str(
        data / "BloodImage_00000.xml"
    )
    assert set(first["objects"][0]) == {
        "class",
        "label",
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "difficult",
        "truncated",
        "pose",
    }
    objects = [o for r in images for o in r["objects"]]
    assert len(objects) == 4888 - 2
    assert Counter((o["class"], o["label"]) for o in objects) == {
        ("RBC", 2): 4153,
        ("WBC", 3): 372,
        ("Platelets", 1): 361,
    }
    edge = [o for r in images for o in r["objects"] if o["xmax"] == r["width"] or o["ymax"] == r["height"]]
    assert len(edge) == 545
    assert (out / "label_map.pbtxt").read_text().count("item {") == 3

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, result, _ = run_validate(capsys, "--images", str(data), "--out", str(out))
    assert code == 0 and set(result) == JSON_KEYS
    assert (result["accepted"], result["rejected"], result["warnings"]) == (364, 0, 8)
    assert result["annotations"] == str(out / "accepted.json") and result["out_dir"] == str(out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# -------------------------------------------------------------------------------- microcontroller
def test_microcontroller_separate_folders_windows_paths(microcontroller_dir, tmp_path, capsys):
    out = tmp_path / "v"
    code, result, _ = run_validate(
        capsys,
        "--images",
        str(microcontroller_dir / "images"),
        "--annotations",
        str(microcontroller_dir / "annotations"),
        "--out",
        str(out),
    )
    assert code == 0 and (result["accepted"], result["rejected"], result["warnings"]) == (149, 0, 0)
    images = load(out / "accepted.json")["images"]
    assert len(images) == 149 and sum(len(r["objects"]) for r in images) == 177
    assert all(
        r["path"].startswith(str(microcontroller_dir / "images")) and "\\" not in r["path"] for r in images
    )
    assert Counter(o["class"] for r in images for o in r["objects"]) == {
        "ESP8266": 47,
        "Heltec_ESP32_Lora": 44,
        "Arduino_Nano": 43,
        "Raspberry_Pi_3": 43,
    }


# -------------------------------------------------------------------------------------- hostile
@pytest.fixture(scope="module")
def hostile(tmp_path_factory, bccd_dir):
    root = tmp_path_factory.mktemp("hostile")
    expected = build_hostile_corpus(bccd_dir, root / "drop")
    (root / "lm.pbtxt").write_text(HOSTILE_LABEL_MAP)
    return root, expected


def test_hostile_every_case_gets_its_verdict(hostile, capsys):
    root, expected = hostile
    drop, out = root / "drop", root / "out"
    inputs = {p.name: p.read_bytes() for p in drop.iterdir()}
    code, result, _ = run_validate(
        capsys,
        "--images",
        str(drop),
        "--label-map",
        str(root / "lm.pbtxt"),
        "--out",
        str(out),
        "--max-rejected-fraction",
        "0.9",
        "--quarantine",
    )
    assert code == 0, "hostile corpus must validate with a raised rejected fraction"
    report = load(out / "validation_report.json")
    for case, exp in expected.items():
        f = entry(report, xml=exp.xml, image=exp.image) if exp.xml else entry(report, image=exp.image)
        got = {i["code"] for i in f["issues"]}
        assert f["verdict"] == exp.verdict, (case, f)
        assert exp.codes <= got, (case, exp.codes, got)
        if not exp.codes and exp.verdict == "accepted":
            assert not [i for i in f["issues"] if i["severity"] != "info"], (case, f)
        for index, obj_code in exp.objects:
            assert any(i["object"] == index and i["code"] == obj_code for i in f["issues"]), (
                case,
                index,
                obj_code,
            )
        assert all(
            i["message"] and i["fix"] and i["severity"] in ("error", "warning", "info") for i in f["issues"]
        )
    # every input appears in the report (README.txt as ignored), nothing is modified
    named = (
        {f["xml"] for f in report["files"]}
        | {f["image"] for f in report["files"]}
        | set(report["summary"]["ignored_files"])
    )
    assert set(inputs) <= named
    assert {p.name: p.read_bytes() for p in drop.iterdir()} == inputs
    assert result["accepted"] == sum(e.verdict == "accepted" for e in expected.values())

    records = {r["filename"]: r for r in load(out / "accepted.json")["images"]}
    from PIL import Image

    for name in ("gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "gray_png.png"):
        rec = records[name]
        assert rec["path"] == str(out / "converted" / name)
        with Image.open(rec["path"]) as im:
            assert (
                im.mode == "RGB"
                and im.format == rec["format"].upper()
                and im.size == (rec["width"], rec["height"])
            )
    for name in ("bitmap.bmp", "gif.gif", "webp.webp"):  # other formats: converted to PNG, filename follows
        rec = records.pop(name.rsplit(".", 1)[0] + ".png")
        assert rec["format"] == "png" and rec["path"] == str(
            out / "converted" / (name.rsplit(".", 1)[0] + ".png")
        )
        assert rec["source_xml"] == str(drop / (name.rsplit(".", 1)[0] + ".xml"))
        records[name] = rec
    assert records["png_rgb.png"]["path"] == str(drop / "png_rgb.png")
    assert records["png_named_jpg.jpg"]["format"] == "png"
    assert records["exif_6.jpg"]["path"] == str(drop / "exif_6.jpg")  # stored pixels, used as-is
    assert [(o["xmin"], o["ymin"], o["xmax"], o["ymax"]) for o in records["floats.jpg"]["objects"]] == [
        (10, 12, 100, 201),
        (100, 100, 200, 200),
    ]
    assert [(o["xmin"], o["ymin"], o["xmax"], o["ymax"]) for o in records["outside.jpg"]["objects"]] == [
        (0, 10, 640, 100),
        (540, 380, 640, 480),
    ]
    assert records["empty.jpg"]["objects"] == []
    assert set(records) == {e.image for e in expected.values() if e.verdict == "accepted"}
    quarantined = {p.name for p in (out / "quarantine").iterdir()}
    assert {
        "truncated.jpg",
        "truncated.xml",
        "traversal.xml",
        "bomb.png",
        "lonely.jpg",
        "same_b.jpg",
    } <= quarantined
    assert "same_a.jpg" not in quarantined


def test_hostile_rejected_fraction_fails_but_writes_reports(hostile, capsys):
    root, _ = hostile
    out = root / "out_default"
    out.mkdir()
    (out / "accepted.json").write_text("{}")  # a stale result must not survive a failed run
    code, _, err = run_validate(
        capsys,
        "--images",
        str(root / "drop"),
        "--label-map",
        str(root / "lm.pbtxt"),
        "--out",
        str(out),
        "--max-rejected-fraction",
        "0.25",
    )
    reason = err.strip().splitlines()[-1]
    assert (
        code == 2
        and reason.startswith("error: ")
        and "entries rejected" in reason
        and "--max-rejected-fraction 0.25" in reason
    )
    assert (out / "validation_report.json").exists() and not (out / "accepted.json").exists()
    assert load(out / "validation_report.json")["summary"]["status"].startswith("failed:")


def test_hostile_policies(hostile, capsys):
    root, _ = hostile
    drop, lm = str(root / "drop"), str(root / "lm.pbtxt")
    base = ["--images", drop, "--label-map", lm, "--max-rejected-fraction", "1"]
    code, _, _ = run_validate(
        capsys,
        *base,
        "--out",
        str(root / "p"),
        "--drop-empty",
        "--unlabeled",
        "background",
        "--exif-policy",
        "reject",
        "--image-policy",
        "reject",
    )
    assert code == 0
    report = load(root / "p" / "validation_report.json")
    assert entry(report, xml="empty.xml")["verdict"] == "rejected"
    assert entry(report, image="lonely.jpg")["verdict"] == "accepted"
    assert (
        entry(report, xml="exif_6.xml")["verdict"] == "rejected"
        and entry(report, xml="exif_1.xml")["verdict"] == "accepted"
    )
    assert entry(report, xml="exif_9.xml")["verdict"] == "accepted"
    assert {i["code"] for i in entry(report, xml="cmyk.xml")["issues"]} == {"image_not_rgb"}
    assert not (root / "p" / "converted").exists()
    lonely = [r for r in load(root / "p" / "accepted.json")["images"] if r["filename"] == "lonely.jpg"][0]
    assert lonely["source_xml"] is None and lonely["objects"] == []


def test_new_class_needs_append_labels(tmp_path, bccd_dir, capsys):
    drop = copy_labelimg_folder(bccd_dir, tmp_path / "drop", names=["BloodImage_00000", "BloodImage_00001"])
    shutil.copy(bccd_dir / "images" / "BloodImage_00002.jpg", drop / "BloodImage_00002.jpg")
    (drop / "BloodImage_00002.xml").write_text(
        voc_xml(
            "BloodImage_00002.jpg",
            640,
            480,
            [("Sickle", 1, 1, 50, 50), ("RBC", 60, 60, 90, 90), ("rbc", 100, 100, 150, 150)],
        )
    )
    lm = tmp_path / "lm.pbtxt"
    lm.write_text(HOSTILE_LABEL_MAP)
    code, _, err = run_validate(
        capsys, "--images", str(drop), "--label-map", str(lm), "--out", str(tmp_path / "a")
    )
    assert code == 2 and "1 class(es) not in the label map: 'Sickle';" in err and "--append-labels" in err
    code, result, _ = run_validate(
        capsys, "--images", str(drop), "--label-map", str(lm), "--append-labels", "--out", str(tmp_path / "b")
    )
    assert code == 0
    assert (
        tmp_path / "b" / "label_map.pbtxt"
    ).read_text() == HOSTILE_LABEL_MAP + "\nitem {\n  id: 4\n  name: 'Sickle'\n}\n"
    report = load(tmp_path / "b" / "validation_report.json")
    assert report["summary"]["label_map_source"] == "appended" and report["summary"]["appended_classes"] == [
        "Sickle"
    ]
    issues = entry(report, xml="BloodImage_00002.xml")["issues"]
    assert [(i["code"], i["object"]) for i in issues] == [("unknown_class", 2)] and "never added" in issues[
        0
    ]["fix"]
    assert lm.read_text() == HOSTILE_LABEL_MAP


def test_generated_map_treats_case_variants_as_misspellings(tmp_path, bccd_dir, capsys):
    drop = copy_labelimg_folder(bccd_dir, tmp_path / "drop", names=["BloodImage_00000", "BloodImage_00001"])
    shutil.copy(bccd_dir / "images" / "BloodImage_00002.jpg", drop / "BloodImage_00002.jpg")
    (drop / "BloodImage_00002.xml").write_text(
        voc_xml("BloodImage_00002.jpg", 640, 480, [("rbc", 1, 1, 50, 50), ("WBC", 60, 60, 90, 90)])
    )
    code, _, _ = run_validate(capsys, "--images", str(drop), "--out", str(tmp_path / "v"))
    assert code == 0
    assert "'rbc'" not in (tmp_path / "v" / "label_map.pbtxt").read_text()
    issue = entry(load(tmp_path / "v" / "validation_report.json"), xml="BloodImage_00002.xml")["issues"][0]
    assert (issue["code"], issue["object"]) == ("unknown_class", 0) and "did you mean 'RBC'?" in issue["fix"]


def test_nothing_usable_and_bad_out(tmp_path, capsys):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.jpg").write_bytes(b"garbage")
    (drop / "a.xml").write_text(voc_xml("a.jpg", 640, 480, [("RBC", 1, 1, 5, 5)]))
    code, _, err = run_validate(capsys, "--images", str(drop), "--out", str(tmp_path / "v"))
    assert code == 2 and "no usable image left" in err
    code, _, err = run_validate(capsys, "--images", str(drop), "--out", str(drop))
    assert code == 2 and "must not be the input folder" in err
    code, _, err = run_validate(capsys, "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "v"))
    assert code == 2 and "images folder not found" in err


def test_converted_formats_sharing_a_stem_get_distinct_names(tmp_path, capsys):
    from PIL import Image

    drop = tmp_path / "drop"
    drop.mkdir()
    Image.new("RGB", (64, 48), (200, 0, 0)).save(drop / "a.bmp")
    Image.new("RGB", (64, 48), (0, 200, 0)).save(drop / "a.gif")
    for name in ("a.bmp", "a.gif"):
        (drop / f"{name}.xml").write_text(voc_xml(name, 64, 48, [("RBC", 1, 1, 30, 30)]))
    code, result, _ = run_validate(capsys, "--images", str(drop), "--out", str(tmp_path / "v"))
    assert code == 0 and result["accepted"] == 2
    records = load(tmp_path / "v" / "accepted.json")["images"]
    assert sorted(r["filename"] for r in records) == ["a.gif.png", "a.png"]
    assert len({r["sha256"] for r in records}) == 2


def test_separate_folders_stray_files_and_double_claims(tmp_path, bccd_dir, capsys):
    images, ann = tmp_path / "images", tmp_path / "annotations"
    for d in (images, ann):
        d.mkdir()
    for stem in ("BloodImage_00000", "BloodImage_00001"):
        shutil.copy(bccd_dir / "images" / f"{stem}.jpg", images)
        shutil.copy(bccd_dir / "annotations" / f"{stem}.xml", ann)
    shutil.copy(
        bccd_dir / "annotations" / "BloodImage_00000.xml", ann / "copy_of_00000.xml"
    )  # claims 00000.jpg too
    shutil.copy(bccd_dir / "annotations" / "BloodImage_00001.xml", images / "stray.xml")
    (ann / "notes.txt").write_text("x")
    code, result, _ = run_validate(
        capsys, "--images", str(images), "--annotations", str(ann), "--out", str(tmp_path / "v")
    )
    assert code == 0 and (result["accepted"], result["rejected"]) == (2, 2)
    report = load(tmp_path / "v" / "validation_report.json")
    assert [i["code"] for i in entry(report, xml="copy_of_00000.xml")["issues"]] == ["image_claimed_twice"]
    assert entry(report, xml="BloodImage_00000.xml")["verdict"] == "accepted"
    assert [i["code"] for i in entry(report, xml="stray.xml")["issues"]] == ["xml_outside_annotations_dir"]
    assert report["summary"]["ignored_files"] == ["annotations/notes.txt"]


def test_modules_import_without_lxml_or_pillow():
    import subprocess
    import sys

    code = (
        "import sys, edgetpu_retrain.data.validate, edgetpu_retrain.data.labelmap, "
        "edgetpu_retrain.data.annotations.voc, edgetpu_retrain.data.annotations.boxes, "
        "edgetpu_retrain.data.annotations.images;"
        "print(sorted(m for m in ('lxml', 'PIL', 'numpy', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
