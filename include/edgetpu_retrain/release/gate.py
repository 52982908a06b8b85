"""`edgetpu-retrain promote`: the promotion gate, deciding whether a run's model becomes `current`.

Gate (in this order; the first failing rule decides):
1. the Edge TPU pre-flight must be ok (`preflight.ok`), otherwise the model cannot run on the TPU;
2. with `--require-compiled`, the compiled `*_edgetpu.tflite` must exist;
3. the new int8 metric (`--metric`, default `map50`) must satisfy `new >= current - tolerance`, where
   `current` is the int8 metric in the model card of the currently promoted model. The first model of a
   name always passes. A negative tolerance demands a strict improvement of at least |tolerance|.
   Before that, the floor (`--min-map50`, on the gate metric): nothing below it is promoted, the first
   model of a name included.

The registry (`models/<name>/versions/NNNN`, the `current` symlink, `history.json`) is `registry.py`;
the card written into each version is `model_card.py`. Re-running promote with the same artifacts (same
sha256 of every copied file) is a no-op that reports the existing version: no new folder, no history
entry, same bytes. If the same artifacts exist as an older, non-current version and pass the gate,
`current` switches back to that version instead of copying them again.

Not promoted -> exit 0, `promoted: false` and the reason; the model stays where it is (its run dir).
`--out FILE` also writes the decision JSON (e.g. runs/<run_id>/promote.json) for the report step.
A promoted model is also registered in MLflow's Model Registry (`tracking.register_promoted`, flags
`--tracking-uri` / `--airflow-run-id`; never fails the step); the result's `mlflow` key says where.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError
from edgetpu_retrain.release import registry, tracking
from edgetpu_retrain.release.evidence import Candidate, load_candidate
from edgetpu_retrain.release.metrics import METRIC_NAMES, METRICS
from edgetpu_retrain.release.model_card import build_card, card_metric, labels_txt, render_card_md

log = logging.getLogger(__name__)

# Exact-equality slack for floats that went through JSON (0.51 - 0.01 must still pass for 0.50).
EPS = 1e-9


# --------------------------------------------------------------------------------------------- CLI
_OPTIONAL_FILES = {
    "--labels": "labels file to ship with the model (copied under its own name)",
    "--dataset-manifest": "dataset snapshot manifest.json (version, counts, classes)",
    "--config": "rendered training config (copied into the version folder)",
    "--training": "train step JSON (steps_done, losses, images_per_sec) for the card",
    "--run-dir": "source run folder recorded in the card (default: runs/<run_id> above --tflite)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", required=True, help="registry root (data-root/models)")
    parser.add_argument("--name", required=True, help="model name: the registry folder models/<name>/")
    parser.add_argument("--int8-eval", required=True, help="evaluate JSON of the int8 .tflite")
    parser.add_argument("--float-eval", help="evaluate JSON of the float model (for the quantization drop)")
    parser.add_argument("--tflite", required=True, help="the int8 .tflite to promote")
    tpu = parser.add_mutually_exclusive_group()
    tpu.add_argument(
        "--edgetpu-dir", help="output folder of the edgetpu step (preflight.json, *_edgetpu.tflite)"
    )
    tpu.add_argument(
        "--preflight", help="preflight.json or the edgetpu step JSON (keys preflight/compiled/compiler)"
    )
    parser.add_argument(
        "--compiled",
        help="compiled *_edgetpu.tflite (overrides the one named in the pre-flight JSON; "
        "'' or 'None' = not compiled)",
    )
    for flag, help_text in _OPTIONAL_FILES.items():
        parser.add_argument(flag, help=help_text)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promote if new >= current - tolerance (metric units 0..1; default 0.0)",
    )
    parser.add_argument(
        "--min-map50",
        dest="floor",
        type=float,
        default=0.0,
        help="floor: no model whose int8 gate metric (mAP@.5 by default) is below it is promoted, "
        "the first one included (0..1; default 0.0 = no floor)",
    )
    parser.add_argument("--metric", choices=METRICS, default="map50", help="gate metric (default map50)")
    parser.add_argument(
        "--require-compiled",
        action="store_true",
        help="refuse promotion unless the Edge TPU compiled model exists",
    )
    parser.add_argument(
        "--out", help="also write the decision JSON to this file (e.g. runs/<id>/promote.json)"
    )
    tracking.add_arguments(parser)  # a promoted model is also registered in MLflow's Model Registry


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not math.isfinite(args.tolerance):
        raise UserError(f"--tolerance {args.tolerance}: must be a finite number like 0.01; fix the flag")
    if not 0.0 <= args.floor <= 1.0:
        raise UserError(f"--min-map50 {args.floor}: must be a number in 0..1 like 0.1; fix the flag")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise UserError(f"--name {args.name!r}: use letters, digits, '.', '_' or '-' only; fix the flag")
    candidate = load_candidate(args)
    thresholds = Thresholds(
        metric=args.metric,
        tolerance=args.tolerance,
        require_compiled=bool(args.require_compiled),
        floor=args.floor,
    )
    model_root = Path(args.models_dir).resolve() / args.name
    model_root.mkdir(parents=True, exist_ok=True)
    with registry.locked(model_root / ".lock"):
        result = promote(model_root=model_root, candidate=candidate, thresholds=thresholds)
    result["mlflow"] = tracking.register_promoted(
        result,
        tflite=candidate.tflite,
        run_dir=candidate.run_dir,
        uri=args.tracking_uri,
        run_id=args.airflow_run_id,
        compiled=candidate.edgetpu["compiled"],
    )
    if args.out:
        common.write_json(args.out, result)
        result["decision_json"] = str(Path(args.out).resolve())
    return result


# ---------------------------------------------------------------------------------------- decision
@dataclass(frozen=True)
class Thresholds:
    """What a model must meet to be promoted."""

    metric: str = "map50"
    tolerance: float = 0.0
    require_compiled: bool = False
    floor: float = 0.0  # no model below this is promoted, the first one included


def edgetpu_rejection(edgetpu: dict[str, Any], *, require_compiled: bool) -> str | None:
    """Gate rules 1-2: why the model cannot ship to the Edge TPU, or None."""
    if not edgetpu["preflight"]["ok"]:
        why = "; ".join(edgetpu["preflight"]["reasons"]) or "no reason given"
        return f"Edge TPU pre-flight failed: {why}"
    if require_compiled and not edgetpu["compiled"]:
        return (
            "--require-compiled is set but the Edge TPU compiled model is missing "
            "(the compiler did not run or failed)"
        )
    return None


def accuracy_decision(
    *,
    new: float,
    current: float | None,
    current_version: str | None,
    metric: str,
    tolerance: float,
    floor: float = 0.0,
) -> tuple[bool, str]:
    """Gate rule 3: (passed, reason) for the new int8 metric against the floor and the current model's."""
    label = f"int8 {METRIC_NAMES[metric]}"
    if new < floor - EPS:
        return False, f"{label} {new:.4f} is below the promotion floor {floor:g} (--min-map50 / min_map50)"
    if current is None:
        return True, "first model for this name"
    if not new >= current - tolerance - EPS:
        return False, (
            f"{label} {new:.4f} is below current version {current_version} ({current:.4f}) "
            f"minus tolerance {tolerance:g} (needs >= {current - tolerance:.4f})"
        )
    return (
        True,
        f"{label} {new:.4f} >= current version {current_version} ({current:.4f}) - tolerance {tolerance:g}",
    )


