"""The engine's running batch: each sequence's host-side state and the rows' device-side state.

Rows join (`Batch.merge`, after their prompts were prefilled apart) and leave (`Batch.drop`) at
any step: this is what makes the engine's batching continuous rather than static.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from serving.cached_model import CachedModel
from serving.detokenize import StopChecker
from serving.protocol import Completion, SamplingParams
from serving.sampling import SamplingTensors
from serving.speculative import Draft, Proposer


@dataclass
class SequenceState:
    """Host-side state of one completion in flight."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    generator: torch.Generator
    stop_checker: StopChecker | None
    arrived_s: float = 0.0  # perf_counter() when it was queued; its metrics' times count from here
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None
    first_token_s: float = 0.0
    latency_s: float = 0.0
    verify_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def extend(self, tokens: list[int], logprobs: list[float], eos_ids: frozenset[int]) -> bool:
        """Take one step's tokens in order until a finish condition; True when finished."""
        for tok, lp in zip(tokens, logprobs, strict=True):
            self.token_ids.append(tok)
            self.logprobs.append(lp)
            if tok in eos_ids and not self.params.ignore_eos:
                self.finish_reason = "stop"
            elif self.stop_checker is not None and self.stop_checker.add(tok):
                self.finish_reason = "stop"
            elif len(self.token_ids) >= self.max_new:
                self.finish_reason = "length"
            if self.finish_reason:
                return True
        return False


@dataclass
class SequenceUpdate:
    """What one sequence gained in one engine step (`Engine.stream`)."""

    prompt_index: int
    sample_index: int
    token_ids: list[int]  # generated this step (1 + accepted drafts, fewer when it finished mid-step)
    logprobs: list[float]  # of token_ids, as in Completion.logprobs (zeros when no row asked for them)
    completion: Completion | None = None  # set on the step the sequence finished


@dataclass
class Step:
    """What one verify step (or one admission's prefill) produced for each row."""

    draft: Draft
    n_accepted: torch.Tensor  # (B,) drafts kept
    next_tokens: torch.Tensor  # (B,) the token sampled after them
    emitted: torch.Tensor  # (B, k_used+1): row b emits emitted[b, : n_accepted[b] + 1]
    logprobs: torch.Tensor | None  # (B, k_used+1) target log-probs of `emitted`


@dataclass
class Batch:
    """Device-side state of the running rows; rows join by `merge` and leave by `drop`."""

    seqs: list[SequenceState]
    target: CachedModel
    proposer: Proposer | None
    params: SamplingTensors
    pending: torch.Tensor  # (B, 1) the sampled token each row's target has not seen yet

    @property
    def want_logprobs(self) -> bool:
        return any(s.params.logprobs for s in self.seqs)

    def advance(self, next_tokens: torch.Tensor, finished: list[bool]) -> None:
        """The sampled tokens are the next step's pending input; finished rows leave."""
        self.pending = next_tokens.unsqueeze(1)
        self.drop(finished)

    def drop(self, leaving: list[bool]) -> None:
        """Remove rows from the batch, their cache slots and drafter state included."""
        if not any(leaving):
            return
        keep_list = [i for i, gone in enumerate(leaving) if not gone]
        self.seqs = [self.seqs[i] for i in keep_list]
        if not self.seqs:
            return
        keep = torch.tensor(keep_list, dtype=torch.long, device=self.pending.device)
        self.target.select(keep)
        if self.proposer is not None:
            self.proposer.select(keep)
        self.params = self.params.select(keep)
        self.pending = self.pending[keep]

    def merge(self, other: Batch) -> None:
        """Append other's rows (just admitted: prefilled, first token sampled) to this batch."""
        self.seqs = self.seqs + other.seqs
        self.target.merge(other.target)
        if self.proposer is not None:
            self.proposer.merge(other.proposer)
        self.params = self.params.merge(other.params)
        self.pending = torch.cat([self.pending, other.pending])
