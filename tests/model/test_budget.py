"""The training time budget (train --max-seconds / train.max_seconds, model/budget.py): the plan's
arithmetic on a fake clock, the re-sizable schedule, the config key, and real `train` runs of a tiny
detector (MobileNet V1 alpha 0.25, 96x96) on 8 real BCCD photos (tests/fixtures) with a tiny budget."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

tf = pytest.importorskip("tensorflow")
from testdata import TINY_TRAIN_SETS, copy_labelimg_folder, train_only_snapshot  # noqa: E402

from edgetpu_retrain import cli  # noqa: E402
from edgetpu_retrain.common import UserError  # noqa: E402
from edgetpu_retrain.model import budget, config, optim, train  # noqa: E402

SETS = [
    *TINY_TRAIN_SETS,
    "train.learning_rate=0.01",
    "train.warmup_steps=auto",
    "train.schedule=cosine",
    "train.checkpoint_every=1000",
    "train.steps=100000",
]
PEAK = 0.01


class Clock:
    """time.perf_counter for budget.py, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(budget.time, "perf_counter", fake)
    return fake


def _run(b: budget.Budget, clock: Clock, *, first_s: float, step_s: float) -> int:
    """Drive a Budget as train's loop does: the first step takes first_s, the others step_s."""
    n = b.start
    b.begin()
    while n < b.planned and not b.used_up(n):
        n += 1
        clock.now += first_s if n == b.start + 1 else step_s
        b.step_done(n)
    return n


def test_plan_is_resized_to_the_budget_and_never_below_the_steps_done(clock, tmp_path) -> None:
    length = optim.ScheduleLength(config.TrainConfig(), 100000)
    b = budget.Budget(max_seconds=100.0, cap=100000, start=0, length=length, stored=None, out=tmp_path)
    done = _run(b, clock, first_s=10.0, step_s=0.5)
    # 10 s tracing, then 0.5 s/step: 180 steps fit; the plan ends there and the schedule with it
    assert done == b.planned == length.steps == 181
    assert float(length.warmup.numpy()) == optim.warmup_length(length.train, 181) == 18  # auto follows
    # first estimate after MIN_TIMED_STEPS steps past the first, then at 5%, 25% and 50% of the 90 s left
    # after the first step (14.5 s, 32.5 s, 55 s)
    assert [e["step"] for e in b.estimates] == [1 + budget.MIN_TIMED_STEPS, 10, 46, 91]
    assert b.stopped_by(done) == "time budget"
    b.save(done=done)
    plan = json.loads(budget.plan_path(tmp_path).read_text())
    assert plan["steps_planned"] == 181 and plan["stopped_by"] == "time budget" and plan["steps_done"] == 181
    assert budget.resume_target(plan, 100000) == 181  # ended: a re-run has nothing to do

    # a slower machine after the first estimate: the hard cap stops it, the plan never drops below done
    length = optim.ScheduleLength(config.TrainConfig(), 100000)
    b = budget.Budget(max_seconds=100.0, cap=100000, start=0, length=length, stored=None, out=tmp_path)
    b.begin()
    for n in range(1, 8):
        clock.now += 10.0 if n == 1 else 0.5
        b.step_done(n)
    assert b.planned == 181
    clock.now += 200.0
    b.step_done(8)
    assert b.planned == 8 and b.used_up(8) and b.stopped_by(8) == "time budget"


def test_budget_larger_than_the_steps_keeps_train_steps(clock, tmp_path) -> None:
    length = optim.ScheduleLength(config.TrainConfig(), 50)
    b = budget.Budget(max_seconds=3600.0, cap=50, start=0, length=length, stored=None, out=tmp_path)
    assert _run(b, clock, first_s=5.0, step_s=0.1) == 50 and b.stopped_by(50) == "steps"
    no_budget = budget.Budget(max_seconds=None, cap=50, start=0, length=length, stored=None, out=tmp_path)
    assert _run(no_budget, clock, first_s=5.0, step_s=60.0) == 50 and not no_budget.estimates


def test_a_resumed_plan_keeps_its_schedule(clock, tmp_path) -> None:
    stored = {"steps_planned": 120, "estimates": [{"step": 6}], "steps_done": None, "stopped_by": None}
    assert budget.resume_target(stored, 100000) == 120
    length = optim.ScheduleLength(config.TrainConfig(), 120)
    b = budget.Budget(max_seconds=100.0, cap=100000, start=40, length=length, stored=stored, out=tmp_path)
    assert _run(b, clock, first_s=10.0, step_s=0.01) == 120 and b.estimates == [{"step": 6}]


def test_schedule_total_is_a_variable_and_auto_warmup_follows() -> None:
    cfg = config.TrainConfig(learning_rate=PEAK, schedule="cosine", warmup_steps="auto")
    length = optim.ScheduleLength(cfg, 1000)
    schedule = optim.make_schedule(SimpleNamespace(train=cfg), length)
    assert float(length.warmup.numpy()) == 100
    assert math.isclose(float(schedule(100)), PEAK, rel_tol=1e-5)
    length.resize(200)
    assert float(length.warmup.numpy()) == 20 and length.steps == 200
    assert float(schedule(200)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(110)) == pytest.approx(0.5 * PEAK, rel=1e-4)  # half-way through the cosine
    assert float(schedule(10)) == pytest.approx(PEAK * (0.1 + 0.9 * 10 / 20), rel=1e-5)
    # a plain number still works, and gives the same values
    fixed = optim.make_schedule(SimpleNamespace(train=cfg), 200)
    assert [float(fixed(s)) for s in (0, 10, 110, 200)] == [float(schedule(s)) for s in (0, 10, 110, 200)]


