"""A user's own JSONL file: one problem per line, with a prompt field and an answer field."""

from __future__ import annotations

from pathlib import Path

from incentivize.errors import IncentivizeError
from incentivize.tasks.base import ANSWER_INSTRUCTION, Example, Task
from incentivize.tasks.data import check_holdout, field_text, in_split, read_jsonl
from incentivize.tasks.gsm8k import gold_answer


class JsonlTask(Task):
    """Rows `{prompt_field: ..., answer_field: ...}`; every other field reaches reward functions."""

    name = "jsonl"

    def __init__(
        self,
        data: str | None = None,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        instruction: str = ANSWER_INSTRUCTION,
        holdout: float = 0.0,
    ) -> None:
        if data is None:
            raise IncentivizeError("the jsonl task needs --data pointing at a JSONL file")
        self.path = Path(data)
        self.prompt_field, self.answer_field, self.instruction = prompt_field, answer_field, instruction
        self.holdout = check_holdout(holdout)

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        rows = read_jsonl(self.path)
        out: list[Example] = []
        for number, row in rows:
            if limit is not None and len(out) >= limit:
                break
            prompt = field_text(self.path, number, row, self.prompt_field,
                                "--prompt-field (train: task_options.prompt_field)")
            if not in_split(prompt, split, self.holdout):
                continue
            answer = field_text(self.path, number, row, self.answer_field,
                                "--answer-field (train: task_options.answer_field)")
            if not answer.strip():
                raise IncentivizeError(f"{self.path}:{number}: field {self.answer_field!r} is empty")
            extra = {k: v for k, v in row.items() if k not in (self.prompt_field, self.answer_field)}
            out.append(Example(id=f"jsonl-{number}", question=prompt, answer=gold_answer(answer), columns=extra))
        return out

    def user_message(self, example: Example) -> str:
        return f"{example.question}\n\n{self.instruction}" if self.instruction else example.question
