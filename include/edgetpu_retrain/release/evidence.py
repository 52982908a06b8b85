"""What a promotion is decided on, read and checked: the evaluate JSONs, the edgetpu step's outputs and
the dataset manifest. Every problem a user can fix is a `UserError` naming the file."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError
from edgetpu_retrain.release.coverage import PREFLIGHT_KEYS, compiler_from_folder
from edgetpu_retrain.release.metrics import METRICS, is_number

log = logging.getLogger(__name__)


def default_run_dir(tflite: Path) -> Path:
    """runs/<run_id> above the .tflite (data-root layout), else the .tflite's own folder."""
    for parent in tflite.parents:
        if parent.parent.name == "runs":
            return parent
    return tflite.parent


def load_eval(path: str | os.PathLike[str], *, metric: str | None) -> dict[str, Any]:
    """Read an evaluate JSON; `map`/`map50` present must be numbers in 0..1, and `metric` must exist."""
    data = common.read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected the evaluate step's JSON object; re-run evaluate")
    data = dict(data)
    for key in METRICS:
        value = data.get(key)
        if value == -1 and not isinstance(value, bool):  # COCOeval's "no ground truth"
            if key == metric:
                raise UserError(
                    f"{path}: {key!r} is -1 (COCOeval found no ground-truth boxes: is the test split "
                    "empty?); add labeled test images, rebuild the dataset and re-run evaluate"
                )
            data[key] = None
        elif value is not None and not (is_number(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{path}: {key!r} is {value!r}, expected a number in 0..1; re-run evaluate")
    if metric is not None and not is_number(data.get(metric)):
        raise UserError(
            f"{path}: no {metric!r} number (the gate metric); re-run evaluate or pick --metric "
            f"{' or '.join(m for m in METRICS if m != metric)}"
        )
    return {"path": str(Path(path).resolve()), "data": data}


def _preflight_location(edgetpu_dir: str | None, preflight: str | None, tflite: Path) -> tuple[Path, Path]:
    """(preflight.json, the edgetpu step's folder) from --edgetpu-dir, --preflight or beside the .tflite."""
    if edgetpu_dir:
        folder = common.require_dir(edgetpu_dir, what="edgetpu step output")
        path = folder / "preflight.json"
        if not path.is_file():
            raise UserError(
                f"{path}: file not found; run the edgetpu step into {folder} or pass --preflight FILE"
            )
        return path, folder
    if preflight:
        return Path(preflight), Path(preflight).parent
    path = tflite.parent / "preflight.json"
    if not path.is_file():
        raise UserError(
            f"{path}: no Edge TPU pre-flight result; run the edgetpu step and pass "
            "--edgetpu-dir DIR or --preflight FILE"
        )
    return path, tflite.parent


def _compiled_path(
    *, flag: str | None, data: dict[str, Any], preflight_path: Path, folder: Path, scan: bool
) -> Path | None:
    """The compiled model: the --compiled flag wins ('' / None / null = explicitly not compiled), then the
    JSON's `compiled`, then (only with --edgetpu-dir and no `compiled` key) the one *_edgetpu.tflite."""
    if flag is not None:
        if common.is_none(flag):
            return None
        path = Path(flag).resolve()
        if not path.is_file():
            raise UserError(
                f"{path}: compiled Edge TPU model not found; pass the edgetpu step's "
                "'compiled' path, or --compiled None if it did not compile"
            )
        return path
    if not common.is_none(data.get("compiled")):
        value = Path(str(data["compiled"]))
        path = (value if value.is_absolute() else preflight_path.parent / value).resolve()
        if not path.is_file():
            raise UserError(
                f"{preflight_path}: 'compiled' names {path}, which does not exist; re-run the edgetpu step"
            )
        return path
    if scan and "compiled" not in data:  # an explicit "compiled": null means "not compiled"
        found = sorted(folder.glob("*_edgetpu.tflite"))
        if len(found) > 1:
            raise UserError(
                f"{folder}: several *_edgetpu.tflite files ({', '.join(p.name for p in found)}); "
                "pass --preflight FILE --compiled FILE"
            )
        return found[0].resolve() if found else None
    return None


def load_edgetpu(
    *, edgetpu_dir: str | None, preflight: str | None, compiled: str | None, tflite: Path
) -> dict[str, Any]:
    """Normalize the edgetpu step's outputs to {preflight: {ok, reasons}, compiled, compiler, source}."""
    preflight_path, folder = _preflight_location(edgetpu_dir, preflight, tflite)
    data = common.read_json(preflight_path)
    if not isinstance(data, dict):
        raise UserError(f"{preflight_path}: expected a JSON object with 'ok' and 'reasons'; re-run edgetpu")
    pre = data.get("preflight", data)
    if not isinstance(pre, dict) or not isinstance(pre.get("ok"), bool):
        raise UserError(
            f"{preflight_path}: no boolean 'ok' (in 'preflight' or at the top level); re-run the edgetpu step"
        )
    reasons = pre.get("reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    compiler = data.get("compiler") if isinstance(data.get("compiler"), dict) else None
    if compiler is None:
        compiler = compiler_from_folder(folder)
    compiled_path = _compiled_path(
        flag=compiled, data=data, preflight_path=preflight_path, folder=folder, scan=bool(edgetpu_dir)
    )
    return {
        "source": str(preflight_path.resolve()),
        "preflight": {"ok": pre["ok"], "reasons": [str(r) for r in reasons]},
        "preflight_extra": {k: pre[k] for k in PREFLIGHT_KEYS if pre.get(k) is not None},
        "compiled": str(compiled_path) if compiled_path else None,
        "compiler": compiler,
    }


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = common.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
        raise UserError(
            f"{path}: not a dataset manifest (no 'counts'); pass datasets/<name>/<version>/manifest.json"
        )
    p = Path(path).resolve()
    return {
        "manifest": str(p),
        "manifest_sha256": common.sha256_file(p),
        "name": p.parent.parent.name,
        "version": p.parent.name,
        "classes": data.get("classes") or [],
        "num_classes": data.get("num_classes"),
        "counts": data["counts"],
        "split": data.get("split"),
        "seed": data.get("seed"),
        "label_map": str((p.parent / data["label_map"]).resolve()) if data.get("label_map") else None,
        "created": data.get("created"),
    }


@dataclass(frozen=True)
class Candidate:
    """One run's model and the evidence about it (all paths resolved, all JSON checked)."""

    name: str
    tflite: Path
    int8_eval: dict[str, Any]
    float_eval: dict[str, Any] | None
    edgetpu: dict[str, Any]
    manifest: dict[str, Any] | None
    training: dict[str, Any] | None
    labels: Path | None
    config: Path | None
    run_dir: Path


def _optional_file(value: str | None, *, what: str) -> Path | None:
    return common.require_file(value, what=what).resolve() if value else None


def load_candidate(args: argparse.Namespace) -> Candidate:
    tflite = common.require_file(args.tflite, what="int8 .tflite").resolve()
    int8_eval = load_eval(args.int8_eval, metric=args.metric)
    training = common.read_json(args.training) if args.training else None
    if training is not None and not isinstance(training, dict):
        raise UserError(f"{args.training}: expected a JSON object from the train step; re-run train")
    candidate = Candidate(
        name=args.name,
        tflite=tflite,
        int8_eval=int8_eval,
        float_eval=load_eval(args.float_eval, metric=None) if args.float_eval else None,
        edgetpu=load_edgetpu(
            edgetpu_dir=args.edgetpu_dir, preflight=args.preflight, compiled=args.compiled, tflite=tflite
        ),
        manifest=load_manifest(args.dataset_manifest) if args.dataset_manifest else None,
        training=training,
        labels=_optional_file(args.labels, what="labels"),
        config=_optional_file(args.config, what="rendered config"),
        run_dir=Path(args.run_dir).resolve() if args.run_dir else default_run_dir(tflite),
    )
    evaluated = int8_eval["data"].get("model")
    if isinstance(evaluated, str) and evaluated and Path(evaluated).resolve() != tflite:
        log.warning(
            "%s evaluated %s, but --tflite is %s: check both come from the same run",
            int8_eval["path"],
            evaluated,
            tflite,
        )
    return candidate
