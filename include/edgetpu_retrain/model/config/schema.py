"""The training config's schema: every key, its type, default, help text and allowed values.

One frozen dataclass per section (`model`, `train`, `data`, `postprocess`); a new key is one field here
(with `_f(default, help, choices=..., min=..., max=...)`), and validation (`coerce.py`) and the
commented YAML (`render.py`) follow from it. Cross-field rules live in `coerce.check`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_MODELS = ("mobilenet_v1_ssd", "mobilenet_v2_ssd")
HEADS = ("ssd", "ssdlite")
CONFIG_VERSION = 1
TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "configs"  # model/configs/<base_model>.yaml


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
        "MobileNet width multiplier (bundled weights: V2 1.0, V1 1.0/0.75/0.5; "
        "imagenet: 0.25/0.35/0.5/0.75/1.0)",
        min=0.1,
        max=1.4,
    )
    backbone_weights: str | None = _f(
        "bundled",
        "'bundled' (ImageNet MobileNets shipped in the package: V2 alpha 1.0, V1 alpha 1.0/0.75/0.5; "
        "converted once, cached), 'imagenet' (downloads), a local .h5/.keras weights file "
        "(include_top=False) or MobileNet .tflite, or null (random init)",
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
    max_seconds: float | None = _f(
        None,
        "wall-clock training budget in seconds, null = none (train --max-seconds wins): after the first "
        "steps the run is sized to min(steps, the steps that fit), the learning-rate schedule with it, "
        "and stops at the budget in any case",
        min=0,
        min_exclusive=True,
    )
    batch_size: int = _f(8, "images per step (split over GPUs when there are several)", min=1)
    learning_rate: float = _f(0.02, "peak learning rate", min=0.0, min_exclusive=True)
    warmup_steps: int | str = _f(
        "auto",
        "linear warm-up from 10% to the peak learning rate: steps, or auto = min(200, 10% of train.steps) "
        "(a warning when >= 50% of the steps)",
        choices=("auto",),
        min=0,
    )
    schedule: str = _f(
        "cosine", "after warm-up: cosine decay to 0 at `steps`, or constant", choices=("cosine", "constant")
    )
    optimizer: str = _f(
        "sgd",
        "sgd (with momentum), adam, or adamw (decoupled weight decay)",
        choices=("sgd", "adam", "adamw"),
    )
    momentum: float = _f(0.9, "SGD momentum (adam/adamw: beta_1)", min=0.0, max=0.9999)
    weight_decay: float = _f(4e-5, "decoupled weight decay on kernels (not on biases / batch norm)", min=0.0)
    backbone_bn: str = _f(
        "auto",
        "backbone batch norm while training: frozen = inference mode (moving statistics and gamma/beta "
        "fixed; safe on small batches), train = batch statistics, auto = frozen with pretrained "
        "backbone_weights, train with random init (training only: the exported graph is the same)",
        choices=("auto", "frozen", "train"),
    )
    freeze_backbone_steps: int = _f(
        0,
        "backbone weights not updated for the first N steps (head-only warm-up); then the backbone "
        "learning rate ramps up over the warm-up length",
        min=0,
    )
    backbone_lr_multiplier: float | str = _f(
        "auto",
        "backbone learning rate = this x the schedule's (0 = backbone fixed); auto = 0.1 with pretrained "
        "backbone_weights (measured: a full-rate AdamW step wrecks the frozen-BN ImageNet features), 1 "
        "with random init",
        choices=("auto",),
        min=0.0,
    )
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
    fused_batch_norm: bool = _f(
        True,
        "training only: BatchNorm as one fused kernel (same maths as Keras' unfused ops, ~1.6x faster "
        "steps on CPU); export is unaffected",
    )
    pointwise_matmul: bool = _f(
        True,
        "training only: 1x1 convolutions as MatMul (same maths, ~1.5x faster MobileNet V2 steps on CPU); "
        "export is unaffected",
    )
    fold_frozen_batch_norm: bool = _f(
        True,
        "training only: a frozen backbone BatchNorm (train.backbone_bn frozen) computed by the conv "
        "before it (kernel x gamma/sqrt(var+eps), plus a bias), the same function without per-activation "
        "batch-norm ops (measured 1.25x faster V2 SSDLite steps, 1.14x V1 SSD on CPU); export is unaffected",
    )
    compute_dtype: str = _f(
        "auto",
        "training only: float32, or bfloat16 mixed precision in the 1x1 conv layers (their MatMuls in "
        "bf16; variables, other convs, batch norm, optimizer and loss float32; measured 1.17x faster V1 "
        "steps on the Zen 5 CPU, no gain on V2); auto = bfloat16 when training on a CPU with "
        "avx512_bf16 or amx_bf16, float32 otherwise (GPUs; older CPUs emulate bf16, slower); export "
        "is unaffected",
        choices=("auto", "float32", "bfloat16"),
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
