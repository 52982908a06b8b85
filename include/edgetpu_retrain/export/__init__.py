"""Export stage: SavedModel, full-int8 TFLite, the .tflite reader and the Edge TPU step."""
