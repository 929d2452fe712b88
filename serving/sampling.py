"""Logits -> sampling distribution -> token, per row of a batch, with per-request parameters and seeds.

Pure torch. Every row carries its own temperature / top-k / top-p, so one batch mixes greedy and
sampled requests. Randomness enters only as uniforms in [0, 1) drawn from one CPU `torch.Generator`
per sequence (`draw_uniforms`), so a sequence's samples depend on its seed and not on which other
sequences share its batch, and CPU and CUDA runs draw the same numbers. Sampling is by inverse CDF
on those uniforms, which also lets tests drive it with hand-picked values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SamplingTensors:
    """Per-row sampling parameters on the logits' device, plus host-side summaries of them.

    The summaries let the per-step code branch without a device sync. After `select` they may
    overstate (the only top-k row left), which costs a no-op pass, never a wrong result.
    """

    temperature: torch.Tensor  # (B,) float; 0 = greedy
    top_k: torch.Tensor  # (B,) long; 0 = off
    top_p: torch.Tensor  # (B,) float; 1 = off
    all_greedy: bool = False
    any_greedy: bool = True
    max_top_k: int = 0  # largest top_k of any row; 0 = no row uses top-k
    any_top_p: bool = True

    @classmethod
    def build(
        cls,
        temperature: Sequence[float],
        top_k: Sequence[int],
        top_p: Sequence[float],
        device: torch.device | str = "cpu",
    ) -> SamplingTensors:
        return cls(
            temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
            top_k=torch.tensor(top_k, dtype=torch.long, device=device),
            top_p=torch.tensor(top_p, dtype=torch.float32, device=device),
            all_greedy=all(t == 0 for t in temperature),
            any_greedy=any(t == 0 for t in temperature),
            max_top_k=max(top_k, default=0),
            any_top_p=any(p < 1 for p in top_p),
        )

    def _with(self, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> SamplingTensors:
        return SamplingTensors(
            temperature, top_k, top_p, self.all_greedy, self.any_greedy, self.max_top_k, self.any_top_p
        )

    def select(self, idx: torch.Tensor) -> SamplingTensors:
        return self._with(self.temperature[idx], self.top_k[idx], self.top_p[idx])

    def merge(self, other: SamplingTensors) -> SamplingTensors:
        """This batch's rows, then other's (rows joining a running batch)."""
        return SamplingTensors(
            torch.cat([self.temperature, other.temperature]),
            torch.cat([self.top_k, other.top_k]),
            torch.cat([self.top_p, other.top_p]),
            self.all_greedy and other.all_greedy,
            self.any_greedy or other.any_greedy,
            max(self.max_top_k, other.max_top_k),
            self.any_top_p or other.any_top_p,
        )

    def repeat_interleave(self, n: int) -> SamplingTensors:
        """Each row n times in a row, to process (B, n, V) logits flattened to (B*n, V)."""
        return self._with(*(t.repeat_interleave(n) for t in (self.temperature, self.top_k, self.top_p)))


def _effective_temperature(temperature: torch.Tensor) -> torch.Tensor:
    return torch.where(temperature > 0, temperature, torch.ones_like(temperature))


def _mask_top_k(scaled: torch.Tensor, top_k: torch.Tensor, k_max: int) -> torch.Tensor:
    k_max = min(k_max, scaled.shape[-1])
    kth = scaled.topk(k_max, dim=-1).values  # (N, k_max), descending
    k_idx = (top_k.clamp(1, k_max) - 1).unsqueeze(-1)
    threshold = kth.gather(-1, k_idx)  # (N, 1): the row's k-th largest value
    threshold = torch.where(top_k.unsqueeze(-1) > 0, threshold, torch.full_like(threshold, -torch.inf))
    return scaled.masked_fill(scaled < threshold, -torch.inf)


def _mask_top_p(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    # A token is dropped once the tokens before it already reach top_p; the first always stays.
    drop_sorted = mass_before >= top_p.unsqueeze(-1)
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scaled.masked_fill(drop, -torch.inf)


def process_logits(logits: torch.Tensor, params: SamplingTensors) -> torch.Tensor:
    """(N, V) logits -> (N, V) probabilities of the distribution each row samples from.

    Temperature, then top-k, then top-p (on the temperature-scaled distribution, as vLLM and HF do).
    Greedy rows (temperature 0) get a one-hot at the argmax, so the speculative acceptance rule
    needs no special case: accepting x with prob min(1, p(x)/q(x)) against a one-hot p is "x is the
    argmax", and the residual is the argmax itself.
    """
    logits = logits.float()
    if params.all_greedy:  # the common RL-eval / benchmark case: skip the softmax
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    scaled = logits / _effective_temperature(params.temperature).unsqueeze(-1)
    if params.max_top_k > 0:
        scaled = _mask_top_k(scaled, params.top_k, params.max_top_k)
    if params.any_top_p:
        scaled = _mask_top_p(scaled, params.top_p)
    probs = scaled.softmax(dim=-1)
    if params.any_greedy:
        one_hot = torch.zeros_like(probs).scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        probs = torch.where((params.temperature == 0).unsqueeze(-1), one_hot, probs)
    return probs


def sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample: (N, V) probabilities (need not sum to 1) and (N,) uniforms -> (N,) ids.

    Picks the first token whose cumulative mass exceeds u * total, so zero-probability tokens are
    never chosen; the clamp guards the float case u * total >= cdf[-1].
    """
    cdf = probs.float().cumsum(dim=-1)
    target = u.to(cdf.device, cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    vocab = torch.arange(probs.shape[-1], device=probs.device)
    last_nonzero = torch.where(probs > 0, vocab, torch.zeros_like(vocab)).amax(dim=-1)
    return torch.minimum(idx, last_nonzero)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T)[token] for (N, V) logits, (N,) tokens, (N,) temperatures (0 -> T=1)."""
    scaled = logits.float() / _effective_temperature(temperature).unsqueeze(-1)
    return scaled.log_softmax(dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def draw_uniforms(generators: Sequence[torch.Generator], n: int, device: torch.device | str) -> torch.Tensor:
    """(B, n) uniforms in [0, 1), row b from generators[b]; one host-to-device copy."""
    if n == 0:
        return torch.empty(len(generators), 0, device=device)
    rows = torch.stack([torch.rand(n, generator=g) for g in generators])
    return rows.to(device=device)
