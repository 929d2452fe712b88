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
from typing import Any

import torch
from datasets import load_from_disk

from training.config import TrainConfig

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
    # (B, T) packed rows: each sequence's positions, restarting at 0 (padding too counts as one);
    # None: one sequence per row.
    position_ids: torch.Tensor | None = None

    def to(self, device) -> TokenBatch:
        return TokenBatch(
            *(
                t if t is None else t.to(device, non_blocking=True)
                for t in (self.input_ids, self.attention_mask, self.labels, self.position_ids)
            )
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def model_inputs(self) -> dict[str, Any]:
        """The model's inputs besides the labels.

        Packed rows give `position_ids`, no `attention_mask` and `use_cache=False`: only then does
        transformers 5 (masking_utils.find_packed_sequence_indices) read each restart of the
        positions at 0 as a new sequence and build a mask that stops attention across sequences,
        for sdpa (the loop's, via training.qk_clip) and eager alike. With the config's default
        use_cache=True the model makes a cache even in training and then skips that detection: every
        token would attend to the sequences before it in its row (measured on 5.22.2).
        """
        if self.position_ids is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}


class PackedCorpus:
    """Pretraining: every document tokenized, concatenated, and cut into `seq_len` blocks."""

    def __init__(self, dataset_dir: str | Path, tokenizer, seq_len: int):
        texts = list(load_from_disk(str(dataset_dir))["text"])
        ids = [t for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in row]
        n = len(ids) // seq_len
        if n == 0:
            raise ValueError(f"{dataset_dir}: {len(ids)} tokens is less than one block of seq_len={seq_len}")
        self.blocks = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
        self.stats = {"records": len(texts), "rows": n, "tokens": n * seq_len}

    @classmethod
    def from_config(cls, dataset_dir: str | Path, tokenizer, train: TrainConfig) -> PackedCorpus:
        """Always packed by design; `train.overlong` and `train.pack` are SFT's."""
        return cls(dataset_dir, tokenizer, train.seq_len)

    def __len__(self) -> int:
        return len(self.blocks)

    def collate(self, rows: list[int]) -> TokenBatch:
        ids = self.blocks[rows]
        return TokenBatch(ids, torch.ones_like(ids), ids.clone())


def _drop(what: str, prompt: list[int], completion: list[int], seq_len: int) -> list[int] | None:
    return None


def _truncate(what: str, prompt: list[int], completion: list[int], seq_len: int) -> list[int] | None:
    # A prompt that fills the row leaves no completion token to learn from.
    return (prompt + completion)[:seq_len] if len(prompt) < seq_len else None


def _refuse(what: str, prompt: list[int], completion: list[int], seq_len: int) -> list[int] | None:
    raise ValueError(
        f"{what} is {len(prompt) + len(completion)} tokens (prompt {len(prompt)}, completion "
        f"{len(completion)}), more than train.seq_len={seq_len}: raise seq_len, or set train.overlong "
        "to drop or truncate"
    )


# train.overlong: what becomes of a record longer than seq_len, (where, prompt, completion,
# seq_len) -> its tokens, or None to drop it.
ON_OVERLONG = {"drop": _drop, "truncate": _truncate, "error": _refuse}


def pack_in_order(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Greedy next-fit packing: the sequences each row holds, in order; a row takes the next
    sequence while the total stays within `seq_len`, else a new row starts. Deterministic, so the
    rows (and `batch_indices` over them) are the same on every worker and every resume."""
    rows: list[list[int]] = []
    used = seq_len
    for i, n in enumerate(lengths):
        if used + n > seq_len:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


class PromptCompletionPairs:
    """SFT: chat prompt + completion, loss on completion tokens only, right-padded per batch.

    Records longer than `seq_len` are never cut silently: `overlong` (train.overlong) drops them,
    truncates them or fails. With `pack`, several sequences share a row of at most `seq_len`
    tokens; the batch then carries `position_ids` that restart at 0 for each sequence, from which
    transformers builds a mask that keeps attention within each one (see `TokenBatch`).
    `stats` counts what happened: records, kept (truncated ones included), dropped, truncated,
    rows, tokens and, packed, the share of the rows' `seq_len` slots that is padding.
    """

    def __init__(
        self, dataset_dir: str | Path, tokenizer, seq_len: int, *, overlong: str = "drop", pack: bool = False
    ):
        ds = load_from_disk(str(dataset_dir))
        for col in ("prompt", "completion"):
            if col not in ds.column_names:
                raise ValueError(f"{dataset_dir}: SFT data needs a {col!r} column; has {ds.column_names}")
        prompts = tokenizer(list(ds["prompt"]), add_special_tokens=False)["input_ids"]
        completions = tokenizer(list(ds["completion"]), add_special_tokens=False)["input_ids"]
        self.seqs: list[list[int]] = []  # the kept sequences, each at most seq_len tokens
        self.prompt_lens: list[int] = []
        truncated = 0
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            seq = p + c
            if len(seq) > seq_len:
                seq = ON_OVERLONG[overlong](f"{dataset_dir} record {i}", p, c, seq_len)
                truncated += seq is not None
            if seq is not None:
                self.seqs.append(seq)
                self.prompt_lens.append(len(p))
        if not self.seqs:
            raise ValueError(_nothing_fits(dataset_dir, prompts, completions, seq_len))
        lengths = [len(s) for s in self.seqs]
        # The sequences of each row (one each unless packed).
        self.rows = pack_in_order(lengths, seq_len) if pack else [[i] for i in range(len(self.seqs))]
        self.pack = pack
        self.pad_id = tokenizer.pad_token_id
        self.stats = {
            "records": len(prompts),
            "kept": len(self.seqs),
            "dropped": len(prompts) - len(self.seqs),
            "truncated": truncated,
            "rows": len(self.rows),
            "tokens": sum(lengths),
        }
        if pack:
            self.stats["padding_share"] = 1 - sum(lengths) / (len(self.rows) * seq_len)

    @classmethod
    def from_config(cls, dataset_dir: str | Path, tokenizer, train: TrainConfig) -> PromptCompletionPairs:
        return cls(dataset_dir, tokenizer, train.seq_len, overlong=train.overlong, pack=train.pack)

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, rows: list[int]) -> TokenBatch:
        width = max(sum(len(self.seqs[s]) for s in self.rows[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        positions = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            at = 0
            for s in self.rows[r]:
                seq, end = self.seqs[s], at + len(self.seqs[s])
                ids[i, at:end] = torch.tensor(seq)
                mask[i, at:end] = 1
                positions[i, at:end] = torch.arange(len(seq))
                # A sequence's first token is never a target: packed, it would be predicted from
                # the previous sequence's last token (unpacked, the loss's shift skips it anyway).
                first = at + max(self.prompt_lens[s], 1)
                labels[i, first:end] = ids[i, first:end]
                at = end
            # Padding: positions of a sequence of its own, after (so unseen by) the real tokens.
            positions[i, at:] = torch.arange(width - at)
        return TokenBatch(ids, mask, labels, positions if self.pack else None)


def _nothing_fits(dataset_dir, prompts: list[list[int]], completions: list[list[int]], seq_len: int) -> str:
    if not prompts:
        return f"{dataset_dir}: SFT data has no records"
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    prompt_lengths = [len(p) for p in prompts]
    return (
        f"{dataset_dir}: none of its {len(prompts)} records fits train.seq_len={seq_len}: records are "
        f"{min(lengths)}..{max(lengths)} tokens (prompts {min(prompt_lengths)}..{max(prompt_lengths)}); "
        "raise seq_len"
    )
