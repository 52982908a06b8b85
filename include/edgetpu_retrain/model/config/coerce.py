"""Validation: a plain dict (as loaded from YAML) -> a frozen, checked `Config`, and back.

Every problem raises `common.UserError` naming the source, the dotted key path, what is allowed, and
the fix. Types come from the schema's annotations (`schema.py`), ranges and choices from its fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from edgetpu_retrain.common import UserError
from edgetpu_retrain.model.config.schema import Config

WEIGHT_FILES = (".h5", ".keras", ".tflite")  # model.backbone_weights given as a local file


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _keyword_or_number(hint: Any) -> bool:
    """`int | str` / `float | str`: a number, or one of the field's keywords (e.g. auto)."""
    args = typing.get_args(hint)
    return (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and str in args and type(None) not in args
    )


def allowed_text(meta: dict[str, Any], hint: Any) -> str:
    args = typing.get_args(hint)
    if type(None) in args and (meta.get("min") is not None or meta.get("max") is not None):
        return allowed_text(meta, next(a for a in args if a is not type(None))) + ", or null"
    if _keyword_or_number(hint):
        number = _type_name(next(a for a in typing.get_args(hint) if a is not str))
        return f"{number} >= {meta.get('min')} or " + " / ".join(meta.get("choices") or ())
    if meta.get("choices"):
        return "one of: " + ", ".join(str(c) for c in meta["choices"])
    lo, hi = meta.get("min"), meta.get("max")
    kind = _type_name(hint)
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if meta.get('min_exclusive') else '>='} {lo}"
    return kind


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is bool:
        return "true/false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return str(hint)


def _bad(value: Any, *, path: str, meta: dict[str, Any], hint: Any, source: str) -> UserError:
    return UserError(f"{source}: bad value {value!r} for '{path}'; allowed: {allowed_text(meta, hint)}")


