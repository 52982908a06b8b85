"""The trigger-form params' helpers (pipeline/params.py) that the DAG's templates use."""

from __future__ import annotations

import pytest

pytest.importorskip("airflow")

from edgetpu_retrain.pipeline.params import config_sets, max_seconds  # noqa: E402


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        (None, ""),
        ("", ""),
        ("None", ""),
        (15, "900"),
        (0.5, "30"),
        (2.25, "135"),
        (1440, "86400"),
        (7 * 24 * 60, "604800"),
    ],
)
def test_max_seconds_filter_turns_the_budget_param_into_seconds(minutes, expected) -> None:
    assert max_seconds(minutes) == expected


def test_the_budget_param_is_not_a_config_override() -> None:
    # train_max_minutes reaches train as --max-seconds, never as a render-config --set
    assert config_sets({"train_max_minutes": 15, "steps": 100}) == {"train.steps": 100}
