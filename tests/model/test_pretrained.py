"""model/pretrained*.py: the bundled Coral MobileNets converted onto keras.applications, the cache, the
`import-weights` verb and `model.backbone_weights: bundled`. Uses only files inside the package (no
../shared): the four Coral .tflite models and the 8 check photos in model/pretrained_weights/."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
import keras  # noqa: E402
from testdata import train_only_snapshot
from tiny_models import model_only_config

from edgetpu_retrain import cli
from edgetpu_retrain.common import UserError
from edgetpu_retrain.model import config, pretrained
from edgetpu_retrain.model import detector as model
from edgetpu_retrain.model import pretrained_convert as pc
from edgetpu_retrain.model.pretrained_tflite import read_mobilenet

V2 = "mobilenet_v2_1.0_224_quant.tflite"
V1_EMBED = "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"
V1_075, V1_05 = "mobilenet_v1_0.75_192_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite"
FEATURE_LAYER = {1: "conv_pw_11_relu", 2: "block_13_expand_relu"}  # the detector's stride-16 map


def bundled(name: str):
    return pc.bundled_dir() / name


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def converted():
    """name -> (MobileNetFile, Keras backbone, summary), each file converted once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            mn = read_mobilenet(bundled(name))
            backbone, summary = pc.convert_file(mn)
            cache[name] = (mn, backbone, summary)
        return cache[name]

    return get


@pytest.mark.parametrize(
    ("name", "version", "alpha", "convs"), [(V2, 2, 1.0, 52), (V1_075, 1, 0.75, 27), (V1_05, 1, 0.5, 27)]
)
def test_converted_classifier_top1_equals_tflite(converted, name, version, alpha, convs):
    mn, backbone, summary = converted(name)
    assert (summary["version"], summary["alpha"], summary["kind"]) == (version, alpha, "classifier")
    assert summary["layers_mapped"] == summary["batchnorm_layers"] == convs
    photos = pc.load_photos(pc.photo_paths(), mn.input_size)
    reference = pc.tflite_outputs(mn, photos)
    ours = pc.keras_outputs(mn, backbone, photos)
    assert len(photos) == 8
    np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))
    assert summary["agreement"] == {
        "photos": 8,
        "top1_match": 8,
        "top5_overlap": summary["agreement"]["top5_overlap"],
    }
    assert summary["agreement"]["top5_overlap"] >= 4.5


def test_v1_embedding_cosine(converted):
    mn, backbone, summary = converted(V1_EMBED)
    assert (mn.version, mn.alpha, mn.kind, mn.logits) == (1, 1.0, "embedding", None)
    photos = pc.load_photos(pc.photo_paths(), mn.input_size)
    result = pc.agreement(mn, pc.tflite_outputs(mn, photos), pc.keras_outputs(mn, backbone, photos))
    assert result["cosine_min"] >= 0.99 and summary["agreement"]["cosine_min"] >= 0.99


@pytest.mark.parametrize("name", [V2, V1_05])
def test_measured_batchnorm_survives_training_mode_on_unseen_photos(name):
    """Statistics from 4 photos; training mode on 16 views of the OTHER 4. Identity BatchNorm (the folded
    network as is) collapses at the detector's stride-16 feature layer; measured statistics keep it."""
    mn = read_mobilenet(bundled(name))
    photos = pc.photo_paths()
    batch = pc.to_float(mn, pc.stats_views(pc.load_photos(photos[4:], mn.input_size)))
    backbone = pc.keras_backbone(mn.version, mn.alpha, mn.input_size)
    pairs = pc.conv_bn_pairs(backbone)
    probe = keras.Model(backbone.input, backbone.get_layer(FEATURE_LAYER[mn.version]).output)

    def cosine() -> float:
        a, b = (
            np.asarray(probe(batch, training=False)).ravel(),
            np.asarray(probe(batch, training=True)).ravel(),
        )
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    pc.assign_weights(mn, pairs, mn.path)
    inference = np.asarray(probe(batch, training=False))
    identity = cosine()
    pc.assign_weights(mn, pairs, mn.path)  # training-mode calls moved the moving averages: back to identity
    pc.set_batchnorm_statistics(
        backbone, pairs, mn, images=pc.stats_views(pc.load_photos(photos[:4], mn.input_size))
    )
    np.testing.assert_allclose(
        np.asarray(probe(batch, training=False)), inference, atol=1e-3 * np.abs(inference).max()
    )
    measured = cosine()
    assert identity < 0.7 and measured >= 0.85, (identity, measured)  # measured: 0.56/0.54 vs 0.93/0.91


