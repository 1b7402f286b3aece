"""The files a training run leaves in its folder (args.json, results.json, history.jsonl), read back for model cards
and reports: one strict reader, so a corrupt file is named the same way wherever it is read."""

import json
import math
from pathlib import Path


class CorruptRunFile(ValueError):
    """A run file that exists but is not what the run writes."""


def read_json(path: str | Path) -> dict | None:
    """The JSON object in `path`; None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CorruptRunFile(f"corrupt {path.name} ({error})") from None
    if not isinstance(value, dict):
        raise CorruptRunFile(f"corrupt {path.name} (not a JSON object)")
    return value


def read_history(path: str | Path) -> list[dict]:
    """history.jsonl's rows, one per evaluation, each with a numeric epoch and top-1; [] when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorruptRunFile(f"corrupt {path.name} line {number} ({error})") from None
        if not isinstance(row, dict) or not all(is_number(row.get(key)) for key in ("epoch", "top1")):
            raise CorruptRunFile(f"{path.name} line {number} has no numeric epoch and top1")
        rows.append(row)
    return rows


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
