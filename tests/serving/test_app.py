"""The Serve app on real Ray Serve and real HTTP (loopback): the OpenAI API, streaming, Best-of-N,
bad input, client disconnects, overload and autoscaling.

One app for the module, built the way `serve run serving.app:build_app key=value ...` builds it
(string args). Its answers are checked against a local Engine with the same models and speculative
setup: a sequence's tokens depend only on its prompt, parameters and seed, not on its batch.
The load test runs last: it scales the deployment to two replicas and back.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import ray
from net import free_port
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families
from served_model import CONTEXT, replica_count, save_tiny_models, serving

from rl.tasks.format import extract_answer
from serving.app import build_app
from serving.best_of_n import SCORERS, select_best
from serving.config import SpeculativeConfig
from serving.engine import Engine
from serving.protocol import SamplingParams
from training.tokenizer import render_prompt

MODEL = "reasonforge"
ARGS = {  # as `serve run` passes them: strings, dotted keys for nested fields
    "speculative": "draft",
    "num_speculative_tokens": "4",
    "k_policy": "fixed",  # the local `engine` below must draft the same lengths to compare acceptance
    "max_batch_size": "8",
    "max_ongoing_requests": "4",
    "max_queued_requests": "2",
    "best_of_alias_n": "4",
    "answer_extractor": "rl.tasks.format:extract_answer",
    "limits.max_tokens": "1500",
    "limits.n": "4",
    "limits.best_of": "4",
    "limits.body_bytes": "65536",
    "autoscaling.min_replicas": "1",
    "autoscaling.max_replicas": "2",
    "autoscaling.target_ongoing_requests": "2",
    "autoscaling.upscale_delay_s": "1",
    "autoscaling.downscale_delay_s": "2",
    "autoscaling.look_back_period_s": "1",
    "autoscaling.metrics_interval_s": "0.5",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def url(ray_session, models):
    app = build_app({"model_dir": models.target, "draft_dir": models.draft, **ARGS})
    with serving(app, free_port()) as base:
        yield base


@pytest.fixture(scope="module")
def engine(models):
    """What the replica runs, locally: same models, same speculative setup."""
    spec = SpeculativeConfig(method="draft", k=4, k_max=8)
    return Engine.from_pretrained(
        models.target, "cpu", draft_dir=models.draft, speculative=spec, max_batch_size=8
    )


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def _health(url: str) -> dict:
    response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 200
    return response.json()


def test_openai_client_completions_match_the_engine(client, engine):
    assert [m.id for m in client.models.list()] == [MODEL, f"{MODEL}-best-of-4"]
    prompts = ["The quick brown", "Reasoning models"]
    out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=16, temperature=0, logprobs=0)
    want = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0.0))
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == [w.text for w in want]
    assert out.choices[0].logprobs.token_logprobs == pytest.approx(want[0].logprobs, abs=1e-4)
    assert out.usage.prompt_tokens == sum(len(w.prompt_token_ids) for w in want)
    assert out.usage.completion_tokens == sum(len(w.token_ids) for w in want)
    details = out.usage.completion_tokens_details  # speculative decoding, in Predicted Outputs' fields
    assert details.accepted_prediction_tokens == sum(w.metrics.accepted_tokens for w in want) > 0


def test_chat_uses_the_tokenizers_chat_template(client, engine):
    question = "What is 3 + 4?"
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=16,
        temperature=0,
        logprobs=True,
    )
    (want,) = engine.generate([render_prompt(question)], SamplingParams(max_tokens=16, temperature=0.0))
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(want.logprobs, abs=1e-4)
    assert choice.finish_reason == want.finish_reason
    assert out.usage.prompt_tokens == len(want.prompt_token_ids)


def test_stream_deltas_join_to_the_non_streamed_text_and_end_with_done(client, engine, url):
    messages = [{"role": "user", "content": "Reasoning models think"}]
    (free,) = engine.generate(
        [render_prompt(messages[0]["content"])], SamplingParams(max_tokens=40, temperature=0)
    )
    # A stop string that first occurs a few characters in, printable, so text before it streams.
    pairs = ((i, free.text[i : i + 2]) for i in range(2, len(free.text) - 1))
    stop = next(p for i, p in pairs if free.text.find(p) == i and p.isprintable() and "\ufffd" not in p)
    kwargs = dict(model=MODEL, messages=messages, max_tokens=40, temperature=0, stop=[stop])
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content == free.text[: free.text.find(stop)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    body = {"model": MODEL, "prompt": "The quick", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e.removeprefix("data: "))["object"] == "text_completion" for e in events[:-1])


def test_n_samples_follow_the_seed(client, engine):
    kwargs = dict(model=MODEL, prompt="The quick", n=3, seed=7, max_tokens=12, temperature=1.0)
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in sorted(first.choices, key=lambda c: c.index)] == [0, 1, 2]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    want = engine.generate(["The quick"], SamplingParams(max_tokens=12, temperature=1.0, n=3, seed=7))
    assert texts == [w.text for w in want] and len(set(texts)) > 1


def test_best_of_n_returns_the_scorers_pick_by_option_and_by_alias(client, engine):
    kwargs = dict(prompt="What is", seed=3, max_tokens=12, temperature=1.0)
    samples = engine.generate(["What is"], SamplingParams(max_tokens=12, temperature=1.0, n=4, seed=3))
    (best,) = select_best(samples, 1, SCORERS["majority_vote"], extract_answer)
    by_option = client.completions.create(model=MODEL, best_of=4, **kwargs)
    by_alias = client.completions.create(model=f"{MODEL}-best-of-4", **kwargs)
    assert by_option.choices[0].text == by_alias.choices[0].text == best.text
    assert by_option.usage.completion_tokens == sum(len(s.token_ids) for s in samples)  # all N were computed


LONG_TEXT = "The quick brown fox. " * 400  # far beyond the context in tokens
BAD_INPUTS = [  # (id, endpoint, body: bytes or JSON, status, param, code)
    ("invalid_json", "completions", b'{"model": "reasonforge", ', 400, None, "invalid_json"),
    ("non_utf8", "completions", b'{"model": "\xff\xfe"}', 400, None, "invalid_encoding"),
    ("not_an_object", "completions", b"[1, 2]", 400, None, "invalid_type"),
    ("missing_prompt", "completions", {"model": MODEL}, 400, "prompt", "missing"),
    ("missing_messages", "chat", {"model": MODEL}, 400, "messages", "missing"),
    (
        "max_tokens_a_string",
        "completions",
        {"model": MODEL, "prompt": "a", "max_tokens": "5"},
        400,
        "max_tokens",
        "int_type",
    ),
    ("n_a_bool", "completions", {"model": MODEL, "prompt": "a", "n": True}, 400, "n", "int_type"),
    (
        "content_a_number",
        "chat",
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        400,
        "messages[0].content",
        "value_error",
    ),
    (
        "unknown_role",
        "chat",
        {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages[0].role",
        "literal_error",
    ),
    (
        "role_the_template_refuses",
        "chat",
        {"model": MODEL, "messages": [{"role": "developer", "content": "hi"}]},
        400,
        "messages",
        "invalid_value",
    ),
    ("empty_prompt", "completions", {"model": MODEL, "prompt": ""}, 400, "prompt", "value_error"),
    ("empty_messages", "chat", {"model": MODEL, "messages": []}, 400, "messages", "too_short"),
    (
        "prompt_beyond_context",
        "completions",
        {"model": MODEL, "prompt": LONG_TEXT},
        400,
        "prompt",
        "context_length_exceeded",
    ),
    (
        "token_ids_beyond_context",
        "completions",
        {"model": MODEL, "prompt": [5] * CONTEXT},
        400,
        "prompt",
        "context_length_exceeded",
    ),
    (
        "token_id_outside_vocab",
        "completions",
        {"model": MODEL, "prompt": [5, 10**6]},
        400,
        "prompt",
        "invalid_value",
    ),
    (
        "max_tokens_over_limit",
        "completions",
        {"model": MODEL, "prompt": "a", "max_tokens": 1501},
        400,
        "max_tokens",
        "invalid_value",
    ),
    (
        "max_tokens_zero",
        "completions",
        {"model": MODEL, "prompt": "a", "max_tokens": 0},
        400,
        "max_tokens",
        "greater_than_equal",
    ),
    ("n_over_limit", "completions", {"model": MODEL, "prompt": "a", "n": 5}, 400, "n", "invalid_value"),
    (
        "best_of_over_limit",
        "completions",
        {"model": MODEL, "prompt": "a", "best_of": 5},
        400,
        "best_of",
        "invalid_value",
    ),
    (
        "best_of_streamed",
        "completions",
        {"model": MODEL, "prompt": "a", "best_of": 2, "stream": True},
        400,
        "best_of",
        "invalid_value",
    ),
    (
        "temperature_too_high",
        "completions",
        {"model": MODEL, "prompt": "a", "temperature": 2.5},
        400,
        "temperature",
        "less_than_equal",
    ),
    (
        "temperature_negative",
        "chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "temperature": -0.1},
        400,
        "temperature",
        "greater_than_equal",
    ),
    (
        "temperature_nan",
        "completions",
        b'{"model": "reasonforge", "prompt": "a", "temperature": NaN}',
        400,
        "temperature",
        "finite_number",
    ),
    ("top_p_zero", "completions", {"model": MODEL, "prompt": "a", "top_p": 0}, 400, "top_p", "greater_than"),
    (
        "top_p_above_one",
        "completions",
        {"model": MODEL, "prompt": "a", "top_p": 1.5},
        400,
        "top_p",
        "less_than_equal",
    ),
    (
        "too_many_stops",
        "completions",
        {"model": MODEL, "prompt": "a", "stop": list("abcde")},
        400,
        "stop",
        "invalid_value",
    ),
    ("empty_stop", "completions", {"model": MODEL, "prompt": "a", "stop": [""]}, 400, "stop", "value_error"),
    (
        "top_logprobs",
        "completions",
        {"model": MODEL, "prompt": "a", "logprobs": 3},
        400,
        "logprobs",
        "unsupported_parameter",
    ),
    (
        "unsupported_penalty",
        "chat",
        {"model": MODEL, "messages": [{"role": "user", "content": "a"}], "presence_penalty": 0.5},
        400,
        "presence_penalty",
        "unsupported_parameter",
    ),
    ("unknown_model", "completions", {"model": "gpt-9", "prompt": "a"}, 404, "model", "model_not_found"),
    (
        "oversized_body",
        "completions",
        {"model": MODEL, "prompt": "a" * 70_000},
        413,
        None,
        "request_too_large",
    ),
]


@pytest.mark.parametrize(
    "endpoint, body, status, param, code",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_a_4xx_naming_the_field_and_the_replica_still_serves(
    url, endpoint, body, status, param, code
):
    path = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}[endpoint]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(
        f"{url}{path}", content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert _health(url)["status"] == "ok"


def test_client_disconnect_mid_stream_frees_the_slot(url):
    before = _health(url)
    body = {"model": MODEL, "prompt": "The quick", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert next(line for line in response.iter_lines() if line.startswith("data: "))
    # The connection is closed here, ~1500 tokens early. The replica must drop the sequence.
    deadline = time.monotonic() + 60
    while (health := _health(url))["running_sequences"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health["running_sequences"] == 0
    assert health["cancelled_sequences"] == before["cancelled_sequences"] + 1
    assert health["generated_tokens"] - before["generated_tokens"] < 1500


def test_a_short_request_finishes_while_a_long_one_admitted_before_it_is_still_streaming(url, client):
    """Continuous batching through real HTTP: the short request does not wait for the long one."""
    body = {"model": MODEL, "prompt": "The quick", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the long one is decoding
        short = client.completions.create(
            model=MODEL, prompt="Reasoning", max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        assert short.usage.completion_tokens == 8
        still_streaming = _health(url)["running_sequences"]
    assert still_streaming == 1  # the long request was still running when the short one answered


def _requests_counted(port: int, endpoint: str, status: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ray_reasonforge_requests_total"
        and (sample.labels.get("endpoint"), sample.labels.get("status")) == (endpoint, status)
    )


def test_prometheus_metrics_count_requests_tokens_latency_and_acceptance(url):
    expected = sum(1 for case in BAD_INPUTS if case[1] == "completions" and case[3] == 400)
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + 60  # Ray's agent exports every few seconds
    while _requests_counted(port, "completions", "400") < expected and time.monotonic() < deadline:
        time.sleep(1)
    assert _requests_counted(port, "completions", "400") == expected
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    for name in [
        "ray_reasonforge_generated_tokens_total",
        "ray_reasonforge_request_latency_s_bucket",
        "ray_reasonforge_time_to_first_token_s_bucket",
        "ray_reasonforge_accepted_draft_tokens_total",
        "ray_reasonforge_draft_tokens_total",
        "ray_reasonforge_acceptance_rate",
        "ray_reasonforge_cancelled_sequences_total",
    ]:
        assert f"\n{name}{{" in text, name


def test_overload_answers_503_quickly_and_replicas_scale_up_and_back_down(url):
    """12 clients against 4 + 2 queued slots per replica: 503s at once, autoscaling to 2, then back."""
    body = {"model": MODEL, "prompt": "The quick", "max_tokens": 48, "ignore_eos": True, "temperature": 0}
    replies: list[tuple[int, float]] = []
    replicas_seen = [replica_count()]
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                start = time.perf_counter()
                status = http.post(f"{url}/v1/completions", json=body).status_code
                replies.append((status, time.perf_counter() - start))
                if status == 503:
                    time.sleep(0.1)  # a client backing off, as openai's does

    clients = [threading.Thread(target=client_loop) for _ in range(12)]
    for t in clients:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (max(replicas_seen) >= 2 and len(replies) >= 60):
        time.sleep(0.5)
        replicas_seen.append(replica_count())
    stop.set()
    for t in clients:
        t.join()

    statuses = [s for s, _ in replies]
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(200) >= 12 and statuses.count(503) >= 1
    shed = sorted(latency for status, latency in replies if status == 503)
    assert shed[len(shed) // 2] < 1.0  # rejected at once, not after queueing
    assert max(replicas_seen) == 2
    deadline = time.monotonic() + 90
    while replica_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert replica_count() == 1
    assert _health(url)["status"] == "ok"