@pytest.mark.parametrize("value", [-5, 0, "soon"])
def test_config_key_refuses_non_positive_budgets(dataset_dir, value) -> None:
    with pytest.raises(UserError, match=r"'train.max_seconds'; allowed: a number > 0, or null"):
        config.render_config(dataset_dir, "mobilenet_v1_ssd", [("train.max_seconds", value)])


def test_rendered_config_has_the_key_with_its_comment(dataset_dir) -> None:
    text, cfg = config.render_config(dataset_dir, "mobilenet_v1_ssd")
    lines = text.splitlines()
    at = lines.index("  max_seconds: null")
    assert lines[at - 1].startswith("  # wall-clock training budget in seconds")
    assert cfg.train.max_seconds is None
    _, cfg = config.render_config(dataset_dir, "mobilenet_v1_ssd", [("train.max_seconds", 900)])
    assert cfg.train.max_seconds == 900.0


def test_cli_refuses_a_non_positive_max_seconds(dataset_dir, tmp_path, capsys) -> None:
    text, _ = config.render_config(dataset_dir, "mobilenet_v1_ssd", config.parse_set(SETS))
    (tmp_path / "config.yaml").write_text(text)
    argv = ["train", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--max-seconds", "0"]) == 2
    assert "--max-seconds 0: must be > 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, bccd_dir) -> Path:
    root = tmp_path_factory.mktemp("budget")
    images = copy_labelimg_folder(bccd_dir, root / "labelimg", first=8)
    return train_only_snapshot(images, root)


def _lrs(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / train.METRICS_FILE).read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in rows]


@pytest.mark.slow
def test_train_stops_at_the_budget_with_the_schedule_decayed_and_resumes_the_plan(dataset_dir, tmp_path):
    sets = config.parse_set([*SETS, "train.max_seconds=20"])
    cfg = config.render_config(dataset_dir, "mobilenet_v1_ssd", sets)[1]
    out = tmp_path / "run"
    # the config's budget; tracing the first step takes ~5-15 s on the shared 2 cores, 20 s leaves steps
    result = train.train(cfg, out)
    assert result["stopped_by"] == "time budget" and result["max_seconds"] == 20.0
    assert 1 + budget.MIN_TIMED_STEPS < result["steps_done"] <= result["steps_planned"] < cfg.train.steps
    assert result["backbone_weights"] is None and result["backbone_weights_file"] is None
    plan = json.loads(budget.plan_path(out).read_text())
    assert plan["estimates"] and plan["steps_planned"] == result["steps_planned"]
    lrs = _lrs(out)
    assert lrs[-1][0] == result["steps_done"]
    assert lrs[-1][1] <= 0.15 * PEAK  # the cosine ran (almost) to its end (0.15 x peak at 75% of it)
    assert max(lr for _, lr in lrs) > 0.5 * PEAK
    assert json.loads((out / train.RESULT_FILE).read_text()) == result

    # the run ended: running it again does nothing
    assert train.train(cfg, out) == result

    # killed 3 steps before the end of its plan (the plan as it was then): the resumed run trains to the
    # stored plan with the same schedule (no re-sizing), its lr reaching 0 at the planned end
    done = result["steps_done"]
    plan.update(steps_planned=done + 3, steps_done=None, stopped_by=None)
    budget.plan_path(out).write_text(json.dumps(plan))
    resumed = train.train(cfg, out, max_seconds=60.0)  # the option wins over train.max_seconds
    assert resumed["steps_done"] == resumed["steps_planned"] == done + 3 and resumed["max_seconds"] == 60.0
    assert resumed["stopped_by"] == "time budget"  # the plan came from the budget
    assert json.loads(budget.plan_path(out).read_text())["estimates"] == plan["estimates"]
    assert _lrs(out)[-1] == (done + 3, 0.0)


def test_resolved_backbone_weights_name_the_files_train_loaded(tmp_path, monkeypatch) -> None:
    from edgetpu_retrain.common import sha256_file
    from edgetpu_retrain.model import pretrained

    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    bundled = pretrained.bundled_path("mobilenet_v1_ssd", 0.5)
    assert bundled is not None and bundled.is_file()
    assert pretrained.resolved_weights("mobilenet_v1_ssd", 0.5, "bundled") == {
        "file": str(
            tmp_path / "cache" / f"{sha256_file(bundled)}-v{pretrained.CONVERTER_VERSION}.weights.h5"
        ),
        "source": str(bundled),
    }
    nothing = {"file": None, "source": None}
    assert pretrained.resolved_weights("mobilenet_v1_ssd", 0.25, "bundled") == nothing  # random init, warned
    assert pretrained.resolved_weights("mobilenet_v2_ssd", 1.0, "imagenet") == nothing
    assert pretrained.resolved_weights("mobilenet_v2_ssd", 1.0, None) == nothing
    assert pretrained.resolved_weights("mobilenet_v2_ssd", 1.0, str(tmp_path / "b.h5"))["file"] == str(
        tmp_path / "b.h5"
    )
