"""The datasets the training loop reads, written from the data stage's problems, and their tokenizer.

Outputs (under `out_dir`; `datasets.load_from_disk` reads each):
  pretrain/  text: render_prompt(question) + solution + "<|endoftext|>"
  sft/       id, task, question, prompt (rendered chat prompt), completion (solution + EOS),
             answer, meta (JSON)
  rl/, eval/ id, task, question, prompt, answer, meta (JSON)
  tokenizer/ the tokenizer trained on pretrain + SFT + RL text (see `training.tokenizer`)

A problem is any object with the fields of `rl.tasks.Sample` (id, task, prompt, solution,
answer, meta); this module does not import rl.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset

from training.tokenizer import ASSISTANT, render_completion, render_prompt, train_tokenizer

PROMPT_COLUMNS = ["id", "task", "question", "prompt", "answer", "meta"]
COLUMNS = {
    "pretrain": ["text"],
    "sft": ["id", "task", "question", "prompt", "completion", "answer", "meta"],
    "rl": PROMPT_COLUMNS,
    "eval": PROMPT_COLUMNS,
}
# What `write_corpus` writes: name -> directory under its out_dir.
OUTPUTS = {"tokenizer": "tokenizer", **{split: split for split in COLUMNS}}


def write_corpus(
    samples: dict[str, list[Any]], vocab_size: int, out_dir: Path, added_tokens: Sequence[str] = ()
) -> dict[str, float]:
    """Write every split of `samples` and the tokenizer trained on the training splits, with
    `added_tokens` as single tokens (see OUTPUTS); raises if a held-out prompt shows up in training
    data. Returns manifest metrics."""
    if set(samples) != set(COLUMNS):
        raise ValueError(f"samples must have the splits {sorted(COLUMNS)}; got {sorted(samples)}")
    records = to_records(samples)
    leaks = held_out_leaks(records)
    if leaks:
        raise RuntimeError(f"{len(leaks)} eval prompts also appear in training data, e.g. {leaks[:3]}")
    training_text = (
        [r["text"] for r in records["pretrain"]]
        + [r["prompt"] + r["completion"] for r in records["sft"]]
        + [r["prompt"] for r in records["rl"]]
    )
    tokenizer = train_tokenizer(training_text, vocab_size, out_dir / "tokenizer", added_tokens)
    for split, columns in COLUMNS.items():
        _save(records[split], columns, out_dir / split)
    return _metrics(samples, records, tokenizer) | {"eval_overlap": len(leaks)}


def to_records(samples: dict[str, list[Any]]) -> dict[str, list[dict[str, str]]]:
    """The rows of each output dataset (see the module docstring for the columns)."""

    def prompt_row(s: Any) -> dict[str, str]:
        return {
            "id": s.id,
            "task": s.task,
            "question": s.prompt,
            "prompt": render_prompt(s.prompt),
            "answer": s.answer,
            "meta": json.dumps(s.meta, sort_keys=True),
        }

    return {
        "pretrain": [
            {"text": render_prompt(s.prompt) + render_completion(s.solution)} for s in samples["pretrain"]
        ],
        "sft": [prompt_row(s) | {"completion": render_completion(s.solution)} for s in samples["sft"]],
        "rl": [prompt_row(s) for s in samples["rl"]],
        "eval": [prompt_row(s) for s in samples["eval"]],
    }


def held_out_leaks(records: dict[str, list[dict[str, str]]]) -> list[str]:
    """Eval prompts that also appear in pretrain, SFT or RL records (should be none)."""
    cut = len(ASSISTANT) + 1  # the prompt ends with the assistant tag and a newline
    training = {text[: text.index(ASSISTANT) + cut] for text in (r["text"] for r in records["pretrain"])}
    training |= {r["prompt"] for split in ("sft", "rl") for r in records[split]}
    training_ids = {r["id"] for split in ("sft", "rl") for r in records[split]}
    return [r["prompt"] for r in records["eval"] if r["prompt"] in training or r["id"] in training_ids]


def _save(rows: list[dict[str, str]], columns: list[str], path) -> None:
    Dataset.from_dict({column: [row[column] for row in rows] for column in columns}).save_to_disk(str(path))


def _metrics(
    samples: dict[str, list[Any]], records: dict[str, list[dict[str, str]]], tokenizer
) -> dict[str, float]:
    """Counts per split and task, token totals and the vocabulary size, for the manifest."""
    metrics: dict[str, float] = {f"{split}_count": len(samples[split]) for split in COLUMNS}
    for split in COLUMNS:
        for task, n in sorted(Counter(s.task for s in samples[split]).items()):
            metrics[f"{split}_count/{task}"] = n
    pretrain_ids = {s.id for s in samples["pretrain"]}
    texts = {
        "pretrain": [r["text"] for r in records["pretrain"]],
        "sft": [r["prompt"] + r["completion"] for r in records["sft"]],
    }
    for split, batch in texts.items():
        metrics[f"{split}_tokens"] = sum(len(ids) for ids in tokenizer(batch)["input_ids"]) if batch else 0
    metrics["vocab_size"] = len(tokenizer)
    metrics["pretrain_sft_overlap"] = sum(s.id in pretrain_ids for s in samples["sft"])
    return metrics
