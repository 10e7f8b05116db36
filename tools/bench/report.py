"""Table writers of the benchmarks: aligned text, Markdown, CSV and JSON lines (one row per line, appended as
measured, so a killed run keeps every finished row)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

_ID_KEYS = ("op", "case", "model", "dtype", "backend", "compile", "mode")


def row_id(row: dict) -> str:
    """What identifies a measurement across runs (resuming an interrupted run skips the ids it has)."""
    return "|".join(str(row.get(k, "")) for k in _ID_KEYS)


def columns(rows, preferred=()) -> list[str]:
    """`preferred` columns that occur, then every other key in order of appearance."""
    cols = [c for c in preferred if any(c in r for r in rows)]
    for r in rows:
        cols += [c for c in r if c not in cols]
    return cols


def cell(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def text_table(rows, cols) -> str:
    cells = [list(cols)] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows, cols, headers: dict | None = None) -> str:
    """GitHub Markdown table; `headers` renames columns."""
    headers = headers or {}
    lines = ["| " + " | ".join(_md_escape(headers.get(c, c)) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_escape(cell(r.get(c))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(rows, path, cols=None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = cols or columns(rows)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    os.replace(tmp, path)


def append_jsonl(path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def read_jsonl(path) -> list[dict]:
    """Rows of a JSON-lines file; a line cut short by a kill is ignored."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
