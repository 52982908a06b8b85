"""build-dataset (dataset.py, validated.py, shards.py, snapshot.py) and the TFRecord/Example helpers
(tfrecord.py, crc.py, protobuf.py)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
from pathlib import Path

import pytest
from testdata import copy_labelimg_folder

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError
from edgetpu_retrain.data import crc, dataset, snapshot, tfrecord


def _voc(xml_path: Path) -> dict:
    """The XML's own objects, read independently of validate (for cross-checks)."""
    from lxml import etree

    root = etree.parse(str(xml_path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append(
            {
                "class": obj.findtext("name").strip(),
                **{k: int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")},
            }
        )
    return {
        "width": int(root.findtext("size/width")),
        "height": int(root.findtext("size/height")),
        "objects": objects,
    }


def make_validated(images_dir: Path, out: Path) -> Path:
    """Run the real `validate` verb (accepted.json + label_map.pbtxt)."""
    assert cli.main(["validate", "--images", str(images_dir), "--out", str(out)]) == 0
    return out


def sha_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bccd_validated(tmp_path_factory, bccd_dir) -> Path:
    root = tmp_path_factory.mktemp("bccd")
    images = copy_labelimg_folder(bccd_dir, root / "incoming")
    return make_validated(images, root / "validated")


@pytest.fixture(scope="module")
def bccd_built(bccd_validated) -> tuple[Path, dict]:
    out = bccd_validated.parent / "dataset"
    result = dataset.build_dataset(bccd_validated, out, shards=2, workers=2)
    return out, result


# ------------------------------------------------------------------------------------------ tfrecord


def test_crc32c_known_values_and_vectorized_matches_plain():
    assert crc.crc32c(b"123456789") == 0xE3069283
    assert crc.crc32c(b"") == 0
    rnd = __import__("random").Random(3)
    buffers = [
        bytes(rnd.getrandbits(8) for _ in range(n)) for n in (0, 1, 4, 63, 64, 65, 255, 256, 257, 1000, 5000)
    ]
    assert crc.crc32c_many(buffers) == [crc.crc32c_py(b) for b in buffers]


def test_example_and_framing_match_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    record = {
        "filename": "a.jpg",
        "width": 640,
        "height": 480,
        "format": "jpeg",
        "objects": [
            {
                "class": "RBC",
                "label": 1,
                "xmin": 0,
                "ymin": 5,
                "xmax": 640,
                "ymax": 480,
                "difficult": 1,
                "truncated": 0,
                "pose": "Left",
            },
            {"class": "WBC", "label": 3, "xmin": 10, "ymin": 20, "xmax": 30, "ymax": 40},
        ],
    }
    image = bytes(range(256)) * 300
    ours = tfrecord.encode_example(record, image)
    f = tf.train.Feature
    BL, FL, IL = tf.train.BytesList, tf.train.FloatList, tf.train.Int64List
    expected = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": f(bytes_list=BL(value=[image])),
                "image/format": f(bytes_list=BL(value=[b"jpeg"])),
                "image/height": f(int64_list=IL(value=[480])),
                "image/width": f(int64_list=IL(value=[640])),
                "image/filename": f(bytes_list=BL(value=[b"a.jpg"])),
                "image/source_id": f(bytes_list=BL(value=[b"a.jpg"])),
                "image/key/sha256": f(bytes_list=BL(value=[hashlib.sha256(image).hexdigest().encode()])),
                "image/object/bbox/xmin": f(float_list=FL(value=[0.0, 10 / 640])),
                "image/object/bbox/xmax": f(float_list=FL(value=[1.0, 30 / 640])),
                "image/object/bbox/ymin": f(float_list=FL(value=[5 / 480, 20 / 480])),
                "image/object/bbox/ymax": f(float_list=FL(value=[1.0, 40 / 480])),
                "image/object/class/text": f(bytes_list=BL(value=[b"RBC", b"WBC"])),
                "image/object/class/label": f(int64_list=IL(value=[1, 3])),
                "image/object/difficult": f(int64_list=IL(value=[1, 0])),
                "image/object/truncated": f(int64_list=IL(value=[0, 0])),
                "image/object/view": f(bytes_list=BL(value=[b"Left", b"Unspecified"])),
            }
        )
    )
    assert ours == expected.SerializeToString(deterministic=True)
    background = tfrecord.encode_example({**record, "objects": []}, image)
    assert (
        tf.train.Example.FromString(background).features.feature["image/object/bbox/xmin"].float_list.value
        == []
    )

    # framing: byte-identical to tf.io.TFRecordWriter
    records = [ours, background, b"", b"x" * 70000]
    tfrecord.write_tfrecord(tmp_path / "ours.tfrecord", records)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for r in records:
            writer.write(r)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    assert list(tfrecord.iter_records(tmp_path / "ours.tfrecord")) == records

    # tf.data parser
    parsed = next(iter(tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord")).map(tfrecord.parse_example)))
    assert parsed["boxes"].shape == (2, 4)
    assert parsed["labels"].numpy().tolist() == [1, 3]
    assert parsed["image/format"].numpy() == b"jpeg"


def test_iter_records_detects_corruption(tmp_path):
    path = tmp_path / "r.tfrecord"
    tfrecord.write_tfrecord(path, [b"a" * 100, b"b" * 100])
    data = bytearray(path.read_bytes())
    data[20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(tfrecord.TFRecordError, match="CRC"):
        list(tfrecord.iter_records(path))
    path.write_bytes(bytes(data[:-3]))
    with pytest.raises(tfrecord.TFRecordError):
        list(tfrecord.iter_records(path, verify=False))


# ------------------------------------------------------------------------------------------ split


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.8,0.2", "exactly three"),
        ("a,b,c", "not numbers"),
        ("0.8,0.3,-0.1", "non-negative"),
        ("0.5,0.1,0.1", "sum to 1"),
        ("nan,0.5,0.5", "non-negative"),
    ],
)
def test_parse_split_errors(text, message):
    with pytest.raises(UserError, match=message):
        dataset.parse_split(text)


def test_parse_split_ok():
    assert dataset.parse_split("0.7, 0.2, 0.1") == (0.7, 0.2, 0.1)
    assert dataset.parse_split("1,0,0") == (1.0, 0.0, 0.0)
    assert dataset.parse_split("0,0,1") == (0.0, 0.0, 1.0)  # evaluation-only


def test_stratified_split_deterministic_and_balanced():
    rnd = __import__("random").Random(7)
    images = {}
    for i in range(300):
        classes = ["common"] if rnd.random() < 0.7 else []
        if rnd.random() < 0.1:
            classes.append("rare")
        if i < 3:
            classes = ["very_rare"]
        images[f"img{i:03d}.jpg"] = classes
    a = dataset.stratified_split(images, (0.8, 0.1, 0.1), 0)
    assert a == dataset.stratified_split(images, (0.8, 0.1, 0.1), 0)
    assert a != dataset.stratified_split(images, (0.8, 0.1, 0.1), 1)
    assert sorted(sum(a.values(), [])) == sorted(images)
    assert [len(a[s]) for s in dataset.SPLITS] == [240, 30, 30]
    for cls in ("common", "rare", "very_rare"):
        have = [n for n, c in images.items() if cls in c]
        in_train = sum(1 for n in a["train"] if cls in images[n])
        assert abs(in_train - 0.8 * len(have)) <= 1.5, cls
    background = [n for n, c in images.items() if not c]
    assert abs(sum(1 for n in a["val"] if not images[n]) - 0.1 * len(background)) <= 2
    # a single-image class goes to train; a zero ratio gets nothing
    b = dataset.stratified_split(
        {"a.jpg": ["x"], "b.jpg": ["y"], "c.jpg": ["y"], "d.jpg": []}, (0.5, 0.5, 0.0), 3
    )
    assert "a.jpg" in b["train"] and any(n in b["train"] for n in ("b.jpg", "c.jpg")) and b["test"] == []


def test_tiny_train_ratio_reports_the_moves():
    images = {f"{c}{i}.jpg": [c] for c in ("x", "y", "z") for i in range(10)}
    splits, moved = dataset.split_with_moves(images, (0.001, 0.0, 0.999), 0)
    assert sorted(moved) == ["x", "y", "z"] and set(moved.values()) == set(splits["train"])
    assert splits == dataset.stratified_split(images, (0.001, 0.0, 0.999), 0)
    assert dataset.split_with_moves(images, (0.8, 0.1, 0.1), 0)[1] == {}
    eval_only, moved = dataset.split_with_moves(images, (0.0, 0.0, 1.0), 0)
    assert moved == {} and eval_only["train"] == [] and len(eval_only["test"]) == 30


def test_evaluation_only_dataset_and_training_on_it(tmp_path, bccd_validated, caplog):
    from edgetpu_retrain.model import config, train

    caplog.set_level(logging.INFO, logger="edgetpu_retrain")
    result = dataset.build_dataset(bccd_validated, tmp_path / "ds", split=(0, 0, 1), workers=1)
    accepted = len(json.loads((bccd_validated / "accepted.json").read_text())["images"])
    assert result["evaluation_only"] and result["moved_to_train"] == {}
    assert result["tfrecords"]["train"] == [] and result["counts"]["test"]["images"] == accepted
    assert "evaluation-only dataset" in caplog.text
    with pytest.raises(UserError, match=r"dataset .*ds has no 'train' records.*evaluation-only.*--split 0.8"):
        config.render_config(tmp_path / "ds", "mobilenet_v2_ssd")
    # a config rendered for another split, then pointed at an empty split by hand: train refuses too
    _, cfg = config.render_config(tmp_path / "ds", "mobilenet_v2_ssd", [("train.train_split", "test")])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_split="val"))
    with pytest.raises(UserError, match=r"has no 'val' records.*evaluation-only"):
        train.train(cfg, tmp_path / "run")


