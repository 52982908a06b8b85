"""`edgetpu-retrain promote`: the promotion gate and the model registry under `models/<name>/`.

Gate (in this order; the first failing rule decides):
1. the Edge TPU pre-flight must be ok (`preflight.ok`), otherwise the model cannot run on the TPU;
2. with `--require-compiled`, the compiled `*_edgetpu.tflite` must exist;
3. the new int8 metric (`--metric`, default `map50`) must satisfy `new >= current - tolerance`, where
   `current` is the int8 metric in the model card of the currently promoted model. The first model of a
   name always passes. A negative tolerance demands a strict improvement of at least |tolerance|.

Registry layout (one folder per model name, history kept)::

    models/<name>/
        versions/0001/            model_int8.tflite, model_int8_edgetpu.tflite (if compiled),
                                  labels (given file and/or labels.txt from the dataset classes),
                                  the rendered config, model_card.json, model_card.md
        versions/0002/ ...
        current -> versions/0002  RELATIVE SYMLINK, switched atomically: a new link is created beside it
                                  and renamed over it with os.replace (rename(2) is atomic), so a reader
                                  always sees either the old or the new version, never a missing link.
        history.json              every promotion / switch, oldest first (canonical JSON)
        .lock                     flock held while promoting (two promotions of one name never interleave)

A version folder is written completely in a temp folder and renamed into place (`common.atomic_dir`)
before `current` switches. Re-running promote with the same artifacts (same sha256 of every copied
file) is a no-op that reports the existing version: no new folder, no history entry, same bytes.
If the same artifacts exist as an older, non-current version and pass the gate, `current` switches
back to that version instead of copying them again.

Not promoted -> exit 0, `promoted: false` and the reason; the model stays where it is (its run dir).
`--out FILE` also writes the decision JSON (e.g. runs/<run_id>/promote.json) for the report step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeGuard

from edgetpu_retrain import common
from edgetpu_retrain.common import UserError
from edgetpu_retrain.export.edgetpu import COMPILER_STDOUT, SUMMARY_KEYS, parse_compiler_output

log = logging.getLogger(__name__)

METRICS = ("map50", "map")
METRIC_NAMES = {"map50": "mAP@0.5", "map": "mAP@[.5:.95]"}
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
HISTORY = "history.json"
CURRENT = "current"
VERSION_RE = re.compile(r"^\d{4,}$")
# Exact-equality slack for floats that went through JSON (0.51 - 0.01 must still pass for 0.50).
EPS = 1e-9


# --------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", required=True, help="registry root (data-root/models)")
    parser.add_argument("--name", required=True, help="model name: the registry folder models/<name>/")
    parser.add_argument("--int8-eval", required=True, help="evaluate JSON of the int8 .tflite")
    parser.add_argument("--float-eval", help="evaluate JSON of the float model (for the quantization drop)")
    parser.add_argument("--tflite", required=True, help="the int8 .tflite to promote")
    tpu = parser.add_mutually_exclusive_group()
    tpu.add_argument(
        "--edgetpu-dir", help="output folder of the edgetpu step (preflight.json, *_edgetpu.tflite)"
    )
    tpu.add_argument(
        "--preflight", help="preflight.json or the edgetpu step JSON (keys preflight/compiled/compiler)"
    )
    parser.add_argument(
        "--compiled",
        help="compiled *_edgetpu.tflite (overrides the one named in the pre-flight JSON; "
        "'' or 'None' = not compiled)",
    )
    parser.add_argument("--labels", help="labels file to ship with the model (copied under its own name)")
    parser.add_argument(
        "--dataset-manifest", help="dataset snapshot manifest.json (version, counts, classes)"
    )
    parser.add_argument("--config", help="rendered training config (copied into the version folder)")
    parser.add_argument(
        "--training", help="train step JSON (steps_done, losses, images_per_sec) for the card"
    )
    parser.add_argument(
        "--run-dir", help="source run folder recorded in the card (default: runs/<run_id> above --tflite)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promote if new >= current - tolerance (metric units 0..1; default 0.0)",
    )
    parser.add_argument("--metric", choices=METRICS, default="map50", help="gate metric (default map50)")
    parser.add_argument(
        "--require-compiled",
        action="store_true",
        help="refuse promotion unless the Edge TPU compiled model exists",
    )
    parser.add_argument(
        "--out", help="also write the decision JSON to this file (e.g. runs/<id>/promote.json)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not math.isfinite(args.tolerance):
        raise UserError(f"--tolerance {args.tolerance}: must be a finite number like 0.01; fix the flag")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise UserError(f"--name {args.name!r}: use letters, digits, '.', '_' or '-' only; fix the flag")

    tflite = common.require_file(args.tflite, what="int8 .tflite").resolve()
    int8_eval = load_eval(args.int8_eval, metric=args.metric)
    float_eval = load_eval(args.float_eval, metric=None) if args.float_eval else None
    edgetpu = load_edgetpu(args.edgetpu_dir, args.preflight, args.compiled, tflite)
    manifest = load_manifest(args.dataset_manifest) if args.dataset_manifest else None
    training = common.read_json(args.training) if args.training else None
    if training is not None and not isinstance(training, dict):
        raise UserError(f"{args.training}: expected a JSON object from the train step; re-run train")
    labels = common.require_file(args.labels, what="labels").resolve() if args.labels else None
    config = common.require_file(args.config, what="rendered config").resolve() if args.config else None
    run_dir = Path(args.run_dir).resolve() if args.run_dir else default_run_dir(tflite)

    evaluated = int8_eval["data"].get("model")
    if isinstance(evaluated, str) and evaluated and Path(evaluated).resolve() != tflite:
        log.warning(
            "%s evaluated %s, but --tflite is %s: check both come from the same run",
            int8_eval["path"],
            evaluated,
            tflite,
        )

    model_root = Path(args.models_dir).resolve() / args.name
    model_root.mkdir(parents=True, exist_ok=True)
    with _locked(model_root / ".lock"):
        return _promote_locked(
            args,
            model_root,
            tflite,
            int8_eval,
            float_eval,
            edgetpu,
            manifest,
            training,
            labels,
            config,
            run_dir,
        )


# ------------------------------------------------------------------------------------------ inputs
def default_run_dir(tflite: Path) -> Path:
    """runs/<run_id> above the .tflite (data-root layout), else the .tflite's own folder."""
    for parent in tflite.parents:
        if parent.parent.name == "runs":
            return parent
    return tflite.parent


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_eval(path: str | os.PathLike[str], *, metric: str | None) -> dict[str, Any]:
    """Read an evaluate JSON; `map`/`map50` present must be numbers in 0..1, and `metric` must exist."""
    data = common.read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected the evaluate step's JSON object; re-run evaluate")
    data = dict(data)
    for key in METRICS:
        value = data.get(key)
        if value == -1 and not isinstance(value, bool):  # COCOeval's "no ground truth"
            if key == metric:
                raise UserError(
                    f"{path}: {key!r} is -1 (COCOeval found no ground-truth boxes: is the test split "
                    "empty?); add labeled test images, rebuild the dataset and re-run evaluate"
                )
            data[key] = None
        elif value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise UserError(f"{path}: {key!r} is {value!r}, expected a number in 0..1; re-run evaluate")
    if metric is not None and not _is_number(data.get(metric)):
        raise UserError(
            f"{path}: no {metric!r} number (the gate metric); re-run evaluate or pick --metric "
            f"{' or '.join(m for m in METRICS if m != metric)}"
        )
    return {"path": str(Path(path).resolve()), "data": data}


