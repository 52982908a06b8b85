"""Data stage: fetch, validate and snapshot LabelImg folders into TFRecords."""
