"""export/flatbuffer.py: both readers (generated schema classes, minimal reader) on models converted here.

The models are tiny and built in the test with TF + tf.lite.TFLiteConverter (about 0.5 s each; the
shared builders are in tests/tflite_models.py): a full-int8 conv net ending in the SSD post-processing
custom op, and a dynamic-batch model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tflite_models import build_mini_ssd, int8_converter

from edgetpu_retrain.export import flatbuffer as tm
from edgetpu_retrain.export import tflite_schema

pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")


def build_dynamic_batch(tf) -> bytes:
    inp = tf.keras.Input((16, 16, 3))  # no batch_size: the batch stays dynamic
    out = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    return int8_converter(tf, tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out))).convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    root = tmp_path_factory.mktemp("tflite_models")
    paths = {"ssd": root / "mini_ssd.tflite", "dynamic": root / "dynamic.tflite"}
    paths["ssd"].write_bytes(build_mini_ssd(tf))
    paths["dynamic"].write_bytes(build_dynamic_batch(tf))
    return paths


def test_schema_module_is_found_without_importing_tensorflow(models):
    code = (
        "import sys; from edgetpu_retrain.export import flatbuffer as t; "
        f"m = t.read_model({str(models['ssd'])!r}); "
        "print(m.reader, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["schema", "False"]


def test_mini_ssd_ops_versions_and_custom_code(models):
    model = tm.read_model(models["ssd"])
    assert model.reader == "schema"
    assert model.schema_version == 3 and model.subgraph_count == 1
    names = [op.label for op in model.ops]
    assert names[0] == "QUANTIZE" and names[-1] == "CUSTOM(TFLite_Detection_PostProcess)"
    assert names.count("DEQUANTIZE") == 2 and names.count("CONV_2D") == 3
    post = model.ops[-1]
    assert (post.name, post.custom_code, post.version) == ("CUSTOM", "TFLite_Detection_PostProcess", 1)
    assert model.op_versions()["CONV_2D"] == [3]  # TF 2.21 writes version 3 for an int8 CONV_2D
    for op in model.ops:
        assert op.custom_code is None or op.name == "CUSTOM"
        assert all(-1 <= i < len(model.tensors) for i in (*op.inputs, *op.outputs))


def test_input_and_output_tensors(models):
    model = tm.read_model(models["ssd"])
    (inp,) = model.input_tensors
    assert inp.type == "UINT8" and inp.shape == (1, 16, 16, 3) and inp.rank == 4
    assert inp.quantized and len(inp.scale) == 1 and not inp.constant and not inp.dynamic
    details = inp.details()
    assert details["quantization"]["zero_point"] == inp.zero_point[0]
    assert len(model.output_tensors) == 4
    assert {t.type for t in model.output_tensors} == {"FLOAT32"}
    assert sorted(t.shape for t in model.output_tensors) == [(1,), (1, 5), (1, 5), (1, 5, 4)]
    # weights are constant and per-channel quantized int8; biases int32
    conv = next(op for op in model.ops if op.name == "CONV_2D")
    weights, bias = model.tensor(conv.inputs[1]), model.tensor(conv.inputs[2])
    assert weights.constant and weights.type == "INT8" and weights.rank == 4 and len(weights.scale) == 8
    assert bias.constant and bias.type == "INT32"


def test_matches_litert_interpreter(models):
    """Cross-check tensors against LiteRT's own reader (types, shapes, quantization, signature)."""
    from ai_edge_litert.interpreter import Interpreter

    model = tm.read_model(models["ssd"])
    interp = Interpreter(model_path=str(models["ssd"]))
    dtype_names = {np.uint8: "UINT8", np.int8: "INT8", np.float32: "FLOAT32", np.int32: "INT32"}
    for ref in interp.get_input_details() + interp.get_output_details():
        ours = model.tensor(ref["index"])
        assert ours.name == ref["name"]
        assert ours.shape == tuple(ref["shape"])
        assert ours.type == dtype_names[ref["dtype"]]
        scale, zero_point = ref["quantization"]
        assert (ours.scale[0] if ours.scale else 0.0) == pytest.approx(scale)
        assert (ours.zero_point[0] if ours.zero_point else 0) == zero_point
    assert [d["index"] for d in interp.get_input_details()] == list(model.inputs)
    assert [d["index"] for d in interp.get_output_details()] == list(model.outputs)


@pytest.mark.parametrize("name", ["ssd", "dynamic"])
def test_minimal_reader_agrees_with_schema_reader(models, name):
    data = models[name].read_bytes()
    a = tm.read_model(data, reader="schema")
    b = tm.read_model(data, reader="minimal")
    assert b.reader == "minimal"
    assert (a.tensors, a.ops, a.inputs, a.outputs) == (b.tensors, b.ops, b.inputs, b.outputs)
    assert (a.schema_version, a.subgraph_count, a.description) == (
        b.schema_version,
        b.subgraph_count,
        b.description,
    )


def test_dynamic_batch_shape_signature(models):
    model = tm.read_model(models["dynamic"])
    (inp,) = model.input_tensors
    assert inp.shape == (1, 16, 16, 3)  # the converter stores 1 in `shape` ...
    assert inp.shape_signature == (-1, 16, 16, 3)  # ... and -1 in `shape_signature`
    assert inp.dynamic


def test_enum_tables_match_generated_schema():
    schema = tm.schema_module()
    assert schema is not None
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    assert [ops[i] for i in range(len(tm.BUILTIN_OPERATOR_NAMES))] == list(tm.BUILTIN_OPERATOR_NAMES)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    assert [types[i] for i in range(len(tm.TENSOR_TYPE_NAMES))] == list(tm.TENSOR_TYPE_NAMES)
    assert tm.builtin_name(10_000) == "BUILTIN_10000" and tm.tensor_type_name(99) == "TYPE_99"


def test_not_a_tflite_file(tmp_path, models):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(tm.TFLiteReadError, match="not a TFLite flatbuffer"):
        tm.read_model(bad)
    truncated = models["ssd"].read_bytes()[:200]
    for reader in ("schema", "minimal"):
        with pytest.raises(tm.TFLiteReadError):
            tm.read_model(truncated, reader=reader)
    with pytest.raises(ValueError):
        tm.read_model(models["ssd"], reader="bogus")


def test_auto_falls_back_to_minimal_reader(models, monkeypatch):
    """An image without TF/LiteRT (e.g. the compiler image) still reads models."""
    monkeypatch.setattr(tflite_schema, "_SCHEMA_SEARCHED", True)
    monkeypatch.setattr(tflite_schema, "_SCHEMA_MODULE", None)
    model = tm.read_model(models["ssd"])
    assert model.reader == "minimal" and model.ops[-1].custom_code == "TFLite_Detection_PostProcess"
    with pytest.raises(tm.TFLiteReadError, match="schema module"):
        tm.read_model(models["ssd"], reader="schema")


def test_buffer_bytes_are_the_constant_tensor_values(models):
    from ai_edge_litert.interpreter import Interpreter

    data = models["ssd"].read_bytes()
    model = tm.read_model(data)
    interp = Interpreter(model_content=data)
    interp.allocate_tensors()
    constants = [t for t in model.tensors if t.constant]
    assert constants
    for t in constants:
        assert tm.buffer_bytes(data, t.index) == interp.get_tensor(t.index).tobytes(), t.name
    activation = next(t for t in model.tensors if not t.constant)
    assert tm.buffer_bytes(data, activation.index) == b""
    with pytest.raises(tm.TFLiteReadError, match="no tensor"):
        tm.buffer_bytes(data, len(model.tensors))
