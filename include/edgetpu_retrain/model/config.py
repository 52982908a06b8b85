"""`edgetpu-retrain render-config`: the training config (YAML) and its validated, frozen form.

A config is rendered once per run from a per-base-model template (`configs/<base>.yaml`), the dataset
snapshot's `manifest.json` and `--set dotted.key=value` overrides, then read by every later step
through `load_config(path) -> Config`. Every key has a type, a default and (where it makes sense) a
list of allowed values or a range; an unknown key or a bad value raises `common.UserError` naming the
dotted key path, what is allowed, and the fix. Rendering is deterministic (no timestamps), so the same
inputs give the same bytes.

Only `yaml` is imported here (no TensorFlow): the DAG and light steps may import this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgetpu_retrain.common import UserError, log, read_json, require_dir, write_text

BASE_MODELS = ("mobilenet_v1_ssd", "mobilenet_v2_ssd")
HEADS = ("ssd", "ssdlite")
CONFIG_VERSION = 1
TEMPLATE_DIR = Path(__file__).resolve().parent / "configs"


def _f(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field carrying its help text and the allowed values used by the validator."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "min_exclusive": min_exclusive}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------- schema
@dataclass(frozen=True)
class AnchorConfig:
    num_layers: int = _f(
        6, "feature maps that carry anchors (2 backbone maps + extra layers), 2..6", min=2, max=6
    )
    min_scale: float = _f(
        0.2, "anchor scale of the first (stride 16) map, relative to the image side", min=0.01, max=1.0
    )
    max_scale: float = _f(
        0.95, "anchor scale of the last map; scales are linear in between", min=0.01, max=1.5
    )
    aspect_ratios: tuple[float, ...] = _f(
        (1.0, 2.0, 0.5, 3.0, 0.3333), "width/height ratios of the anchors at every location"
    )
    interpolated_scale_aspect_ratio: float = _f(
        1.0, "ratio of the extra anchor at scale sqrt(s_i*s_i+1) (0 = no extra anchor)", min=0.0
    )
    reduce_boxes_in_lowest_layer: bool = _f(
        True, "first map gets only 3 anchors (0.1 @ 1:1, min_scale @ 2:1 and 1:2), as in classic SSD"
    )


@dataclass(frozen=True)
class ModelConfig:
    base: str = _f(dataclasses.MISSING, "backbone + SSD feature extractor", choices=BASE_MODELS)
    num_classes: int = _f(dataclasses.MISSING, "object classes, without background (from the dataset)", min=1)
    head: str = _f(
        "ssdlite", "box/class predictors: ssd = 3x3 conv, ssdlite = depthwise-separable", choices=HEADS
    )
    input_size: int = _f(
        320, "square input side in pixels (multiple of 32 recommended; 300/320 classic)", min=32, max=1024
    )
    alpha: float = _f(
        1.0,
        "MobileNet width multiplier (imagenet weights exist for 0.25/0.35/0.5/0.75/1.0)",
        min=0.1,
        max=1.4,
    )
    backbone_weights: str | None = _f(
        "imagenet", "'imagenet' (downloads), a local .h5/.keras weights file (include_top=False), or null"
    )
    bn_momentum: float = _f(
        0.9, "batch-norm moving-average momentum (~0.9 for short fine-tuning runs)", min=0.0, max=0.9999
    )
    score_converter: str = _f(
        "sigmoid", "how logits become scores at export: sigmoid or softmax", choices=("sigmoid", "softmax")
    )
    extra_layer_depths: tuple[int, ...] = _f(
        (512, 256, 256, 128), "channels of the extra stride-2 feature maps after stride 32"
    )
    anchors: AnchorConfig = _f(default_factory=AnchorConfig, help="anchor generator (SSD multiple-grid)")


@dataclass(frozen=True)
class AugmentationConfig:
    flip: bool = _f(True, "random horizontal flip (p=0.5)")
    scale_crop: bool = _f(True, "random crop (keeps boxes: clipped, dropped when mostly outside)")
    crop_probability: float = _f(
        0.8, "probability of cropping an image when scale_crop is on", min=0.0, max=1.0
    )
    min_crop_scale: float = _f(0.4, "smallest crop side as a fraction of the image side", min=0.05, max=1.0)
    max_crop_aspect: float = _f(1.5, "crop aspect ratio is drawn from [1/x, x]", min=1.0, max=4.0)
    min_visible: float = _f(
        0.5, "drop a box when less than this fraction of its area is in the crop", min=0.0, max=1.0
    )
    color: bool = _f(True, "random brightness / contrast / saturation / hue")
    brightness: float = _f(0.12, "max brightness shift, fraction of the 0..255 range", min=0.0, max=1.0)
    contrast: float = _f(0.3, "contrast factor drawn from [1-x, 1+x]", min=0.0, max=0.95)
    saturation: float = _f(0.3, "saturation factor drawn from [1-x, 1+x]", min=0.0, max=0.95)
    hue: float = _f(0.03, "max hue shift (fraction of the colour wheel)", min=0.0, max=0.5)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(5000, "optimizer steps in total (a resumed run stops here too)", min=1)
    batch_size: int = _f(8, "images per step (split over GPUs when there are several)", min=1)
    learning_rate: float = _f(0.02, "peak learning rate", min=0.0, min_exclusive=True)
    warmup_steps: int = _f(200, "linear warm-up from 10% to the peak learning rate", min=0)
    schedule: str = _f(
        "cosine", "after warm-up: cosine decay to 0 at `steps`, or constant", choices=("cosine", "constant")
    )
    optimizer: str = _f("sgd", "sgd (with momentum) or adam", choices=("sgd", "adam"))
    momentum: float = _f(0.9, "SGD momentum (adam: beta_1)", min=0.0, max=0.9999)
    weight_decay: float = _f(4e-5, "decoupled weight decay on kernels (not on biases / batch norm)", min=0.0)
    loss: str = _f(
        "focal",
        "classification loss: sigmoid focal, or hard-negative-mined cross-entropy",
        choices=("focal", "hard_negative"),
    )
    focal_alpha: float = _f(0.25, "focal loss alpha", min=0.0, max=1.0)
    focal_gamma: float = _f(2.0, "focal loss gamma", min=0.0)
    neg_pos_ratio: float = _f(
        3.0, "hard_negative: negatives kept per positive anchor", min=0.0, min_exclusive=True
    )
    box_loss_weight: float = _f(1.0, "weight of the smooth-L1 (Huber) box loss", min=0.0)
    class_loss_weight: float = _f(1.0, "weight of the classification loss", min=0.0)
    matched_threshold: float = _f(0.5, "anchor IoU >= this: positive", min=0.0, max=1.0)
    unmatched_threshold: float = _f(
        0.4, "anchor IoU < this: negative (in between: ignored)", min=0.0, max=1.0
    )
    max_boxes: int = _f(50, "boxes kept per image (padded to this; extra boxes are dropped)", min=1)
    checkpoint_every: int = _f(500, "save a checkpoint every N steps (and always at the end)", min=1)
    keep_checkpoints: int = _f(3, "checkpoints kept on disk", min=1)
    log_every: int = _f(20, "progress line on stderr + TensorBoard scalars every N steps", min=1)
    seed: int = _f(0, "seed for weights init, data order and augmentation", min=0)
    shuffle_buffer: int = _f(512, "shuffle buffer (records)", min=1)
    jit_compile: bool = _f(
        False,
        "XLA-compile the train step (10x slower + 50 s compile on the 2-core CPU measured; may help on GPU)",
    )
    train_split: str = _f("train", "dataset split used for training")
    augmentation: AugmentationConfig = _f(default_factory=AugmentationConfig, help="box-aware augmentation")


@dataclass(frozen=True)
class DataConfig:
    dataset_dir: str = _f(dataclasses.MISSING, "dataset snapshot (folder with manifest.json)")
    label_map: str = _f(dataclasses.MISSING, "label_map.pbtxt of the snapshot")
    classes: tuple[str, ...] = _f(dataclasses.MISSING, "class names in label-map id order (id 1 first)")
    tfrecords: dict[str, tuple[str, ...]] = _f(dataclasses.MISSING, "TFRecord shards per split")


@dataclass(frozen=True)
class PostprocessConfig:
    max_detections: int = _f(20, "detections kept per image (TFLite_Detection_PostProcess)", min=1)
    max_classes_per_detection: int = _f(
        1, "classes reported per box (1: pycoral and evaluate read one)", min=1, max=1
    )
    detections_per_class: int = _f(100, "regular NMS only: detections per class", min=1)
    score_threshold: float = _f(0.01, "drop detections scoring below this", min=0.0, max=1.0)
    iou_threshold: float = _f(0.6, "NMS IoU threshold", min=0.0, max=1.0)
    use_regular_nms: bool = _f(False, "per-class NMS (slower) instead of fast class-agnostic NMS")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = _f(default_factory=TrainConfig, help="")
    postprocess: PostprocessConfig = _f(default_factory=PostprocessConfig, help="")
    version: int = _f(CONFIG_VERSION, "config format version", min=1, max=CONFIG_VERSION)


SECTION_HELP = {
    "model": "Detector: backbone, head, input size and anchors (export rebuilds the model from this).",
    "train": "Training (edgetpu-retrain train).",
    "data": "Dataset snapshot (written from the dataset's manifest.json; paths are absolute).",
    "postprocess": "TFLite_Detection_PostProcess settings used by export / tflite / evaluate.",
}


# ----------------------------------------------------------------------------------- validation
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed_text(meta: dict[str, Any], hint: Any) -> str:
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


def _bad(path: str, value: Any, meta: dict[str, Any], hint: Any, source: str) -> UserError:
    return UserError(f"{source}: bad value {value!r} for '{path}'; allowed: {_allowed_text(meta, hint)}")


def _coerce(value: Any, hint: Any, meta: dict[str, Any], path: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, path, source)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), meta, path, source)
    if hint is bool:
        if not isinstance(value, bool):
            raise _bad(path, value, meta, hint, source)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise _bad(path, value, meta, hint, source)
        value = int(value)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(path, value, meta, hint, source)
        value = float(value)
    elif hint is str:
        if not isinstance(value, str) or not value:
            raise _bad(path, value, meta, hint, source)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise _bad(path, value, meta, hint, source)
        return tuple(_coerce(v, args[0], {}, f"{path}[{i}]", source) for i, v in enumerate(value))
    elif origin is dict:
        if not isinstance(value, dict):
            raise _bad(path, value, meta, hint, source)
        return {
            str(k): _coerce(v, args[1], {}, f"{path}.{k}", source) if v else ()
            for k, v in sorted(value.items())
        }
    else:  # pragma: no cover - schema bug
        raise TypeError(f"unsupported type {hint} at {path}")
    if meta.get("choices") and value not in meta["choices"]:
        raise _bad(path, value, meta, hint, source)
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
        raise _bad(path, value, meta, hint, source)
    if hi is not None and value > hi:
        raise _bad(path, value, meta, hint, source)
    return value


def _build(cls: type, raw: Any, path: str, source: str) -> Any:
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
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], dict(f.metadata), dotted, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(
                f"{source}: missing key '{dotted}' ({f.metadata.get('help') or 'required'}); "
                f"add it or re-render the config with `edgetpu-retrain render-config`"
            )
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {}, dotted, source)
    return cls(**kwargs)


def _check(cfg: Config, source: str) -> Config:
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
    if weights is not None and weights != "imagenet" and not weights.endswith((".h5", ".keras")):
        raise UserError(
            f"{source}: bad value {weights!r} for 'model.backbone_weights'; allowed: 'imagenet', "
            f"a local .h5/.keras weights file, or null"
        )
    if cfg.train.train_split not in cfg.data.tfrecords or not cfg.data.tfrecords[cfg.train.train_split]:
        raise UserError(
            f"{source}: 'train.train_split' is {cfg.train.train_split!r} but 'data.tfrecords' has "
            f"no shards for it; allowed: {', '.join(k for k, v in cfg.data.tfrecords.items() if v)}"
        )
    return cfg


def config_from_dict(raw: Any, *, source: str = "config") -> Config:
    """Validate a plain dict (as loaded from YAML) into a frozen `Config`."""
    return _check(_build(Config, raw, "", source), source)


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


# ------------------------------------------------------------------------------------ rendering
def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _emit(obj: Any, cls: type, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        help_text = f.metadata.get("help", "")
        hint = _hints(cls)[f.name]
        allowed = _allowed_text(dict(f.metadata), hint) if f.metadata.get("choices") else ""
        if help_text:
            lines.append(
                f"{pad}# {help_text}" + (f" ({allowed})" if allowed and allowed not in help_text else "")
            )
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _emit(value, type(value), indent + 1, lines)
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
        _emit(section, type(section), 1, lines)
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
        hint_type = _hints(cls)[part]
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


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: Any) -> None:
    parser.add_argument("--dataset", required=True, help="dataset snapshot folder (with manifest.json)")
    parser.add_argument("--base-model", required=True, choices=BASE_MODELS, help="per-base-model template")
    parser.add_argument("--out", required=True, help="config file to write (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set model.input_size=256 --set train.steps=2000 "
        "(values are YAML scalars; repeatable)",
    )


def run(args: Any) -> dict[str, Any]:
    text, cfg = render_config(args.dataset, args.base_model, parse_set(args.overrides))
    out = Path(args.out).resolve()
    write_text(out, text)
    log.info(
        "wrote %s (%s, %s head, %dx%d, %d classes)",
        out,
        cfg.model.base,
        cfg.model.head,
        cfg.model.input_size,
        cfg.model.input_size,
        cfg.model.num_classes,
    )
    return {
        "config": str(out),
        "base_model": cfg.model.base,
        "num_classes": cfg.model.num_classes,
        "input_size": cfg.model.input_size,
        "head": cfg.model.head,
    }