def load_edgetpu(
    edgetpu_dir: str | None, preflight: str | None, compiled: str | None, tflite: Path
) -> dict[str, Any]:
    """Normalize the edgetpu step's outputs to {preflight: {ok, reasons}, compiled, compiler, source}."""
    if edgetpu_dir:
        folder = common.require_dir(edgetpu_dir, what="edgetpu step output")
        preflight_path = folder / "preflight.json"
        if not preflight_path.is_file():
            raise UserError(
                f"{preflight_path}: file not found; run the edgetpu step into {folder} "
                "or pass --preflight FILE"
            )
    elif preflight:
        preflight_path = Path(preflight)
        folder = preflight_path.parent
    else:
        preflight_path = tflite.parent / "preflight.json"
        folder = tflite.parent
        if not preflight_path.is_file():
            raise UserError(
                f"{preflight_path}: no Edge TPU pre-flight result; run the edgetpu step and pass "
                "--edgetpu-dir DIR or --preflight FILE"
            )
    data = common.read_json(preflight_path)
    if not isinstance(data, dict):
        raise UserError(f"{preflight_path}: expected a JSON object with 'ok' and 'reasons'; re-run edgetpu")
    pre = data.get("preflight", data)
    if not isinstance(pre, dict) or not isinstance(pre.get("ok"), bool):
        raise UserError(
            f"{preflight_path}: no boolean 'ok' (in 'preflight' or at the top level); re-run the edgetpu step"
        )
    reasons = pre.get("reasons") or []
    if isinstance(reasons, str):
        reasons = [reasons]
    compiler = data.get("compiler") if isinstance(data.get("compiler"), dict) else None
    if compiler is None:
        compiler = compiler_from_folder(folder)

    def _resolve(value: str, base: Path) -> Path:
        p = Path(value)
        return (p if p.is_absolute() else base / p).resolve()

    compiled_path: Path | None = None
    if compiled is not None:  # the flag wins, '' / None / null = explicitly not compiled
        if not common.is_none(compiled):
            compiled_path = Path(compiled).resolve()
            if not compiled_path.is_file():
                raise UserError(
                    f"{compiled_path}: compiled Edge TPU model not found; pass the edgetpu step's "
                    "'compiled' path, or --compiled None if it did not compile"
                )
    elif not common.is_none(data.get("compiled")):
        compiled_path = _resolve(str(data["compiled"]), preflight_path.parent)
        if not compiled_path.is_file():
            raise UserError(
                f"{preflight_path}: 'compiled' names {compiled_path}, which does not exist; "
                "re-run the edgetpu step"
            )
    elif edgetpu_dir and "compiled" not in data:  # an explicit "compiled": null means "not compiled"
        found = sorted(folder.glob("*_edgetpu.tflite"))
        if len(found) > 1:
            raise UserError(
                f"{folder}: several *_edgetpu.tflite files ({', '.join(p.name for p in found)}); "
                "pass --preflight FILE --compiled FILE"
            )
        compiled_path = found[0].resolve() if found else None
    return {
        "source": str(preflight_path.resolve()),
        "preflight": {"ok": pre["ok"], "reasons": [str(r) for r in reasons]},
        "preflight_extra": {k: pre[k] for k in PREFLIGHT_KEYS if pre.get(k) is not None},
        "compiled": str(compiled_path) if compiled_path else None,
        "compiler": compiler,
    }


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = common.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("counts"), dict):
        raise UserError(
            f"{path}: not a dataset manifest (no 'counts'); pass datasets/<name>/<version>/manifest.json"
        )
    p = Path(path).resolve()
    counts = data["counts"]
    return {
        "manifest": str(p),
        "manifest_sha256": common.sha256_file(p),
        "name": p.parent.parent.name,
        "version": p.parent.name,
        "classes": data.get("classes") or [],
        "num_classes": data.get("num_classes"),
        "counts": counts,
        "split": data.get("split"),
        "seed": data.get("seed"),
        "label_map": str((p.parent / data["label_map"]).resolve()) if data.get("label_map") else None,
        "created": data.get("created"),
    }


