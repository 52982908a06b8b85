"""The `edgetpu` verb: compiler-log parser, version/op tables, pre-flight on models built here, compile path.

The real `edgetpu_compiler` (Coral's x86-64 Debian package) cannot exist in this sandbox or in CI, so
the compile path runs against a test stand-in: a small Python script named `edgetpu_compiler` put on
PATH that prints one of the shared sample compiler logs (`edgetpu_reference_dir`) and, when asked,
writes `<stem>_edgetpu.tflite` / `<stem>_edgetpu.log` into the `-o` folder like the real one.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from pathlib import Path

import pytest
from tflite_models import build_mini_ssd, convert

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError, dumps_json
from edgetpu_retrain.export import edgetpu
from edgetpu_retrain.export import flatbuffer as tm

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")

# ------------------------------------------------------------------------------ compiler log parser

# Exact figures for EVERY sample log (a new sample without an entry fails test_every_sample_is_covered).
EXPECTED_FIGURES = {
    "all_mapped.txt": {
        "compiler_version": "16.0.384591198",
        "timeout_s": 180,
        "compile_time_ms": 311,
        "input_model": "detector.tflite",
        "input_size": "3.84MiB",
        "input_size_bytes": 4026532,
        "output_model": "detector_edgetpu.tflite",
        "output_size": "4.12MiB",
        "output_size_bytes": 4320133,
        "on_chip_memory_used": "3.91MiB",
        "on_chip_memory_used_bytes": 4099932,
        "on_chip_memory_remaining": "3.81MiB",
        "on_chip_memory_remaining_bytes": 3995075,
        "off_chip_memory_used": "0.00B",
        "off_chip_memory_used_bytes": 0,
        "tpu_subgraphs": 1,
        "total_ops": 62,
        "ops_on_tpu": 62,  # no "will run on" lines: everything mapped
        "ops_on_cpu": 0,
        "operation_log": "detector_edgetpu.log",
        "op_table": [],
        "tpu_ops": {},
        "cpu_ops": {},
        "success": True,
        "error": None,
        "unsupported_op_version": None,
    },
    "partial_mapping.txt": {
        "compiler_version": "16.0.384591198",
        "timeout_s": 180,
        "compile_time_ms": 552,
        "input_model": "model.tflite",
        "input_size_bytes": 5347738,
        "output_model": "model_edgetpu.tflite",
        "output_size_bytes": 5578424,
        "on_chip_memory_used": "5.20MiB",
        "on_chip_memory_used_bytes": 5452595,
        "on_chip_memory_remaining_bytes": 2642412,
        "off_chip_memory_used_bytes": 0,
        "tpu_subgraphs": 1,
        "total_ops": 113,
        "ops_on_tpu": 110,
        "ops_on_cpu": 3,
        "operation_log": "model_edgetpu.log",
        "tpu_ops": {
            "ADD": 10,
            "CONCATENATION": 2,
            "CONV_2D": 51,
            "DEPTHWISE_CONV_2D": 33,
            "LOGISTIC": 1,
            "QUANTIZE": 1,
            "RESHAPE": 12,
        },
        "cpu_ops": {"CUSTOM": 1, "DEQUANTIZE": 2},
        "success": True,
        "error": None,
        "unsupported_op_version": None,
    },
    "no_tpu_subgraph.txt": {
        "compiler_version": "16.0.384591198",
        "compile_time_ms": 24,
        "input_size_bytes": 2422211,
        "output_size_bytes": 2422211,
        "on_chip_memory_used_bytes": 0,
        "on_chip_memory_remaining_bytes": 0,
        "off_chip_memory_used_bytes": 0,
        "tpu_subgraphs": 0,
        "total_ops": 40,
        "ops_on_tpu": 0,
        "ops_on_cpu": 40,
        "tpu_ops": {},
        "cpu_ops": {"CONCATENATION": 2, "CONV_2D": 20, "CUSTOM": 1, "DEPTHWISE_CONV_2D": 13, "RESHAPE": 4},
        "success": True,  # the compiler "succeeds"; the verb fails on tpu_subgraphs == 0
        "error": None,
    },
    "not_quantized.txt": {
        "compiler_version": "16.0.384591198",
        "compile_time_ms": None,
        "tpu_subgraphs": None,
        "total_ops": None,
        "ops_on_tpu": None,
        "output_model": None,
        "op_table": [],
        "success": False,
        "error": "Invalid model: model_float.tflite: Model not quantized",
        "unsupported_op_version": None,
    },
    "op_version_unsupported.txt": {
        "compiler_version": "16.0.384591198",
        "compile_time_ms": None,
        "tpu_subgraphs": None,
        "success": False,
        "error": (
            "Didn't find op for builtin opcode 'CONV_2D' version '6'. An older version of this builtin might "
            "be "
            "supported. Are you using an old TFLite binary with a newer model?; Registration failed.; "
            "Invalid model: model.tflite: Model could not be parsed"
        ),
        "unsupported_op_version": {"op": "CONV_2D", "version": 6},
    },
}


@pytest.fixture(scope="session")
def logs_dir(edgetpu_reference_dir) -> Path:
    return edgetpu_reference_dir / "compiler-logs"


def test_every_sample_log_is_covered(logs_dir):
    assert sorted(p.name for p in logs_dir.iterdir()) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_parse_sample_log(logs_dir, name):
    figures = edgetpu.parse_compiler_output((logs_dir / name).read_text())
    expected = EXPECTED_FIGURES[name]
    assert {k: figures[k] for k in expected} == expected


def test_parse_partial_mapping_table_rows(logs_dir):
    figures = edgetpu.parse_compiler_output((logs_dir / "partial_mapping.txt").read_text())
    assert len(figures["op_table"]) == 9
    assert figures["op_table"][2] == {
        "op": "CUSTOM", "count": 1, "status": "Operation is working on an unsupported data type",
        "mapped": False,
    }  # fmt: skip
    assert sum(r["count"] for r in figures["op_table"]) == figures["total_ops"]


def test_parse_same_op_with_two_statuses(logs_dir):
    text = (
        logs_dir / "partial_mapping.txt"
    ).read_text() + "CONV_2D                        2          More than one subgraph is not supported\n"
    figures = edgetpu.parse_compiler_output(text)
    assert figures["tpu_ops"]["CONV_2D"] == 51 and figures["cpu_ops"]["CONV_2D"] == 2


def test_parse_size():
    assert edgetpu.parse_size("0.00B") == 0
    assert edgetpu.parse_size("1.50KiB") == 1536
    assert edgetpu.parse_size("2.00MiB") == 2 * 1024 * 1024
    assert edgetpu.parse_size("1.00GiB") == 1 << 30
    assert edgetpu.parse_size("lots") is None


# ----------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("op", "ok_version", "rejected_version"),
    [
        ("CONV_2D", 5, 6),  # v6 rejected: google-coral/edgetpu#631
        ("QUANTIZE", 2, 3),  # edgetpu#879
        ("TRANSPOSE_CONV", 3, 4),  # edgetpu#845
        ("EXP", 1, 2),  # libedgetpu#71
        ("DEPTHWISE_CONV_2D", 6, 7),
        ("ADD", 3, 4),
        ("DEQUANTIZE", 4, 5),
        ("FULLY_CONNECTED", 9, 10),
    ],
)
def test_version_table_known_limits(op, ok_version, rejected_version):
    assert edgetpu.check_op_version(op, ok_version) is None
    problem = edgetpu.check_op_version(op, rejected_version)
    assert problem and f"{op} version {rejected_version}" in problem and f"max v{ok_version}" in problem


def test_version_table_accepts_our_ssd_export():
    # the op versions TF 2.21 writes for our SSDLite int8 export
    measured = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "RESHAPE": 1, "CONCATENATION": 2,
                "LOGISTIC": 2, "QUANTIZE": 1, "DEQUANTIZE": 2}  # fmt: skip
    for op, version in measured.items():
        assert edgetpu.check_op_version(op, version) is None, op
    assert edgetpu.check_op_version("CUSTOM", 1, "TFLite_Detection_PostProcess") is None
    assert "custom op" in edgetpu.check_op_version("CUSTOM", 2, "TFLite_Detection_PostProcess")


def test_tables_are_consistent():
    builtins = set(tm.BUILTIN_OPERATOR_NAMES)
    assert set(edgetpu.EDGETPU_SUPPORTED_OPS) <= set(edgetpu.OP_MAX_VERSION) <= builtins
    assert all(v >= 1 for v, _ in edgetpu.OP_MAX_VERSION.values())
    # ops introduced after TF 2.5 are unknown to compiler 16
    for op in ("GELU", "VAR_HANDLE", "REDUCE_ALL", "BROADCAST_ARGS"):
        assert "not a builtin op compiler" in edgetpu.check_op_version(op, 1)


# ------------------------------------------------------------------------- models built in the test


def _conv_net(tf, middle=None, *, batch_size=1):
    inp = tf.keras.Input((16, 16, 3), batch_size=batch_size)
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    if middle is not None:
        x = middle(x)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = tf.keras.layers.Conv2D(4, 1)(x)
    return tf.keras.Model(inp, x)


def _set_op_version(data: bytes, op_name: str, version: int) -> bytes:
    """Rewrite the stored version of every OperatorCode of `op_name` in place (an 'op too new' model)."""
    buf = bytearray(data)
    root = tm.Table(bytes(buf), struct.unpack_from("<I", buf, 0)[0])
    patched = 0
    for oc in root.tables(1):
        code = max(int(oc.scalar(0, "b", 0)), int(oc.scalar(3, "i", 0)))
        if tm.builtin_name(code) == op_name:
            at = oc.field(2)
            assert at, "version field not stored (default 1); pick another op"
            struct.pack_into("<i", buf, at, version)
            patched += 1
    assert patched
    return bytes(buf)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    root = tmp_path_factory.mktemp("edgetpu_models")
    built = {
        "int8": convert(tf, tf.lite.TFLiteConverter.from_keras_model(_conv_net(tf))),
        "float": convert(tf, tf.lite.TFLiteConverter.from_keras_model(_conv_net(tf)), int8=False),
        "dynamic": convert(tf, tf.lite.TFLiteConverter.from_keras_model(_conv_net(tf, batch_size=None))),
        "leaky": convert(
            tf, tf.lite.TFLiteConverter.from_keras_model(_conv_net(tf, tf.keras.layers.LeakyReLU(0.1)))
        ),
        "ssd": build_mini_ssd(tf),
    }
    built["conv_v6"] = _set_op_version(built["int8"], "CONV_2D", 6)
    paths = {}
    for name, data in built.items():
        paths[name] = root / f"{name}.tflite"
        paths[name].write_bytes(data)
    return paths


# ---------------------------------------------------------------------------------------- pre-flight


def test_preflight_int8_conv_ok(models):
    result = edgetpu.preflight(models["int8"])
    assert result["ok"] is True and result["reasons"] == []
    assert [(r["index"], r["name"], r["version"]) for r in result["ops"]] == [
        (0, "QUANTIZE", 1), (1, "CONV_2D", 3), (2, "DEPTHWISE_CONV_2D", 3), (3, "CONV_2D", 3),
        (4, "DEQUANTIZE", 2),
    ]  # fmt: skip
    assert all(r["supported"] and r["quantized"] and r["version_ok"] for r in result["ops"][:4])
    assert result["ops"][4]["role"] == "postprocess_tail" and not result["ops"][4]["on_tpu_expected"]
    assert result["expected_tpu_ops"] == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "QUANTIZE": 1}
    assert result["expected_cpu_ops"] == {"DEQUANTIZE": 1}
    assert result["inputs"][0]["type"] == "UINT8" and result["inputs"][0]["shape"] == [1, 16, 16, 3]
    assert result["outputs"][0]["type"] == "FLOAT32"
    assert result["model"]["sha256"] and result["first_cpu_op"] is None


def test_preflight_mini_ssd_tail_is_expected_on_cpu(models):
    result = edgetpu.preflight(models["ssd"])
    assert result["ok"] is True, result["reasons"]
    assert result["expected_cpu_ops"] == {"CUSTOM": 1, "DEQUANTIZE": 2}
    tail = [r for r in result["ops"] if r["role"] == "postprocess_tail"]
    assert [r["name"] for r in tail] == ["DEQUANTIZE", "DEQUANTIZE", "CUSTOM"]
    assert tail[-1]["custom_code"] == "TFLite_Detection_PostProcess"
    # the first DEQUANTIZE runs between the heads; it must not cut the TPU subgraph
    assert tail[0]["index"] < max(r["index"] for r in result["ops"] if r["on_tpu_expected"])
    assert result["expected_tpu_ops"]["CONV_2D"] == 3 and result["expected_tpu_ops"]["LOGISTIC"] == 1


def test_preflight_float_model_not_quantized(models):
    result = edgetpu.preflight(models["float"])
    assert result["ok"] is False
    assert result["first_cpu_op"]["index"] == 0 and result["first_cpu_op"]["name"] == "CONV_2D"
    (reason,) = result["reasons"]
    assert (
        "op 0 CONV_2D" in reason and "not 8-bit quantized" in reason and "full-integer quantization" in reason
    )
    assert "2 op(s) after it (1 DEPTHWISE_CONV_2D, 2 CONV_2D)" in reason
    assert not any(r["quantized"] or r["on_tpu_expected"] for r in result["ops"])
    assert result["expected_tpu_op_count"] == 0 and result["expected_cpu_op_count"] == 3


def test_preflight_dynamic_batch(models):
    result = edgetpu.preflight(models["dynamic"])
    assert result["ok"] is False
    assert any("dynamic shape signature [-1, 16, 16, 3]" in r and "batch 1" in r for r in result["reasons"])
    assert result["inputs"][0]["shape_signature"] == [-1, 16, 16, 3]


def test_preflight_unsupported_op_in_the_middle(models):
    result = edgetpu.preflight(models["leaky"])
    assert result["ok"] is False
    assert result["first_cpu_op"]["index"] == 2 and result["first_cpu_op"]["name"] == "LEAKY_RELU"
    assert result["cpu_ops_after_first"] == [3, 4]
    (reason,) = result["reasons"]
    assert "op 2 LEAKY_RELU (v1)" in reason and "not on the Edge TPU supported-op list" in reason
    assert "2 op(s) after it (3 DEPTHWISE_CONV_2D, 4 CONV_2D) would run on the CPU" in reason
    assert "ReLU" in reason  # the replacement hint
    on_tpu = {r["index"]: r["on_tpu_expected"] for r in result["ops"]}
    assert on_tpu == {0: True, 1: True, 2: False, 3: False, 4: False, 5: False}
    assert result["expected_tpu_ops"] == {"CONV_2D": 1, "QUANTIZE": 1}
    assert result["expected_cpu_ops"] == {
        "CONV_2D": 1,
        "DEPTHWISE_CONV_2D": 1,
        "DEQUANTIZE": 1,
        "LEAKY_RELU": 1,
    }


def test_preflight_op_version_too_new(models):
    assert tm.read_model(models["conv_v6"], reader="minimal").op_versions()["CONV_2D"] == [6]
    result = edgetpu.preflight(models["conv_v6"])
    assert result["ok"] is False
    (reason,) = result["reasons"]
    assert reason.startswith(
        "op 1, 3: CONV_2D version 6 is newer than compiler 16.0.384591198 parses (max v5"
    )
    assert "Didn't find op for builtin opcode 'CONV_2D' version '6'" in reason
    assert [r["version_ok"] for r in result["ops"]] == [True, False, True, False, True]


def _synthetic(tensors, ops, inputs, outputs):
    def tensor(i, name, type_, shape, *, constant=False, q=True):
        return tm.TensorInfo(
            i, name, type_, tuple(shape), None, (0.5,) if q else (), (0,) if q else (), 0, constant, False
        )

    return tm.TFLiteModel(
        path=None, schema_version=3, description="", subgraph_count=1,
        tensors=tuple(tensor(i, *t[:3], **t[3]) for i, t in enumerate(tensors)),
        ops=tuple(tm.OpInfo(i, name, tm.BUILTIN_OPERATOR_NAMES.index(name), v, None, tuple(a), tuple(b))
                  for i, (name, v, a, b) in enumerate(ops)),
        inputs=tuple(inputs), outputs=tuple(outputs), reader="test",
    )  # fmt: skip


def test_analyze_rank_rule_and_float_input_boundary():
    model = _synthetic(
        tensors=[
            ("in", "FLOAT32", [1, 8, 8, 4], {"q": False}),
            ("q", "INT8", [1, 8, 8, 4], {}),
            ("r5", "INT8", [1, 2, 4, 4, 8], {}),  # 4 dims > 1: cannot map
            ("shape", "INT32", [5], {"constant": True, "q": False}),
            ("ok5", "INT8", [1, 1, 4, 4, 8], {}),  # only the 3 innermost dims > 1: fine
            ("out", "INT8", [1, 128], {}),
        ],
        ops=[
            ("QUANTIZE", 1, [0], [1]),
            ("RESHAPE", 1, [1, 3], [4]),
            ("RESHAPE", 1, [4, 3], [2]),
            ("RESHAPE", 1, [2, 3], [5]),
        ],
        inputs=[0],
        outputs=[5],
    )
    result = edgetpu.analyze(model)
    assert result["boundary_ops"] == [0] and result["ops"][0]["role"] == "input_boundary"
    assert result["ops"][1]["rank_ok"] and not result["ops"][2]["rank_ok"]
    assert result["first_cpu_op"]["index"] == 2 and result["cpu_ops_after_first"] == [3]
    assert "size > 1 outside its 3 innermost dimensions" in result["reasons"][0]
    assert result["expected_tpu_ops"] == {"RESHAPE": 1}


def test_preflight_rejects_non_tflite(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(UserError, match="not a TFLite flatbuffer"):
        edgetpu.preflight(bad)
    with pytest.raises(UserError, match="file not found"):
        edgetpu.preflight(tmp_path / "missing.tflite")


# -------------------------------------------------------------------------------------- the verb

FAKE_COMPILER = """#!{python}
# Test stand-in for edgetpu_compiler: the real compiler (Coral's x86-64 Debian package) cannot exist
# here. Prints the log named by FAKE_EDGETPU_LOG and mimics the real outputs in the -o folder.
import json, os, shutil, sys, time
args = sys.argv[1:]
if os.environ.get("FAKE_EDGETPU_ARGS"):
    open(os.environ["FAKE_EDGETPU_ARGS"], "w").write(json.dumps(args))
