"""The DAG's trigger-form params and how they become `render-config --set` overrides.

Imported by the DAG file at parse time: Airflow's `Param` only, nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

# Typed params -> render-config `--set` keys. A param left empty (null) keeps the base model's value.
PARAM_CONFIG_KEYS = {
    "input_size": "model.input_size",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "backbone_weights": "model.backbone_weights",
}

MIN_MAP50 = 0.1  # the promotion floor's default (see the min_map50 param)
BASE_MODELS = ["mobilenet_v1_ssd", "mobilenet_v2_ssd"]
DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_RATIO = r"\s*(0|1|0?\.\d+|1\.0*)\s*"
SPLIT_PATTERN = rf"^{_RATIO},{_RATIO},{_RATIO}$"


def max_seconds(minutes: Any) -> str:
    """Jinja filter: the `train_max_minutes` param as train's `--max-seconds` value ("" = no budget)."""
    if minutes is None or (isinstance(minutes, str) and minutes.strip() in ("", "None", "null")):
        return ""
    return f"{float(minutes) * 60.0:g}"


def config_sets(params: Mapping[str, Any]) -> dict[str, Any]:
    """Jinja filter: the `--set` overrides of a run (typed params first, config_overrides win)."""
    sets = {
        key: params[name] for name, key in PARAM_CONFIG_KEYS.items() if params.get(name) not in (None, "")
    }
    if str(sets.get("model.backbone_weights", "")).lower() in ("none", "null"):
        sets["model.backbone_weights"] = None  # random initialisation (no download)
    sets.update(params.get("config_overrides") or {})
    return sets


def _data_params(data_root: str) -> dict[str, Param]:
    """Where the run's images come from and what the dataset / model is called."""
    return {
        "dataset_folder": Param(
            None,
            type=["null", "string"],
            title="LabelImg folder",
            description="Your own LabelImg folder (images + VOC XML beside them). Empty: wait for the newest "
            f"ready drop in {data_root}/incoming/. With the docker/kubernetes runners it must be inside "
            f"{data_root}.",
        ),
        "dataset_name": Param(
            "default",
            type="string",
            pattern=DATASET_NAME_PATTERN,
            title="Dataset / model name",
            description="datasets/<name>/<version>/ and models/<name>/",
        ),
        "manifest": Param(
            None,
            type=["null", "string"],
            title="URL manifest",
            description="Optional: a URL list or CSV (url[,sha256][,filename]) whose images are fetched into "
            f"{data_root}/unlabeled/<dataset_name>/ for labeling (they train once labeled and dropped into "
            "incoming/). Empty: the download task is skipped.",
        ),
        "split": Param(
            "0.8,0.1,0.1",
            type="string",
            title="train,val,test ratios",
            pattern=SPLIT_PATTERN,
            description="Three numbers in 0..1 summing to 1, e.g. 0.8,0.1,0.1",
        ),
        "seed": Param(0, type="integer", minimum=0, title="Split seed"),
    }


def _model_params() -> dict[str, Param]:
    """The base model and the training overrides (empty = the base model's value)."""
    return {
        "base_model": Param("mobilenet_v2_ssd", type="string", enum=BASE_MODELS, title="Base model"),
        "input_size": Param(
            None,
            type=["null", "integer"],
            minimum=64,
            maximum=1024,
            title="Input size (px)",
            description="Empty: the base model's (300 for v1, 320 for v2)",
        ),
        "steps": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Training steps",
            description="Empty: the base model's default",
        ),
        "batch_size": Param(None, type=["null", "integer"], minimum=1, maximum=512, title="Batch size"),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, title="Learning rate"),
        "backbone_weights": Param(
            None,
            type=["null", "string"],
            title="Backbone weights",
            description="Empty: the base model's default (bundled ImageNet weights). Or a local MobileNet "
            ".tflite or .h5/.keras backbone weights file (inside the data root), 'imagenet' (Keras "
            "download by the trainer), or 'none' (random init).",
        ),
        "train_max_minutes": Param(
            None,
            type=["null", "number"],
            exclusiveMinimum=0,
            maximum=7 * 24 * 60,
            title="Training time budget (minutes)",
            description="Empty: no budget (train runs its steps). Else train --max-seconds: after the first "
            "steps the run is sized to min(steps, the steps that fit) so the learning-rate schedule ends "
            "at the budget, and it stops there in any case (e.g. 15 for a nightly window).",
        ),
        "config_overrides": Param(
            {},
            type="object",
            title="Config overrides",
            description='Extra render-config keys, e.g. {"train.warmup_steps": 50} (each becomes --set k=v; '
            "they win over the typed params above)",
        ),
        "use_gpu": Param(False, type="boolean", title="Train on GPU (docker/kubernetes runners)"),
    }


def _release_params() -> dict[str, Param]:
    """What the Edge TPU step and the promotion gate demand."""
    return {
        "require_compile": Param(
            False,
            type="boolean",
            title="Require the Edge TPU compiler",
            description="Fail if edgetpu_compiler is missing and refuse promotion without a compiled model",
        ),
        "promotion_tolerance": Param(
            0.0,
            type="number",
            minimum=-1,
            maximum=1,
            title="Promotion tolerance (mAP@.5)",
            description="Promote if new >= current - tolerance",
        ),
        "min_map50": Param(
            MIN_MAP50,
            type="number",
            minimum=0,
            maximum=1,
            title="Promotion floor (int8 mAP@.5)",
            description="No model below this is promoted, the first one included (0 = no floor). The "
            "default 0.1 rejects untrained or broken runs (a 20-step run scores 0.0) while the demo's "
            "smallest config reaches 0.20.",
        ),
    }


def dag_params(*, data_root: str) -> dict[str, Param]:
    """Every trigger-form param of the DAG, in form order (descriptions name `data_root`)."""
    return {**_data_params(data_root), **_model_params(), **_release_params()}
