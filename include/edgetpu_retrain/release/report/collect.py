"""Collect a run's step results into one `RunReport`: from `--step` values, else from the run folder.

Each step's result comes from, in this order:
1. `--step NAME=VALUE`: the step's JSON line itself (what the DAG has in XCom) or a path to a JSON file
   (the saved JSON line, or the artifact itself). For `config` and `tflite` a .yaml / .tflite path works
   too. An empty value, `None` or `null` (a skipped upstream task) means "not run"; so does a file that
   does not exist.
2. well-known files under `--run-dir` (first one found; see WELL_KNOWN): `steps/<name>.json`, then each
   step's usual artifact name.
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError

log = logging.getLogger(__name__)

STEPS = (
    "validate",
    "dataset",
    "config",
    "train",
    "export",
    "tflite",
    "edgetpu",
    "evaluate-float",
    "evaluate-int8",
    "promote",
)
ALIASES = {
    "build-dataset": "dataset",
    "render-config": "config",
    "eval-float": "evaluate-float",
    "float-eval": "evaluate-float",
    "eval-int8": "evaluate-int8",
    "int8-eval": "evaluate-int8",
    "evaluate": "evaluate-int8",
    "eval": "evaluate-int8",
    "compile": "edgetpu",
    "preflight": "edgetpu",
    "training": "train",
}
WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "validate": (
        "validate.json",
        "validation_report.json",
        "validation/validation_report.json",
        "validate/validation_report.json",
    ),
    "dataset": ("dataset.json", "build-dataset.json", "manifest.json", "dataset/manifest.json"),
    "config": ("config.json", "render-config.json", "config.yaml", "config.yml", "pipeline.yaml"),
    "train": ("train.json", "training.json", "train/train_result.json", "train/train.json"),
    "export": ("export.json", "saved_model"),
    "tflite": ("tflite.json", "model_int8.tflite", "tflite/model_int8.tflite"),
    "edgetpu": ("edgetpu.json", "edgetpu/preflight.json", "preflight.json"),
    "evaluate-float": ("evaluate-float.json", "eval_float.json", "eval-float.json", "eval/float.json"),
    "evaluate-int8": (
        "evaluate-int8.json",
        "eval_int8.json",
        "eval-int8.json",
        "eval.json",
        "eval/int8.json",
    ),
    "promote": ("promote.json",),
}

Entry = dict[str, Any]  # {status, source, note?, data?, base?} before normalizing


@dataclass(frozen=True)
class RunReport:
    """Everything a renderer needs (report.md, and any other view of the same run).

    `steps` maps each name of STEPS to its normalized entry: `status` (done | not run | skipped |
    unreadable), `source`, `note` and the step's figures (see `steps.py`).
    """

    run_id: str
    run_dir: str
    summary: str
    steps: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """report.json (no timestamps: the same inputs give the same bytes)."""
        return {
            "report_version": 1,
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "summary": self.summary,
            "steps": self.steps,
        }


def canonical_step(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in STEPS:
        raise UserError(f"--step {name}=...: unknown step name; use one of {', '.join(STEPS)}")
    return key


def parse_step_args(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            raise UserError(
                f"--step {value!r}: expected NAME=JSON or NAME=FILE, e.g. --step train=runs/r1/train.json"
            )
        out[canonical_step(name)] = rest
    return out


def _inline(name: str, text: str) -> Entry:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        literal = _python_literal(text)  # a Jinja-rendered dict without `| tojson` ({'ok': True, ...})
        if literal is not None:
            return {"status": "done", "source": "inline", "data": literal, "base": None}
        raise UserError(
            f"--step {name}: the value is not valid JSON ({exc}); pass the step's JSON line "
            "unchanged (e.g. Jinja `| tojson`) or a file path"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"--step {name}: expected a JSON object (the step's JSON line); fix the value")
    return {"status": "done", "source": "inline", "data": data, "base": None}


def load_explicit(name: str, value: str) -> Entry:
    """{status, source, data} from one --step value (inline JSON or a path)."""
    if common.is_none(value):
        return {"status": "not run", "source": None, "note": "the step passed no result (skipped upstream?)"}
    text = value.strip()
    if text[:1] == '"':  # `| tojson` of an XCom that is the raw JSON line (a string): unwrap once
        try:
            inner = json.loads(text)
        except json.JSONDecodeError:
            inner = None
        if isinstance(inner, str):
            return load_explicit(name, inner)
    if text[:1] in "{[":
        return _inline(name, text)
    path = Path(text)
    if not path.exists():
        return {"status": "not run", "source": str(path), "note": f"{path} not found"}
    return _load_path(name, path, explicit=True)


def _python_literal(text: str) -> dict[str, Any] | None:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    try:  # keep only what JSON can hold, so report.json stays canonical
        loaded: dict[str, Any] = json.loads(json.dumps(value))
        return loaded
    except (TypeError, ValueError):
        return None


def _load_path(name: str, path: Path, *, explicit: bool) -> Entry:
    path = path.resolve()
    if path.is_dir() or path.suffix in (".yaml", ".yml", ".tflite"):
        return {"status": "done", "source": str(path), "data": {"path": str(path)}, "base": str(path.parent)}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if explicit:
            raise UserError(
                f"{path}: --step {name} file is not valid JSON ({exc}); re-run the {name} step "
                "or pass its JSON line"
            ) from exc
        log.warning("%s: unreadable (%s)", path, exc)
        return {"status": "unreadable", "source": str(path), "note": f"not valid JSON: {exc}"}
    if not isinstance(data, dict):
        if explicit:
            raise UserError(f"{path}: --step {name} expects a JSON object; re-run the {name} step")
        return {"status": "unreadable", "source": str(path), "note": "not a JSON object"}
    return {"status": "done", "source": str(path), "data": data, "base": str(path.parent)}


def discover(name: str, run_dir: Path) -> Entry:
    for rel in (f"steps/{name}.json", *WELL_KNOWN[name]):
        path = run_dir / rel
        if path.exists():
            return _load_path(name, path, explicit=False)
    return {"status": "not run", "source": None}


def collect_entries(run_dir: Path, step_values: list[str]) -> dict[str, Entry]:
    """The raw entry of every step: its --step value, else (no result passed) its files under run_dir."""
    explicit = parse_step_args(step_values)
    entries: dict[str, Entry] = {}
    for name in STEPS:
        entry = load_explicit(name, explicit[name]) if name in explicit else {"status": "not run"}
        if entry["status"] == "not run":
            # no result passed (e.g. the step failed or was skipped): its files may still say why
            found = discover(name, run_dir)
            if found["status"] != "not run" and name in explicit:
                found["note"] = f"read from {found['source']}: the step passed no result"
            entry = found if found["status"] != "not run" else entry
        entries[name] = entry
    return entries
