"""Sending many requests to the endpoint at a fixed concurrency, and summarising their latencies.

Used by the `serve` stage (answering the held-out prompts) and `benchmarks/bench_serve.py`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Reply:
    status: int
    latency_s: float  # request sent -> whole response read
    body: dict[str, Any]  # the JSON response (OpenAI's error object on a 4xx/5xx; {} if not JSON)


async def post_all(
    url: str,
    payloads: Sequence[dict[str, Any]],
    concurrency: int,
    timeout_s: float = 600.0,
    api_key: str | None = None,
) -> list[Reply]:
    """POST each payload to `url`, at most `concurrency` in flight; replies in payload order."""
    limit = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:

        async def one(payload: dict[str, Any]) -> Reply:
            async with limit:
                start = time.perf_counter()
                response = await client.post(url, json=payload)
                latency = time.perf_counter() - start
            try:
                body = response.json()
            except ValueError:  # Serve's own 503 is plain text
                body = {}
            return Reply(response.status_code, latency, body)

        return await asyncio.gather(*(one(p) for p in payloads))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in (0, 100]; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(replies: Sequence[Reply], wall_s: float) -> dict[str, float]:
    """Throughput, latency percentiles and speculative acceptance over the successful replies."""
    ok = [r for r in replies if r.status == 200]
    usages = [r.body.get("usage", {}) for r in ok]
    generated = sum(u.get("completion_tokens", 0) for u in usages)
    details = [u.get("completion_tokens_details") or {} for u in usages]
    accepted = sum(d.get("accepted_prediction_tokens", 0) for d in details)
    drafted = accepted + sum(d.get("rejected_prediction_tokens", 0) for d in details)
    latencies = [r.latency_s for r in ok]
    return {
        "requests": float(len(replies)),
        "ok": float(len(ok)),
        "status_503": float(sum(r.status == 503 for r in replies)),
        "errors_other": float(sum(r.status not in (200, 503) for r in replies)),
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "tokens_per_s": generated / wall_s if wall_s > 0 else 0.0,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p99_s": percentile(latencies, 99),
        "acceptance_rate": accepted / drafted if drafted else 0.0,
    }