time.sleep(float(os.environ.get("FAKE_EDGETPU_SLEEP", "0")))
out = args[args.index("-o") + 1] if "-o" in args else "."
model = args[-1]
sys.stdout.write(open(os.environ["FAKE_EDGETPU_LOG"]).read())
if os.environ.get("FAKE_EDGETPU_WRITE") == "1":
    stem = os.path.splitext(os.path.basename(model))[0]
    shutil.copyfile(model, os.path.join(out, stem + "_edgetpu.tflite"))
    open(os.path.join(out, stem + "_edgetpu.log"), "w").write("operation log\\n")
sys.exit(int(os.environ.get("FAKE_EDGETPU_RC", "0")))
"""


@pytest.fixture
def no_compiler_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch, logs_dir):
    """Put the stand-in on PATH; returns a function configuring it (log name, rc, write outputs)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    script = bin_dir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.replace("{python}", sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", str(bin_dir))
    args_file = tmp_path / "fake-args.json"
    monkeypatch.setenv("FAKE_EDGETPU_ARGS", str(args_file))

    def configure(
        log: str | None = None, *, text: str | None = None, rc: int = 0, write: bool = True, sleep: float = 0
    ):
        if text is not None:
            custom = tmp_path / "custom-log.txt"
            custom.write_text(text)
            monkeypatch.setenv("FAKE_EDGETPU_LOG", str(custom))
        else:
            monkeypatch.setenv("FAKE_EDGETPU_LOG", str(logs_dir / log))
        monkeypatch.setenv("FAKE_EDGETPU_RC", str(rc))
        monkeypatch.setenv("FAKE_EDGETPU_WRITE", "1" if write else "0")
        monkeypatch.setenv("FAKE_EDGETPU_SLEEP", str(sleep))
        return args_file

    configure.script = script
    return configure


def run_verb(*argv: str) -> dict:
    parser, module = cli.build_verb_parser("edgetpu")
    return module.run(parser.parse_args(list(argv)))


def test_no_compiler_preflight_only(models, tmp_path, no_compiler_path, caplog):
    out = tmp_path / "out"
    caplog.set_level("INFO", logger="edgetpu_retrain")
    line = run_verb("--tflite", str(models["ssd"]), "--out", str(out))
    assert line["compiled"] is None and line["compiler"] is None
    assert line["out_dir"] == str(out.resolve())
    assert line["preflight"]["ok"] is True and line["preflight"]["reasons"] == []
    assert line["preflight_path"] == str(out.resolve() / "preflight.json")
    assert edgetpu.NOT_FOUND_MESSAGE in caplog.text
    first = (out / "preflight.json").read_bytes()
    assert first.decode() == dumps_json(json.loads(first))  # canonical JSON
    run_verb("--tflite", str(models["ssd"]), "--out", str(out))
    assert (out / "preflight.json").read_bytes() == first  # same bytes on re-run
    assert sorted(p.name for p in out.iterdir()) == ["edgetpu.json", "preflight.json"]
    assert json.loads((out / "edgetpu.json").read_text()) == json.loads(json.dumps(line))


def test_no_compiler_with_require_compiler_fails(models, tmp_path, no_compiler_path):
    with pytest.raises(UserError, match="edgetpu_compiler not found on PATH"):
        run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"), "--require-compiler")
    assert (tmp_path / "out" / "preflight.json").is_file()


def test_failed_preflight_stops_before_compiling(models, tmp_path, fake_compiler):
    args_file = fake_compiler("all_mapped.txt")
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("leaky_edgetpu.tflite", "leaky_edgetpu.log", "edgetpu_compiler.txt", "edgetpu.json"):
        (out / stale).write_text("from an earlier run")
    with pytest.raises(UserError, match="Edge TPU pre-flight failed: op 2 LEAKY_RELU"):
        run_verb("--tflite", str(models["leaky"]), "--out", str(out))
    saved = json.loads((out / "preflight.json").read_text())
    assert saved["ok"] is False and saved["first_cpu_op"]["name"] == "LEAKY_RELU"
    assert not args_file.exists()  # the compiler never ran
    assert sorted(p.name for p in out.iterdir()) == ["preflight.json"]  # no stale model left to promote


def test_compile_all_mapped(models, tmp_path, fake_compiler):
    args_file = fake_compiler("all_mapped.txt")
    out = tmp_path / "out"
    line = run_verb("--tflite", str(models["ssd"]), "--out", str(out))
    compiled = out.resolve() / "ssd_edgetpu.tflite"
    assert line["compiled"] == str(compiled) and compiled.read_bytes() == models["ssd"].read_bytes()
    figures = line["compiler"]
    assert figures["compiler_version"] == "16.0.384591198" and figures["tpu_subgraphs"] == 1
    assert figures["on_chip_memory_used_bytes"] == 4099932 and figures["compile_time_ms"] == 311
    assert figures["operation_log_path"] == str(out.resolve() / "ssd_edgetpu.log")
    args = json.loads(args_file.read_text())
    assert args[0] == "-s" and args[1] == "-o" and args[3:] == ["-t", "180", str(models["ssd"].resolve())]
    assert Path(args[2]).parent == out.resolve()  # compiled into a temp dir beside the outputs
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "edgetpu.json",
        "edgetpu_compiler.txt",
        "preflight.json",
        "ssd_edgetpu.log",
        "ssd_edgetpu.tflite",
    ]
    assert "Compilation succeeded!" in (out / "edgetpu_compiler.txt").read_text()


