"""Rendering: base-model template + dataset manifest + `--set` overrides -> commented YAML + `Config`.

Deterministic (no timestamps): the same inputs give the same bytes.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from edgetpu_retrain.common import UserError, read_json, require_dir
from edgetpu_retrain.model.config.coerce import allowed_text, config_from_dict, hints
from edgetpu_retrain.model.config.schema import (
    BASE_MODELS,
    CONFIG_VERSION,
    SECTION_HELP,
    TEMPLATE_DIR,
    Config,
)


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _emit(obj: Any, *, indent: int, lines: list[str]) -> None:
    """Append one section's keys (with their help comments) to `lines`, recursing into sub-sections."""
    cls = type(obj)
    pad = "  " * indent
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help", "")
        hint = hints(cls)[f.name]
        allowed = allowed_text(dict(f.metadata), hint) if f.metadata.get("choices") else ""
        if help_text:
            lines.append(
                f"{pad}# {help_text}" + (f" ({allowed})" if allowed and allowed not in help_text else "")
            )
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _emit(value, indent=indent + 1, lines=lines)
        elif isinstance(value, dict):
            lines.append(f"{pad}{f.name}:" + (" {}" if not value else ""))
            for key, items in value.items():
                lines.append(f"{pad}  {_scalar(key)}:" + (" []" if not items else ""))
                lines.extend(f"{pad}    - {_scalar(item)}" for item in items)
        elif isinstance(value, tuple) and value and isinstance(value[0], str):
            lines.append(f"{pad}{f.name}:")
            lines.extend(f"{pad}  - {_scalar(item)}" for item in value)
        else:
            lines.append(f"{pad}{f.name}: {_scalar(list(value) if isinstance(value, tuple) else value)}")


def dump_config(cfg: Config, *, header: str = "") -> str:
    """Commented YAML text of a Config (deterministic: same Config -> same bytes)."""
    lines = [
        "# edgetpu-retrain training config. Rendered by `edgetpu-retrain render-config`;",
        "# edit by re-rendering with `--set dotted.key=value` (validated) or by hand (validated on load).",
    ]
    if header:
        lines.extend(f"# {line}" for line in header.splitlines())
    lines.append(f"version: {cfg.version}")
    for name in ("model", "train", "data", "postprocess"):
        lines.append("")
        lines.append(f"# {SECTION_HELP[name]}")
        lines.append(f"{name}:")
        section = getattr(cfg, name)
        _emit(section, indent=1, lines=lines)
    return "\n".join(lines) + "\n"


def load_template(base_model: str) -> dict[str, Any]:
    if base_model not in BASE_MODELS:
        raise UserError(f"--base-model: bad value {base_model!r}; allowed: one of: {', '.join(BASE_MODELS)}")
    path = TEMPLATE_DIR / f"{base_model}.yaml"
    if not path.is_file():
        raise UserError(f"{path}: config template missing; reinstall edgetpu-retrain (package data)")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: template must be a mapping")
    return raw


def parse_set(items: list[str] | None) -> list[tuple[str, Any]]:
    """`dotted.key=value` strings -> [(key, YAML-parsed value)]."""
    out = []
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(f"--set {item!r}: expected dotted.key=value (e.g. --set train.steps=2000)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: value is not a YAML scalar/list ({exc})") from exc
        out.append((key, value))
    return out


def _apply_set(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cls: Any = Config
    node = raw
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        dotted = ".".join(parts[: depth + 1])
        if part not in fields:
            parent = ".".join(parts[:depth]) or "the top level"
            near = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(
                f"--set {key}: unknown key '{dotted}'{hint}; allowed keys under {parent}: {', '.join(fields)}"
            )
        hint_type = hints(cls)[part]
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(hint_type) and not isinstance(value, dict):
                raise UserError(
                    f"--set {key}: '{dotted}' is a section; set one of its keys: "
                    f"{', '.join(f.name for f in dataclasses.fields(hint_type))}"
                )
            node[part] = value
            return
        if not dataclasses.is_dataclass(hint_type):
            raise UserError(f"--set {key}: '{dotted}' is a value, not a section")
        node = node.setdefault(part, {})
        cls = hint_type


def _dataset_section(dataset_dir: Path) -> tuple[dict[str, Any], int]:
    manifest_path = dataset_dir / "manifest.json"
    manifest = read_json(manifest_path)
    try:
        classes = sorted(manifest["classes"], key=lambda c: int(c["id"]))
        names = [str(c["name"]) for c in classes]
        ids = [int(c["id"]) for c in classes]
        label_map = (dataset_dir / manifest["label_map"]).resolve()
        tfrecords = {
            split: [str((dataset_dir / rel).resolve()) for rel in files]
            for split, files in sorted(manifest["tfrecords"].items())
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{manifest_path}: missing or malformed field ({exc!r}); rebuild the dataset with "
            f"`edgetpu-retrain build-dataset`"
        ) from exc
    if ids != list(range(1, len(ids) + 1)):
        raise UserError(
            f"{manifest_path}: class ids must be 1..{len(ids)} without gaps, got {ids}; "
            f"fix the label map and rebuild the dataset"
        )
    if not names:
        raise UserError(f"{manifest_path}: no classes; the dataset has no labeled objects")
    num = int(manifest.get("num_classes", len(names)))
    if num != len(names):
        raise UserError(
            f"{manifest_path}: num_classes {num} != {len(names)} classes listed; rebuild the dataset"
        )
    for split, files in tfrecords.items():
        for file in files:
            if not Path(file).is_file():
                raise UserError(f"{manifest_path}: {split} shard {file} is missing; rebuild the dataset")
    data = {
        "dataset_dir": str(dataset_dir.resolve()),
        "label_map": str(label_map),
        "classes": names,
        "tfrecords": tfrecords,
    }
    return data, len(names)


def render_config(
    dataset_dir: str | Path, base_model: str, overrides: list[tuple[str, Any]] | None = None
) -> tuple[str, Config]:
    """Template + dataset manifest + overrides -> (commented YAML text, validated Config)."""
    dataset_dir = require_dir(dataset_dir, what="dataset snapshot")
    raw = load_template(base_model)
    raw.setdefault("model", {})["base"] = base_model
    data, num_classes = _dataset_section(dataset_dir)
    raw["model"]["num_classes"] = num_classes
    raw["data"] = data
    raw["version"] = CONFIG_VERSION
    for key, value in overrides or []:
        _apply_set(raw, key, value)
    cfg = config_from_dict(raw, source="--set" if overrides else str(TEMPLATE_DIR / f"{base_model}.yaml"))
    header = f"base model: {base_model}; dataset: {data['dataset_dir']}"
    if overrides:
        header += "\noverrides: " + ", ".join(f"{k}={_scalar(v)}" for k, v in overrides)
    return dump_config(cfg, header=header), cfg