# --------------------------------------------------------------------------------------- promotion
@dataclass(frozen=True)
class _Promotion:
    """One promotion attempt under the registry lock: what every outcome reports."""

    model_root: Path
    candidate: Candidate
    thresholds: Thresholds
    new: float
    current: float | None
    current_version: str | None

    def result(
        self,
        promoted: bool,
        reason: str,
        *,
        version: str | None,
        current_version: str | None,
        model_dir: Path,
    ) -> dict[str, Any]:
        return {
            "promoted": promoted,
            "reason": reason,
            "metric": self.thresholds.metric,
            "new": self.new,
            "current": self.current,
            "tolerance": self.thresholds.tolerance,
            "version": version,
            "current_version": current_version,
            "model_dir": str(model_dir),
            "current_dir": str(self.model_root / registry.CURRENT),
            "model_card": str(model_dir / registry.CARD_JSON) if promoted else None,
            "name": self.candidate.name,
            "preflight_ok": self.candidate.edgetpu["preflight"]["ok"],
            "compiled": self.candidate.edgetpu["compiled"],
        }

    def reject(self, reason: str) -> dict[str, Any]:
        log.info("not promoted: %s (model stays in %s)", reason, self.candidate.run_dir)
        return self.result(
            False,
            reason,
            version=None,
            current_version=self.current_version,
            model_dir=self.candidate.run_dir,
        )

    def accept(self, reason: str, version: str) -> dict[str, Any]:
        vdir = registry.version_dir(self.model_root, version)
        return self.result(True, reason, version=version, current_version=version, model_dir=vdir)

    def record(self, action: str, version: str, *, at: str) -> None:
        """Switch `current` to `version` and append the history entry."""
        registry.switch_current(self.model_root, version)
        registry.append_history(
            self.model_root,
            {
                "action": action,
                "version": version,
                "previous_version": self.current_version,
                "metric": self.thresholds.metric,
                "new": self.new,
                "current": self.current,
                "at": at,
                "run_dir": str(self.candidate.run_dir),
            },
        )