def test_import_weights_verb_writes_loadable_weights(tmp_path, capsys):
    out = tmp_path / "v1_05.weights.h5"
    assert (
        cli.main(
            [
                "import-weights",
                "--tflite",
                str(bundled(V1_05)),
                "--out",
                str(out),
                "--base",
                "mobilenet_v1",
                "--alpha",
                "0.5",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        result["weights"] == str(out)
        and result["layers_mapped"] == 27
        and result["agreement"]["top1_match"] == 8
    )
    backbone = keras.applications.MobileNet(
        input_shape=(320, 320, 3), alpha=0.5, include_top=False, weights=str(out)
    )
    np.testing.assert_array_equal(
        backbone.get_layer("conv1").kernel.numpy(), read_mobilenet(bundled(V1_05)).convs[0].kernel
    )
    again = tmp_path / "again.weights.h5"
    pretrained.import_weights(bundled(V1_05), again)
    assert again.read_bytes() == out.read_bytes()  # same input, same bytes


def test_wrong_files_fail_with_one_clear_line(tmp_path, capsys):
    from tflite_models import build_mini_ssd

    text = tmp_path / "notes.tflite"
    text.write_text("not a model\n")
    ssd = tmp_path / "mini_ssd.tflite"
    ssd.write_bytes(build_mini_ssd(tf))
    for path, expected in ((text, "not a TFLite model"), (ssd, "not a Coral/TFLite MobileNet V1 or V2")):
        assert (
            cli.main(["import-weights", "--tflite", str(path), "--out", str(tmp_path / "x.weights.h5")]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and expected in err, err
    assert not (tmp_path / "x.weights.h5").exists()
    with pytest.raises(UserError, match=r"must end in \.weights\.h5"):
        pretrained.import_weights(bundled(V1_05), tmp_path / "x.h5")


def test_alpha_and_base_mismatch_fail_clearly(tmp_path):
    with pytest.raises(
        UserError, match=r"this is MobileNet V1 alpha 0\.75, but alpha 1 was asked for; set model\.alpha"
    ):
        pretrained.import_weights(bundled(V1_075), tmp_path / "a.weights.h5", alpha=1.0)
    with pytest.raises(UserError, match=r"this is MobileNet V1 alpha 0\.5, not mobilenet_v2"):
        pretrained.cached_weights(bundled(V1_05), base="mobilenet_v2_ssd", alpha=0.5)
    cfg = make_cfg("mobilenet_v1_ssd", alpha=1.0, weights=str(bundled(V1_05)))
    with pytest.raises(UserError, match="alpha 0.5, but alpha 1 was asked"):
        model.build_detector(cfg)


def test_cache_is_reused(weights_cache, monkeypatch):
    first = pretrained.cached_weights(bundled(V1_05), base="mobilenet_v1", alpha=0.5)
    assert first["cached"] is False and first["weights"].startswith(str(weights_cache))
    assert sorted(p.name for p in weights_cache.iterdir()) == [
        f"{first['sha256']}-v{pretrained.CONVERTER_VERSION}.json",
        f"{first['sha256']}-v{pretrained.CONVERTER_VERSION}.weights.h5",
    ]

    def no_conversion(*_a, **_k):
        raise AssertionError("converted again")

    monkeypatch.setattr(pc, "convert_file", no_conversion)
    second = pretrained.cached_weights(bundled(V1_05), base="mobilenet_v1", alpha=0.5)
    assert second["cached"] is True and second["weights"] == first["weights"]
    with pytest.raises(UserError, match="alpha 0.5, but alpha 0.75"):  # the cached summary is checked too
        pretrained.cached_weights(bundled(V1_05), alpha=0.75)


def make_cfg(base="mobilenet_v2_ssd", *, alpha=1.0, weights="bundled"):
    return model_only_config(base, alpha=alpha, classes=2, backbone_weights=weights)


def test_no_bundled_weights_for_alpha_warns_and_names_the_fix(caplog):
    note = pretrained.weights_note("mobilenet_v2_ssd", 0.35, "bundled")
    assert "no bundled ImageNet weights for mobilenet_v2_ssd alpha 0.35" in note and "RANDOM init" in note
    assert "model.alpha=1" in note and "'imagenet'" in note
    assert pretrained.weights_note("mobilenet_v1_ssd", 0.75, "bundled") is None
    assert pretrained.weights_note("mobilenet_v2_ssd", 0.35, None) is None
    with caplog.at_level("WARNING", logger="edgetpu_retrain"):
        det = model.build_detector(make_cfg(alpha=0.35))
    assert det is not None and any("RANDOM init" in r.getMessage() for r in caplog.records)
    for base in config.BASE_MODELS:
        assert config.load_template(base)["model"]["backbone_weights"] == "bundled"


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo-data", "--out", str(root / "images"), "--images", "6", "--size", "320"]) == 0
    return train_only_snapshot(root / "images", root, shards=1)


def test_render_config_reports_missing_bundled_weights(demo_dataset, tmp_path, capsys, caplog):
    out = tmp_path / "c.yaml"
    caplog.set_level("WARNING", logger="edgetpu_retrain")

    def render(base: str, *flags: str) -> dict:
        argv = ["render-config", "--dataset", str(demo_dataset), "--base-model", base, "--out", str(out)]
        assert cli.main([*argv, *flags]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    result = render("mobilenet_v2_ssd", "--set", "model.alpha=0.5")
    assert result["backbone_weights"] == "bundled" and "RANDOM init" in result["backbone_weights_warning"]
    assert any("RANDOM init" in r.getMessage() for r in caplog.records)
    assert render("mobilenet_v1_ssd")["backbone_weights_warning"] is None


@pytest.mark.slow
def test_detector_builds_from_bundled_weights_and_trains(demo_dataset, tmp_path, weights_cache):
    from edgetpu_retrain.model import train

    sets = [
        "model.input_size=320",
        "train.batch_size=2",
        "train.steps=3",
        "train.warmup_steps=0",
        "train.log_every=1",
        "train.shuffle_buffer=8",
        "train.max_boxes=8",
    ]
    _, cfg = config.render_config(demo_dataset, "mobilenet_v2_ssd", config.parse_set(sets))
    assert cfg.model.backbone_weights == "bundled"
    det = model.build_detector(cfg)
    kernel = det.get_layer("mobilenet_v2_ssd_backbone").get_layer("Conv1").kernel.numpy()
    np.testing.assert_array_equal(kernel, read_mobilenet(bundled(V2)).convs[0].kernel)
    assert len(list(weights_cache.glob("*.weights.h5"))) == 1
    result = train.train(cfg, tmp_path / "run", steps=3)
    assert result["steps_done"] == 3 and np.isfinite(result["loss"])


@pytest.mark.slow
def test_concurrent_first_use_leaves_one_complete_cache_entry(weights_cache):
    """Two trainers starting together both convert (no lock) and rename atomically: one entry, loadable."""
    import subprocess
    import sys

    code = (
        "import sys; from edgetpu_retrain.model import pretrained; "
        "r = pretrained.cached_weights(sys.argv[1], base='mobilenet_v1', alpha=0.5); print(r['weights'])"
    )
    package_root = os.path.dirname(  # include/: the tree under test, not the install
        os.path.dirname(os.path.dirname(pretrained.__file__))
    )
    env = {
        **os.environ,
        pretrained.CACHE_ENV: str(weights_cache),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": package_root,
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(bundled(V1_05))], env=env, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].decode().strip().splitlines()[-1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs[0] == outs[1]
    assert sorted(p.suffix for p in weights_cache.iterdir()) == [".h5", ".json"]  # no temp files left
    backbone = pc.keras_backbone(1, 0.5, 160)
    backbone.load_weights(outs[0])
    assert pretrained.cached_weights(bundled(V1_05))["cached"] is True
