"""Bring your own data: prompt/completion or chat-message records from files or the hub (`task.dataset`).

Sources are local .jsonl/.json/.parquet files, directories written by `datasets.save_to_disk`, or
a Hugging Face hub dataset (`task.dataset.hub`, only where there is a network). A file holds one of
two record shapes, told apart by its columns (names mapped by `task.dataset.columns`):

  prompt/completion  {"prompt": "...", "completion": "...", "answer": "..."}
  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
                      "answer": "..."}

A final assistant turn is the completion; the turns before it are the sample's conversation, whose
last (user) turn is its prompt. A completion is used verbatim as the SFT target, in the user's own
format: nothing adds our `<think>`/`<answer>` tags. Records without one (a prompt-only messages
list, a missing completion column) can only feed RL and eval. Each sample's id is a hash of its
prompt turns, so a prompt listed twice is one problem, and the data stage's hash split decides
which problems are held out, as for every task.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from rl.tasks.base import Sample, Task, register_task
from rl.tasks.config import DatasetColumns, DatasetConfig, TaskConfig
from rl.tasks.files import read_table
from rl.tasks.format import extract_answer
from rl.tasks.numeric import parse_number, verify_numeric

ROLES = ("system", "user", "assistant")

Verifier = Callable[[str, str, Mapping[str, Any]], float]


def verify_exact(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
    """1.0 when the `<answer>` text equals `answer`, both stripped."""
    extracted = extract_answer(completion)
    return float(extracted is not None and extracted == answer.strip())


def _verify_numeric(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
    return verify_numeric(completion, answer)


def _verify_math(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
    from rl.tasks.math_answer import verify_math  # math-verify (sympy) loads only where it is used

    return verify_math(completion, answer, meta)


def _verify_code(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
    from rl.tasks.code_exec import verify_code

    return verify_code(completion, answer, meta)


# `task.dataset.verifier` -> scorer; the name travels in each sample's meta.
VERIFIERS: dict[str, Verifier] = {
    "exact": verify_exact,
    "numeric": _verify_numeric,
    "math": _verify_math,
    "code": _verify_code,
}
# Verifiers that cannot score against some reference answers: the check and what it expects.
_REFERENCE_CHECKS: dict[str, tuple[Callable[[str], bool], str]] = {
    "numeric": (lambda answer: parse_number(answer) is not None, "a number such as 42, -0.5 or 1,234"),
}


@dataclasses.dataclass(frozen=True)
class Needs:
    """Which record fields the run's counts call for."""

    # Pretraining documents or SFT pairs are asked for: every record needs a completion.
    completion: bool
    # RL or eval prompts are asked for: every record needs an answer.
    answer: bool

    @classmethod
    def of(cls, cfg: TaskConfig) -> Needs:
        return cls(cfg.pretrain_docs + cfg.sft_pairs > 0, cfg.rl_prompts + cfg.eval_prompts > 0)