# ------------------------------------------------------------------------------------ op coverage
PREFLIGHT_KEYS = tuple(k for k in SUMMARY_KEYS if k not in ("ok", "reasons"))  # the card's preflight_details
_LOG_KEYS = ("ops_on_tpu", "ops_on_cpu", "total_ops", "tpu_subgraphs", "op_table")


def compiler_from_folder(folder: str | Path) -> dict[str, Any] | None:
    """Compiler figures from the stdout the edgetpu step keeps in its folder, or None if it did not run."""
    stdout = Path(folder) / COMPILER_STDOUT
    if not stdout.is_file():
        return None
    return {
        **parse_compiler_log(stdout.read_text(encoding="utf-8", errors="replace")),
        "stdout": str(stdout.resolve()),
    }


def parse_compiler_log(text: str) -> dict[str, Any]:
    """Op counts and the `Operator Count Status` table of `edgetpu_compiler -s` stdout (only those found).

    The parsing itself is the edgetpu step's (`edgetpu.parse_compiler_output`), so the key names match.
    """
    figures = parse_compiler_output(text)
    return {k: figures[k] for k in _LOG_KEYS if figures[k] not in (None, [])}


def _read_log(value: str) -> str:
    if "\n" not in value and len(value) < 4096:
        with contextlib.suppress(OSError, ValueError):
            if Path(value).is_file():
                return Path(value).read_text(encoding="utf-8", errors="replace")
    return value


