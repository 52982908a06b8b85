"""StringIntLabelMap `.pbtxt` files: read, write, generate, merge; the `labelmap` verb.

Format (what TF Object Detection API tools read and what we write)::

    item {
      id: 1
      name: 'cat'
      display_name: 'Cat'      # optional
    }

Reading accepts single or double quotes (with backslash escapes), `#` comments, any whitespace,
an optional `:` after `item` and optional `,`/`;` after fields. Ids must be exactly 1..N (no
duplicates, no gaps, nothing <= 0: the detector's class index is `id - 1`) and names unique;
every problem raises `UserError("<file>:<line>: <what>; <fix>")`.

Policies:
- `generate(names)`: sorted names, ids from 1.
- `merge(existing, found, append=...)`: existing ids never change. Names not in the map fail with
  one message listing them, unless `append`, which gives them max_id+1.. in sorted order.

Verb (`edgetpu-retrain labelmap ...`, see `--help`):
- `show FILE`                                   parse and print the classes
- `generate --annotations DIR [...] --out FILE` every class named in the VOC XMLs, sorted, ids 1..N
- `append --label-map FILE --annotations DIR [...] --out FILE`  add the new classes at the end
- `check --label-map FILE --annotations DIR [...]`               fail if the XMLs name new classes
Class names that differ from another only in case/spacing/'_'/'-' ('rbc' vs 'RBC') are treated as
misspellings of the most used spelling (or of the mapped name) and never added.
Last stdout line: `{"path", "classes": [{"id", "name"}...], "num_classes", "added", "misspellings"}`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgetpu_retrain.common import UserError, log, write_text

FIELDS = ("id", "name", "display_name")


@dataclass(frozen=True)
class LabelItem:
    id: int
    name: str
    display_name: str | None = None


# ---------------------------------------------------------------------------------------- parsing
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}:;,])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _tokenize(text: str, source: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            snippet = text[pos : pos + 20].split("\n")[0]
            raise UserError(
                f"{source}:{line}: unexpected text {snippet!r}; a label map holds only "
                "item { id: N name: 'x' } blocks (quote names, # starts a comment)"
            )
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "nl":
            line += 1
        elif kind not in ("ws", "comment"):
            tokens.append((kind, value, line))
        pos = match.end()
    return tokens


def parse_label_map(text: str, *, source: str = "<label map>") -> list[LabelItem]:
    """Parse .pbtxt text into items sorted by id; raise UserError naming source:line on any problem."""
    tokens = _tokenize(text, source)
    items: list[tuple[LabelItem, int]] = []
    i = 0

    def expect(kind: str, value: str | None, what: str) -> tuple[str, str, int]:
        nonlocal i
        if i >= len(tokens):
            last_line = tokens[-1][2] if tokens else 1
            raise UserError(
                f"{source}:{last_line}: file ends early, expected {what}; close every item {{ ... }} block"
            )
        tok = tokens[i]
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise UserError(
                f"{source}:{tok[2]}: expected {what}, found {tok[1]!r}; fix the syntax: item "
                f"{{ id: 1 name: 'cat' }}"
            )
        i += 1
        return tok

    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind != "ident" or value != "item":
            raise UserError(
                f"{source}:{line}: expected 'item', found {value!r}; a label map is a list of item {{ ... }} "
                "blocks"
            )
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        expect("punct", "{", "'{' after 'item'")
        fields: dict[str, object] = {}
        while i < len(tokens) and tokens[i][1] != "}":
            _, field, fline = expect("ident", None, "a field name (id, name, display_name)")
            if field not in FIELDS:
                raise UserError(
                    f"{source}:{fline}: unsupported field {field!r}; this tool reads only id, name and "
                    "display_name"
                )
            if field in fields:
                raise UserError(f"{source}:{fline}: field {field!r} given twice in one item; keep one")
            expect("punct", ":", f"':' after {field!r}")
            if i >= len(tokens):
                raise UserError(f"{source}:{fline}: file ends early, expected a value for {field!r}")
            vkind, vtext, vline = tokens[i]
            i += 1
            if field == "id":
                if vkind != "number" or not re.fullmatch(r"[-+]?\d+", vtext):
                    raise UserError(
                        f"{source}:{vline}: id must be an integer, found {vtext!r}; use id: 1, 2, 3 ..."
                    )
                fields["id"] = int(vtext)
            else:
                if vkind != "string":
                    raise UserError(
                        f"{source}:{vline}: {field} must be a quoted string, found {vtext!r}; write {field}: "
                        f"'{vtext}'"
                    )
                fields[field] = _unquote(vtext)
            if i < len(tokens) and tokens[i][1] in (",", ";"):
                i += 1
        expect("punct", "}", "'}' closing the item")
        if "id" not in fields or "name" not in fields:
            missing = " and ".join(f for f in ("id", "name") if f not in fields)
            raise UserError(f"{source}:{line}: item has no {missing}; every item needs id: N and name: '...'")
        name = str(fields["name"])
        if not name.strip() or name != name.strip():
            raise UserError(
                f"{source}:{line}: name {name!r} is empty or has leading/trailing spaces; fix the name"
            )
        display = fields.get("display_name")
        items.append((LabelItem(int(fields["id"]), name, None if display is None else str(display)), line))  # type: ignore[call-overload]
    _check_items([it for it, _ in items], source, {id(it): ln for it, ln in items})
    return sorted((it for it, _ in items), key=lambda it: it.id)


def _check_items(items: list[LabelItem], source: str, lines: dict[int, int] | None = None) -> None:
    lines = lines or {}

    def where(item: LabelItem) -> str:
        return f"{source}:{lines[id(item)]}" if id(item) in lines else source

    if not items:
        raise UserError(
            f"{source}: label map has no items; add item {{ id: 1 name: '...' }} blocks or generate one"
        )
    seen_ids: dict[int, LabelItem] = {}
    seen_names: dict[str, LabelItem] = {}
    for item in items:
        if item.id <= 0:
            raise UserError(
                f"{where(item)}: id {item.id} for {item.name!r} must be >= 1 (0 is the background class); "
                "number classes 1..N"
            )
        if item.id in seen_ids:
            raise UserError(
                f"{where(item)}: id {item.id} used twice ({seen_ids[item.id].name!r} and {item.name!r}); "
                "give each class its own id"
            )
        if item.name in seen_names:
            raise UserError(f"{where(item)}: name {item.name!r} listed twice; keep one item per class")
        seen_ids[item.id] = item
        seen_names[item.name] = item
    expected = set(range(1, len(items) + 1))
    if set(seen_ids) != expected:
        missing = sorted(expected - set(seen_ids))
        raise UserError(
            f"{source}: ids must be 1..{len(items)} without gaps (missing {missing}, have "
            f"{sorted(seen_ids)}); renumber the items"
        )


def read_label_map(path: str | os.PathLike[str]) -> list[LabelItem]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: label map not found; check the path or generate one with `edgetpu-retrain labelmap "
            "generate`"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc}); save the label map as UTF-8") from exc
    return parse_label_map(text, source=str(path))


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def format_label_map(items: Iterable[LabelItem]) -> str:
    items = sorted(items, key=lambda it: it.id)
    _check_items(items, "<label map>")
    blocks = []
    for item in items:
        lines = ["item {", f"  id: {item.id}", f"  name: {_quote(item.name)}"]
        if item.display_name is not None:
            lines.append(f"  display_name: {_quote(item.display_name)}")
        lines.append("}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def write_label_map(path: str | os.PathLike[str], items: Iterable[LabelItem]) -> Path:
    return write_text(path, format_label_map(items))


def generate(names: Iterable[str]) -> list[LabelItem]:
    """Sorted unique names with ids 1..N."""
    unique = sorted(set(names))
    if not unique:
        raise UserError("no class names found; label at least one object before generating a label map")
    return [LabelItem(i, name) for i, name in enumerate(unique, start=1)]


def new_names(existing: Iterable[LabelItem], found: Iterable[str]) -> list[str]:
    known = {it.name for it in existing}
    return sorted(set(found) - known)


def merge(
    existing: Iterable[LabelItem], found: Iterable[str], *, append: bool, source: str = "label map"
) -> list[LabelItem]:
    """Existing items unchanged; new names fail (listing them) unless `append` (ids max+1.., sorted)."""
    existing = sorted(existing, key=lambda it: it.id)
    added = new_names(existing, found)
    if not added:
        return existing
    if not append:
        raise UserError(
            f"{source}: the annotations use {len(added)} class(es) not in the label map: "
            f"{', '.join(repr(n) for n in added)}; add them with --append-labels (ids after the existing "
            "ones) "
            "or fix the class names in the XML files"
        )
    start = max((it.id for it in existing), default=0) + 1
    return existing + [LabelItem(start + k, name) for k, name in enumerate(added)]


def canonical_names(counts: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Split class names into (canonical, variants): names equal ignoring case/spaces/'_'/'-' are one
    class spelled several ways; the most used spelling (then the first in sort order) is canonical."""
    from edgetpu_retrain.data.annotations.boxes import normalize_class

    groups: dict[str, list[str]] = {}
    for name in counts:
        groups.setdefault(normalize_class(name), []).append(name)
    chosen, variants = [], []
    for group in groups.values():
        ordered = sorted(group, key=lambda n: (-counts[n], n))
        chosen.append(ordered[0])
        variants.extend(ordered[1:])
    return sorted(chosen), sorted(variants)


