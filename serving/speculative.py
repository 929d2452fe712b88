"""Speculative decoding: the acceptance rule, adaptive k, and the draft-model proposer.

The rule is the modified rejection sampling of Leviathan et al. 2023 (arXiv:2211.17192) and Chen et
al. 2023 (arXiv:2302.01318): draft token x ~ q is kept with probability min(1, p(x)/q(x)); at the
first rejection the target samples from norm(max(0, p - q)); if all k drafts are kept it samples a
bonus token from p. The output is distributed exactly as p. p and q are the *processed* sampling
distributions (temperature, top-k, top-p; one-hot for greedy), so the guarantee is for the
distribution the request asked for, and greedy speculative output is target-only greedy output.

Pure torch: models are reached only through the small `CachedModel` interface the engine provides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from serving.sampling import SamplingTensors, process_logits, sample


@dataclass
class Draft:
    """Up to k proposed tokens per row (fewer columns when no row filled them); a row may propose
    fewer than the width (valid=False on its tail)."""

    tokens: torch.Tensor  # (B, k) long
    valid: torch.Tensor  # (B, k) bool, a prefix of True per row
    probs: torch.Tensor | None  # (B, k, V) the drafter's q; None = deterministic (q is one-hot at tokens)

    @classmethod
    def empty(cls, batch: int, device: torch.device | str) -> Draft:
        return cls(
            torch.zeros(batch, 0, dtype=torch.long, device=device),
            torch.zeros(batch, 0, dtype=torch.bool, device=device),
            None,
        )


def accept(
    p: torch.Tensor, draft: Draft, u_accept: torch.Tensor, u_sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept a prefix of each row's draft and sample the token after it.

    p: (B, k+1, V) target probabilities at the positions that predict draft 1..k and the bonus.
    u_accept: (B, k) and u_sample: (B,) uniforms in [0, 1).
    Returns n_accepted (B,) in [0, k] and next_token (B,): the row emits draft[:n] + [next_token].
    A draft slot with valid=False is never accepted and subtracts nothing from the residual.
    """
    batch, k = draft.tokens.shape
    rows = torch.arange(batch, device=p.device)
    p_x = p[:, :k].gather(-1, draft.tokens.unsqueeze(-1)).squeeze(-1)  # (B, k)
    q_x = (
        torch.ones_like(p_x)
        if draft.probs is None
        else draft.probs.gather(-1, draft.tokens.unsqueeze(-1)).squeeze(-1)
    )
    # u < p/q without dividing: q(x) > 0 for any token the drafter sampled, and p(x) = 0 never passes.
    ok = (u_accept * q_x < p_x) & draft.valid
    n = ok.long().cumprod(dim=-1).sum(dim=-1)  # (B,) length of the accepted prefix

    p_n = p[rows, n]  # (B, V) target distribution at the first rejected (or bonus) position
    at = n.clamp(max=max(k - 1, 0))
    rejected_valid = (n < k) & (draft.valid[rows, at] if k else torch.zeros_like(n, dtype=torch.bool))
    if draft.probs is None:
        # q is one-hot at the rejected token x: max(0, p - q) is p with x's mass removed.
        x = (
            draft.tokens[rows, at].unsqueeze(-1)
            if k
            else torch.zeros(batch, 1, dtype=torch.long, device=p.device)
        )
        residual = p_n.scatter(-1, x, torch.zeros_like(x, dtype=p_n.dtype))
    else:
        residual = (p_n - draft.probs[rows, at]).clamp(min=0)
    residual = torch.where(rejected_valid.unsqueeze(-1), residual, p_n)
    # A rejection with p ~= q leaves a residual of rounding noise; p is then the right distribution.
    empty = residual.sum(dim=-1, keepdim=True) <= 1e-12
    residual = torch.where(empty, p_n, residual)
    return n, sample(residual, u_sample)


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per verify step with k drafts accepted i.i.d. with probability alpha."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def choose_k(alpha: float, draft_cost: float, k_min: int, k_max: int) -> int:
    """The k maximising expected speedup E[tokens](alpha, k) / (1 + k * draft_cost) (Leviathan §3.4).

    The verify pass counts as one target step whatever k is (true while decoding is memory-bound);
    ties go to the smaller k.
    """
    best_k, best = k_min, -math.inf
    for k in range(k_min, k_max + 1):
        gain = expected_tokens(alpha, k) / (1.0 + k * draft_cost)
        if gain > best + 1e-12:
            best_k, best = k, gain
    return best_k