def read_rows(cfg: DatasetConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """(source name for error messages, rows) of every source in `cfg`, in order."""
    if cfg.hub is not None:
        return [(f"hub dataset {cfg.hub} ({cfg.split})", _read_hub(cfg))]
    return [(path, read_table(path, "task.dataset.files", cfg.split)) for path in cfg.files]


def _read_hub(cfg: DatasetConfig) -> list[dict[str, Any]]:
    from datasets import load_dataset

    try:
        data = load_dataset(cfg.hub, cfg.hub_config, split=cfg.split)
    except ConnectionError as err:
        raise ConnectionError(
            f"task.dataset.hub={cfg.hub!r}: the Hugging Face hub could not be reached ({err}). Hub datasets "
            "load only where there is a network (or a hub cache holding them); on an offline machine, "
            "save the dataset elsewhere with `save_to_disk` or as JSONL and list it in task.dataset.files"
        ) from err
    return data.to_list()


def _text(value: object, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {what} must be non-empty text; got {value!r:.200}")
    return value


def _answer(record: Mapping[str, Any], cfg: DatasetConfig, needs: Needs, where: str) -> str:
    """The reference answer as a string: strings as they are, a list of strings one per line (test
    statements for the code verifier, as MBPP's `test_list`), other JSON values (numbers) as their
    JSON text; "" where there is none and no RL or eval prompt needs one."""
    column = cfg.columns.answer
    value = record.get(column) if column is not None else None
    if value is None or value == "":
        if needs.answer:
            found = f"it is {value!r}" if column in record else f"found columns {sorted(record)}"
            raise ValueError(
                f"{where}: no answer in column {column!r} (task.dataset.columns.answer), which RL and eval "
                f"prompts need; {found}"
            )
        return ""
    if isinstance(value, str):
        answer = value
    elif isinstance(value, list) and all(isinstance(line, str) for line in value):
        answer = "\n".join(value)
    else:
        answer = json.dumps(value, sort_keys=True)
    accepts, expected = _REFERENCE_CHECKS.get(cfg.verifier, (lambda _: True, ""))
    if not accepts(answer):
        raise ValueError(
            f"{where}: the {cfg.verifier} verifier needs {expected} as the answer; got {answer!r:.200}"
        )
    return answer


def split_messages(value: object, where: str) -> tuple[list[dict[str, str]], str | None]:
    """(turns before the answer, ending in a user turn; the final assistant turn's text or None)."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where}: messages must be a non-empty list of {{role, content}}; got {value!r:.200}"
        )
    turns = []
    for n, turn in enumerate(value):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES or (role == "system" and n > 0):
            raise ValueError(
                f"{where}: message {n} has role {role!r}; expected an optional first 'system' turn, then "
                f"'user' and 'assistant' turns (got {turn!r:.200})"
            )
        turns.append({"role": role, "content": _text(turn.get("content"), f"message {n}'s content", where)})
    completion = turns.pop()["content"] if turns[-1]["role"] == "assistant" else None
    if not turns or turns[-1]["role"] != "user":
        raise ValueError(
            f"{where}: messages must end in a user turn, or a user turn then the assistant's answer; got "
            f"roles {[t['role'] for t in value]}"
        )
    return turns, completion


def to_sample(record: Mapping[str, Any], cfg: DatasetConfig, needs: Needs, where: str) -> Sample:
    """The sample for one record; `where` ("file row n") goes into error messages."""
    columns = cfg.columns
    if columns.messages in record:
        turns, completion = split_messages(record[columns.messages], where)
    elif columns.prompt in record:
        turns = [
            {"role": "user", "content": _text(record[columns.prompt], f"column {columns.prompt!r}", where)}
        ]
        completion = record.get(columns.completion)
        if completion is not None:
            completion = _text(completion, f"column {columns.completion!r}", where)
    else:
        raise ValueError(
            f"{where}: no column {columns.messages!r} (task.dataset.columns.messages) or {columns.prompt!r} "
            f"(task.dataset.columns.prompt); found {sorted(record)}"
        )
    if completion is None and needs.completion:
        raise ValueError(
            f"{where}: no completion (column {columns.completion!r}, or a final assistant message), but "
            "task.pretrain_docs or task.sft_pairs ask for training text; set both to 0 to use the records "
            "for RL and eval only"
        )
    answer = _answer(record, cfg, needs, where)
    key = json.dumps([[t["role"], " ".join(t["content"].split())] for t in turns])
    return Sample.create(
        task="dataset",
        key=key,
        prompt=turns[-1]["content"],
        solution=completion or "",
        answer=answer,
        meta={"verifier": cfg.verifier},
        messages=turns if len(turns) > 1 else None,
    )


def load_samples(cfg: DatasetConfig, needs: Needs) -> list[Sample]:
    """Every record of every source as a sample, in source order."""
    samples = []
    for source, rows in read_rows(cfg):
        samples += [to_sample(record, cfg, needs, f"{source} row {n}") for n, record in enumerate(rows)]
    return samples


@functools.lru_cache(maxsize=4)
def _stream(spec: str, needs: Needs, seed: int) -> list[Sample]:
    """All samples in a seed-dependent order, cached per process: every block reads the same data.
    `spec` is the DatasetConfig as JSON (the dataclass, holding lists, cannot be a cache key)."""
    fields = json.loads(spec)
    cfg = DatasetConfig(**fields | {"columns": DatasetColumns(**fields["columns"])})
    samples = load_samples(cfg, needs)
    random.Random(f"dataset/{seed}").shuffle(samples)
    return samples


@register_task("dataset")
class DatasetTask(Task):
    finite = True

    def block(self, seed: int, index: int, size: int) -> list[Sample]:
        spec = json.dumps(dataclasses.asdict(self.cfg.dataset), sort_keys=True)
        return _stream(spec, Needs.of(self.cfg), seed)[index * size : (index + 1) * size]

    @staticmethod
    def verify(completion: str, answer: str, meta: Mapping[str, Any]) -> float:
        name = meta.get("verifier")
        if name not in VERIFIERS:
            raise ValueError(f"dataset sample meta names verifier {name!r}; registered: {sorted(VERIFIERS)}")
        return VERIFIERS[name](completion, answer, meta)
