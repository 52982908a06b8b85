"""ImageNet MobileNet backbones with no network: the bundled Coral models, their conversion cache and
`edgetpu-retrain import-weights --tflite FILE --out FILE.weights.h5`.

The package ships Google Coral's quantized ImageNet MobileNets (`model/pretrained_weights/`, Apache-2.0):
V2 alpha 1.0, V1 alpha 1.0 (embedding extractor) / 0.75 / 0.5. `model.backbone_weights: bundled`
picks the one matching the config's base and alpha, converts it once onto keras.applications
(`pretrained_convert`) and caches the `.weights.h5` under $EDGETPU_WEIGHTS_CACHE (default
~/.cache/edgetpu-retrain/weights) as `<sha256 of the .tflite>-v<CONVERTER_VERSION>.weights.h5` plus a
`.json` summary; writes are atomic renames, so concurrent trainers at worst convert twice. A local
MobileNet `.tflite` in `model.backbone_weights` goes through the same cache.

When no bundled file fits (e.g. V2 alpha 0.5) the backbone starts from random init with a WARNING that
names the fix (render-config reports the same note): the user asked for the default, not for a
specific file, and training still works; an error would break every non-default alpha.

Only stdlib at module level (model.config imports this for render-config's note).
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, log, make_dir, read_json, sha256_file, write_json

BUNDLED = "bundled"
CONVERTER_VERSION = 1  # bump when the conversion changes: cached files of older versions are ignored
CACHE_ENV = "EDGETPU_WEIGHTS_CACHE"
BUNDLED_FILES: dict[tuple[str, float], str] = {
    ("mobilenet_v2", 1.0): "mobilenet_v2_1.0_224_quant.tflite",
    ("mobilenet_v1", 1.0): "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
    ("mobilenet_v1", 0.75): "mobilenet_v1_0.75_192_quant.tflite",
    ("mobilenet_v1", 0.5): "mobilenet_v1_0.5_160_quant.tflite",
}
BASES = ("mobilenet_v1", "mobilenet_v2")


def base_name(base: str) -> str:
    """Config base model (mobilenet_v2_ssd) or backbone name (mobilenet_v2) -> backbone name."""
    return base.removesuffix("_ssd")


def bundled_dir() -> Path:
    """The packaged `model/pretrained_weights/` folder (Coral models, LICENSE, check photos)."""
    return Path(str(resources.files("edgetpu_retrain.model") / "pretrained_weights"))


def bundled_path(base: str, alpha: float) -> Path | None:
    name = BUNDLED_FILES.get((base_name(base), round(float(alpha), 4)))
    return bundled_dir() / name if name else None


def _alphas(base: str) -> list[float]:
    return sorted((a for b, a in BUNDLED_FILES if b == base_name(base)), reverse=True)


def weights_note(base: str, alpha: float, weights: str | None) -> str | None:
    """The warning for `bundled` when no bundled file fits base/alpha (None when fine)."""
    if weights != BUNDLED or bundled_path(base, alpha) is not None:
        return None
    alphas = " or ".join(f"{a:g}" for a in _alphas(base))
    return (
        f"model.backbone_weights=bundled: no bundled ImageNet weights for {base} alpha {alpha:g} (bundled: "
        f"MobileNet V2 alpha 1.0, V1 alpha 1.0/0.75/0.5), so the backbone starts from RANDOM init; "
        f"set model.alpha={alphas}, or model.backbone_weights to a MobileNet .tflite or keras "
        f"include_top=False .h5 of alpha {alpha:g}, or 'imagenet' (downloads from the internet)"
    )


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgetpu-retrain" / "weights")


def _check_request(found: dict[str, Any], where: str, *, base: str | None, alpha: float | None) -> None:
    what = f"MobileNet V{found['version']} alpha {found['alpha']:g}"
    if base is not None and base_name(base) != found["base"]:
        raise UserError(
            f"{where}: this is {what}, not {base_name(base)}; use a {base_name(base)} file or set the "
            f"base model to {found['base']}"
        )
    if alpha is not None and abs(float(alpha) - found["alpha"]) > 1e-6:
        raise UserError(
            f"{where}: this is {what}, but alpha {float(alpha):g} was asked for; set model.alpha "
            f"(or --alpha) to {found['alpha']:g} or give a file of alpha {float(alpha):g}"
        )


def import_weights(
    tflite: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    base: str | None = None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Convert a MobileNet .tflite into a keras.applications include_top=False `.weights.h5` (atomic)."""
    from edgetpu_retrain.model import pretrained_convert
    from edgetpu_retrain.model.pretrained_tflite import read_mobilenet

    started = time.perf_counter()
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise UserError(
            f"--out {out}: the name must end in .weights.h5 (Keras loads weights files by suffix)"
        )
    mn = read_mobilenet(tflite)
    _check_request(
        {"base": mn.base, "version": mn.version, "alpha": mn.alpha}, mn.path, base=base, alpha=alpha
    )
    backbone, summary = pretrained_convert.convert_file(mn)
    pretrained_convert.save_weights(backbone, out)
    summary.update(
        weights=str(out.resolve()),
        sha256=sha256_file(tflite),
        converter_version=CONVERTER_VERSION,
        seconds=round(time.perf_counter() - started, 2),
    )
    return summary