def op_coverage(
    compiler: dict[str, Any] | None, preflight: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """{tpu, cpu, total, subgraphs, cpu_ops, source} from the compiler figures, else the pre-flight estimate.

    Reads the edgetpu step's figures (`ops_on_tpu`, `ops_on_cpu`, `total_ops`, `tpu_subgraphs`, `op_table`,
    `cpu_ops`), tolerates other spellings (`tpu_ops`, `num_ops_cpu`, ...) and a compiler stdout text or
    path under a `log`/`stdout` key. Without compiler figures, falls back to the pre-flight's
    `expected_tpu_op_count` / `expected_cpu_op_count` (source "pre-flight estimate"). None if neither.
    """
    figures: dict[str, Any] = {}
    if isinstance(compiler, dict):
        for key, value in sorted(compiler.items()):
            if isinstance(value, str) and ("log" in key.lower() or "stdout" in key.lower()):
                figures.update(
                    {k: v for k, v in parse_compiler_log(_read_log(value)).items() if k not in compiler}
                )
        figures.update(compiler)
    cov: dict[str, Any] = {}
    for key, value in sorted(figures.items()):
        k = key.lower()
        if isinstance(value, dict) and "cpu" in k and all(isinstance(v, int) for v in value.values()):
            cov["cpu_ops"] = dict(sorted(value.items()))
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if "subgraph" in k:
            cov["subgraphs"] = value
        elif "op" not in k:
            continue
        elif "cpu" in k or "unmapped" in k:
            cov["cpu"] = value
        elif "tpu" in k or "mapped" in k:
            cov["tpu"] = value
        elif "total" in k or k in ("ops", "num_ops", "operations"):
            cov["total"] = value
    rows = next(
        (figures[k] for k in ("op_table", "operators", "ops_table") if isinstance(figures.get(k), list)), None
    )
    if rows and all(isinstance(r, dict) for r in rows):

        def on_tpu(r: dict[str, Any]) -> bool:
            return bool(r["mapped"]) if "mapped" in r else str(r.get("status", "")).startswith("Mapped")

        cov.setdefault("tpu", sum(int(r.get("count", 0)) for r in rows if on_tpu(r)))
        cov.setdefault("total", sum(int(r.get("count", 0)) for r in rows))
        cov.setdefault(
            "cpu_ops",
            {
                str(r.get("op")): int(r.get("count", 0))
                for r in sorted(rows, key=lambda r: str(r.get("op")))
                if not on_tpu(r)
            },
        )
    if "total" not in cov and "tpu" in cov and "cpu" in cov:
        cov["total"] = cov["tpu"] + cov["cpu"]
    if "cpu" not in cov and "tpu" in cov and "total" in cov:
        cov["cpu"] = cov["total"] - cov["tpu"]
    if "tpu" in cov or "cpu" in cov:
        cov["source"] = "compiler"
    elif isinstance(preflight, dict) and isinstance(preflight.get("expected_tpu_op_count"), int):
        cov = {
            "tpu": preflight["expected_tpu_op_count"],
            "cpu": preflight.get("expected_cpu_op_count"),
            "source": "pre-flight estimate",
        }
        if isinstance(cov["cpu"], int):
            cov["total"] = cov["tpu"] + cov["cpu"]
        if isinstance(preflight.get("expected_cpu_ops"), dict):
            cov["cpu_ops"] = dict(sorted(preflight["expected_cpu_ops"].items()))
    else:
        return None
    if isinstance(cov.get("total"), int) and cov["total"] > 0 and isinstance(cov.get("tpu"), int):
        cov["tpu_percent"] = round(100.0 * cov["tpu"] / cov["total"], 1)
    return cov


# ----------------------------------------------------------------------------------------- registry
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def versions(model_root: Path) -> list[str]:
    folder = model_root / "versions"
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name)), key=int)


