"""Airflow side: step runners (operators), drop discovery and DAG params. No TensorFlow here."""
