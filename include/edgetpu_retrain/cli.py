"""`edgetpu-retrain <verb>`: one verb per pipeline step.

Verb modules are imported only when their verb runs, so `--help` and light steps never pay for
TensorFlow. Each verb module defines `add_arguments(parser)` and `run(args) -> dict`; the dict is
printed as the last stdout line (one JSON object) for XCom.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from edgetpu_retrain.common import EXIT_NOTHING_TO_DO, NothingToDo, UserError, result_line

# verb -> (module, one-line help). The only place that lists the steps.
VERBS: dict[str, tuple[str, str]] = {
    "download": ("edgetpu_retrain.data.download", "fetch images listed in a URL manifest into a folder"),
    "validate": ("edgetpu_retrain.data.validate", "check LabelImg VOC XML + images; per-file report"),
    "labelmap": ("edgetpu_retrain.data.labelmap", "read, write or generate a StringIntLabelMap .pbtxt"),
    "build-dataset": ("edgetpu_retrain.data.dataset", "CSV, seeded split and sharded TFRecords"),
    "demo-data": ("edgetpu_retrain.data.demo", "draw the built-in shapes dataset (VOC XML)"),
    "render-config": ("edgetpu_retrain.model.config", "render the training config from a base model"),
    "import-weights": (
        "edgetpu_retrain.model.pretrained",
        "convert a Coral/TFLite MobileNet into Keras backbone weights",
    ),
    "train": ("edgetpu_retrain.model.train", "train the SSD detector (resumable)"),
    "export": ("edgetpu_retrain.export.saved_model", "export a checkpoint as a SavedModel"),
    "tflite": ("edgetpu_retrain.export.convert", "full-int8 TFLite with TFLite_Detection_PostProcess"),
    "edgetpu": ("edgetpu_retrain.export.edgetpu", "Edge TPU pre-flight check and compile"),
    "evaluate": ("edgetpu_retrain.evaluate.coco", "COCO mAP of a SavedModel or .tflite on a split"),
    "promote": ("edgetpu_retrain.release.gate", "promote the model if it beats the current one"),
    "report": ("edgetpu_retrain.release.report", "write the run report"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetpu-retrain",
        description="Retrain an SSD MobileNet detector for the Coral Edge TPU, one step per verb.",
        epilog="The last stdout line of every verb is one JSON object (artifact paths and counts).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (_, help_text) in VERBS.items():
        sub.add_parser(verb, help=help_text, add_help=False)
    return parser


def build_verb_parser(verb: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    module_name, help_text = VERBS[verb]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"edgetpu-retrain {verb}", description=help_text)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    module.add_arguments(parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    verb_index = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if verb_index is None:
        top.print_help(sys.stderr if argv else sys.stdout)
        return 0 if "-h" in argv or "--help" in argv else 2
    verb = argv[verb_index]
    if verb not in VERBS:
        top.error(f"unknown verb {verb!r}; choose one of: {', '.join(VERBS)}")
    parser, module = build_verb_parser(verb)
    args = parser.parse_args(argv[:verb_index] + argv[verb_index + 1 :])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = module.run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except NothingToDo as exc:
        print(f"nothing to do: {exc}", file=sys.stderr)
        print(result_line({"nothing_to_do": True, "reason": str(exc)}))
        return EXIT_NOTHING_TO_DO
    sys.stdout.flush()
    print(result_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
