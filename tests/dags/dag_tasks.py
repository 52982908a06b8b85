"""The DAG's tasks in dependency order: what the integrity and end-to-end tests both expect."""

TASKS = [
    "download",
    "wait_for_drop",
    "validate",
    "build_dataset",
    "render_config",
    "train",
    "export",
    "tflite",
    "edgetpu",
    "evaluate_float",
    "evaluate_int8",
    "promote",
    "model_asset",
    "report",
]