def test_moved_to_train_in_the_json_and_the_log(tmp_path, bccd_validated, caplog):
    caplog.set_level(logging.WARNING, logger="edgetpu_retrain")
    result = dataset.build_dataset(bccd_validated, tmp_path / "ds", split=(0.001, 0.0, 0.999), workers=1)
    assert result["moved_to_train"]  # 0.1% of the images in train would leave classes out
    train_names = (tmp_path / "ds" / "splits" / "train.txt").read_text().split()
    assert set(result["moved_to_train"].values()) <= set(train_names)
    assert all(n > 0 for n in result["counts"]["train"]["per_class"].values())  # every class trained on
    for name, file_name in result["moved_to_train"].items():
        assert f"class {name} had no image in train" in caplog.text and file_name in caplog.text


# ------------------------------------------------------------------------------------------ build


def test_microcontroller_csv_matches_source(tmp_path, microcontroller_dir):
    images = copy_labelimg_folder(microcontroller_dir, tmp_path / "incoming")
    validated = make_validated(images, tmp_path / "validated")
    result = dataset.build_dataset(validated, tmp_path / "ds", workers=1)
    with open(result["csv"], newline="") as handle:
        ours = list(csv.reader(handle))
    source = []
    for name in ("train_labels.csv", "test_labels.csv"):
        with open(microcontroller_dir / name, newline="") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == list(snapshot.CSV_COLUMNS)
        source += rows[1:]
    assert ours[0] == list(snapshot.CSV_COLUMNS)
    assert sorted(ours[1:]) == sorted(source)
    counts = result["counts"]
    assert sum(c["images"] for c in counts.values()) == 149
    assert sum(c["objects"] for c in counts.values()) == 177
    assert all(counts["train"]["per_class"][c] > 0 for c in counts["train"]["per_class"])


