"""The promotion floor (`--min-map50`, the DAG's `min_map50`): nothing below it is promoted, the first too."""

from __future__ import annotations

import pytest

from edgetpu_retrain.release.gate import Thresholds, accuracy_decision


def decide(new: float, current: float | None, floor: float) -> tuple[bool, str]:
    return accuracy_decision(
        new=new, current=current, current_version="0001" if current is not None else None,
        metric="map50", tolerance=0.0, floor=floor,
    )  # fmt: skip


def test_first_model_below_the_floor_is_not_promoted() -> None:
    passed, reason = decide(0.0, None, 0.1)
    assert not passed and "below the promotion floor 0.1" in reason


def test_better_than_current_but_below_the_floor_is_not_promoted() -> None:
    assert not decide(0.05, 0.01, 0.1)[0]


@pytest.mark.parametrize(("new", "current"), [(0.1, None), (0.45, None), (0.45, 0.4)])
def test_at_or_above_the_floor_the_usual_rules_decide(new: float, current: float | None) -> None:
    assert decide(new, current, 0.1)[0]


def test_default_is_no_floor() -> None:
    assert Thresholds().floor == 0.0 and decide(0.0, None, Thresholds().floor)[0]
