"""Reading users' data files with errors that name the file, the line and the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from incentivize.errors import IncentivizeError, describe


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows of a JSONL file as `(line_number, object)`; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise IncentivizeError(f"data file {path} does not exist" if not path.exists() else f"data path {path} is not a file")
    rows = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise IncentivizeError(f"cannot read data file {path}: {describe(err)}") from None
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise IncentivizeError(f"{path}:{number}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                   f"{err.start + 1}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise IncentivizeError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(row, dict):
            raise IncentivizeError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise IncentivizeError(f"data file {path} has no rows: write one JSON object per line")
    return rows


def field_text(path: Path, number: int, row: dict[str, Any], name: str, option: str) -> str:
    """`row[name]` as text, or an error naming the line and the fields the row does have."""
    if name not in row:
        fields = ", ".join(sorted(row)) or "none"
        raise IncentivizeError(f"{path}:{number}: row has no field {name!r} (it has: {fields}); set {option}")
    value = row[name]
    if isinstance(value, (dict, list)) or value is None:
        raise IncentivizeError(f"{path}:{number}: field {name!r} must be text or a number, got {type(value).__name__}")
    return str(value)


def in_split(text: str, split: str, holdout: float) -> bool:
    """Whether a file task's row with question `text` belongs to `split` when a share `holdout` of the questions (by
    a hash of their text, so the split does not depend on the file's order) is held out as the test split. With
    `holdout` 0 both splits are the whole file.

    >>> in_split("What is 2 + 2?", "train", 0.0) and in_split("What is 2 + 2?", "test", 0.0)
    True
    >>> [in_split(f"q{i}", "test", 0.25) for i in range(200)].count(True)  # about a quarter
    55
    """
    if holdout <= 0:
        return True
    held_out = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF < holdout
    return held_out == (split == "test")


def check_holdout(holdout: float) -> float:
    """A task's `holdout` option, checked."""
    if not 0.0 <= holdout < 1.0:
        raise IncentivizeError(f"task option holdout must be a share in [0, 1), got {holdout}")
    return float(holdout)
