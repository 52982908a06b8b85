"""The report's figures: matplotlib (Agg, no display), each returned as a PNG `data:` URI.

Byte-stable output: the bundled DejaVu Sans font, a fixed DPI, no PNG "Software" metadata, a fixed SVG
hash salt, and `Figure` objects (no pyplot state shared between figures).
"""

from __future__ import annotations

import base64
import io
from typing import Any

from edgetpu_retrain.release.metrics import fmt, is_number

DPI = 96
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
GT_COLOR = "#00c853"
# detection colours: no green (the ground truth's colour)
DET_COLORS = ("#ff6d00", "#2962ff", "#d500f9", "#d50000", "#6d4c41", "#00b8d4", "#ffd600", "#455a64")
EDGETPU_CACHE_BYTES = 8 * 1024 * 1024  # on-chip parameter cache of the Coral Edge TPU (~8 MB)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    matplotlib.rcParams.update(
        {
            "font.family": "DejaVu Sans",
            "font.size": 9,
            "svg.hashsalt": "edgetpu-retrain",
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_png(fig: Any) -> str:
    """The figure as a base64 PNG data URI (no metadata that changes between runs)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


# ------------------------------------------------------------------------------------------ dataset
def per_class_counts(classes: list[str], images: list[int], boxes: list[int]) -> str:
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    x = range(len(classes))
    ax.bar([i - 0.2 for i in x], images, width=0.4, label="images", color=COLORS[0])
    ax.bar([i + 0.2 for i in x], boxes, width=0.4, label="boxes", color=COLORS[1])
    for i, (a, b) in enumerate(zip(images, boxes, strict=True)):
        ax.annotate(str(a), (i - 0.2, a), ha="center", va="bottom", fontsize=8)
        ax.annotate(str(b), (i + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), classes)
    ax.set_ylabel("count")
    ax.set_title("Images and boxes per class (all splits)")
    ax.legend(frameon=False)
    return to_png(fig)


def boxes_per_image(counts: list[int]) -> str:
    fig = _figure(4.0, 2.6)
    ax = fig.add_subplot()
    top = max(counts) if counts else 0
    ax.hist(counts, bins=[b - 0.5 for b in range(top + 2)], color=COLORS[0], edgecolor="white")
    ax.set_xlabel("boxes in the image")
    ax.set_ylabel("images")
    ax.set_title("Boxes per image")
    return to_png(fig)


def box_sizes(sizes: list[float], scales: list[float] | None) -> str:
    fig = _figure(5.0, 2.6)
    ax = fig.add_subplot()
    ax.hist(sizes, bins=[i / 40 for i in range(41)], color=COLORS[2], edgecolor="white", label="boxes")
    for i, s in enumerate(scales or []):
        ax.axvline(s, color=COLORS[3], linestyle="--", linewidth=1, label="anchor scales" if i == 0 else None)
    ax.set_xlim(0, 1)
    ax.set_xlabel("box size: sqrt(box area / image area)")
    ax.set_ylabel("boxes")
    ax.set_title("Box sizes vs the anchors' scales")
    ax.legend(frameon=False, loc="upper right")
    return to_png(fig)


# ----------------------------------------------------------------------------------------- training
def training_curves(rows: list[dict[str, Any]]) -> str:
    fig = _figure(8.0, 2.8)
    loss_ax, lr_ax = fig.subplots(1, 2)
    steps = [r["step"] for r in rows]
    line = {"linewidth": 1.3, "marker": "o" if len(rows) <= 20 else None, "markersize": 3}  # 1 point shows
    for i, (key, label) in enumerate((("loss", "total"), ("box_loss", "box"), ("cls_loss", "class"))):
        loss_ax.plot(steps, [r.get(key) for r in rows], color=_color(i), label=label, **line)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Training loss")
    loss_ax.legend(frameon=False)
    lr_ax.plot(steps, [r.get("lr") for r in rows], color=_color(4), **line)
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("Learning-rate schedule")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return to_png(fig)


# ----------------------------------------------------------------------------------------- accuracy
def ap_bars(classes: list[str], float_ap: list[float | None], int8_ap: list[float | None]) -> str:
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    x = range(len(classes))
    for off, values, label, color in (
        (-0.2, float_ap, "float", COLORS[0]),
        (0.2, int8_ap, "int8", COLORS[1]),
    ):
        heights = [v if is_number(v) and v >= 0 else 0.0 for v in values]
        ax.bar([i + off for i in x], heights, width=0.4, label=label, color=color)
        for i, v in enumerate(values):
            text = fmt(v, 2) if is_number(v) and v >= 0 else "n/a"
            ax.annotate(text, (i + off, heights[i]), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), classes)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("AP@0.5")
    ax.set_title("Per-class AP@0.5 on the test split: float vs int8")
    ax.legend(frameon=False, loc="upper right")
    return to_png(fig)


def pr_curves(recall: list[float], curves: dict[str, dict[str, list[float]]]) -> str:
    """curves: {"float": {class: precision per recall point}, "int8": {...}}; -1 points are dropped."""
    names = sorted({c for by_class in curves.values() for c in by_class})
    fig = _figure(8.0, 2.8)
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        for kind, style in (("float", "--"), ("int8", "-")):
            p = curves.get(kind, {}).get(name)
            if not p:
                continue
            pts = [(r, v) for r, v in zip(recall, p, strict=False) if v >= 0]
            ax.plot(
                [r for r, _ in pts],
                [v for _, v in pts],
                style,
                label=kind,
                linewidth=1.3,
                color=COLORS[0] if kind == "float" else COLORS[1],
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(name)
        ax.set_xlabel("recall")
    axes[0].set_ylabel("precision (IoU 0.5)")
    axes[-1].legend(frameon=False, loc="upper right")
    return to_png(fig)


def confusion_matrix(rows: list[str], cols: list[str], matrix: list[list[int]]) -> str:
    size = 1.0 + 0.7 * len(cols)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0, aspect="auto")
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            label = "" if i == len(matrix) - 1 and j == len(row) - 1 else str(v)  # background x missed: n/a
            ax.text(
                j,
                i,
                label,
                ha="center",
                va="center",
                fontsize=9,
                color="white" if top and v > top * 0.6 else "black",
            )
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("int8 model says")
    ax.set_ylabel("ground truth")
    ax.set_title("Which class is mistaken for which")
    return to_png(fig)


def sample_image(pixels: Any, image: dict[str, Any], names: dict[int, str], *, threshold: float) -> str:
    """One test image: ground truth solid green with its class, int8 detections dashed with class + score."""
    from matplotlib.patches import Rectangle

    h, w = pixels.shape[:2]
    fig = _figure(3.0, 3.0 * h / max(w, 1) + 0.3)
    ax = fig.add_subplot()
    ax.imshow(pixels, interpolation="bilinear")
    for (y0, x0, y1, x1), label in zip(image["gt_boxes"], image["gt_labels"], strict=True):
        ax.add_patch(
            Rectangle(
                (x0 * w, y0 * h), (x1 - x0) * w, (y1 - y0) * h, fill=False, edgecolor=GT_COLOR, linewidth=2.2
            )
        )
        ax.text(
            x0 * w + 1,
            y1 * h - 2,
            names.get(int(label), str(label)),
            color="white",
            fontsize=8,
            va="bottom",
            bbox={"facecolor": GT_COLOR, "edgecolor": "none", "pad": 1},
        )
    for (y0, x0, y1, x1), cls, score in zip(image["boxes"], image["classes"], image["scores"], strict=True):
        if score < threshold:
            continue
        color = DET_COLORS[int(cls) % len(DET_COLORS)]
        ax.add_patch(
            Rectangle(
                (x0 * w, y0 * h),
                (x1 - x0) * w,
                (y1 - y0) * h,
                fill=False,
                edgecolor=color,
                linewidth=1.6,
                linestyle="--",
            )
        )
        ax.text(
            x0 * w + 1,
            y0 * h + 1,
            f"{names.get(int(cls) + 1, cls)} {score:.2f}",
            color="white",
            fontsize=8,
            va="top",
            bbox={"facecolor": color, "edgecolor": "none", "pad": 1},
        )
    ax.set_axis_off()
    ax.set_title(f"{image['filename']}: {image.get('errors', 0)} errors", fontsize=9)
    return to_png(fig)


# ------------------------------------------------------------------------------------------ edge tpu
def op_split(tpu: int, cpu: int) -> str:
    fig = _figure(6.0, 1.5)
    ax = fig.add_subplot()
    ax.barh([0], [tpu], color=COLORS[2], label=f"Edge TPU: {tpu}")
    ax.barh([0], [cpu], left=[tpu], color=COLORS[3], label=f"CPU: {cpu}")
    ax.set_yticks([])
    ax.set_xlim(0, max(tpu + cpu, 1) * 1.02)
    ax.set_xlabel("operations")
    ax.set_title(f"Operations: {tpu} on the Edge TPU (green), {cpu} on the CPU (red)")
    return to_png(fig)


def model_sizes(sizes: dict[str, int]) -> str:
    fig = _figure(5.0, 0.9 + 0.4 * len(sizes))
    ax = fig.add_subplot()
    names = sorted(sizes)
    ax.barh(names, [sizes[n] / 2**20 for n in names], color=COLORS[0])
    cache = EDGETPU_CACHE_BYTES / 2**20
    ax.axvline(cache, color=COLORS[3], linestyle="--")
    ax.annotate(
        "on-chip cache ~8 MiB",
        (cache, 1.0),
        xycoords=("data", "axes fraction"),
        ha="right",
        va="top",
        fontsize=8,
        color=COLORS[3],
        xytext=(-3, 0),
        textcoords="offset points",
    )
    for i, n in enumerate(names):
        ax.annotate(
            f"{sizes[n] / 2**20:.2f} MiB",
            (sizes[n] / 2**20, i),
            va="center",
            fontsize=8,
            xytext=(3, 0),
            textcoords="offset points",
        )
    ax.set_xlabel("MiB")
    ax.set_xlim(0, max([EDGETPU_CACHE_BYTES / 2**20 * 1.15] + [sizes[n] / 2**20 * 1.1 for n in names]))
    ax.set_title("Model size vs the Edge TPU's on-chip cache")
    return to_png(fig)