def current_version(model_root: Path) -> str | None:
    link = model_root / CURRENT
    if not link.is_symlink():
        if link.exists():
            raise UserError(f"{link}: expected a symlink to versions/NNNN; move it away and re-run promote")
        return None
    target = Path(os.readlink(link))
    if not VERSION_RE.match(target.name) or not (model_root / "versions" / target.name).is_dir():
        raise UserError(
            f"{link}: points at {target}, not an existing versions/NNNN; "
            "relink it (ln -sfn versions/NNNN current) or remove it"
        )
    return target.name


def read_card(model_root: Path, version: str) -> dict[str, Any]:
    path = model_root / "versions" / version / CARD_JSON
    card = common.read_json(path)
    if not isinstance(card, dict):
        raise UserError(
            f"{path}: model card is not a JSON object; restore it from backup or remove the version"
        )
    return card


def switch_current(model_root: Path, version: str) -> None:
    """Point `current` at versions/<version> atomically: new symlink beside it, then os.replace."""
    link = model_root / CURRENT
    tmp = model_root / f".{CURRENT}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.symlink(os.path.join("versions", version), tmp)
    except OSError as exc:
        raise UserError(
            f"{tmp}: cannot create a symlink ({exc}); the models folder must be on a filesystem "
            "with symlinks (a Linux volume, not SMB/FAT)"
        ) from exc
    os.replace(tmp, link)


def _append_history(model_root: Path, entry: dict[str, Any]) -> None:
    path = model_root / HISTORY
    history = common.read_json(path) if path.exists() else []
    if not isinstance(history, list):
        raise UserError(f"{path}: expected a JSON list; restore it or move it away and re-run promote")
    history.append(entry)
    common.write_json(path, history)