def test_bccd_examples_match_accepted_and_xml(bccd_built, bccd_dir):
    out, result = bccd_built
    manifest = json.loads((out / "manifest.json").read_text())
    ids = {c["name"]: c["id"] for c in manifest["classes"]}
    accepted = {
        r["filename"]: r
        for r in json.loads((out.parent / "validated" / "accepted.json").read_text())["images"]
    }
    f32 = lambda v: struct.unpack("<f", struct.pack("<f", v))[0]  # noqa: E731
    seen = {}
    same_as_xml = 0
    for split, paths in result["tfrecords"].items():
        assert [Path(p).name for p in paths] == [f"{split}.tfrecord-0000{i}-of-00002" for i in range(2)]
        names = []
        for example in tfrecord.read_examples(paths):
            name = example["image/filename"][0].decode()
            names.append(name)
            rec = accepted[name]
            voc = _voc(bccd_dir / "annotations" / (Path(name).stem + ".xml"))
            w, h = voc["width"], voc["height"]
            assert example["image/width"] == [w] and example["image/height"] == [h]
            assert example["image/format"] == [b"jpeg"] and example["image/source_id"] == [name.encode()]
            encoded = example["image/encoded"][0]
            assert encoded == (bccd_dir / "images" / name).read_bytes()  # passed through, not re-encoded
            assert example["image/key/sha256"] == [hashlib.sha256(encoded).hexdigest().encode()]
            for key, dim in (("xmin", w), ("xmax", w), ("ymin", h), ("ymax", h)):
                assert example[f"image/object/bbox/{key}"] == [f32(o[key] / dim) for o in rec["objects"]]
                assert all(0.0 <= v <= 1.0 for v in example[f"image/object/bbox/{key}"])
            assert example["image/object/class/text"] == [o["class"].encode() for o in rec["objects"]]
            assert example["image/object/class/label"] == [ids[o["class"]] for o in rec["objects"]]
            assert example["image/object/difficult"] == [0] * len(rec["objects"])
            xml_boxes = [(o["class"], o["xmin"], o["ymin"], o["xmax"], o["ymax"]) for o in voc["objects"]]
            ours = [(o["class"], o["xmin"], o["ymin"], o["xmax"], o["ymax"]) for o in rec["objects"]]
            if ours == xml_boxes:
                same_as_xml += 1
            else:  # validate dropped boxes (zero-area): the rest are the XML's, in order
                kept = iter(xml_boxes)
                assert all(box in kept for box in ours), name
                assert any(b[1] == b[3] for b in xml_boxes), name
            seen[name] = split
        assert sorted(names) == (out / "splits" / f"{split}.txt").read_text().split()
    assert sorted(seen) == sorted(accepted)
    assert same_as_xml >= len(accepted) - 2


