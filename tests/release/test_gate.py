"""The promotion gate and the registry under models/<name>/ (no TensorFlow: fake .tflite bytes)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from release_data import PER_CLASS, bccd_manifest
from release_data import write as _write

from edgetpu_retrain.cli import main
from edgetpu_retrain.release import gate, registry
from edgetpu_retrain.release.coverage import op_coverage

pytestmark = pytest.mark.usefixtures("mlflow_off")  # promote/report without MLflow


def make_run(
    root: Path,
    run_id: str,
    *,
    map50: float,
    map_: float | None = None,
    ok: bool = True,
    compiled: bool = True,
    reasons: list[str] | None = None,
    payload: bytes | None = None,
) -> dict:
    """A run folder as the upstream steps leave it: tflite/, edgetpu/, eval JSONs, dataset manifest."""
    run = root / "runs" / run_id
    tfl = _write(run / "tflite" / "model_int8.tflite", payload or f"TFL3 int8 {run_id} {map50}".encode())
    _write(run / "tflite" / "model_float.tflite", b"TFL3 float")
    edir = run / "edgetpu"
    comp = None
    if compiled:
        comp = _write(edir / "model_int8_edgetpu.tflite", b"TFL3 edgetpu " + tfl.read_bytes())
    _write(
        edir / "preflight.json",
        {
            "preflight": {"ok": ok, "reasons": reasons or [], "ops": {"CONV_2D": 3, "CUSTOM": 1}},
            "compiled": str(comp) if comp else None,
            "compiler": {
                "version": "16.0.384591198",
                "ops_tpu": 110,
                "ops_cpu": 3,
                "ops_total": 113,
                "subgraphs": 1,
                "on_chip_mib": 5.2,
            }
            if comp
            else None,
        },
    )
    int8 = _write(
        run / "eval_int8.json",
        {
            "map": map_ if map_ is not None else round(map50 * 0.55, 4),
            "map50": map50,
            "per_class": PER_CLASS,
            "images": 36,
            "model": str(tfl),
            "latency_ms": 7.7,
        },
    )
    flt = _write(
        run / "eval_float.json",
        {
            "map": 0.47,
            "map50": map50 + 0.02,
            "per_class": PER_CLASS,
            "images": 36,
            "model": str(run / "saved_model"),
        },
    )
    ds = root / "datasets" / "bccd" / "20261124"
    _write(ds / "label_map.pbtxt", 'item {\n  id: 1\n  name: "Platelets"\n}\n')
    manifest = _write(ds / "manifest.json", bccd_manifest(seed=0, train_per_class={"RBC": 3300}))
    config = _write(run / "config.yaml", "base_model: mobilenet_v2_ssd\ninput_size: 320\n")
    return {
        "run": run,
        "tflite": tfl,
        "edir": edir,
        "int8": int8,
        "float": flt,
        "manifest": manifest,
        "config": config,
        "compiled": comp,
    }


def argv(models: Path, r: dict, *extra: str, name: str = "bccd") -> list[str]:
    inputs = {
        "--int8-eval": "int8",
        "--float-eval": "float",
        "--tflite": "tflite",
        "--edgetpu-dir": "edir",
        "--dataset-manifest": "manifest",
        "--config": "config",
    }
    files = [arg for flag, key in inputs.items() for arg in (flag, str(r[key]))]
    return ["promote", "--models-dir", str(models), "--name", name, *files, *extra]


def cli(capsys, args: list[str]) -> tuple[int, dict]:
    code = main(args)
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if out else {}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path


def test_first_model_promotes_with_card(root, capsys):
    r = make_run(root, "r1", map50=0.80)
    models = root / "models"
    code, res = cli(capsys, argv(models, r, "--out", str(r["run"] / "promote.json")))
    assert code == 0 and res["promoted"] is True and res["version"] == "0001"
    assert res["current"] is None and res["new"] == 0.80 and res["metric"] == "map50"
    vdir = models / "bccd" / "versions" / "0001"
    assert res["model_dir"] == str(vdir)
    assert sorted(p.name for p in vdir.iterdir()) == [
        "config.yaml",
        "label_map.pbtxt",
        "labels.txt",
        "model_card.json",
        "model_card.md",
        "model_int8.tflite",
        "model_int8_edgetpu.tflite",
    ]
    assert (vdir / "labels.txt").read_text() == "0 Platelets\n1 RBC\n2 WBC\n"
    link = models / "bccd" / "current"
    assert link.is_symlink() and os.readlink(link) == os.path.join("versions", "0001")
    card = json.loads((vdir / "model_card.json").read_text())
    assert card["dataset"]["version"] == "20261124" and card["dataset"]["counts"]["train"]["images"] == 291
    assert card["metrics"]["quantization_drop"]["map50"] == pytest.approx(0.02)
    assert card["edgetpu"]["op_coverage"]["tpu"] == 110 and card["edgetpu"]["op_coverage"]["cpu"] == 3
    assert card["source"]["run_id"] == "r1"  # default run dir: runs/<run_id> above --tflite
    md = (vdir / "model_card.md").read_text()
    assert "bccd/20261124" in md and "operations on Edge TPU: 110" in md and "Quantization drop" in md
    assert json.loads((r["run"] / "promote.json").read_text())["version"] == "0001"


def test_gate_better_within_and_beyond_tolerance_keeps_history(root, capsys):
    models = root / "models"
    r1 = make_run(root, "r1", map50=0.80)
    assert cli(capsys, argv(models, r1))[1]["version"] == "0001"

    r2 = make_run(root, "r2", map50=0.85)  # better
    code, res = cli(capsys, argv(models, r2, "--run-dir", str(r2["run"])))
    assert code == 0 and res["promoted"] and res["version"] == "0002" and res["current"] == 0.80

    r3 = make_run(root, "r3", map50=0.84)  # worse, within tolerance 0.01 (0.85 - 0.01 == 0.84 exactly)
    code, res = cli(capsys, argv(models, r3, "--tolerance", "0.01"))
    assert res["promoted"] and res["version"] == "0003"

    r4 = make_run(root, "r4", map50=0.80)  # worse beyond tolerance
    code, res = cli(capsys, argv(models, r4, "--tolerance", "0.02", "--run-dir", str(r4["run"])))
    assert code == 0 and res["promoted"] is False and res["version"] is None
    assert "below current version 0003" in res["reason"] and res["current"] == 0.84
    assert res["model_dir"] == str(r4["run"]) and res["current_version"] == "0003"

    reg = models / "bccd"
    assert registry.versions(reg) == ["0001", "0002", "0003"]
    assert os.readlink(reg / "current") == os.path.join("versions", "0003")
    history = json.loads((reg / "history.json").read_text())
    assert [h["version"] for h in history] == ["0001", "0002", "0003"]
    assert history[1]["previous_version"] == "0001"


def test_metric_map_and_negative_tolerance(root, capsys):
    models = root / "models"
    cli(capsys, argv(models, make_run(root, "r1", map50=0.80, map_=0.40)))
    r2 = make_run(root, "r2", map50=0.70, map_=0.42)
    res = cli(capsys, argv(models, r2, "--metric", "map", "--tolerance", "-0.05"))[1]
    assert res["promoted"] is False and res["metric"] == "map"  # needs >= 0.45
    res = cli(capsys, argv(models, r2, "--metric", "map"))[1]
    assert res["promoted"] is True and res["current"] == 0.40


def test_preflight_not_ok_never_promotes(root, capsys):
    models = root / "models"
    r = make_run(
        root,
        "r1",
        map50=0.9,
        ok=False,
        compiled=False,
        reasons=["CONV_2D version 6 is newer than compiler 16 accepts"],
    )
    code, res = cli(capsys, argv(models, r))
    assert code == 0 and res["promoted"] is False and "pre-flight failed" in res["reason"]
    assert "CONV_2D version 6" in res["reason"]
    assert not (models / "bccd" / "current").exists() and registry.versions(models / "bccd") == []


def test_compiled_required_but_missing(root, capsys):
    models = root / "models"
    r = make_run(root, "r1", map50=0.9, compiled=False)
    res = cli(capsys, argv(models, r, "--require-compiled"))[1]
    assert res["promoted"] is False and "--require-compiled" in res["reason"]
    # without the flag a pre-flight-ok, uncompiled model promotes (CPU fallback) and ships no _edgetpu file
    res = cli(capsys, argv(models, r))[1]
    assert res["promoted"] is True
    assert not (Path(res["model_dir"]) / "model_int8_edgetpu.tflite").exists()


def test_preflight_and_compiled_flags(root, capsys):
    models = root / "models"
    r = make_run(root, "r1", map50=0.9)
    args = argv(models, r)
    i = args.index("--edgetpu-dir")
    args[i : i + 2] = ["--preflight", str(r["edir"] / "preflight.json"), "--compiled", "None"]
    res = cli(capsys, args + ["--require-compiled"])[1]
    assert res["promoted"] is False  # --compiled None overrides the JSON's path
    args[i + 3] = str(r["compiled"])
    res = cli(capsys, args + ["--require-compiled"])[1]
    assert res["promoted"] is True and res["compiled"] == str(r["compiled"].resolve())


def test_rerun_is_idempotent_and_switch_back(root, capsys):
    models = root / "models"
    reg = models / "bccd"
    r1 = make_run(root, "r1", map50=0.80)
    cli(capsys, argv(models, r1))
    card = (reg / "versions" / "0001" / "model_card.json").read_bytes()
    hist = (reg / "history.json").read_bytes()
    code, res = cli(capsys, argv(models, r1, "--tolerance", "-0.5"))  # same artifacts: no-op even so
    assert (
        code == 0
        and res["promoted"] is True
        and res["version"] == "0001"
        and "already promoted" in res["reason"]
    )
    assert registry.versions(reg) == ["0001"]
    assert (reg / "versions" / "0001" / "model_card.json").read_bytes() == card
    assert (reg / "history.json").read_bytes() == hist

    r2 = make_run(root, "r2", map50=0.78)
    assert cli(capsys, argv(models, r2, "--tolerance", "0.05"))[1]["version"] == "0002"
    res = cli(capsys, argv(models, r1))[1]  # r1 again beats 0002: switch back, no copy
    assert res["promoted"] and res["version"] == "0001" and "switched back" in res["reason"]
    assert registry.versions(reg) == ["0001", "0002"]
    assert [h["action"] for h in json.loads((reg / "history.json").read_text())] == [
        "promote",
        "promote",
        "switch",
    ]


def test_atomic_switch_never_leaves_current_missing(root):
    reg = root / "models" / "m"
    for v in ("0001", "0002"):
        (reg / "versions" / v).mkdir(parents=True)
        (reg / "versions" / v / "model_card.json").write_text(json.dumps({"v": v}))
    registry.switch_current(reg, "0001")
    seen: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(json.loads((reg / "current" / "model_card.json").read_text())["v"])

    t = threading.Thread(target=reader)
    t.start()
    for i in range(200):
        registry.switch_current(reg, "0002" if i % 2 == 0 else "0001")
    stop.set()
    t.join()
    assert seen and set(seen) <= {"0001", "0002"}  # a FileNotFoundError in the reader would fail the join
    assert registry.current_version(reg) == "0001"
    assert not [p for p in reg.iterdir() if p.name.startswith(".current")]


def test_failed_copy_leaves_registry_unchanged(root, capsys, monkeypatch):
    models = root / "models"
    cli(capsys, argv(models, make_run(root, "r1", map50=0.80)))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gate, "render_card_md", boom)
    with pytest.raises(OSError):
        main(argv(models, make_run(root, "r2", map50=0.90)))
    reg = models / "bccd"
    assert registry.versions(reg) == ["0001"] and registry.current_version(reg) == "0001"
    assert not [p for p in (reg / "versions").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "case",
    [
        "missing_eval",
        "bad_json",
        "no_metric",
        "out_of_range",
        "no_gt",
        "no_preflight",
        "bad_preflight",
        "compiled_missing_file",
    ],
)
def test_bad_inputs_are_user_errors(root, capsys, case):
    models = root / "models"
    r = make_run(root, "r1", map50=0.8)
    args = argv(models, r)
    if case == "missing_eval":
        r["int8"].unlink()
    elif case == "bad_json":
        r["int8"].write_text("{not json")
    elif case == "no_metric":
        _write(r["int8"], {"map": 0.4})
    elif case == "out_of_range":
        _write(r["int8"], {"map": 0.4, "map50": 81.0})
    elif case == "no_gt":
        _write(r["int8"], {"map": -1.0, "map50": -1.0, "per_class": {}, "images": 0})
    elif case == "no_preflight":
        (r["edir"] / "preflight.json").unlink()
    elif case == "bad_preflight":
        _write(r["edir"] / "preflight.json", {"preflight": {"ok": "yes"}})
    elif case == "compiled_missing_file":
        r["compiled"].unlink()
        _write(
            r["edir"] / "preflight.json",
            {"preflight": {"ok": True, "reasons": []}, "compiled": str(r["compiled"])},
        )
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    named = {
        "missing_eval": "eval_int8.json",
        "bad_json": "eval_int8.json",
        "no_metric": "map50",
        "out_of_range": "0..1",
        "no_gt": "test split",
        "no_preflight": "preflight.json",
        "bad_preflight": "preflight.json",
        "compiled_missing_file": "model_int8_edgetpu.tflite",
    }[case]
    assert named in err and ";" in err  # names the file/key and says how to fix it


def test_op_coverage_from_compiler_log_table_and_preflight(edgetpu_reference_dir):
    log = edgetpu_reference_dir / "compiler-logs" / "partial_mapping.txt"
    if not log.is_file():
        pytest.skip("shared compiler log samples missing")
    cov = op_coverage({"log": str(log)})
    assert (cov["tpu"], cov["cpu"], cov["total"], cov["subgraphs"]) == (110, 3, 113, 1)
    assert cov["cpu_ops"] == {"CUSTOM": 1, "DEQUANTIZE": 2} and cov["source"] == "compiler"
    none = op_coverage({"log": str(edgetpu_reference_dir / "compiler-logs" / "no_tpu_subgraph.txt")})
    assert (none["tpu"], none["cpu"], none["subgraphs"], none["tpu_percent"]) == (0, 40, 0, 0.0)
    # the edgetpu step's figures: op_table rows carry a `mapped` bool
    cov = op_coverage(
        {
            "op_table": [
                {"op": "CONV_2D", "count": 5, "status": "Mapped to Edge TPU", "mapped": True},
                {"op": "CUSTOM", "count": 1, "status": "unsupported", "mapped": False},
            ]
        }
    )
    assert (cov["tpu"], cov["cpu"], cov["total"]) == (5, 1, 6)
    est = op_coverage(
        None,
        {
            "expected_tpu_op_count": 96,
            "expected_cpu_op_count": 3,
            "expected_cpu_ops": {"CUSTOM": 1, "DEQUANTIZE": 2},
        },
    )
    assert (est["tpu"], est["total"], est["source"]) == (96, 99, "pre-flight estimate")
    assert op_coverage(None) is None and op_coverage({"version": "16"}) is None


def test_edgetpu_step_output_folder(root, capsys, edgetpu_reference_dir):
    """What `edgetpu --out DIR` leaves: full preflight.json (no compiled key), the compiled model, stdout."""
    models = root / "models"
    r = make_run(root, "r1", map50=0.8)
    _write(
        r["edir"] / "preflight.json",
        {
            "ok": True,
            "reasons": [],
            "warnings": [],
            "ops": [{"index": 0}] * 50,
            "expected_tpu_op_count": 110,
            "expected_cpu_op_count": 3,
            "total_ops": 113,
            "subgraphs": 1,
        },
    )
    _write(
        r["edir"] / "edgetpu_compiler.txt",
        (edgetpu_reference_dir / "compiler-logs" / "partial_mapping.txt").read_text(),
    )
    res = cli(capsys, argv(models, r, "--require-compiled"))[1]
    assert res["promoted"] and res["compiled"] == str(r["compiled"].resolve())
    card = json.loads((Path(res["model_dir"]) / "model_card.json").read_text())
    cov = card["edgetpu"]["op_coverage"]
    assert (cov["tpu"], cov["cpu"], cov["source"]) == (110, 3, "compiler")
    assert "ops" not in card["edgetpu"]["preflight_details"]  # the per-op rows stay in preflight.json
    md = (Path(res["model_dir"]) / "model_card.md").read_text()
    assert "on the CPU: CUSTOM x1, DEQUANTIZE x2" in md


def test_plain_preflight_json_and_compiled_found_in_edgetpu_dir(root, capsys):
    """contracts.md form: preflight.json = {ok, reasons}; the compiled model is found beside it."""
    models = root / "models"
    r = make_run(root, "r1", map50=0.8)
    _write(r["edir"] / "preflight.json", {"ok": True, "reasons": []})
    res = cli(capsys, argv(models, r, "--require-compiled"))[1]
    assert res["promoted"] and res["compiled"] == str(r["compiled"].resolve())
    card = json.loads((Path(res["model_dir"]) / "model_card.json").read_text())
    assert (
        card["edgetpu"]["op_coverage"] is None and card["edgetpu"]["compiled"] == "model_int8_edgetpu.tflite"
    )
    assert "operation counts: not reported" in (Path(res["model_dir"]) / "model_card.md").read_text()


def test_registry_is_readable_by_other_users(root, capsys):
    old = os.umask(0o022)
    try:
        res = cli(capsys, argv(root / "models", make_run(root, "r1", map50=0.8)))[1]
    finally:
        os.umask(old)
    vdir = Path(res["model_dir"])
    assert (vdir.stat().st_mode & 0o777) == 0o755
    assert ((root / "models" / "bccd" / "history.json").stat().st_mode & 0o777) == 0o644
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in vdir.iterdir())
