"""Batches for the training loop, as a pure function of (step, micro-step, rank).

Every worker can compute its own slice of any step without coordination, so resuming at step k
needs nothing but k: the data position is the step count. Sample order is a seeded permutation
per epoch over the whole dataset; a step takes `global_batch_size` consecutive positions and
hands each (micro-step, rank) its own contiguous chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from datasets import load_from_disk

IGNORE = -100  # label value the loss skips (Hugging Face convention)


@lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(
    step: int, micro: int, rank: int, *, world: int, micro_bs: int, accum: int, n: int, seed: int
) -> list[int]:
    """Dataset rows of one micro-batch; ranks and micro-steps of a step never overlap."""
    global_bs = micro_bs * world * accum
    start = step * global_bs + (micro * world + rank) * micro_bs
    out = []
    for pos in range(start, start + micro_bs):
        epoch, within = divmod(pos, n)
        out.append(int(_permutation(n, seed, epoch)[within]))
    return out


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) 1 = real token
    labels: torch.Tensor  # (B, T) IGNORE where no loss (prompt, padding)

    def to(self, device) -> TokenBatch:
        return TokenBatch(
            *(t.to(device, non_blocking=True) for t in (self.input_ids, self.attention_mask, self.labels))
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


class PackedCorpus:
    """Pretraining: every document tokenized, concatenated, and cut into `seq_len` blocks."""

    def __init__(self, dataset_dir: str | Path, tokenizer, seq_len: int):
        texts = list(load_from_disk(str(dataset_dir))["text"])
        ids = [t for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in row]
        n = len(ids) // seq_len
        if n == 0:
            raise ValueError(f"{dataset_dir}: {len(ids)} tokens is less than one block of seq_len={seq_len}")
        self.blocks = torch.tensor(ids[: n * seq_len]).view(n, seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def collate(self, rows: list[int]) -> TokenBatch:
        ids = self.blocks[rows]
        return TokenBatch(ids, torch.ones_like(ids), ids.clone())


class PromptCompletionPairs:
    """SFT: chat prompt + completion, loss on completion tokens only, right-padded per batch."""

    def __init__(self, dataset_dir: str | Path, tokenizer, seq_len: int):
        ds = load_from_disk(str(dataset_dir))
        for col in ("prompt", "completion"):
            if col not in ds.column_names:
                raise ValueError(f"{dataset_dir}: SFT data needs a {col!r} column; has {ds.column_names}")
        prompts = tokenizer(list(ds["prompt"]), add_special_tokens=False)["input_ids"]
        completions = tokenizer(list(ds["completion"]), add_special_tokens=False)["input_ids"]
        self.rows = [(p + c)[:seq_len] for p, c in zip(prompts, completions, strict=True)]
        self.prompt_lens = [min(len(p), seq_len) for p in prompts]
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, rows: list[int]) -> TokenBatch:
        width = max(len(self.rows[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for i, r in enumerate(rows):
            seq, p = self.rows[r], self.prompt_lens[r]
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, p : len(seq)] = ids[i, p : len(seq)]
        return TokenBatch(ids, mask, labels)