def test_bccd_manifest_and_stratification(bccd_built):
    out, result = bccd_built
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(result) == {
        "manifest",
        "csv",
        "tfrecords",
        "counts",
        "label_map",
        "dataset_dir",
        "moved_to_train",
        "evaluation_only",
    }
    assert result["moved_to_train"] == {} and result["evaluation_only"] is False
    assert manifest["outputs"] == {k: v for k, v in sha_tree(out).items() if k != "manifest.json"}
    assert manifest["split"] == [0.8, 0.1, 0.1] and manifest["seed"] == 0
    assert manifest["num_classes"] == 3 and [c["id"] for c in manifest["classes"]] == [1, 2, 3]
    assert all(not Path(p).is_absolute() for p in manifest["outputs"])
    counts = manifest["counts"]
    total = sum(c["images"] for c in counts.values())
    assert total == len(manifest["inputs"])
    assert abs(counts["train"]["images"] - 0.8 * total) <= 2
    for split, ratio in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for cls in ("WBC", "Platelets"):
            all_objects = sum(c["per_class"][cls] for c in counts.values())
            assert abs(counts[split]["per_class"][cls] - ratio * all_objects) <= 0.05 * all_objects + 3, (
                split,
                cls,
            )


def test_rerun_is_byte_identical(bccd_built, bccd_validated, tmp_path, monkeypatch):
    out, _ = bccd_built
    before = sha_tree(out)
    dataset.build_dataset(bccd_validated, out, shards=2, workers=2)
    assert sha_tree(out) == before
    # a fresh dir gets a new `created`, unless SOURCE_DATE_EPOCH pins it
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = dataset.build_dataset(bccd_validated, tmp_path / "a", shards=2, workers=1)
    b = dataset.build_dataset(bccd_validated, tmp_path / "b", shards=2, workers=2)
    assert sha_tree(Path(a["dataset_dir"])) == sha_tree(Path(b["dataset_dir"]))
    assert {k: v for k, v in sha_tree(tmp_path / "a").items() if k != "manifest.json"} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["created"] == "2023-11-14T22:13:20Z"


