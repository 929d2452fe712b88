"""The datasets the training loop reads, written from the data stage's problems, and their tokenizer.

Outputs (under `out_dir`; `datasets.load_from_disk` reads each):
  pretrain/  text: prompt + completion, one problem with its worked solution per document
  sft/       id, task, question, messages (the turns before the answer, system turn included, as
             JSON: what a client sends the endpoint), prompt (those turns rendered), completion
             (the assistant turn, end-of-turn token included), answer, meta (JSON)
  rl/, eval/ id, task, question, messages, prompt, answer, meta (JSON)
  tokenizer/ the tokenizer every later stage reads: trained on pretrain + SFT + RL text, or a
             pretrained model's own (see orchestration/stages/data.py)

Prompts and completions are rendered by the tokenizer's chat template (`training.chat`). A problem
is any object with the fields of `rl.tasks.Sample` (id, task, prompt, solution, answer, meta,
messages); this module does not import rl.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from datasets import Dataset

from training.chat import completion_text, conversation, prompt_text
from training.tokenizer import render_completion, render_prompt

PROMPT_COLUMNS = ["id", "task", "question", "messages", "prompt", "answer", "meta"]
COLUMNS = {
    "pretrain": ["text"],
    "sft": ["id", "task", "question", "messages", "prompt", "completion", "answer", "meta"],
    "rl": PROMPT_COLUMNS,
    "eval": PROMPT_COLUMNS,
}
# What `write_corpus` writes: name -> directory under its out_dir.
OUTPUTS = {"tokenizer": "tokenizer", **{split: split for split in COLUMNS}}


def tokenizer_training_text(samples: dict[str, list[Any]], system: str | None = None) -> list[str]:
    """The text ReasonForge's own tokenizer is trained on: the training splits in its chat format
    (`training.tokenizer`), which its template reproduces exactly."""
    return [
        render_prompt(s.prompt, system) + (render_completion(s.solution) if split != "rl" else "")
        for split in ("pretrain", "sft", "rl")
        for s in samples[split]
    ]


def write_corpus(
    samples: dict[str, list[Any]], tokenizer: Any, out_dir: Path, system: str | None = None
) -> dict[str, float]:
    """Write every split of `samples`, rendered by `tokenizer`'s chat template with the optional
    `system` turn, and the tokenizer itself (see OUTPUTS); raises if a held-out prompt shows up in
    training data. Returns manifest metrics."""
    if set(samples) != set(COLUMNS):
        raise ValueError(f"samples must have the splits {sorted(COLUMNS)}; got {sorted(samples)}")
    records = to_records(samples, tokenizer, system)
    leaks = held_out_leaks(records)
    if leaks:
        raise RuntimeError(f"{len(leaks)} eval prompts also appear in training data, e.g. {leaks[:3]}")
    tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    for split, columns in COLUMNS.items():
        _save(records[split], columns, out_dir / split)
    return _metrics(samples, records, tokenizer) | {"eval_overlap": len(leaks)}


def to_records(
    samples: dict[str, list[Any]], tokenizer: Any, system: str | None = None
) -> dict[str, list[dict]]:
    """The rows of each output dataset (see the module docstring for the columns; pretrain rows
    also carry the `id` and `prompt` that the leak check reads and that are not saved)."""

    def prompt_row(s: Any) -> dict[str, str]:
        turns = conversation(s.prompt, s.messages, system)
        return {
            "id": s.id,
            "task": s.task,
            "question": s.prompt,
            "messages": json.dumps(turns),
            "prompt": prompt_text(tokenizer, turns),
            "answer": s.answer,
            "meta": json.dumps(s.meta, sort_keys=True),
        }

    def with_completion(s: Any) -> dict[str, str]:
        row = prompt_row(s)
        turns = json.loads(row["messages"])
        return row | {"completion": completion_text(tokenizer, turns, s.solution, row["prompt"])}

    pretrain = [with_completion(s) for s in samples["pretrain"]]
    return {
        "pretrain": [
            {"id": r["id"], "prompt": r["prompt"], "text": r["prompt"] + r["completion"]} for r in pretrain
        ],
        "sft": [with_completion(s) for s in samples["sft"]],
        "rl": [prompt_row(s) for s in samples["rl"]],
        "eval": [prompt_row(s) for s in samples["eval"]],
    }


def held_out_leaks(records: dict[str, list[dict[str, str]]]) -> list[str]:
    """Eval prompts that also appear in training data: the same id or rendered prompt in SFT or RL
    records, or a pretraining document that starts with the prompt."""
    training = [r for split in ("sft", "rl") for r in records[split]]
    prompts, ids = {r["prompt"] for r in training}, {r["id"] for r in training}
    ids |= {r["id"] for r in records["pretrain"] if "id" in r}
    lengths = {len(r["prompt"]) for r in records["eval"]}
    starts = {r["text"][:n] for r in records["pretrain"] for n in lengths}
    return [
        r["prompt"]
        for r in records["eval"]
        if r["prompt"] in prompts or r["prompt"] in starts or r["id"] in ids
    ]


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
        metrics[f"{split}_tokens"] = (
            sum(len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]) if batch else 0
        )
    metrics["vocab_size"] = len(tokenizer)
    # The longest rendered SFT pair and RL prompt, in tokens: what `<stage>.train.seq_len` and the
    # rollout lengths must hold (longer SFT pairs are counted and dropped or truncated in training).
    for split, batch in (("sft", texts["sft"]), ("rl", [r["prompt"] for r in records["rl"]])):
        lengths = (
            [len(ids) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]] if batch else [0]
        )
        metrics[f"{split}_max_tokens"] = max(lengths)
    metrics["pretrain_sft_overlap"] = sum(s.id in pretrain_ids for s in samples["sft"])
    return metrics