def to_json(items: Iterable[LabelItem]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for it in sorted(items, key=lambda it: it.id):
        entry: dict[str, object] = {"id": it.id, "name": it.name}
        if it.display_name is not None:
            entry["display_name"] = it.display_name
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------- verb
def _scan_class_names(dirs: list[str]) -> Counter[str]:
    """Boxes per class name in every *.xml in `dirs` (parsed safely; unreadable XMLs are logged, not
    fatal)."""
    from edgetpu_retrain.common import require_dir
    from edgetpu_retrain.data.annotations import voc

    names: Counter[str] = Counter()
    for d in dirs:
        folder = require_dir(d, what="annotations")
        for xml in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".xml"):
            ann, issues = voc.read_voc(xml)
            if ann is None:
                log.warning("%s: skipped (%s)", xml, issues[0].message if issues else "unreadable")
                continue
            names.update(o.name for o in ann.objects if o.name)
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Read, generate or extend a StringIntLabelMap .pbtxt (item { id: N name: '...' }).\n"
        "Ids are 1..N; existing ids never change; new classes get max_id+1.. in sorted order."
    )
    parser.epilog = "Format" + __doc__.split("\nFormat", 1)[1]
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="parse a label map and print its classes")
    show.add_argument("file", help="label map .pbtxt")
    gen = sub.add_parser(
        "generate", help="label map from the class names in VOC XML files (sorted, ids from 1)"
    )
    gen.add_argument(
        "--annotations", action="append", required=True, metavar="DIR", help="folder of VOC XML (repeatable)"
    )
    gen.add_argument("--out", required=True, metavar="FILE", help="label map to write")
    app = sub.add_parser(
        "append", help="add classes found in the XMLs but missing from FILE (ids max+1.., sorted)"
    )
    app.add_argument(
        "--label-map",
        required=True,
        metavar="FILE",
        help="existing label map (not modified unless --out is the same path)",
    )
    app.add_argument(
        "--annotations", action="append", required=True, metavar="DIR", help="folder of VOC XML (repeatable)"
    )
    app.add_argument("--out", required=True, metavar="FILE", help="label map to write")
    chk = sub.add_parser("check", help="fail (exit 2) if the XMLs name classes missing from the label map")
    chk.add_argument("--label-map", required=True, metavar="FILE")
    chk.add_argument("--annotations", action="append", required=True, metavar="DIR")