class AcceptanceTracker:
    """Running per-token acceptance probability alpha, decayed so k follows drift.

    Counts accepted drafts over drafts the target actually judged (those up to and including the
    first rejection): accepted / proposed would under-count, since drafts after a rejection are
    discarded without a verdict.
    """

    def __init__(self, decay: float = 0.8, prior: float = 0.5):
        self.decay = decay
        self.accepted = prior
        self.judged = 1.0

    def update(self, n_accepted: torch.Tensor, n_valid: torch.Tensor) -> float:
        judged = n_accepted + (n_accepted < n_valid).long()
        self.accepted = self.decay * self.accepted + float(n_accepted.sum())
        self.judged = self.decay * self.judged + float(judged.sum())
        return self.rate

    @property
    def rate(self) -> float:
        return self.accepted / max(self.judged, 1e-9)


class MeasuredK:
    """k_policy="auto": picks the draft length (0 = no speculation) by measured throughput.

    Each candidate k is an arm with a decayed mean of tokens emitted per row per second of decode
    step, timed around the whole step (draft passes, verify pass, acceptance and the host copy that
    ends the step, which also waits for a GPU). After an opening round that measures every arm, the
    best arm runs, and another arm is probed for `probe_steps` steps when it falls due, its first
    step unmeasured (a drafter that sat out k=0 steps first catches up on their tokens). An arm
    that loses its probe waits twice as long for the next one (from `explore_every` steps up to
    `max_wait`), so a draft that never pays costs less and less to keep checking; one that wins is
    checked often again. No cost model: on a CPU the verify pass grows with k and a draft pass is
    far from free, exactly what Leviathan's model (`choose_k`) assumes away.
    """

    def __init__(
        self,
        candidates: Sequence[int],
        start: int,
        explore_every: int = 48,
        max_wait: int = 1536,
        probe_steps: int = 3,
        decay: float = 0.7,
    ):
        self.arms = sorted(set(candidates) | {0, start})
        self.rate: dict[int, float | None] = dict.fromkeys(self.arms, None)  # tokens per row per s
        self.explore_every, self.max_wait = explore_every, max_wait
        self.probe_steps, self.decay = probe_steps, decay
        self.wait = dict.fromkeys(self.arms, explore_every)
        self.due = dict.fromkeys(self.arms, explore_every)  # the step from which an arm may be probed
        self.steps = 0
        self.k = start
        self._unseen = [a for a in self.arms if a != start]  # every arm is measured once first
        self._probe_left = probe_steps
        self._probing: int | None = None

    def observe(self, tokens: float, seconds: float) -> int:
        """Record the step just run with self.k; returns the k for the next step."""
        self.steps += 1
        first_of_probe = self._probe_left == self.probe_steps
        self._probe_left -= 1
        if not first_of_probe and seconds > 0:
            old, new = self.rate[self.k], tokens / seconds
            self.rate[self.k] = new if old is None else self.decay * old + (1 - self.decay) * new
        if self._probe_left > 0:
            return self.k
        if self._unseen:  # the opening round: each arm once
            self._switch(self._unseen.pop(0))
            return self.k
        best = self.best()
        if self._probing is not None:  # a probe ended: back off from an arm that lost it
            arm, self._probing = self._probing, None
            self.wait[arm] = self.explore_every if arm == best else min(2 * self.wait[arm], self.max_wait)
            self.due[arm] = self.steps + self.wait[arm]
        if self.k != best:
            self._switch(best)
            return self.k
        due = [a for a in self.arms if a != best and self.due[a] <= self.steps]
        if due:
            self._probing = min(due, key=self.due.get)
            self._switch(self._probing)
            return self.k
        self._probe_left = 1  # keep exploiting, measured
        return self.k

    def best(self) -> int:
        measured = {a: r for a, r in self.rate.items() if r is not None}
        return max(measured, key=measured.get) if measured else self.k

    def _switch(self, k: int) -> None:
        self.k = k
        self._probe_left = self.probe_steps


