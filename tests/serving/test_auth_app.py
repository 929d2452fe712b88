"""API keys and per-key quotas on the real Serve app over loopback (real Ray Serve, real HTTP, the
official `openai` client): 401 without or with a wrong key, 429 with Retry-After past a quota and
recovery after it, one key never starving another, keys absent from logs and metrics."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
import ray
from net import free_port
from prometheus_client.parser import text_string_to_metric_families
from served_model import save_tiny_models, serving

from serving.app import build_app

MODEL = "reasonforge"
KEY_A = "sk-rf-alpha-4f1c9a7e2b"  # generation and the openai client
KEY_B = "sk-rf-bravo-8d0e3c5a91"  # the token quota
KEY_C = "sk-rf-charlie-1b7f6e2d4c"  # the request quota
WRONG = "sk-rf-wrong-0000000000"
TOKENS_PER_MINUTE = 60
REQUESTS_PER_MINUTE = 120


@pytest.fixture(scope="module")
def url(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    models = save_tiny_models(root)
    (root / "keys").write_text(f"# one per client\n{KEY_A}\n{KEY_B}\n{KEY_C}\n")
    args = {  # as `serve run` passes them
        "model_dir": models.target,
        "speculative": "off",
        "api_key_file": str(root / "keys"),
        "quota.requests_per_minute": str(REQUESTS_PER_MINUTE),
        "quota.tokens_per_minute": str(TOKENS_PER_MINUTE),
    }
    with serving(build_app(args), free_port()) as base:
        yield base


def _get(url: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{url}{path}", headers=headers, timeout=60)


def _complete(url: str, key: str, tokens: int = 16) -> httpx.Response:
    body = {"model": MODEL, "prompt": "The quick", "max_tokens": tokens, "ignore_eos": True, "temperature": 0}
    return httpx.post(
        f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def test_health_stays_open_and_every_api_route_needs_a_valid_key(url):
    assert _get(url, "/health", None).status_code == 200
    for reply in (_get(url, "/v1/models", None), _get(url, "/v1/models", WRONG), _complete(url, WRONG)):
        assert reply.status_code == 401, reply.text
        error = reply.json()["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
        assert reply.headers["www-authenticate"] == "Bearer" and WRONG not in reply.text
    no_key = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=60)
    assert no_key.status_code == 401  # checked before the body is even read
    assert _get(url, "/v1/models", KEY_A).json()["data"][0]["id"] == MODEL
    assert _complete(url, KEY_A).json()["usage"]["completion_tokens"] == 16


def test_the_openai_client_works_with_the_right_key_and_gets_an_authentication_error_without(url):
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_A, max_retries=0, timeout=120)
    out = good.completions.create(model=MODEL, prompt="The quick", max_tokens=4, temperature=0)
    assert out.usage.completion_tokens == 4
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key=WRONG, max_retries=0, timeout=120)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401


def _until_429(send, limit: int) -> tuple[httpx.Response, int]:
    for sent in range(1, limit + 1):
        reply = send()
        if reply.status_code == 429:
            return reply, sent
        assert reply.status_code == 200, reply.text
    pytest.fail(f"no 429 after {limit} requests")


def test_request_quota_answers_429_with_retry_after_spares_other_keys_and_recovers(url):
    reply, sent = _until_429(lambda: _get(url, "/v1/models", KEY_C), 3 * REQUESTS_PER_MINUTE)
    assert sent > REQUESTS_PER_MINUTE  # the whole minute's burst went through first
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    retry_after = int(reply.headers["retry-after"])
    assert 1 <= retry_after <= 60 and KEY_C not in reply.text
    assert _get(url, "/v1/models", KEY_A).status_code == 200  # another client is not starved
    time.sleep(retry_after)
    assert _get(url, "/v1/models", KEY_C).status_code == 200


def test_token_quota_counts_generated_tokens_and_recovers_after_retry_after(url):
    # 60 tokens a minute, 16 a request: the 4th request overdraws, the 5th (or so) waits.
    reply, sent = _until_429(lambda: _complete(url, KEY_B), 12)
    assert sent >= 4 and "tokens per minute" in reply.json()["error"]["message"]
    retry_after = int(reply.headers["retry-after"])
    assert _complete(url, KEY_A, tokens=4).status_code == 200
    time.sleep(retry_after)
    assert _complete(url, KEY_B).status_code == 200


def _metric_samples(name: str) -> list:
    port = ray.nodes()[0]["MetricsExportPort"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name], text


def test_refusals_are_counted_per_key_id_and_no_key_appears_in_metrics_health_or_logs(url):
    health = _get(url, "/health", None).json()
    assert health["unauthenticated"] >= 4 and health["rate_limited"] >= 2
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while time.monotonic() < deadline:
        samples, text = _metric_samples("ray_reasonforge_rejected_requests_total")
        reasons = {s.labels["reason"] for s in samples}
        if {"unauthenticated", "requests_quota", "tokens_quota"} <= reasons:
            break
        time.sleep(1)
    assert {"unauthenticated", "requests_quota", "tokens_quota"} <= reasons
    assert all(
        s.labels["key_id"].startswith("key-") for s in samples if s.labels["reason"] != "unauthenticated"
    )
    per_key, _ = _metric_samples("ray_reasonforge_client_generated_tokens_total")
    assert sum(s.value for s in per_key) >= 16 * 4
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    for secret in (KEY_A, KEY_B, KEY_C, WRONG):
        assert secret not in text and secret not in str(health)
        hits = [p.name for p in logs.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
        assert not hits, f"an API key appears in {hits}"
