"""Airflow side, no TensorFlow here: `runners/` (how a step becomes a task), `drops` + `sensor` (which
labeled folder a run trains on), `params` (the trigger form), `templates` (the task arguments' Jinja)."""
