"""edgetpu-retrain: LabelImg folders in, a Coral Edge TPU detector out, one CLI verb per pipeline step."""

__version__ = "0.1.0"