def test_compile_partial_mapping_tail_on_cpu_is_fine(models, tmp_path, fake_compiler):
    fake_compiler("partial_mapping.txt")
    line = run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"), "--timeout", "30")
    assert line["compiled"].endswith("ssd_edgetpu.tflite")
    assert line["compiler"]["cpu_ops"] == {"CUSTOM": 1, "DEQUANTIZE": 2}
    assert line["compiler"]["ops_on_tpu"] == 110


def test_compile_other_cpu_ops_fail_unless_allowed(models, tmp_path, fake_compiler, logs_dir):
    text = (logs_dir / "partial_mapping.txt").read_text() + (
        "CONV_2D                        2          More than one subgraph is not supported\n"
    )
    fake_compiler(text=text)
    with pytest.raises(
        UserError, match=r"2 op\(s\) besides the post-processing tail.*CONV_2D x2: More than one subgraph"
    ):
        run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"))
    line = run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"), "--allow-cpu-ops")
    assert line["compiled"] and line["compiler"]["cpu_ops"]["CONV_2D"] == 2


def test_compile_no_tpu_subgraph_fails(models, tmp_path, fake_compiler):
    fake_compiler("no_tpu_subgraph.txt")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no Edge TPU subgraph: 0 of 40 ops mapped.*unsupported data type"):
        run_verb("--tflite", str(models["ssd"]), "--out", str(out))
    # the compiler's outputs are kept for diagnosis, except a model that would look usable
    assert sorted(p.name for p in out.iterdir()) == [
        "edgetpu_compiler.txt",
        "preflight.json",
        "ssd_edgetpu.log",
    ]