def _coerce(value: Any, hint: Any, *, meta: dict[str, Any], path: str, source: str) -> Any:
    """One value checked against its annotation and field limits (sections recurse into `_build`)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, path=path, source=source)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        try:
            return _coerce(
                value, next(a for a in args if a is not type(None)), meta=meta, path=path, source=source
            )
        except UserError:
            raise _bad(value, path=path, meta=meta, hint=hint, source=source) from None
    if _keyword_or_number(hint):
        return _keyword_or_number_value(value, hint, meta=meta, path=path, source=source)
    if hint is bool:
        if not isinstance(value, bool):
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        value = int(value)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        value = float(value)
    elif hint is str:
        if not isinstance(value, str) or not value:
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        return tuple(
            _coerce(v, args[0], meta={}, path=f"{path}[{i}]", source=source) for i, v in enumerate(value)
        )
    elif origin is dict:
        if not isinstance(value, dict):
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        return {
            str(k): _coerce(v, args[1], meta={}, path=f"{path}.{k}", source=source) if v else ()
            for k, v in sorted(value.items())
        }
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported type {hint} at {path}")
    if meta.get("choices") and value not in meta["choices"]:
        raise _bad(value, path=path, meta=meta, hint=hint, source=source)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        raise _bad(value, path=path, meta=meta, hint=hint, source=source)
    if hi is not None and value > hi:
        raise _bad(value, path=path, meta=meta, hint=hint, source=source)
    return value


def _keyword_or_number_value(value: Any, hint: Any, *, meta: dict[str, Any], path: str, source: str) -> Any:
    if isinstance(value, str):  # a keyword (choices), else the number rules
        if value not in (meta.get("choices") or ()):
            raise _bad(value, path=path, meta=meta, hint=hint, source=source)
        return value
    number = next(a for a in typing.get_args(hint) if a is not str)
    try:
        return _coerce(value, number, meta={**meta, "choices": None}, path=path, source=source)
    except UserError:
        raise _bad(value, path=path, meta=meta, hint=hint, source=source) from None


def _build(cls: type, raw: Any, *, path: str, source: str) -> Any:
    """One section (a dataclass) from a mapping: unknown and missing keys named with their dotted path."""
    where = f"'{path}'" if path else "the top level"
    if not isinstance(raw, dict):
        raise UserError(
            f"{source}: {where} must be a mapping of keys, got {type(raw).__name__}; "
            f"allowed keys: {', '.join(f.name for f in dataclasses.fields(cls))}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = f"{path}.{key}" if path else str(key)
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(
                f"{source}: unknown key '{dotted}'{hint}; allowed keys under {where}: {', '.join(fields)}"
            )
    types_of = hints(cls)
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in raw:
            kwargs[name] = _coerce(
                raw[name], types_of[name], meta=dict(f.metadata), path=dotted, source=source
            )
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(
                f"{source}: missing key '{dotted}' ({f.metadata.get('help') or 'required'}); "
                f"add it or re-render the config with `edgetpu-retrain render-config`"
            )
        elif dataclasses.is_dataclass(types_of[name]):
            kwargs[name] = _build(typing.cast(type, types_of[name]), {}, path=dotted, source=source)
    return cls(**kwargs)


def check(cfg: Config, source: str) -> Config:
    """Cross-field rules the per-key validation cannot see."""
    if cfg.model.num_classes != len(cfg.data.classes):
        raise UserError(
            f"{source}: 'model.num_classes' is {cfg.model.num_classes} but 'data.classes' lists "
            f"{len(cfg.data.classes)}; they must match (re-render the config from the dataset)"
        )
    if cfg.train.unmatched_threshold > cfg.train.matched_threshold:
        raise UserError(
            f"{source}: 'train.unmatched_threshold' ({cfg.train.unmatched_threshold}) must be <= "
            f"'train.matched_threshold' ({cfg.train.matched_threshold})"
        )
    if cfg.train.loss == "focal" and cfg.model.score_converter == "softmax":
        raise UserError(
            f"{source}: 'train.loss' focal trains per-class sigmoid scores (the background column is "
            f"not trained) but 'model.score_converter' is softmax; set model.score_converter=sigmoid "
            f"or train.loss=hard_negative"
        )
    if cfg.model.anchors.min_scale >= cfg.model.anchors.max_scale:
        raise UserError(f"{source}: 'model.anchors.min_scale' must be < 'model.anchors.max_scale'")
    if len(cfg.model.extra_layer_depths) < cfg.model.anchors.num_layers - 2:
        raise UserError(
            f"{source}: 'model.extra_layer_depths' needs {cfg.model.anchors.num_layers - 2} "
            f"entries for 'model.anchors.num_layers' = {cfg.model.anchors.num_layers}"
        )
    for i, ratio in enumerate(cfg.model.anchors.aspect_ratios):
        if ratio <= 0:
            raise UserError(f"{source}: 'model.anchors.aspect_ratios[{i}]' must be > 0, got {ratio}")
    for i, depth in enumerate(cfg.model.extra_layer_depths):
        if depth < 1:
            raise UserError(f"{source}: 'model.extra_layer_depths[{i}]' must be >= 1, got {depth}")
    weights = cfg.model.backbone_weights
    if weights is not None and weights not in ("bundled", "imagenet") and not weights.endswith(WEIGHT_FILES):
        raise UserError(
            f"{source}: bad value {weights!r} for 'model.backbone_weights'; allowed: 'bundled', "
            f"'imagenet', a local .h5/.keras weights file or MobileNet .tflite, or null"
        )
    if cfg.train.train_split not in cfg.data.tfrecords or not cfg.data.tfrecords[cfg.train.train_split]:
        raise UserError(no_train_records_message(cfg, source))
    return cfg


def no_train_records_message(cfg: Config, source: str) -> str:
    """Training on a dataset without records in the train split (e.g. built with --split 0,0,1)."""
    split = cfg.train.train_split
    others = ", ".join(k for k, v in cfg.data.tfrecords.items() if v) or "none"
    return (
        f"{source}: dataset {cfg.data.dataset_dir} has no {split!r} records to train on (splits with "
        f"records: {others}); it is an evaluation-only dataset (build-dataset --split with a train ratio "
        f"of 0): use it with `evaluate --dataset`, or rebuild it with a train ratio > 0 (e.g. --split "
        f"0.8,0.1,0.1) to train, or set train.train_split to a split that has records"
    )


def config_from_dict(raw: Any, *, source: str = "config") -> Config:
    """Validate a plain dict (as loaded from YAML) into a frozen `Config`."""
    return check(_build(Config, raw, path="", source=source), source)


def config_to_dict(cfg: Any) -> Any:
    """Plain dict/list form of a Config (or a section of it), as written to YAML."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    return cfg


def load_config(path: str | Path) -> Config:
    """Read and validate a rendered config; UserError names the file and the dotted key on problems."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; render it with `edgetpu-retrain render-config`")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc}); fix the syntax or re-render the config") from exc
    return config_from_dict(raw, source=str(path))
