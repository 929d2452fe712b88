"""Prometheus metrics of a Serve replica, exported by Ray's metrics agent (`ray.serve.metrics`).

Serve tags each series with its deployment, replica and application; Ray prefixes the names with
`ray_` and adds `_total` to counters. Acceptance rate is accepted / drafted tokens; both counters
are exported so PromQL can take the ratio over any window,
    rate(ray_reasonforge_accepted_draft_tokens_total[1m]) / rate(ray_reasonforge_draft_tokens_total[1m])
and a gauge carries the replica's running value for dashboards without PromQL. The replica also
keeps plain running totals (`totals`), which GET /health reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ray.serve import metrics

from serving.protocol import Completion

LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


@dataclass
class ReplicaTotals:
    requests: int = 0
    errors: int = 0  # 4xx and 5xx answers
    prompt_tokens: int = 0
    generated_tokens: int = 0  # every token decoded, also for sequences later cancelled
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    cancelled_sequences: int = 0  # dropped because their client went away
    unauthenticated: int = 0  # 401s: no key or a wrong one
    rate_limited: int = 0  # 429s: a key over its quota
    running_sequences: int = 0  # rows in the engine's batch now

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else 0.0


class ServeMetrics:
    def __init__(self) -> None:
        self.totals = ReplicaTotals()
        self._requests = metrics.Counter(
            "reasonforge_requests",
            "HTTP requests answered, by endpoint and status code",
            ("endpoint", "status"),
        )
        self._latency = metrics.Histogram(
            "reasonforge_request_latency_s",
            "Seconds from a request's arrival to its last byte",
            LATENCY_BOUNDARIES_S,
            ("endpoint",),
        )
        self._first_token = metrics.Histogram(
            "reasonforge_time_to_first_token_s",
            "Streaming: seconds from a request's arrival to its first text",
            LATENCY_BOUNDARIES_S,
            ("endpoint",),
        )
        self._prompt_tokens = metrics.Counter(
            "reasonforge_prompt_tokens", "Prompt tokens of answered requests"
        )
        self._generated = metrics.Counter("reasonforge_generated_tokens", "Tokens generated")
        self._drafted = metrics.Counter("reasonforge_draft_tokens", "Speculative draft tokens proposed")
        self._accepted = metrics.Counter(
            "reasonforge_accepted_draft_tokens", "Draft tokens the target accepted"
        )
        self._cancelled = metrics.Counter(
            "reasonforge_cancelled_sequences", "Sequences dropped mid-generation because the client went away"
        )
        # Clients appear by key_id (a prefix of the key's SHA-256), never by key.
        self._rejected = metrics.Counter(
            "reasonforge_rejected_requests",
            "Requests refused before generation: unauthenticated, requests_quota or tokens_quota",
            ("reason", "endpoint", "key_id"),
        )
        self._client_tokens = metrics.Counter(
            "reasonforge_client_generated_tokens", "Tokens generated per API key", ("key_id",)
        )
        self._acceptance = metrics.Gauge(
            "reasonforge_acceptance_rate", "Accepted / proposed draft tokens since the replica started"
        )

    def request(self, endpoint: str, status: int, latency_s: float | None = None) -> None:
        self.totals.requests += 1
        self.totals.errors += status >= 400
        self._requests.inc(tags={"endpoint": endpoint, "status": str(status)})
        if latency_s is not None:
            self._latency.observe(latency_s, tags={"endpoint": endpoint})

    def rejected(self, reason: str, endpoint: str, key_id: str = "") -> None:
        if reason == "unauthenticated":
            self.totals.unauthenticated += 1
        else:
            self.totals.rate_limited += 1
        self._rejected.inc(tags={"reason": reason, "endpoint": endpoint, "key_id": key_id})

    def client_tokens(self, key_id: str, tokens: int) -> None:
        if tokens:  # Ray's counters refuse increments <= 0
            self._client_tokens.inc(tokens, tags={"key_id": key_id})

    def first_token(self, endpoint: str, seconds: float) -> None:
        self._first_token.observe(seconds, tags={"endpoint": endpoint})

    def step(self, new_tokens: int, running: int) -> None:
        """One engine step: tokens it produced and rows still in the batch."""
        self.totals.generated_tokens += new_tokens
        self.totals.running_sequences = running
        if new_tokens:
            self._generated.inc(new_tokens)

    def finished(self, prompt_tokens: int, completions: Sequence[Completion]) -> None:
        """A request's completions, once all of them are done."""
        drafted = sum(c.metrics.draft_tokens for c in completions)
        accepted = sum(c.metrics.accepted_tokens for c in completions)
        t = self.totals
        t.prompt_tokens += prompt_tokens
        t.draft_tokens += drafted
        t.accepted_draft_tokens += accepted
        self._prompt_tokens.inc(prompt_tokens)
        if drafted:
            self._drafted.inc(drafted)
            self._acceptance.set(t.acceptance_rate)
        if accepted:  # Ray's counters refuse increments <= 0
            self._accepted.inc(accepted)

    def cancelled(self, sequences: int) -> None:
        self.totals.cancelled_sequences += sequences
        self._cancelled.inc(sequences)

    def snapshot(self) -> dict[str, float]:
        return {**asdict(self.totals), "acceptance_rate": self.totals.acceptance_rate}
