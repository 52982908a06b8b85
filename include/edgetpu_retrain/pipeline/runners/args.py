"""A step's templated arguments and its JSON result: the same for every runner.

Arguments are templated (Jinja, rendered by Airflow right before the task runs) and may use three
helpers that expand after rendering: ``Opt(flag, value)`` (dropped when the value renders empty),
``Flag(flag, value)`` (a bare flag when the value renders true) and ``Repeat(flag, value)`` (the value
renders a JSON object -> ``flag k=v`` per key, or a JSON list -> ``flag item`` per item).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Opt(NamedTuple):
    """``flag value``, or nothing when the value renders empty (``""``/``None``)."""

    flag: str
    value: Any


class Flag(NamedTuple):
    """A bare ``flag`` when the value renders true (``True``/``true``/``1``/``yes``/``on``)."""

    flag: str
    value: Any


class Repeat(NamedTuple):
    """``flag k=v`` for each key of a JSON object (sorted), or ``flag item`` for each list item."""

    flag: str
    value: Any


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", "", "none", "null"}


def truthy(value: Any) -> bool:
    """Interpret a rendered template value as a boolean (Jinja renders Python bools as True/False)."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return value != 0
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean; use true or false")


def is_empty(value: Any) -> bool:
    """A rendered template value that means "no value" (None, "" or "None")."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def _scalar_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _parse_structured(value: Any, flag: str) -> Any:
    if isinstance(value, (Mapping, list, tuple)) or value is None:
        return value
    text = str(value).strip()
    if text in ("", "None", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{flag}: {text!r} is not JSON; render it with the `tojson` filter (e.g. "
            "'{{ params.config_overrides | tojson }}')"
        ) from exc


def _repeat(arg: Repeat) -> list[str]:
    items = _parse_structured(arg.value, arg.flag)
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [x for key in sorted(items) for x in (arg.flag, f"{key}={_scalar_text(items[key])}")]
    if isinstance(items, (list, tuple)):
        return [x for item in items for x in (arg.flag, _scalar_text(item))]
    raise ValueError(f"{arg.flag}: expected a JSON object or list, got {items!r}")


def flatten_args(args: Iterable[Any]) -> list[str]:
    """Turn rendered step arguments (strings, numbers, Opt/Flag/Repeat) into an argv list."""
    argv: list[str] = []
    for arg in args:
        if isinstance(arg, Opt):
            if not is_empty(arg.value):
                argv += [arg.flag, _scalar_text(arg.value)]
        elif isinstance(arg, Flag):
            if truthy(arg.value):
                argv.append(arg.flag)
        elif isinstance(arg, Repeat):
            argv += _repeat(arg)
        elif arg is None:
            raise ValueError("a step argument is None; use Opt(flag, value) for optional values")
        else:
            argv.append(_scalar_text(arg))
    return argv


def parse_result(value: Any, *, task_id: str = "step") -> Any:
    """The step's JSON line (a str from docker/local, already parsed by kubernetes) as a dict."""
    if value is None or isinstance(value, (dict, list)):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    lines = [line for line in str(value).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    try:
        return json.loads(last)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"task {task_id}: the last output line is not the step's JSON result ({last[:200]!r}); "
            "a step must print one JSON object as its last stdout line (docs/contracts.md)"
        ) from exc


def step_field(value: Any, task_id: str, key: str) -> Any:
    """Jinja filter: one key of an upstream step's result, with an error that names both."""
    result = parse_result(value, task_id=task_id)
    if not isinstance(result, dict):
        raise ValueError(
            f"task {task_id} has no JSON result in XCom (got {result!r}); did it run and succeed?"
        )
    if key not in result:
        raise KeyError(f"task {task_id}'s result has no key {key!r}; its keys: {sorted(result)}")
    return result[key]


def from_step(task_id: str, key: str) -> str:
    """The Jinja template for ``key`` of ``task_id``'s JSON result (needs the `step_field` filter)."""
    return f"{{{{ ti.xcom_pull(task_ids={task_id!r}) | step_field({task_id!r}, {key!r}) }}}}"


JINJA_FILTERS = {"step_field": step_field}
