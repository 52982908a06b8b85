"""Evaluate stage: COCO metrics of a SavedModel or .tflite on a dataset split."""
