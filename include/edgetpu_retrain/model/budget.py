"""A wall-clock budget for `train` (`--max-seconds`, or `train.max_seconds`): the run is sized to it.

Like Ultralytics' `time=`, but the learning-rate schedule follows: the clock starts at this process's
first training step (its tracing included; building the model before and the last checkpoint write
after are outside). Once MIN_TIMED_STEPS steps after the first are timed (tracing excluded), and
again at 5%, 25% and 50% of the budget left after the first step, the steady seconds per step so far
give the steps that fit:
the plan becomes min(train.steps, steps done + remaining time / seconds per step), never below the
steps done, and the schedule's `optim.ScheduleLength` (total, and an auto warm-up with it) is re-sized
to it, so the cosine reaches 0 at the end of the budget instead of being cut mid-way. The budget is
also a hard cap: no step starts once it is used up (at least 2 steps run), and the run ends there with
its checkpoint (`stopped_by` "time budget" either way; "steps" when train.steps fit).

The plan is kept in OUT/checkpoints/budget.json (`steps_planned`, `max_seconds`, `steps`, the
estimates, and `steps_done` + `stopped_by` once the run ended). Resume: a run that finds it continues
the same schedule (total `steps_planned`, no re-sizing; it still stops at its own --max-seconds), and
one that already ended there has nothing to do. `--no-resume` deletes it with the checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgetpu_retrain.common import UserError, log, read_json, write_json

PLAN_FILE = "budget.json"  # in OUT/checkpoints/
ESTIMATE_AT = (0.05, 0.25, 0.5)  # re-estimate at these fractions of the budget left after the first step
MIN_TIMED_STEPS = 5  # steps after the first (tracing) before the first estimate
MIN_STEPS = 2  # the hard cap never stops a run before this many steps of this process


def plan_path(out: Path) -> Path:
    return out / "checkpoints" / PLAN_FILE


def check_max_seconds(max_seconds: float | None, *, where: str = "--max-seconds") -> float | None:
    if max_seconds is not None and not max_seconds > 0:
        raise UserError(f"{where} {max_seconds:g}: must be > 0 (seconds of training wall time), or omitted")
    return None if max_seconds is None else float(max_seconds)


def load_plan(out: Path) -> dict[str, Any] | None:
    """The stored plan of a budgeted run in OUT (None: none, or unreadable: sized afresh)."""
    path = plan_path(out)
    if not path.is_file():
        return None
    try:
        plan = read_json(path)
        int(plan["steps_planned"])
    except (UserError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); the time budget sizes the run afresh", path, exc)
        return None
    return plan


def resume_target(plan: dict[str, Any] | None, cap: int) -> int:
    """The step count a run trains to: the stored plan's end (where an ended run stopped), else cap."""
    if plan is None:
        return cap
    if plan.get("stopped_by") and plan.get("steps_done") is not None:
        return int(plan["steps_done"])
    return int(plan["steps_planned"])


class Budget:
    """The time budget of one train process: when to re-estimate, the plan, the hard cap."""

    def __init__(
        self,
        *,
        max_seconds: float | None,
        cap: int,
        start: int,
        length: Any,
        stored: dict[str, Any] | None,
        out: Path,
    ) -> None:
        self.max_seconds, self.cap, self.start, self.length = max_seconds, cap, start, length
        self.fixed = stored is not None  # a resumed plan keeps its schedule
        self.out = out
        self.estimates: list[dict[str, Any]] = list((stored or {}).get("estimates", []))
        self.pending = list(ESTIMATE_AT)
        self.started = self.timed_from = time.perf_counter()
        self.first_s = 0.0  # the first step (tracing): the estimate points are spread over the rest
        self.cut = False

    def begin(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def used_up(self, done: int) -> bool:
        """Hard cap: the budget is spent, so the step after `done` does not start."""
        if self.max_seconds is None or done < self.start + MIN_STEPS or self.elapsed() < self.max_seconds:
            return False
        self.cut = True
        log.info(
            "time budget of %.0f s used up at step %d (of %d planned)", self.max_seconds, done, self.planned
        )
        return True

    @property
    def planned(self) -> int:
        return self.length.steps

    def step_done(self, n: int) -> None:
        """After step n: start timing after the first step; re-size the plan when an estimate is due."""
        if n == self.start + 1:
            self.timed_from, self.first_s = time.perf_counter(), self.elapsed()
            return
        if self.max_seconds is None or self.fixed or n - self.start - 1 < MIN_TIMED_STEPS:
            return
        elapsed = self.elapsed()
        rest = max(self.max_seconds - self.first_s, 0.0)
        due = [f for f in self.pending if elapsed >= self.first_s + f * rest]
        if self.estimates and not due:  # the first estimate comes after MIN_TIMED_STEPS
            return
        self.pending = [f for f in self.pending if f not in due]
        self._resize(n, elapsed)

    def _resize(self, n: int, elapsed: float) -> None:
        from edgetpu_retrain.model.optim import resolve_warmup

        budget_s = float(self.max_seconds or 0.0)
        sec_per_step = (time.perf_counter() - self.timed_from) / (n - self.start - 1)
        fit = n + int(max(budget_s - elapsed, 0.0) / sec_per_step) if sec_per_step > 0 else self.cap
        planned = max(n, min(self.cap, fit))
        self.estimates.append(
            {
                "step": n,
                "elapsed_s": round(elapsed, 2),
                "sec_per_step": round(sec_per_step, 4),
                "steps_planned": planned,
            }
        )
        if planned != self.planned:
            log.info(
                "time budget %.0f s: %.3f s/step after %d steps (%.0f s used): %d steps planned "
                "(train.steps %d); learning-rate schedule re-sized",
                budget_s,
                sec_per_step,
                n,
                elapsed,
                planned,
                self.cap,
            )
            self.length.resize(planned)
            resolve_warmup(self.length.train, planned)  # warns when a set warm-up now takes most of it
        self.save()

    def stopped_by(self, done: int) -> str:
        return "time budget" if self.cut or done < self.cap else "steps"

    def save(self, *, done: int | None = None) -> None:
        """Write the plan (once the run ended, with steps_done and stopped_by). Unbudgeted: nothing."""
        if self.max_seconds is None and not self.fixed:
            return
        plan: dict[str, Any] = {
            "steps_planned": self.planned,
            "max_seconds": self.max_seconds,
            "steps": self.cap,
            "estimates": self.estimates,
            "steps_done": done,
            "stopped_by": self.stopped_by(done) if done is not None else None,
        }
        write_json(plan_path(self.out), plan)

    def summary(self, done: int) -> dict[str, Any]:
        """The train_result.json keys of the budget."""
        return {
            "max_seconds": self.max_seconds,
            "steps_planned": self.planned,
            "steps_done": int(done),
            "stopped_by": self.stopped_by(done),
        }
