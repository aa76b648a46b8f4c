"""GSM8K (Cobbe et al. 2021) in the OpenAI JSONL format: `question`, and `answer` ending in `#### N`.

From a local path (`../shared/data/gsm8k/train.jsonl` for local runs), or, when online and the
`datasets` package is installed, from a `datasets` name such as `openai/gsm8k`.
"""

from __future__ import annotations

from pathlib import Path

from incentivize.errors import IncentivizeError
from incentivize.tasks.base import ANSWER_INSTRUCTION, Example, Task
from incentivize.tasks.data import check_holdout, field_text, in_split, read_jsonl

INSTRUCTION = "Solve the problem step by step. " + ANSWER_INSTRUCTION


def gold_answer(answer_text: str) -> str:
    """The number after the last `####`, without thousands commas ('1,234' -> '1234')."""
    return answer_text.rsplit("####", 1)[-1].strip().replace(",", "")


class GSM8K(Task):
    name = "gsm8k"

    def __init__(self, data: str | None = None, holdout: float = 0.0) -> None:
        if data is None:
            raise IncentivizeError(
                "the gsm8k task needs --data: a JSONL file in the OpenAI format "
                "(e.g. ../shared/data/gsm8k/train.jsonl) or a `datasets` name such as openai/gsm8k"
            )
        self.data = data
        self.holdout = check_holdout(holdout)

    def examples(self, split: str = "test", limit: int | None = None) -> list[Example]:
        path = Path(self.data)
        rows = _rows_from_file(path) if path.suffix == ".jsonl" or path.exists() else _rows_from_hub(self.data, split)
        out: list[Example] = []
        for number, row in rows:
            if limit is not None and len(out) >= limit:
                break
            question = field_text(path, number, row, "question", "a GSM8K row needs 'question' and 'answer'")
            if not in_split(question, split, self.holdout):
                continue
            answer_text = field_text(path, number, row, "answer", "a GSM8K row needs 'question' and 'answer'")
            if "####" not in answer_text:
                raise IncentivizeError(f"{path}:{number}: 'answer' has no '#### N' final answer")
            out.append(Example(id=f"gsm8k-{number}", question=question, answer=gold_answer(answer_text),
                               solution=answer_text))
        return out

    def user_message(self, example: Example) -> str:
        return f"{INSTRUCTION}\n\nProblem: {example.question}"


def _rows_from_file(path: Path) -> list[tuple[int, dict]]:
    return read_jsonl(path)


def _rows_from_hub(name: str, split: str) -> list[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:
        raise IncentivizeError(
            f"{name} is not a local file; to load it as a `datasets` name install the extra: "
            "pip install 'incentivize[datasets]'"
        ) from None
    try:
        dataset = datasets.load_dataset(name, "main", split=split)
    except Exception as err:  # noqa: BLE001 - offline or unknown names raise many types
        raise IncentivizeError(f"could not load dataset {name!r} split {split!r}: {err}") from err
    return [(i + 1, dict(row)) for i, row in enumerate(dataset)]