def test_png_kept_png_and_background_images(tmp_path, bccd_dir):
    from PIL import Image

    names = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002", "BloodImage_00003"]
    images = copy_labelimg_folder(bccd_dir, tmp_path / "incoming", names=names)
    with Image.open(images / "BloodImage_00001.jpg") as im:
        im.save(images / "BloodImage_00001.png")
    (images / "BloodImage_00001.jpg").unlink()
    xml = images / "BloodImage_00001.xml"
    xml.write_text(xml.read_text().replace("BloodImage_00001.jpg", "BloodImage_00001.png"))
    empty = images / "BloodImage_00003.xml"  # LabelImg saves an image without boxes as XML without <object>
    text = empty.read_text()
    empty.write_text(text[: text.index("<object>")].rstrip() + "\n</annotation>\n")
    validated = make_validated(images, tmp_path / "validated")
    accepted_path = validated / "accepted.json"
    accepted = json.loads(accepted_path.read_text())
    assert "BloodImage_00001.png" in {r["filename"] for r in accepted["images"]}
    result = dataset.build_dataset(validated, tmp_path / "ds", split=(1.0, 0.0, 0.0), shards=10, workers=1)
    assert result["tfrecords"]["val"] == [] and result["tfrecords"]["test"] == []
    # --shards is capped at the split's image count: 4 images -> 4 shards of one example
    assert [Path(p).name for p in result["tfrecords"]["train"]] == [
        f"train.tfrecord-0000{i}-of-00004" for i in range(4)
    ]
    assert [len(list(tfrecord.iter_records(p))) for p in result["tfrecords"]["train"]] == [1, 1, 1, 1]
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    zero = {c["name"]: 0 for c in manifest["classes"]}
    assert manifest["tfrecords"]["val"] == [] and manifest["counts"]["val"] == {
        "images": 0,
        "objects": 0,
        "per_class": zero,
    }
    assert not list((tmp_path / "ds" / "tfrecords").glob("val*"))
    assert (tmp_path / "ds" / "splits" / "val.txt").read_text() == ""
    examples = {
        e["image/filename"][0].decode(): e for e in tfrecord.read_examples(result["tfrecords"]["train"])
    }
    assert sorted(examples) == [
        "BloodImage_00000.jpg",
        "BloodImage_00001.png",
        "BloodImage_00002.jpg",
        "BloodImage_00003.jpg",
    ]
    png = examples["BloodImage_00001.png"]
    assert png["image/format"] == [b"png"]
    assert png["image/encoded"][0] == (images / "BloodImage_00001.png").read_bytes()
    assert png["image/encoded"][0][:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png["image/object/bbox/xmin"]) > 0
    assert examples["BloodImage_00003.jpg"]["image/object/bbox/xmin"] == []
    assert examples["BloodImage_00003.jpg"]["image/object/class/label"] == []
    rows = (tmp_path / "ds" / "annotations.csv").read_text().splitlines()
    assert not any(r.startswith("BloodImage_00003.jpg") for r in rows)
    tf = pytest.importorskip("tensorflow")  # the tf.data parser decodes both formats
    ds = tf.data.TFRecordDataset(result["tfrecords"]["train"]).map(
        lambda x: tfrecord.parse_example(x, decode_image=True)
    )
    for parsed in ds:
        name = parsed["image/filename"].numpy().decode()
        assert parsed["image"].shape == (480, 640, 3) and parsed["image"].dtype == tf.uint8
        assert parsed["boxes"].numpy().tolist() == [
            list(b)
            for b in zip(
                *(examples[name][f"image/object/bbox/{k}"] for k in ("ymin", "xmin", "ymax", "xmax")),
                strict=False,
            )
        ]
    assert "BloodImage_00003.jpg\n" in (tmp_path / "ds" / "splits" / "train.txt").read_text()