def _current_metric(model_root: Path, metric: str) -> tuple[str | None, float | None]:
    cur_ver = registry.current_version(model_root)
    if cur_ver is None:
        return None, None
    current = card_metric(registry.read_card(model_root, cur_ver), metric)
    if current is None:
        raise UserError(
            f"{registry.version_dir(model_root, cur_ver) / registry.CARD_JSON}: no int8 {metric!r} in the "
            "current model card; fix the card or promote with the other --metric"
        )
    return cur_ver, current


def shipped_files(candidate: Candidate) -> tuple[dict[str, Path], dict[str, str]]:
    """(files copied into a version by name, generated text files by name)."""
    files: dict[str, Path] = {candidate.tflite.name: candidate.tflite}
    compiled = candidate.edgetpu["compiled"]
    if compiled:
        files[Path(compiled).name] = Path(compiled)
    for extra in (candidate.labels, candidate.config):
        if extra is not None:
            files[extra.name] = extra
    generated: dict[str, str] = {}
    if candidate.manifest is not None:
        txt = labels_txt(candidate.manifest["classes"])
        if txt and "labels.txt" not in files:
            generated["labels.txt"] = txt
        lm = candidate.manifest.get("label_map")
        if lm and Path(lm).is_file() and Path(lm).name not in files:
            files[Path(lm).name] = Path(lm)
    return files, generated


def promote(*, model_root: Path, candidate: Candidate, thresholds: Thresholds) -> dict[str, Any]:
    """Decide and, if the gate passes, publish; call with the registry lock held."""
    cur_ver, current = _current_metric(model_root, thresholds.metric)
    attempt = _Promotion(
        model_root=model_root,
        candidate=candidate,
        thresholds=thresholds,
        new=float(candidate.int8_eval["data"][thresholds.metric]),
        current=current,
        current_version=cur_ver,
    )
    why_not = edgetpu_rejection(candidate.edgetpu, require_compiled=thresholds.require_compiled)
    if why_not:
        return attempt.reject(why_not)
    files, generated = shipped_files(candidate)
    artifacts = registry.artifacts(files, generated)
    prints = registry.fingerprint(artifacts)
    # Same artifacts as the current version: an idempotent re-run, whatever the gate says now
    if cur_ver is not None and registry.card_fingerprint(model_root, cur_ver) == prints:
        log.info("already promoted as version %s; nothing changed", cur_ver)
        return attempt.accept(
            f"already promoted as version {cur_ver} (same artifacts); nothing changed", cur_ver
        )
    passed, why = accuracy_decision(
        new=attempt.new,
        current=current,
        current_version=cur_ver,
        metric=thresholds.metric,
        tolerance=thresholds.tolerance,
        floor=thresholds.floor,
    )
    if not passed:
        return attempt.reject(why)
    # Same artifacts as an older version: switch back to it rather than copying them again
    older = registry.find_version(model_root, prints)
    if older is not None:
        attempt.record("switch", older, at=registry.now())
        return attempt.accept(f"{why}; same artifacts as version {older}, current switched back to it", older)
    version = _publish(attempt, why=why, files=files, generated=generated, artifacts=artifacts)
    log.info("promoted %s as version %s: %s", candidate.name, version, why)
    return attempt.accept(why, version)


def _publish(
    attempt: _Promotion,
    *,
    why: str,
    files: dict[str, Path],
    generated: dict[str, str],
    artifacts: dict[str, dict[str, Any]],
) -> str:
    """Write the next version folder with its model card, then switch `current` to it."""
    c, t = attempt.candidate, attempt.thresholds
    version = registry.next_version(attempt.model_root)
    card = build_card(
        name=c.name,
        version=version,
        previous_version=attempt.current_version,
        promoted_at=registry.now(),
        source={"run_dir": str(c.run_dir), "run_id": c.run_dir.name, "tflite": str(c.tflite)},
        gate={
            "metric": t.metric,
            "new": attempt.new,
            "current": attempt.current,
            "tolerance": t.tolerance,
            "require_compiled": t.require_compiled,
            "floor": t.floor,
            "reason": why,
        },
        evals={"float": c.float_eval, "int8": c.int8_eval},
        edgetpu=c.edgetpu,
        manifest=c.manifest,
        config=c.config,
        training=c.training,
        artifacts=artifacts,
    )
    registry.write_version(
        registry.version_dir(attempt.model_root, version),
        files=files,
        generated=generated,
        card=card,
        card_md=render_card_md(card),
    )
    attempt.record("promote", version, at=card["promoted_at"])
    return version
