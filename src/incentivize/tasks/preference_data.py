"""Preference data files in TRL's formats, checked line by line.

Paired (DPO, IPO, SimPO, ...): one JSON object per line with `prompt`, `chosen` and `rejected`. Each is
plain text, or a conversation: a list of `{"role", "content"}` messages, the prompt's ending with the
user's turn and each answer holding the assistant's turn.
Unpaired (KTO): `prompt`, `completion` and `label` (true or "good": desirable, false or "bad": undesirable).
Prompt-completion (SFT on a teacher's answers): `prompt` and `completion`.

A pair whose two answers are the same teaches nothing: it is dropped and counted. A missing field, an
answer that is neither text nor a conversation, and an empty answer stop with one line naming the file,
line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from incentivize.errors import IncentivizeError
from incentivize.tasks.data import read_jsonl

Messages = list[dict[str, str]]
LABELS = {"good": True, "bad": False}  # KTO labels as words, besides TRL's true and false


@dataclass(frozen=True)
class PreferencePair:
    prompt: Messages  # the conversation up to the answer (a plain prompt is one user message)
    chosen: str
    rejected: str


@dataclass(frozen=True)
class JudgedAnswer:
    prompt: Messages
    completion: str
    desirable: bool


def load_preference_pairs(path: str | Path) -> tuple[list[PreferencePair], int]:
    """The pairs of `path`, and how many were dropped because chosen and rejected were the same."""
    path = Path(path)
    pairs, identical = [], 0
    for number, row in read_jsonl(path):
        prompt = _prompt(path, number, row)
        chosen, rejected = (_answer(path, number, row, name) for name in ("chosen", "rejected"))
        if chosen == rejected:
            identical += 1
            continue
        pairs.append(PreferencePair(prompt, chosen, rejected))
    if not pairs:
        raise IncentivizeError(f"{path}: every pair has the same chosen and rejected answer; nothing to learn from")
    return pairs, identical


def load_judged_answers(path: str | Path) -> list[JudgedAnswer]:
    """The unpaired rows of `path` (KTO): prompt, completion and a true/false `label`."""
    path = Path(path)
    rows = []
    for number, row in read_jsonl(path):
        given = row.get("label")
        label = LABELS.get(given) if isinstance(given, str) else given
        if not isinstance(label, bool):
            raise IncentivizeError(f"{path}:{number}: field 'label' must be true or \"good\" (desirable), false or "
                                   f"\"bad\" (undesirable), got {given!r}")
        rows.append(JudgedAnswer(_prompt(path, number, row), _answer(path, number, row, "completion"), label))
    if len({r.desirable for r in rows}) < 2:
        raise IncentivizeError(f"{path}: KTO needs desirable and undesirable answers; every label is "
                               f"{rows[0].desirable}")
    return rows


def load_completions(path: str | Path) -> list[tuple[Messages, str]]:
    """The prompt-completion rows of `path` (TRL's format for SFT): each prompt as messages, and its answer."""
    path = Path(path)
    return [(_prompt(path, number, row), _answer(path, number, row, "completion")) for number, row in read_jsonl(path)]


def _prompt(path: Path, number: int, row: dict[str, Any]) -> Messages:
    if "prompt" not in row:
        raise IncentivizeError(f"{path}:{number}: row has no field 'prompt' (it has: {', '.join(sorted(row)) or 'none'})")
    value = row["prompt"]
    if isinstance(value, str):
        if not value.strip():
            raise IncentivizeError(f"{path}:{number}: field 'prompt' is empty")
        return [{"role": "user", "content": value}]
    return _messages(path, number, "prompt", value)


def _answer(path: Path, number: int, row: dict[str, Any], name: str) -> str:
    if name not in row:
        raise IncentivizeError(f"{path}:{number}: row has no field {name!r} (it has: {', '.join(sorted(row)) or 'none'})")
    value = row[name]
    if isinstance(value, list):  # a conversation: the assistant's turn is the answer
        turns = [m["content"] for m in _messages(path, number, name, value) if m["role"] == "assistant"]
        if len(turns) != 1:
            raise IncentivizeError(f"{path}:{number}: field {name!r} must hold one assistant message, "
                                   f"found {len(turns)}")
        value = turns[0]
    if not isinstance(value, str):
        raise IncentivizeError(f"{path}:{number}: field {name!r} must be text or a list of messages, "
                               f"got {type(value).__name__}")
    if not value.strip():
        raise IncentivizeError(f"{path}:{number}: field {name!r} is empty; drop the row or give the answer")
    return value


def _messages(path: Path, number: int, name: str, value: Any) -> Messages:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )
    if not ok:
        raise IncentivizeError(f"{path}:{number}: field {name!r} must be text or a non-empty list of "
                               '{"role": ..., "content": ...} messages')
    return [{"role": m["role"], "content": m["content"]} for m in value]
