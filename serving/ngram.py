"""Prompt-lookup drafting: propose the tokens that followed the last occurrence of the current suffix.

Draft-free speculative decoding (Saxena 2023, "prompt lookup decoding"; HF `prompt_lookup_num_tokens`).
The drafts are deterministic, so for the acceptance rule q is one-hot at each draft token: a draft x
is accepted with probability p(x) and, on rejection, the target samples from p with x removed, which
keeps the target's distribution exactly.
"""

from __future__ import annotations

import torch

from serving.sampling import SamplingTensors
from serving.speculative import Draft


def propose_ngram(history: torch.Tensor, k: int, ngram_min: int, ngram_max: int) -> torch.Tensor:
    """Up to k tokens that followed the earliest earlier occurrence of the history's last n tokens.

    history: (L,) token ids. Tries n = ngram_max down to ngram_min and returns the first match's
    continuation (possibly shorter than k where the history ends), or an empty tensor.
    """
    length = history.shape[0]
    for n in range(min(ngram_max, length - 1), ngram_min - 1, -1):
        suffix = history[length - n :]
        # Windows that end before the last token, so each has at least one continuation token.
        windows = history[: length - 1].unfold(0, n, 1)  # (length - n, n)
        hits = (windows == suffix).all(dim=-1).nonzero()
        if hits.numel():
            start = int(hits[0, 0]) + n
            return history[start : start + k]
    return history[:0]


class NgramProposer:
    """Prompt lookup over each row's prompt + generated tokens, kept in a growing (B, cap) buffer."""

    def __init__(self, ngram_min: int, ngram_max: int):
        self.ngram_min, self.ngram_max = ngram_min, ngram_max

    def start(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        tokens, valid = tokens.cpu(), valid.cpu()
        self.lengths = valid.sum(dim=1)
        self.buf = torch.zeros(tokens.shape[0], max(2 * tokens.shape[1], 64), dtype=torch.long)
        for b in range(tokens.shape[0]):
            self.buf[b, : self.lengths[b]] = tokens[b][valid[b]]
        self._draft: Draft | None = None

    def propose(self, k: int, params: SamplingTensors, u: torch.Tensor) -> Draft:
        found = [
            propose_ngram(self.buf[b, : self.lengths[b]], k, self.ngram_min, self.ngram_max)
            for b in range(len(self.buf))
        ]
        width = max(len(f) for f in found)  # the target verifies only columns some row filled
        tokens = torch.zeros(len(found), width, dtype=torch.long)
        valid = torch.zeros(len(found), width, dtype=torch.bool)
        for b, f in enumerate(found):
            tokens[b, : len(f)] = f
            valid[b, : len(f)] = True
        device = params.temperature.device
        self._draft = Draft(tokens, valid, None)
        return Draft(tokens.to(device), valid.to(device), None)

    def commit(self, n_accepted: torch.Tensor, next_tokens: torch.Tensor) -> None:
        n_accepted, next_tokens = n_accepted.cpu(), next_tokens.cpu()
        k = self._draft.tokens.shape[1] if self._draft is not None else 0
        need = int((self.lengths + n_accepted).max()) + 1
        if need > self.buf.shape[1]:
            grown = torch.zeros(self.buf.shape[0], max(need, 2 * self.buf.shape[1]), dtype=torch.long)
            grown[:, : self.buf.shape[1]] = self.buf
            self.buf = grown
        for b in range(self.buf.shape[0]):
            n, at = int(n_accepted[b]), int(self.lengths[b])
            if k and n:
                self.buf[b, at : at + n] = self._draft.tokens[b, :n]
            self.buf[b, at + n] = next_tokens[b]
        self.lengths += n_accepted + 1
        self._draft = None

    def select(self, keep: torch.Tensor) -> None:
        keep = keep.cpu()
        self.buf, self.lengths = self.buf[keep], self.lengths[keep]

    def merge(self, other: NgramProposer) -> None:
        width = max(self.buf.shape[1], other.buf.shape[1])
        pad = torch.nn.functional.pad
        self.buf = torch.cat([pad(p.buf, (0, width - p.buf.shape[1])) for p in (self, other)])
        self.lengths = torch.cat([self.lengths, other.lengths])