def _cache_files(tflite: Path) -> tuple[Path, Path]:
    """The cached conversion of `tflite`: (`<sha256>-v<N>.weights.h5`, its `.json` summary)."""
    stem = f"{sha256_file(tflite)}-v{CONVERTER_VERSION}"
    return cache_dir() / f"{stem}.weights.h5", cache_dir() / f"{stem}.json"


def resolved_weights(base: str, alpha: float, weights: str | None) -> dict[str, str | None]:
    """What model.backbone_weights resolved to (train_result.json), without converting anything:
    `file` = the Keras weights file the backbone loads (the cached conversion for bundled / .tflite, the
    file itself for .h5/.keras; null for imagenet and random init), `source` = the .tflite converted."""
    source: Path | None = None
    if weights == BUNDLED:
        source = bundled_path(base, alpha)
    elif weights is not None and weights.endswith(".tflite"):
        source = Path(weights)
    if source is not None:
        return {"file": str(_cache_files(source)[0]) if source.is_file() else None, "source": str(source)}
    if weights in (None, "imagenet", BUNDLED):  # bundled here: no file for the alpha (random init)
        return {"file": None, "source": None}
    return {"file": str(Path(weights).resolve()), "source": None}


def cached_weights(
    tflite: str | os.PathLike[str], *, base: str | None = None, alpha: float | None = None
) -> dict[str, Any]:
    """The converted weights of `tflite` from the cache, converting (and caching) on first use.

    Returns the conversion summary with `weights` (the cached file) and `cached` (True when reused).
    """
    tflite = Path(tflite)
    if not tflite.is_file():
        raise UserError(f"{tflite}: MobileNet .tflite not found (model.backbone_weights); fix the path")
    folder = cache_dir()
    target, meta = _cache_files(tflite)
    if target.is_file() and meta.is_file():
        summary = read_json(meta)
        _check_request(summary, str(tflite), base=base, alpha=alpha)
        return {**summary, "weights": str(target), "cached": True}
    make_dir(folder, what="the weights cache", fix=f"set ${CACHE_ENV} to a writable folder")
    summary = import_weights(tflite, target, base=base, alpha=alpha)
    write_json(meta, summary)  # after the weights: a reader that finds both finds complete files
    return {**summary, "cached": False}


def backbone_weights_file(base: str, alpha: float, weights: str) -> str | None:
    """`bundled` or a MobileNet `.tflite` -> a cached Keras weights file (None: random init, warned)."""
    if weights == BUNDLED:
        path = bundled_path(base, alpha)
        if path is None:
            log.warning("%s", weights_note(base, alpha, weights))
            return None
    else:
        path = Path(weights)
    started = time.perf_counter()
    summary = cached_weights(path, base=base, alpha=alpha)
    log.info(
        "backbone weights: %s (%s MobileNet V%d alpha %g, %s in %.1f s) -> %s",
        path.name,
        "bundled ImageNet" if weights == BUNDLED else "local",
        summary["version"],
        summary["alpha"],
        "cached" if summary["cached"] else "converted",
        time.perf_counter() - started,
        summary["weights"],
    )
    return summary["weights"]


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tflite",
        required=True,
        help="Coral/TFLite MobileNet V1/V2 classifier or embedding extractor (uint8 or float)",
    )
    parser.add_argument("--out", required=True, help="Keras weights file to write (must end in .weights.h5)")
    parser.add_argument(
        "--base", choices=BASES, default=None, help="expected backbone (default: from the file)"
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="expected width multiplier (default: from the file)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    return import_weights(args.tflite, args.out, base=args.base, alpha=args.alpha)
