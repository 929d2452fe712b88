"""What callers hand the engine and what it hands back: sampling parameters and completions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    max_tokens: int = 256  # most new tokens per completion (also capped by the model's context length)
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int = 0  # keep only the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p
    stop: list[str] = field(default_factory=list)  # text is cut before the first of these; finish "stop"
    # Same seed and prompt -> same completion (also under speculative k_policy="auto", which holds k
    # fixed while a seeded sampled row is decoding); None draws a fresh seed.
    seed: int | None = None
    n: int = 1  # completions per prompt (a GRPO group); sample i uses a seed derived from (seed, i)
    logprobs: bool = True  # return log pi(token) per generated token (see Completion.logprobs)
    ignore_eos: bool = False  # keep going past EOS (benchmarks want fixed lengths)

    def __post_init__(self) -> None:
        checks = {
            "max_tokens": self.max_tokens >= 1,
            "temperature": self.temperature >= 0.0,
            "top_k": self.top_k >= 0,
            "top_p": 0.0 < self.top_p <= 1.0,
            "n": self.n >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"SamplingParams: invalid {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}; expected "
                "max_tokens>=1, temperature>=0, top_k>=0, 0<top_p<=1, n>=1"
            )
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not s for s in self.stop):
            raise ValueError(f"SamplingParams.stop={self.stop!r} contains an empty string")


@dataclass
class RequestMetrics:
    latency_s: float  # from the generate() call to this completion's last token
    first_token_s: float  # from the generate() call to this completion's first token
    prompt_tokens: int
    generated_tokens: int
    verify_steps: int  # target forward passes that produced tokens for this completion
    draft_tokens: int = 0  # tokens proposed by the drafter (0 without speculative decoding)
    accepted_tokens: int = 0  # of those, accepted by the target


@dataclass
class Completion:
    prompt_index: int  # which prompt of the generate() call
    sample_index: int  # which of its n samples
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids; EOS and the token that completes a stop string are kept
    text: str  # decoded without special tokens, cut before the stop string
    # log softmax(logits / T)[token] of the target for each token_id (T=1 when greedy): the policy's
    # log-prob before top-k/top-p truncation, which is what an RL learner recomputes.
    logprobs: list[float] | None
    finish_reason: FinishReason
    metrics: RequestMetrics
