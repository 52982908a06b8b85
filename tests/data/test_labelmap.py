from __future__ import annotations

import json

import pytest

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError
from edgetpu_retrain.data.labelmap import (
    LabelItem,
    format_label_map,
    generate,
    merge,
    parse_label_map,
    read_label_map,
    write_label_map,
)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_format_is_the_od_api_layout_and_round_trips(tmp_path):
    items = [LabelItem(1, "cat"), LabelItem(2, "dog's toy", "Dog toy"), LabelItem(3, 'back\\slash "q"')]
    text = format_label_map(items)
    assert text.startswith(
        "item {\n  id: 1\n  name: 'cat'\n}\n\nitem {\n  id: 2\n  name: 'dog\\'s toy'\n  display_name: 'Dog "
        "toy'\n}\n"
    )
    assert parse_label_map(text) == items
    path = write_label_map(tmp_path / "lm.pbtxt", items)
    assert read_label_map(path) == items
    assert path.read_text() == text


def test_parse_accepts_quotes_comments_whitespace_and_any_order():
    text = """# header comment
    item: { name: "RBC", id: 2 }   # trailing comment
    item {
        id:1;name:'Platelets'  display_name: "Platelets (PLT)"
    }
    item{id:3
    name:
      'WBC'}
    """
    assert parse_label_map(text) == [
        LabelItem(1, "Platelets", "Platelets (PLT)"),
        LabelItem(2, "RBC"),
        LabelItem(3, "WBC"),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("item { id: 1 name: 'a' }\nitem { id: 1 name: 'b' }\n", "lm.pbtxt:2: id 1 used twice"),
        ("item { id: 1 name: 'a' }\nitem { id: 3 name: 'b' }\n", "without gaps (missing [2]"),
        ("item { id: 0 name: 'a' }\n", "lm.pbtxt:1: id 0 for 'a' must be >= 1"),
        ("item { id: -2 name: 'a' }\n", "must be >= 1"),
        ("item { id: 1 name: 'a' }\nitem { id: 2 name: 'a' }\n", "lm.pbtxt:2: name 'a' listed twice"),
        ("item { id: 1 }\n", "lm.pbtxt:1: item has no name"),
        ("item { id: 1 name: 'a'\n", "file ends early"),
        ("item { id: 1 name: a }\n", "must be a quoted string"),
        ("item { id: 1.5 name: 'a' }\n", "id must be an integer"),
        ("item { id: 1 name: 'a' frequency: 3 }\n", "unsupported field 'frequency'"),
        ("\n\nitem { id: 1 name: 'unterminated }\n", "lm.pbtxt:3: unexpected text"),
        ("items { id: 1 name: 'a' }\n", "expected 'item'"),
        ("# only a comment\n", "label map has no items"),
    ],
)
def test_parse_errors_name_file_line_and_fix(tmp_path, text, needle):
    path = tmp_path / "lm.pbtxt"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_label_map(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_generate_sorts_and_numbers_from_one():
    assert generate(["WBC", "RBC", "Platelets", "RBC"]) == [
        LabelItem(1, "Platelets"),
        LabelItem(2, "RBC"),
        LabelItem(3, "WBC"),
    ]
    with pytest.raises(UserError):
        generate([])


def test_merge_keeps_ids_and_appends_new_names_sorted():
    existing = [LabelItem(1, "zebra"), LabelItem(2, "ant")]
    assert merge(existing, ["ant", "zebra"], append=False) == existing
    with pytest.raises(UserError) as err:
        merge(existing, ["ant", "dog", "cat"], append=False, source="lm.pbtxt")
    assert "'cat', 'dog'" in str(err.value) and "--append-labels" in str(err.value)
    merged = merge(existing, ["dog", "ant", "cat"], append=True)
    assert merged == existing + [LabelItem(3, "cat"), LabelItem(4, "dog")]


def test_cli_show_generate_append_check(tmp_path, capsys, microcontroller_dir):
    ann = str(microcontroller_dir / "annotations")
    out = tmp_path / "generated.pbtxt"
    assert cli.main(["labelmap", "generate", "--annotations", ann, "--out", str(out)]) == 0
    result = last_json(capsys)
    assert result["path"] == str(out)
    assert [c["name"] for c in result["classes"]] == [
        "Arduino_Nano",
        "ESP8266",
        "Heltec_ESP32_Lora",
        "Raspberry_Pi_3",
    ]
    assert [c["id"] for c in result["classes"]] == [1, 2, 3, 4]

    assert cli.main(["labelmap", "show", str(out)]) == 0
    assert last_json(capsys)["num_classes"] == 4

    partial = tmp_path / "partial.pbtxt"
    write_label_map(partial, [LabelItem(1, "Raspberry_Pi_3")])
    assert cli.main(["labelmap", "check", "--label-map", str(partial), "--annotations", ann]) == 2
    err = capsys.readouterr().err
    assert "'Arduino_Nano', 'ESP8266', 'Heltec_ESP32_Lora'" in err

    appended = tmp_path / "appended.pbtxt"
    assert (
        cli.main(
            ["labelmap", "append", "--label-map", str(partial), "--annotations", ann, "--out", str(appended)]
        )
        == 0
    )
    result = last_json(capsys)
    assert result["added"] == ["Arduino_Nano", "ESP8266", "Heltec_ESP32_Lora"]
    assert result["classes"][0] == {"id": 1, "name": "Raspberry_Pi_3"}
    assert [c["id"] for c in result["classes"]] == [1, 2, 3, 4]
    assert partial.read_text() == "item {\n  id: 1\n  name: 'Raspberry_Pi_3'\n}\n"  # input untouched


def test_cli_case_variants_are_misspellings_not_classes(tmp_path, capsys):
    from hostile import voc_xml

    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.xml").write_text(
        voc_xml(
            "a.jpg",
            64,
            48,
            [("RBC", 1, 1, 9, 9), ("RBC", 2, 2, 9, 9), ("rbc", 1, 1, 5, 5), ("Sickle cell", 1, 1, 5, 5)],
        )
    )
    (ann / "b.xml").write_text("<not closed")
    out = tmp_path / "lm.pbtxt"
    assert cli.main(["labelmap", "generate", "--annotations", str(ann), "--out", str(out)]) == 0
    result = last_json(capsys)
    assert [c["name"] for c in result["classes"]] == ["RBC", "Sickle cell"] and result["misspellings"] == [
        "rbc"
    ]
    existing = tmp_path / "existing.pbtxt"
    write_label_map(existing, [LabelItem(1, "sickle_cell")])
    assert (
        cli.main(
            ["labelmap", "append", "--label-map", str(existing), "--annotations", str(ann), "--out", str(out)]
        )
        == 0
    )
    result = last_json(capsys)
    assert result["added"] == ["RBC"] and result["misspellings"] == ["Sickle cell", "rbc"]
    assert read_label_map(out) == [LabelItem(1, "sickle_cell"), LabelItem(2, "RBC")]