def _artifacts(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
    return {
        name: {"sha256": common.sha256_file(src), "bytes": src.stat().st_size, "source": str(src)}
        for name, src in sorted(files.items())
    }


def _fingerprint(artifacts: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: info["sha256"] for name, info in sorted(artifacts.items())}


def _labels_txt(classes: list[Any]) -> str | None:
    """pycoral labels file: 0-based ids (the model's `classes` output = label-map id - 1)."""
    rows = []
    for c in classes:
        if isinstance(c, dict) and isinstance(c.get("id"), int) and c.get("name"):
            rows.append((c["id"] - 1, str(c["name"])))
    return "".join(f"{i} {n}\n" for i, n in sorted(rows)) if rows else None


def _metric(card: dict[str, Any], metric: str) -> float | None:
    value = ((card.get("metrics") or {}).get("int8") or {}).get(metric)
    return float(value) if _is_number(value) else None


def _summarize_eval(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    d = ev["data"]
    out = {k: d.get(k) for k in ("map", "map50", "images", "latency_ms", "per_class", "model") if k in d}
    out["eval_json"] = ev["path"]
    return out


def quantization_drop(float_m: dict[str, Any] | None, int8_m: dict[str, Any] | None) -> dict[str, Any] | None:
    """float - int8 per metric (positive = int8 is worse), absolute and relative to float."""
    if not float_m or not int8_m:
        return None
    drop: dict[str, Any] = {}
    for key in METRICS:
        f, q = float_m.get(key), int8_m.get(key)
        if _is_number(f) and _is_number(q):
            drop[key] = round(f - q, 6)
            drop[f"{key}_relative"] = round((f - q) / f, 6) if f > 0 else None
    return drop or None


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_number(value) else "n/a"


def render_card_md(card: dict[str, Any]) -> str:
    lines = [f"# Model card: {card['name']} version {card['version']}", ""]
    g = card["gate"]
    lines += [
        f"Promoted from run `{card['source']['run_id']}` ({card['source']['run_dir']}).",
        f"Gate: int8 {METRIC_NAMES[g['metric']]} {_fmt(g['new'])} vs current "
        f"{_fmt(g['current']) if g['current'] is not None else '(none: first model)'}"
        f", tolerance {g['tolerance']}.",
        "",
    ]
    ds = card.get("dataset")
    lines += ["## Dataset", ""]
    if ds:
        lines.append(
            f"- snapshot: {ds['name']}/{ds['version']} (manifest sha256 {ds['manifest_sha256'][:12]})"
        )
        names = [str(c.get("name")) for c in ds.get("classes") or [] if isinstance(c, dict)]
        if names:
            lines.append(f"- classes ({len(names)}): {', '.join(names)}")
        counts = ds.get("counts") or {}
        for split in sorted(counts, key=lambda k: (["train", "val", "test"] + [k]).index(k)):
            c = counts[split]
            if isinstance(c, dict):
                lines.append(f"- {split}: {c.get('images', '?')} images, {c.get('objects', '?')} objects")
        lines.append(f"- split {ds.get('split')}, seed {ds.get('seed')}")
    else:
        lines.append("- not recorded (no --dataset-manifest)")
    m = card["metrics"]
    lines += [
        "",
        "## Accuracy (COCO, test split)",
        "",
        "| model | mAP@0.5 | mAP@[.5:.95] | images |",
        "|---|---|---|---|",
    ]
    for kind in ("float", "int8"):
        e = m.get(kind)
        if e:
            lines.append(
                f"| {kind} | {_fmt(e.get('map50'))} | {_fmt(e.get('map'))} | {e.get('images', 'n/a')} |"
            )
        else:
            lines.append(f"| {kind} | not evaluated | | |")
    d = m.get("quantization_drop")
    if d:
        lines.append("")
        lines.append(
            f"Quantization drop (float - int8): mAP@0.5 {_fmt(d.get('map50'))}, "
            f"mAP@[.5:.95] {_fmt(d.get('map'))}."
        )
    t = card["edgetpu"]
    lines += ["", "## Edge TPU", "", f"- pre-flight: {'ok' if t['preflight']['ok'] else 'NOT ok'}"]
    lines += [f"  - {r}" for r in t["preflight"]["reasons"]]
    lines.append(f"- compiled: {'yes' if t['compiled'] else 'no (runs on CPU only)'}")
    cov = t.get("op_coverage")
    if cov:
        lines.append(
            f"- operations on Edge TPU: {cov.get('tpu', '?')}, on CPU: {cov.get('cpu', '?')}, "
            f"total: {cov.get('total', '?')} ({cov.get('source')})"
        )
        if cov.get("cpu_ops"):
            lines.append("- on the CPU: " + ", ".join(f"{k} x{v}" for k, v in cov["cpu_ops"].items()))
    else:
        lines.append("- operation counts: not reported by the edgetpu step")
    if card.get("config"):
        lines += ["", "## Config", "", f"- {card['config']['file']} (sha256 {card['config']['sha256'][:12]})"]
    tr = card.get("training")
    if tr:
        lines += ["", "## Training", ""]
        for k in ("steps_done", "images_per_sec"):
            if k in tr:
                lines.append(f"- {k}: {tr[k]}")
    lines += ["", "## Files", ""]
    lines += [
        f"- {n} ({a['bytes']} bytes, sha256 {a['sha256'][:12]})" for n, a in sorted(card["artifacts"].items())
    ]
    return "\n".join(lines) + "\n"


def _decision(
    promoted: bool,
    reason: str,
    args: argparse.Namespace,
    new: float,
    current: float | None,
    version: str | None,
    current_ver: str | None,
    model_dir: Path,
    model_root: Path,
    edgetpu: dict[str, Any],
) -> dict[str, Any]:
    result = {
        "promoted": promoted,
        "reason": reason,
        "metric": args.metric,
        "new": new,
        "current": current,
        "tolerance": args.tolerance,
        "version": version,
        "current_version": current_ver,
        "model_dir": str(model_dir),
        "current_dir": str(model_root / CURRENT),
        "model_card": str(model_dir / CARD_JSON) if promoted else None,
        "name": args.name,
        "preflight_ok": edgetpu["preflight"]["ok"],
        "compiled": edgetpu["compiled"],
    }
    if args.out:
        common.write_json(args.out, result)
        result["decision_json"] = str(Path(args.out).resolve())
    return result


def _promote_locked(
    args, model_root, tflite, int8_eval, float_eval, edgetpu, manifest, training, labels, config, run_dir
) -> dict[str, Any]:
    metric = args.metric
    new = float(int8_eval["data"][metric])
    cur_ver = current_version(model_root)
    current = None
    if cur_ver is not None:
        current = _metric(read_card(model_root, cur_ver), metric)
        if current is None:
            raise UserError(
                f"{model_root / 'versions' / cur_ver / CARD_JSON}: no int8 {metric!r} in the current "
                "model card; fix the card or promote with the other --metric"
            )

    def reject(reason: str) -> dict[str, Any]:
        log.info("not promoted: %s (model stays in %s)", reason, run_dir)
        return _decision(False, reason, args, new, current, None, cur_ver, run_dir, model_root, edgetpu)

    # Gate 1-2: Edge TPU
    if not edgetpu["preflight"]["ok"]:
        why = "; ".join(edgetpu["preflight"]["reasons"]) or "no reason given"
        return reject(f"Edge TPU pre-flight failed: {why}")
    if args.require_compiled and not edgetpu["compiled"]:
        return reject(
            "--require-compiled is set but the Edge TPU compiled model is missing "
            "(the compiler did not run or failed)"
        )

    # Files to ship
    files: dict[str, Path] = {tflite.name: tflite}
    if edgetpu["compiled"]:
        files[Path(edgetpu["compiled"]).name] = Path(edgetpu["compiled"])
    if labels is not None:
        files[labels.name] = labels
    if config is not None:
        files[config.name] = config
    generated: dict[str, str] = {}
    if manifest is not None:
        txt = _labels_txt(manifest["classes"])
        if txt and "labels.txt" not in files:
            generated["labels.txt"] = txt
        lm = manifest.get("label_map")
        if lm and Path(lm).is_file() and Path(lm).name not in files:
            files[Path(lm).name] = Path(lm)
    artifacts = _artifacts(files)
    for name, text in sorted(generated.items()):
        data = text.encode("utf-8")
        artifacts[name] = {"sha256": common.sha256_bytes(data), "bytes": len(data), "source": "generated"}
    fingerprint = _fingerprint(artifacts)

    # Same artifacts as the current version: an idempotent re-run, whatever the gate says now
    if (
        cur_ver is not None
        and _fingerprint(read_card(model_root, cur_ver).get("artifacts") or {}) == fingerprint
    ):
        vdir = model_root / "versions" / cur_ver
        log.info("already promoted as version %s; nothing changed", cur_ver)
        return _decision(
            True,
            f"already promoted as version {cur_ver} (same artifacts); nothing changed",
            args,
            new,
            current,
            cur_ver,
            cur_ver,
            vdir,
            model_root,
            edgetpu,
        )

    # Gate 3: accuracy vs the current model
    label = f"int8 {METRIC_NAMES[metric]}"
    if current is not None and not new >= current - args.tolerance - EPS:
        return reject(
            f"{label} {new:.4f} is below current version {cur_ver} ({current:.4f}) "
            f"minus tolerance {args.tolerance:g} (needs >= {current - args.tolerance:.4f})"
        )
    why = (
        "first model for this name"
        if current is None
        else f"{label} {new:.4f} >= current version {cur_ver} ({current:.4f}) - tolerance {args.tolerance:g}"
    )

    # Same artifacts as an older version: switch back to it rather than copying them again
    for ver in reversed(versions(model_root)):
        card_path = model_root / "versions" / ver / CARD_JSON
        if not card_path.is_file():
            continue
        card = read_card(model_root, ver)
        if _fingerprint(card.get("artifacts") or {}) != fingerprint:
            continue
        vdir = model_root / "versions" / ver
        switch_current(model_root, ver)
        _append_history(
            model_root,
            {
                "action": "switch",
                "version": ver,
                "previous_version": cur_ver,
                "metric": metric,
                "new": new,
                "current": current,
                "at": _now(),
                "run_dir": str(run_dir),
            },
        )
        return _decision(
            True,
            f"{why}; same artifacts as version {ver}, current switched back to it",
            args,
            new,
            current,
            ver,
            ver,
            vdir,
            model_root,
            edgetpu,
        )

    existing = versions(model_root)
    version = f"{(int(existing[-1]) + 1) if existing else 1:04d}"
    vdir = model_root / "versions" / version
    float_m = _summarize_eval(float_eval)
    int8_m = _summarize_eval(int8_eval)
    card = {
        "card_version": 1,
        "name": args.name,
        "version": version,
        "promoted_at": _now(),
        "previous_version": cur_ver,
        "source": {"run_dir": str(run_dir), "run_id": run_dir.name, "tflite": str(tflite)},
        "gate": {
            "metric": metric,
            "new": new,
            "current": current,
            "tolerance": args.tolerance,
            "require_compiled": bool(args.require_compiled),
            "reason": why,
        },
        "dataset": manifest,
        "metrics": {
            "float": float_m,
            "int8": int8_m,
            "quantization_drop": quantization_drop(float_m, int8_m),
        },
        "edgetpu": {
            "preflight": edgetpu["preflight"],
            "preflight_json": edgetpu["source"],
            "preflight_details": edgetpu["preflight_extra"] or None,
            "compiled": Path(edgetpu["compiled"]).name if edgetpu["compiled"] else None,
            "compiler": edgetpu["compiler"],
            "op_coverage": op_coverage(edgetpu["compiler"], edgetpu["preflight_extra"]),
        },
        "config": (
            {"file": config.name, "source": str(config), "sha256": common.sha256_file(config)}
            if config
            else None
        ),
        "training": training,
        "artifacts": artifacts,
    }
    with common.atomic_dir(vdir) as tmp:
        for name, src in sorted(files.items()):
            shutil.copyfile(src, tmp / name)
        for name, text in sorted(generated.items()):
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / CARD_JSON).write_text(common.dumps_json(card), encoding="utf-8")
        (tmp / CARD_MD).write_text(render_card_md(card), encoding="utf-8")
    switch_current(model_root, version)
    _append_history(
        model_root,
        {
            "action": "promote",
            "version": version,
            "previous_version": cur_ver,
            "metric": metric,
            "new": new,
            "current": current,
            "at": card["promoted_at"],
            "run_dir": str(run_dir),
        },
    )
    log.info("promoted %s as version %s: %s", args.name, version, why)
    return _decision(True, why, args, new, current, version, version, vdir, model_root, edgetpu)


def _now() -> str:
    """The one timestamp in a card (a manifest-style field); SOURCE_DATE_EPOCH pins it for reproducible
    builds."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = _dt.datetime.fromtimestamp(int(epoch), _dt.UTC) if epoch else _dt.datetime.now(_dt.UTC)
    return moment.replace(microsecond=0).isoformat()