def test_compile_not_quantized_fails_and_clears_stale_model(models, tmp_path, fake_compiler):
    fake_compiler("not_quantized.txt", rc=1, write=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ssd_edgetpu.tflite").write_bytes(b"stale")
    with pytest.raises(
        UserError, match="edgetpu_compiler failed: Invalid model: model_float.tflite: Model not quantized"
    ):
        run_verb("--tflite", str(models["ssd"]), "--out", str(out))
    assert not (out / "ssd_edgetpu.tflite").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".edgetpu_compiler.")]  # temp dir removed


def test_compile_op_version_fails(models, tmp_path, fake_compiler):
    fake_compiler("op_version_unsupported.txt", rc=1, write=False)
    with pytest.raises(UserError, match="CONV_2D version 6 is too new for compiler 16"):
        run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"))


def test_compile_without_output_file_fails(models, tmp_path, fake_compiler):
    fake_compiler("all_mapped.txt", write=False)
    with pytest.raises(UserError, match="edgetpu_compiler failed"):
        run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"))


def test_compile_timeout(models, tmp_path, fake_compiler, monkeypatch):
    monkeypatch.setattr(edgetpu.compiler, "TIMEOUT_MARGIN_S", 0)
    fake_compiler("all_mapped.txt", sleep=5)
    with pytest.raises(UserError, match="did not finish within 1 s"):
        run_verb("--tflite", str(models["ssd"]), "--out", str(tmp_path / "out"), "--timeout", "1")