class CachedModel(Protocol):
    """A model with a batched KV cache (serving.engine.CachedModel)."""

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int) -> torch.Tensor: ...

    def rollback(self, n_drop: torch.Tensor) -> None: ...

    def select(self, keep: torch.Tensor) -> None: ...

    def merge(self, other: CachedModel) -> None: ...


class Proposer(Protocol):
    """Drafts tokens for a batch; the engine's decode loop drives start/propose/commit/select."""

    def start(self, tokens: torch.Tensor, valid: torch.Tensor) -> None: ...

    def propose(self, k: int, params: SamplingTensors, u: torch.Tensor) -> Draft:
        """At most k tokens per row; u (B, k) are the row's uniforms for sampling them."""
        ...

    def commit(self, n_accepted: torch.Tensor, next_tokens: torch.Tensor) -> None: ...

    def select(self, keep: torch.Tensor) -> None: ...

    def merge(self, other: Proposer) -> None:
        """Append other's rows (a batch admitted into this one; same proposer type)."""
        ...


class DraftModelProposer:
    """A small model drafts k tokens autoregressively, sampling with the request's own parameters.

    Its cache lags the target by what it has not seen yet (`pending`): after a verify step that
    accepted n of k drafts it keeps draft[:min(n, k-1)] (the ones it fed), and its pending input is
    [draft[k-1] if all were accepted, else a masked hole] + [the target's next token].
    """

    def __init__(self, model: CachedModel):
        self.model = model
        self._k = 0  # drafts proposed this step (0: none since the last commit)
        self._last_drafted: torch.Tensor | None = None  # (B,) draft[k-1], sampled but not yet fed

    def start(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """The prompts become pending input: the drafter reads them on its first `propose`, so a
        batch that never drafts (k_policy="auto" at k=0) never pays for the drafter's prefill."""
        self.pending, self.pending_valid = tokens, valid

    def propose(self, k: int, params: SamplingTensors, u: torch.Tensor) -> Draft:
        tokens, valid = self.pending, self.pending_valid
        drafted, probs = [], []
        for i in range(k):
            logits = self.model.forward(tokens, valid, logits_to_keep=1)[:, -1]
            q = process_logits(logits, params)
            x = sample(q, u[:, i])
            drafted.append(x)
            probs.append(q)
            tokens, valid = x.unsqueeze(-1), torch.ones_like(x, dtype=torch.bool).unsqueeze(-1)
        self._k, self._last_drafted = k, x
        return Draft(
            torch.stack(drafted, 1),
            torch.ones(len(x), k, dtype=torch.bool, device=x.device),
            torch.stack(probs, 1),
        )

    def commit(self, n_accepted: torch.Tensor, next_tokens: torch.Tensor) -> None:
        next_col, ones = (
            next_tokens.unsqueeze(-1),
            torch.ones_like(next_tokens, dtype=torch.bool).unsqueeze(-1),
        )
        if self._k == 0:  # no draft this step: the target's token joins what the drafter has yet to see
            self.pending = torch.cat([self.pending, next_col], 1)
            self.pending_valid = torch.cat([self.pending_valid, ones], 1)
            return
        k = self._k
        fed = k - 1  # draft[:k-1] went through the drafter's cache; draft[k-1] was only sampled
        self.model.rollback(fed - n_accepted.clamp(max=fed))
        last = self._last_drafted
        self.pending = torch.cat([last.unsqueeze(-1), next_col], 1)
        self.pending_valid = torch.cat([(n_accepted == k).unsqueeze(-1), ones], 1)
        self._k = 0

    def select(self, keep: torch.Tensor) -> None:
        self.model.select(keep)
        self.pending, self.pending_valid = self.pending[keep], self.pending_valid[keep]

    def merge(self, other: DraftModelProposer) -> None:
        """Append other's rows; pending inputs are right-aligned, holes padding the shorter side."""
        if self._k or other._k:
            raise RuntimeError("DraftModelProposer.merge between propose and commit")
        self.model.merge(other.model)
        width = max(self.pending.shape[1], other.pending.shape[1])
        pad = torch.nn.functional.pad
        self.pending = torch.cat([pad(p.pending, (width - p.pending.shape[1], 0)) for p in (self, other)])
        self.pending_valid = torch.cat(
            [pad(p.pending_valid, (width - p.pending_valid.shape[1], 0)) for p in (self, other)]
        )
