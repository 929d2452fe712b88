"""API keys and per-key quotas for the OpenAI endpoint (no Ray, no model: plain, testable Python).

Keys come from a file (`serve.api_key_file`, one per line) or an environment variable
(`serve.api_key_env`, comma-separated), read where the app is built; never from the config itself,
because configs are copied into manifests, Hydra's `.hydra/`, wandb and the written Serve config.
Only SHA-256 digests of the keys reach the replicas, which compare the digest of a presented key
with each of them in constant time (`hmac.compare_digest`, every digest, no early exit). A client
is known in quotas and metrics by `key_id`, a short prefix of its key's digest, never the key.

Quotas are token buckets per key and per replica (Serve routes a client's requests to any
replica, so with R replicas a client can get up to R times the quota): a request is admitted while
the key has a whole request left this minute and a positive generated-token balance; the tokens it
generates are charged when it ends, so a long answer may overdraw the balance, and the key then
waits (429 with Retry-After) until the refill covers the debt.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.openai_api import APIError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ANONYMOUS = "anonymous"  # the key_id of every request when no keys are configured


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key_digest: bytes) -> str:
    return "key-" + key_digest.hex()[:8]


def read_keys(key_file: str | None, env_var: str | None) -> list[str]:
    """The configured keys: every non-blank, non-`#` line of `key_file` plus `$env_var`'s
    comma-separated entries. A named file that is missing or holds no key is an error."""
    keys: list[str] = []
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"serve.api_key_file={key_file!r} does not exist")
        from_file = [
            s for line in path.read_text().splitlines() if (s := line.strip()) and not s.startswith("#")
        ]
        if not from_file:
            raise ValueError(f"serve.api_key_file={key_file!r} holds no key (one key per line)")
        keys += from_file
    if env_var:
        keys += [s for part in os.environ.get(env_var, "").split(",") if (s := part.strip())]
    short = [i for i, k in enumerate(keys) if len(k) < 16]
    if short:
        # The position, not the key: keys are never echoed.
        raise ValueError(f"API keys must be at least 16 characters; key number(s) {short} are shorter")
    return keys


def check_exposure(host: str, has_keys: bool, allow_unauthenticated: bool) -> str | None:
    """Refuse an open endpoint on a non-loopback address; returns the warning to log, if any."""
    if has_keys or host in LOOPBACK_HOSTS:
        return None
    if not allow_unauthenticated:
        raise ValueError(
            f"serve.host={host!r} is reachable from other machines but no API key is configured: set "
            "serve.api_key_file or the variable named by serve.api_key_env, or "
            "serve.allow_unauthenticated=true to serve it open on purpose"
        )
    return (
        f"SECURITY WARNING: serving on {host} WITHOUT API KEYS (serve.allow_unauthenticated=true): anyone "
        "who reaches this address can generate"
    )


@dataclass(frozen=True)
class KeyRing:
    """Digests of the accepted keys; empty means the endpoint is open."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, keys: list[str]) -> KeyRing:
        return cls(tuple(digest(k) for k in keys))

    def authenticate(self, authorization: str | None) -> str:
        """The caller's key_id from an `Authorization: Bearer <key>` header, else a 401."""
        if not self.digests:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise APIError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                None,
                "invalid_api_key",
                kind="invalid_request_error",
            )
        candidate = digest(presented.strip())
        found = None
        for d in self.digests:  # all of them, so the time taken says nothing about which matched
            if hmac.compare_digest(candidate, d):
                found = d
        if found is None:
            raise APIError(401, "incorrect API key provided", None, "invalid_api_key")
        return key_id(found)


class RateLimited(APIError):
    """A 429 for `key`: `limit` ("requests" or "tokens") ran out; `retry_after` whole seconds."""

    def __init__(self, key: str, limit: str, waits: dict[str, float], quotas: Quotas):
        per_minute = quotas.requests_per_minute if limit == "requests" else quotas.tokens_per_minute
        self.limit = limit
        self.retry_after = max(1, math.ceil(max(waits.values())))
        super().__init__(
            429,
            f"rate limit exceeded for {key}: {per_minute} {limit} per minute; retry in {self.retry_after} s",
            None,
            "rate_limit_exceeded",
            kind="rate_limit_error",
        )


@dataclass
class Bucket:
    """A token bucket: `capacity` units, refilled at capacity per minute; may go negative."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def seconds_until(self, level: float) -> float:
        return max(0.0, (level - self.level) * 60.0 / self.capacity)


@dataclass
class Quotas:
    """Per-key request and generated-token budgets per minute; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)

    def _bucket(self, key: str, kind: str, capacity: int, now: float) -> Bucket:
        bucket = self._buckets.setdefault((key, kind), Bucket(float(capacity), float(capacity), now))
        bucket.refill(now)
        return bucket

    def admit(self, key: str) -> None:
        """Take one request from `key`'s budget, or raise RateLimited (a 429 with `retry_after`)."""
        now = self.clock()
        waits = {}
        if self.requests_per_minute:
            requests = self._bucket(key, "requests", self.requests_per_minute, now)
            if requests.level < 1.0:
                waits["requests"] = requests.seconds_until(1.0)
        if self.tokens_per_minute:
            tokens = self._bucket(key, "tokens", self.tokens_per_minute, now)
            if tokens.level <= 0.0:
                # Strictly positive again: a tiny step past zero.
                waits["tokens"] = tokens.seconds_until(1e-9) + 1e-3
        if waits:
            raise RateLimited(key, max(waits, key=waits.get), waits, self)
        if self.requests_per_minute:
            requests.level -= 1.0

    def charge_tokens(self, key: str, tokens: int) -> None:
        """Charge the tokens a finished (or cancelled) request generated."""
        if self.tokens_per_minute and tokens:
            self._bucket(key, "tokens", self.tokens_per_minute, self.clock()).level -= tokens
