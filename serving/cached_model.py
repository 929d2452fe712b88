"""A causal LM plus its batched KV cache, whose slots may be masked holes.

One HF `DynamicCache` whose slots are shared by the batch, plus a 2D slot mask and each row's next
position. Prompts are left-padded; tokens carry their true positions (`position_ids`), so a slot's
index never matters, only the mask. When rows of a batch accept different numbers of speculative
drafts, each row's rejected slots are masked out in place (holes) and only the slots every row
rejected are cropped. Holes cost attention over a few dead slots but no copying; RoPE keys are
stored with true positions, so holes change nothing else. Rows that finish leave the batch
(`DynamicCache.batch_select_indices`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import DynamicCache, PreTrainedModel


class CachedModel:
    """A causal LM and its KV cache over a batch (see the module doc)."""

    def __init__(self, model: PreTrainedModel, batch_size: int, device: torch.device):
        self.model = model
        self.cache = DynamicCache(config=model.config)
        # (B, slots): 1 = a real token, 0 = left padding or a rolled-back draft
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        # (B,): the position the row's next real token takes
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """Append (B, T) tokens (valid=False: a hole) and return the last `logits_to_keep` logits."""
        positions = (self.next_pos.unsqueeze(1) + valid.long().cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        out = self.model(
            input_ids=tokens,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        self.next_pos += valid.sum(dim=1)
        return out.logits

    def rollback(self, n_drop: torch.Tensor) -> None:
        """Forget the last n_drop[b] slots of row b: masked where rows differ, cropped where all agree."""
        width = self.mask.shape[1]
        dropped = torch.arange(width, device=self.mask.device) >= (width - n_drop).unsqueeze(1)
        self.next_pos -= (self.mask.bool() & dropped).sum(dim=1)
        self.mask = self.mask.masked_fill(dropped, 0)
        common = int(n_drop.min()) if n_drop.numel() else 0
        if common:
            self.cache.crop(-common)
            self.mask = self.mask[:, :-common]

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        self.mask, self.next_pos = self.mask[keep], self.next_pos[keep]


@contextmanager
def decode_experts(model: PreTrainedModel) -> Iterator[None]:
    """MoE experts as 'batched_mm' while decoding off-CPU, as transformers' generate does.

    With a few tokens per step, gathering each token's expert weights (batched_mm) beats
    grouped_mm's sort-and-group by ~4x per MoE layer on an H100 (measured on the benchmark's tiny
    model); prefill keeps grouped_mm, which does not copy weights per token.
    """
    get = getattr(model, "get_experts_implementation", None)
    original = get() if get is not None else {}
    switch = model.device.type != "cpu" and "grouped_mm" in original.values()
    if switch:
        model.set_experts_implementation(
            {k: "batched_mm" if v == "grouped_mm" else v for k, v in original.items()}
        )
    try:
        yield
    finally:
        if switch:
            model.set_experts_implementation(original)
