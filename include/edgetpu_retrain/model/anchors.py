"""SSD anchors (TF OD API rules) and the box coder's scales; numpy only, no TensorFlow.

`anchors(cfg)` gives every anchor [N, 4] (ycenter, xcenter, h, w), normalized, in prediction order:
feature maps in order, then row, column, anchor-at-location. `boxes.py` encodes/matches ground
truth against them (training targets), `export/postprocess.py` decodes predictions with them.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgetpu_retrain.model.config import Config

BOX_SCALES = (10.0, 10.0, 5.0, 5.0)  # (y, x, h, w), FasterRcnnBoxCoder scales (boxes/postprocess import it)


def _backbone_size(base: str, size: int, stride: int) -> int:
    """Feature-map side after `stride` in the keras.applications backbone.

    MobileNetV2 pads stride-2 layers 'correctly' (ceil); MobileNet V1 pads (0,1) then a valid 3x3
    (floor).
    """
    for _ in range(int(math.log2(stride))):
        size = -(-size // 2) if base == "mobilenet_v2_ssd" else size // 2
    return size


def feature_map_sizes(cfg: Config) -> list[int]:
    """Square side of every anchor-carrying feature map, in prediction order."""
    m = cfg.model
    sizes = [_backbone_size(m.base, m.input_size, 16), _backbone_size(m.base, m.input_size, 32)]
    while len(sizes) < m.anchors.num_layers:
        sizes.append(-(-sizes[-1] // 2))  # 'same' stride-2 conv
    return sizes[: m.anchors.num_layers]


def anchor_specs(cfg: Config) -> list[list[tuple[float, float]]]:
    """Per feature map, the (scale, aspect_ratio) of each anchor at one location (TF OD API rules)."""
    a = cfg.model.anchors
    n = a.num_layers
    scales = [a.min_scale + (a.max_scale - a.min_scale) * i / (n - 1) for i in range(n)] + [1.0]
    specs = []
    for i in range(n):
        if i == 0 and a.reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)])
            continue
        layer = [(scales[i], float(r)) for r in a.aspect_ratios]
        if a.interpolated_scale_aspect_ratio > 0:
            layer.append((math.sqrt(scales[i] * scales[i + 1]), a.interpolated_scale_aspect_ratio))
        specs.append(layer)
    return specs


def anchors(cfg: Config) -> np.ndarray:
    """All anchors [N, 4] float32 (ycenter, xcenter, h, w), normalized, in prediction order."""
    return _anchors_cached(tuple(feature_map_sizes(cfg)), tuple(tuple(s) for s in anchor_specs(cfg))).copy()


@lru_cache(maxsize=16)
def _anchors_cached(sizes: tuple[int, ...], specs: tuple[tuple[tuple[float, float], ...], ...]) -> np.ndarray:
    out = []
    for size, spec in zip(sizes, specs, strict=False):
        centers = (np.arange(size, dtype=np.float64) + 0.5) / size
        yc, xc = np.meshgrid(centers, centers, indexing="ij")  # [size, size]
        hw = np.array([[s / math.sqrt(r), s * math.sqrt(r)] for s, r in spec])  # [A, 2]
        grid = np.zeros((size, size, len(spec), 4))
        grid[..., 0] = yc[:, :, None]
        grid[..., 1] = xc[:, :, None]
        grid[..., 2] = hw[None, None, :, 0]
        grid[..., 3] = hw[None, None, :, 1]
        out.append(grid.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def num_anchors(cfg: Config) -> int:
    return sum(s * s * len(spec) for s, spec in zip(feature_map_sizes(cfg), anchor_specs(cfg), strict=False))