def _found_names(dirs: list[str], existing: Iterable[LabelItem] = ()) -> tuple[list[str], list[str]]:
    """(names to use, case/spacing variants left out); existing names win over any spelling in the data."""
    counts = _scan_class_names(dirs)
    for item in existing:
        counts[item.name] += 1 << 40
    names, variants = canonical_names(counts)
    for v in variants:
        log.warning(
            "class %r differs from another class only in case/spacing: treated as a misspelling, not added", v
        )
    return names, variants


def run(args: argparse.Namespace) -> dict[str, object]:
    added: list[str] = []
    variants: list[str] = []
    if args.action == "show":
        path = Path(args.file)
        items = read_label_map(path)
    elif args.action == "generate":
        names, variants = _found_names(args.annotations)
        items = generate(names)
        path = write_label_map(args.out, items)
    elif args.action == "append":
        existing = read_label_map(args.label_map)
        found, variants = _found_names(args.annotations, existing)
        added = new_names(existing, found)
        items = merge(existing, found, append=True, source=str(args.label_map))
        path = write_label_map(args.out, items)
    elif args.action == "check":
        path = Path(args.label_map)
        existing = read_label_map(path)
        found, variants = _found_names(args.annotations, existing)
        items = merge(existing, found, append=False, source=str(path))
    else:  # pragma: no cover - argparse restricts choices
        raise UserError(f"unknown action {args.action!r}")
    return {
        "path": os.path.abspath(path),
        "classes": to_json(items),
        "num_classes": len(items),
        "added": added,
        "misspellings": variants,
    }