def test_errors_name_the_file(tmp_path, bccd_validated):
    with pytest.raises(UserError, match=r"accepted\.json.*run validate first"):
        dataset.build_dataset(tmp_path, tmp_path / "ds")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(bccd_validated / "accepted.json", partial)
    with pytest.raises(UserError, match=r"label_map\.pbtxt.*run validate first"):
        dataset.build_dataset(partial, tmp_path / "ds")
    # an image changed after validation
    shutil.copy(bccd_validated / "label_map.pbtxt", partial)
    accepted = json.loads((partial / "accepted.json").read_text())
    accepted["images"] = accepted["images"][:3]
    original = accepted["images"][1]["objects"][0]["xmax"]
    accepted["images"][1]["objects"][0]["xmax"] = 10_000
    (partial / "accepted.json").write_text(json.dumps(accepted))
    with pytest.raises(UserError, match=r"object 0: box .* inside the 640x480 image"):
        dataset.build_dataset(partial, tmp_path / "ds", workers=1)
    accepted["images"][1]["objects"][0]["xmax"] = original
    accepted["images"][1]["objects"].append(7)
    (partial / "accepted.json").write_text(json.dumps(accepted))
    with pytest.raises(UserError, match=r"object \d+: 7 is not an object record; run validate first"):
        dataset.build_dataset(partial, tmp_path / "ds", workers=1)
    accepted["images"][1]["objects"].pop()
    (partial / "accepted.json").write_bytes(b"\xff\xfe binary")
    with pytest.raises(UserError, match=r"accepted\.json: not valid JSON"):
        dataset.build_dataset(partial, tmp_path / "ds", workers=1)
    accepted["images"][0]["sha256"] = "0" * 64
    (partial / "accepted.json").write_text(json.dumps(accepted))
    with pytest.raises(UserError, match="changed since validate"):
        dataset.build_dataset(partial, tmp_path / "ds", workers=1)
    assert not (tmp_path / "ds").exists()  # atomic: nothing left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_cli_build_dataset(tmp_path, bccd_validated, capsys):
    out = tmp_path / "ds"
    code = cli.main(
        [
            "build-dataset",
            "--validated",
            str(bccd_validated),
            "--out",
            str(out),
            "--split",
            "0.7,0.2,0.1",
            "--seed",
            "5",
            "--shards",
            "1",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["dataset_dir"] == str(out.resolve())
    assert line["manifest"] == str(out.resolve() / "manifest.json")
    assert all(
        len(v) == 1 and os.path.isabs(v[0]) and os.path.isfile(v[0]) for v in line["tfrecords"].values()
    )
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    code = cli.main(["build-dataset", "--validated", str(tmp_path / "nope"), "--out", str(out)])
    assert code == 2
    assert "run validate first" in capsys.readouterr().err
