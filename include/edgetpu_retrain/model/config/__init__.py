"""`edgetpu-retrain render-config`: the training config (YAML) and its validated, frozen form.

A config is rendered once per run from a per-base-model template (`configs/<base>.yaml`), the dataset
snapshot's `manifest.json` and `--set dotted.key=value` overrides, then read by every later step
through `load_config(path) -> Config`. Every key has a type, a default and (where it makes sense) a
list of allowed values or a range; an unknown key or a bad value raises `common.UserError` naming the
dotted key path, what is allowed, and the fix. Rendering is deterministic (no timestamps), so the same
inputs give the same bytes.

Modules: `schema` (the dataclasses: every key, default and limit), `coerce` (dict -> validated
`Config`, cross-field rules, `load_config`), `render` (template + manifest + overrides -> commented
YAML). This package is the verb module (`add_arguments`, `run`) and re-exports their public names.
Only `yaml` is imported here (no TensorFlow): the DAG and light steps may import this package.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import log, write_text
from edgetpu_retrain.model.config.coerce import check, config_from_dict, config_to_dict, load_config
from edgetpu_retrain.model.config.render import dump_config, load_template, parse_set, render_config
from edgetpu_retrain.model.config.schema import (
    BASE_MODELS,
    CONFIG_VERSION,
    HEADS,
    SECTION_HELP,
    TEMPLATE_DIR,
    AnchorConfig,
    AugmentationConfig,
    Config,
    DataConfig,
    ModelConfig,
    PostprocessConfig,
    TrainConfig,
)

__all__ = [
    "BASE_MODELS",
    "CONFIG_VERSION",
    "HEADS",
    "SECTION_HELP",
    "TEMPLATE_DIR",
    "AnchorConfig",
    "AugmentationConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "PostprocessConfig",
    "TrainConfig",
    "add_arguments",
    "check",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "load_template",
    "parse_set",
    "render_config",
    "run",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgetpu_retrain.model.pretrained import weights_note  # stdlib only at import

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
    note = weights_note(cfg.model.base, cfg.model.alpha, cfg.model.backbone_weights)
    if note:
        log.warning("%s", note)
    return {
        "config": str(out),
        "base_model": cfg.model.base,
        "num_classes": cfg.model.num_classes,
        "input_size": cfg.model.input_size,
        "head": cfg.model.head,
        "backbone_weights": cfg.model.backbone_weights,
        "backbone_weights_warning": note,
    }
