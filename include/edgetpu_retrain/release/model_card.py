"""The model card of a promoted version: `model_card.json` (the data) and `model_card.md` (plain words)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetpu_retrain import common
from edgetpu_retrain.release.coverage import op_coverage
from edgetpu_retrain.release.metrics import METRIC_NAMES, fmt, is_number, quantization_drop

SPLIT_ORDER = ["train", "val", "test"]


def labels_txt(classes: list[Any]) -> str | None:
    """pycoral labels file: 0-based ids (the model's `classes` output = label-map id - 1)."""
    rows = []
    for c in classes:
        if isinstance(c, dict) and isinstance(c.get("id"), int) and c.get("name"):
            rows.append((c["id"] - 1, str(c["name"])))
    return "".join(f"{i} {n}\n" for i, n in sorted(rows)) if rows else None


def card_metric(card: dict[str, Any], metric: str) -> float | None:
    """The int8 `metric` a card recorded (what the next model is compared with)."""
    value = ((card.get("metrics") or {}).get("int8") or {}).get(metric)
    return float(value) if is_number(value) else None


def summarize_eval(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    d = ev["data"]
    out = {k: d.get(k) for k in ("map", "map50", "images", "latency_ms", "per_class", "model") if k in d}
    out["eval_json"] = ev["path"]
    return out


def _edgetpu_section(edgetpu: dict[str, Any]) -> dict[str, Any]:
    return {
        "preflight": edgetpu["preflight"],
        "preflight_json": edgetpu["source"],
        "preflight_details": edgetpu["preflight_extra"] or None,
        "compiled": Path(edgetpu["compiled"]).name if edgetpu["compiled"] else None,
        "compiler": edgetpu["compiler"],
        "op_coverage": op_coverage(edgetpu["compiler"], edgetpu["preflight_extra"]),
    }


def build_card(
    *,
    name: str,
    version: str,
    previous_version: str | None,
    promoted_at: str,
    source: dict[str, str],
    gate: dict[str, Any],
    evals: dict[str, Any],
    edgetpu: dict[str, Any],
    manifest: dict[str, Any] | None,
    config: Path | None,
    training: dict[str, Any] | None,
    artifacts: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The card's JSON. `evals` holds the loaded `float` / `int8` evaluate JSONs (either may be None)."""
    float_m, int8_m = summarize_eval(evals.get("float")), summarize_eval(evals.get("int8"))
    return {
        "card_version": 1,
        "name": name,
        "version": version,
        "promoted_at": promoted_at,
        "previous_version": previous_version,
        "source": source,
        "gate": gate,
        "dataset": manifest,
        "metrics": {
            "float": float_m,
            "int8": int8_m,
            "quantization_drop": quantization_drop(float_m, int8_m),
        },
        "edgetpu": _edgetpu_section(edgetpu),
        "config": (
            {"file": config.name, "source": str(config), "sha256": common.sha256_file(config)}
            if config
            else None
        ),
        "training": training,
        "artifacts": artifacts,
    }


# ------------------------------------------------------------------------------------------ markdown
def _md_dataset(ds: dict[str, Any] | None) -> list[str]:
    lines = ["## Dataset", ""]
    if not ds:
        return [*lines, "- not recorded (no --dataset-manifest)"]
    lines.append(f"- snapshot: {ds['name']}/{ds['version']} (manifest sha256 {ds['manifest_sha256'][:12]})")
    names = [str(c.get("name")) for c in ds.get("classes") or [] if isinstance(c, dict)]
    if names:
        lines.append(f"- classes ({len(names)}): {', '.join(names)}")
    counts = ds.get("counts") or {}
    for split in sorted(counts, key=lambda k: (SPLIT_ORDER + [k]).index(k)):
        c = counts[split]
        if isinstance(c, dict):
            lines.append(f"- {split}: {c.get('images', '?')} images, {c.get('objects', '?')} objects")
    lines.append(f"- split {ds.get('split')}, seed {ds.get('seed')}")
    return lines


def _md_accuracy(m: dict[str, Any]) -> list[str]:
    lines = [
        "## Accuracy (COCO, test split)",
        "",
        "| model | mAP@0.5 | mAP@[.5:.95] | images |",
        "|---|---|---|---|",
    ]
    for kind in ("float", "int8"):
        e = m.get(kind)
        if e:
            lines.append(
                f"| {kind} | {fmt(e.get('map50'))} | {fmt(e.get('map'))} | {e.get('images', 'n/a')} |"
            )
        else:
            lines.append(f"| {kind} | not evaluated | | |")
    d = m.get("quantization_drop")
    if d:
        lines += [
            "",
            f"Quantization drop (float - int8): mAP@0.5 {fmt(d.get('map50'))}, "
            f"mAP@[.5:.95] {fmt(d.get('map'))}.",
        ]
    return lines


def _md_edgetpu(t: dict[str, Any]) -> list[str]:
    lines = ["## Edge TPU", "", f"- pre-flight: {'ok' if t['preflight']['ok'] else 'NOT ok'}"]
    lines += [f"  - {r}" for r in t["preflight"]["reasons"]]
    lines.append(f"- compiled: {'yes' if t['compiled'] else 'no (runs on CPU only)'}")
    cov = t.get("op_coverage")
    if not cov:
        return [*lines, "- operation counts: not reported by the edgetpu step"]
    lines.append(
        f"- operations on Edge TPU: {cov.get('tpu', '?')}, on CPU: {cov.get('cpu', '?')}, "
        f"total: {cov.get('total', '?')} ({cov.get('source')})"
    )
    if cov.get("cpu_ops"):
        lines.append("- on the CPU: " + ", ".join(f"{k} x{v}" for k, v in cov["cpu_ops"].items()))
    return lines


def _md_rest(card: dict[str, Any]) -> list[str]:
    """Config, training and the shipped files."""
    lines: list[str] = []
    if card.get("config"):
        lines += ["", "## Config", "", f"- {card['config']['file']} (sha256 {card['config']['sha256'][:12]})"]
    tr = card.get("training")
    if tr:
        lines += ["", "## Training", ""]
        lines += [
            f"- {k}: {tr[k]}"
            for k in ("steps_done", "stopped_by", "images_per_sec", "backbone_weights", "compute_dtype")
            if k in tr
        ]
    lines += ["", "## Files", ""]
    lines += [
        f"- {n} ({a['bytes']} bytes, sha256 {a['sha256'][:12]})" for n, a in sorted(card["artifacts"].items())
    ]
    return lines


def render_card_md(card: dict[str, Any]) -> str:
    g = card["gate"]
    current = fmt(g["current"]) if g["current"] is not None else "(none: first model)"
    lines = [
        f"# Model card: {card['name']} version {card['version']}",
        "",
        f"Promoted from run `{card['source']['run_id']}` ({card['source']['run_dir']}).",
        f"Gate: int8 {METRIC_NAMES[g['metric']]} {fmt(g['new'])} vs current {current}, "
        f"tolerance {g['tolerance']}.",
        "",
        *_md_dataset(card.get("dataset")),
        "",
        *_md_accuracy(card["metrics"]),
        "",
        *_md_edgetpu(card["edgetpu"]),
        *_md_rest(card),
    ]
    return "\n".join(lines) + "\n"