def test_explicit_compiler_path(models, tmp_path, fake_compiler, no_compiler_path):
    fake_compiler("all_mapped.txt")  # the script exists but PATH no longer has it
    line = run_verb(
        "--tflite",
        str(models["ssd"]),
        "--out",
        str(tmp_path / "out"),
        "--compiler",
        str(fake_compiler.script),
    )
    assert line["compiled"]
    with pytest.raises(UserError, match="not found or not executable"):
        run_verb(
            "--tflite",
            str(models["ssd"]),
            "--out",
            str(tmp_path / "out"),
            "--compiler",
            str(tmp_path / "nope"),
        )


def test_cli_last_line_and_exit_codes(models, tmp_path, fake_compiler, capsys):
    fake_compiler("partial_mapping.txt")
    assert cli.main(["edgetpu", "--tflite", str(models["ssd"]), "--out", str(tmp_path / "ok")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"preflight", "preflight_path", "compiled", "compiler", "out_dir"} <= set(last)
    assert last["preflight"]["ok"] is True and last["compiled"].endswith("ssd_edgetpu.tflite")
    assert cli.main(["edgetpu", "--tflite", str(models["float"]), "--out", str(tmp_path / "bad")]) == 2
    assert "Edge TPU pre-flight failed" in capsys.readouterr().err
