"""API keys and quotas as plain Python (serving/auth.py): hand-computed token buckets on a fake clock."""

from __future__ import annotations

import hashlib

import pytest

from serving.auth import ANONYMOUS, KeyRing, Quotas, RateLimited, check_exposure, key_id, read_keys
from serving.openai_api import APIError

KEY = "sk-rf-0123456789abcdef"
OTHER = "sk-rf-fedcba9876543210"


def test_key_ring_accepts_a_listed_bearer_key_and_names_it_by_digest_prefix():
    ring = KeyRing.of([KEY, OTHER])
    assert ring.authenticate(f"Bearer {KEY}") == "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
    assert ring.authenticate(f"bearer {OTHER}") == key_id(hashlib.sha256(OTHER.encode()).digest())
    assert KEY not in ring.authenticate(f"Bearer {KEY}")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer ", "Basic abc", KEY, f"Bearer {KEY}x", "Bearer sk-wrong-key-000000"]
)
def test_key_ring_refuses_missing_or_wrong_keys_with_a_401_that_never_echoes_them(header):
    with pytest.raises(APIError) as err:
        KeyRing.of([KEY]).authenticate(header)
    assert err.value.status == 401 and err.value.code == "invalid_api_key"
    assert "sk-" not in str(err.value.body())


def test_key_ring_holds_digests_only_and_no_keys_means_open():
    ring = KeyRing.of([KEY])
    assert KEY.encode() not in b"".join(ring.digests) and KEY not in repr(ring)
    assert KeyRing().authenticate(None) == ANONYMOUS


def test_read_keys_from_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(f"# clients\n{KEY}\n\n  {OTHER}  \n")
    monkeypatch.setenv("RF_KEYS", f" {OTHER}, sk-rf-third-key-000000 ,")
    assert read_keys(str(path), None) == [KEY, OTHER]
    assert read_keys(None, "RF_KEYS") == [OTHER, "sk-rf-third-key-000000"]
    assert read_keys(None, "RF_UNSET_VARIABLE") == []


def test_read_keys_refuses_a_missing_or_empty_file_and_short_keys_without_echoing_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="api_key_file"):
        read_keys(str(tmp_path / "nope"), None)
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_keys(str(tmp_path / "empty"), None)
    monkeypatch.setenv("RF_KEYS", f"{KEY},short1")
    with pytest.raises(ValueError, match=r"at least 16 characters; key number\(s\) \[1\]") as err:
        read_keys(None, "RF_KEYS")
    assert "short1" not in str(err.value)


def test_open_endpoint_is_refused_off_loopback_unless_explicitly_allowed():
    assert check_exposure("127.0.0.1", has_keys=False, allow_unauthenticated=False) is None
    assert check_exposure("0.0.0.0", has_keys=True, allow_unauthenticated=False) is None
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        check_exposure("0.0.0.0", has_keys=False, allow_unauthenticated=False)
    assert "WITHOUT API KEYS" in check_exposure("0.0.0.0", has_keys=False, allow_unauthenticated=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_request_quota_bursts_to_the_minute_budget_then_refills_per_second():
    clock = Clock()
    q = Quotas(requests_per_minute=3, clock=clock)
    for _ in range(3):
        q.admit("a")
    with pytest.raises(RateLimited) as err:
        q.admit("a")
    # 0 left, 3 per 60 s: one request back after 20 s.
    assert (err.value.status, err.value.limit, err.value.retry_after) == (429, "requests", 20)
    assert err.value.kind == "rate_limit_error" and err.value.code == "rate_limit_exceeded"
    q.admit("b")  # another key has its own budget
    clock.now += 19.9
    with pytest.raises(RateLimited):
        q.admit("a")
    clock.now += 0.2
    q.admit("a")


def test_token_quota_admits_while_positive_charges_after_and_waits_out_the_debt():
    clock = Clock()
    q = Quotas(tokens_per_minute=60, clock=clock)  # 1 token per second
    q.admit("a")
    q.charge_tokens("a", 50)  # 10 left
    q.admit("a")
    q.charge_tokens("a", 40)  # -30: overdrawn by the answer's length
    with pytest.raises(RateLimited) as err:
        q.admit("a")
    assert err.value.limit == "tokens" and err.value.retry_after == 31  # 30 s to 0, then past it
    clock.now += 30.0
    with pytest.raises(RateLimited):  # exactly 0 is not positive
        q.admit("a")
    clock.now += 0.5
    q.admit("a")


def test_buckets_never_refill_past_their_capacity_and_zero_means_unlimited():
    clock = Clock()
    q = Quotas(requests_per_minute=2, clock=clock)
    clock.now += 3600
    q.admit("a")
    q.admit("a")
    with pytest.raises(RateLimited):
        q.admit("a")
    unlimited = Quotas(clock=clock)
    for _ in range(1000):
        unlimited.admit("a")
    unlimited.charge_tokens("a", 10**9)
    unlimited.admit("a")
