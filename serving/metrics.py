"""Throughput and speculative-decoding figures, per generate() call and cumulative per engine."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from serving.protocol import Completion


@dataclass
class EngineStats:
    """Counters summed over generate() calls (what a Serve replica exports)."""

    requests: int = 0  # completions returned
    prompt_tokens: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0  # wall time spent inside generate()
    verify_steps: int = 0  # per sequence: target forward passes that yielded tokens for it
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def record(self, completions: Sequence[Completion], wall_s: float) -> None:
        self.busy_s += wall_s
        for c in completions:
            m = c.metrics
            self.requests += 1
            self.prompt_tokens += m.prompt_tokens
            self.generated_tokens += m.generated_tokens
            self.verify_steps += m.verify_steps
            self.draft_tokens += m.draft_tokens
            self.accepted_tokens += m.accepted_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.busy_s if self.busy_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (vLLM's definition); 0 without drafts."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verify step, the bonus/corrected token included (1.0 without drafts)."""
        return (self.accepted_tokens + self.verify_steps) / self.verify_steps if self.verify_steps else 0.0

    def as_dict(self) -> dict[str, float]:
        out = asdict(self)
        out.update(
            tokens_per_s=self.tokens_per_s,
            acceptance_rate=self.acceptance_rate,
            mean_accepted_length=self.mean_accepted_length,
        )
        return out


def summarize(completions: Sequence[Completion], wall_s: float) -> dict[str, float]:
    """One call's figures: throughput, acceptance and latency percentiles."""
    stats = EngineStats()
    stats.record(completions, wall_s)
    latencies = sorted(c.metrics.latency_s for c in completions)
    out = stats.as_dict()
    out.update(
        latency_mean_s=statistics.fmean(latencies) if latencies else 0.0,
        latency_p50_s=latencies[len(latencies) // 2] if latencies else 0.0,
        latency_max_s=latencies[-1] if latencies else 0.0,
    )
    return out
