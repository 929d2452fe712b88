"""GSM8K-style word problems read from local files (`task.gsm8k_files`); nothing is downloaded.

The GSM8K release itself ships in the package (`SHIPPED_DIR`: train.jsonl and test.jsonl, MIT,
OpenAI 2021), and `conf/task/gsm8k.yaml` reads its train split unless told otherwise. A record
is `{"question": ..., "answer": "reasoning lines\\n#### final"}`, the layout of the GSM8K
release, in JSONL or parquet. The reasoning becomes the think block with GSM8K's calculator
annotations (`<<48/2=24>>`) removed, and the final number, thousands separators dropped, the
answer. Which problems are held out is decided by the data stage's hash split like any other task,
not by the file a record came from.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rl.tasks.base import Sample, Task, register_task
from rl.tasks.config import DATA_DIR
from rl.tasks.files import read_table
from rl.tasks.format import format_solution
from rl.tasks.numeric import parse_number, verify_numeric

# The GSM8K release (openai/grade-school-math): train.jsonl (7473 problems), test.jsonl (1319).
SHIPPED_DIR = DATA_DIR / "gsm8k"
_COLUMNS = ("question", "answer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The `question` and `answer` columns of one file, with errors that name the file."""
    rows = read_table(path, "task.gsm8k_files")
    found = sorted(rows[0]) if rows else []
    missing = [column for column in _COLUMNS if column not in found]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; found {found}. GSM8K records need "
            "`question` and `answer` ('reasoning ... #### final')"
        )
    return [{column: row[column] for column in _COLUMNS} for row in rows]


def to_sample(question: object, answer: object, where: str) -> Sample:
    """The sample for one record; `where` ("file row n") goes into error messages."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: `question` must be non-empty text; got {question!r}")
    if not isinstance(answer, str) or "####" not in answer:
        raise ValueError(f"{where}: `answer` must end in '#### <final answer>'; got {answer!r:.200}")
    reasoning, final = answer.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if parse_number(final) is None:
        raise ValueError(f"{where}: the final answer after '####' is not a number: {final!r}")
    reasoning = "\n".join(line.strip() for line in _CALCULATOR.sub("", reasoning).strip().splitlines())
    return Sample.create(
        task="gsm8k",
        key=" ".join(question.lower().split()),
        prompt=question.strip(),
        solution=format_solution(reasoning, final),
        answer=final,
        meta={},
    )


def load_samples(files: list[str] | tuple[str, ...]) -> list[Sample]:
    """Every record of every file as a sample, in file order."""
    samples = []
    for path in files:
        for row, record in enumerate(read_records(path)):
            samples.append(to_sample(record["question"], record["answer"], f"{path} row {row}"))
    return samples


@functools.lru_cache(maxsize=4)
def _stream(files: tuple[str, ...], seed: int) -> list[Sample]:
    """All samples in a seed-dependent order, cached: every block of a run reads the same files."""
    samples = load_samples(files)
    random.Random(f"gsm8k/{seed}").shuffle(samples)
    return samples


@register_task("gsm8k")
class Gsm8kTask(Task):
    finite = True

    def block(self, seed: int, index: int, size: int) -> list[Sample]:
        return _stream(tuple(self.cfg.gsm8k_files), seed)[index * size : (index + 1) * size]

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        return verify_numeric(completion, answer)
