"""Request parsing without a server: error fields and codes, limits, and how a request becomes a plan."""

from __future__ import annotations

import pytest

from serving.config import RequestLimits
from serving.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    field_path,
    parse_request,
    plan_request,
    read_json,
)

LIMITS = RequestLimits(max_tokens=100, default_max_tokens=20, n=4, best_of=8, stop=2)


def _plan(body: dict, schema=CompletionRequest, prompts: int = 1, max_sequences: int = 16, alias_n: int = 0):
    return plan_request(
        parse_request(schema, {"model": "m", **body}), LIMITS, prompts, max_sequences, alias_n
    )


def test_prompt_forms_all_become_a_list_of_prompts():
    for prompt, want in [
        ("hi", ["hi"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2], [[1, 2]]),
        ([[1], [2, 3]], [[1], [2, 3]]),
    ]:
        assert parse_request(CompletionRequest, {"model": "m", "prompt": prompt}).prompt == want


def test_chat_content_parts_are_joined_and_unknown_fields_ignored():
    req = parse_request(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "user": "someone",
            "some_future_field": 1,
        },
    )
    assert req.messages[0].content == "ab"


def test_defaults_and_best_of_plan():
    plan = _plan({"prompt": "x"})
    assert (plan.params.max_tokens, plan.params.temperature, plan.params.top_p, plan.n, plan.best_of) == (
        20,
        1.0,
        1.0,
        1,
        1,
    )
    plan = _plan({"prompt": "x", "n": 2, "best_of": 6, "temperature": 0.5})
    assert (plan.n, plan.best_of, plan.params.n, plan.params.logprobs) == (2, 6, 6, True)
    assert _plan({"prompt": "x"}, alias_n=4).params.n == 4  # a Best-of-N alias samples 4
    chat = _plan(
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7}, ChatCompletionRequest
    )
    assert chat.params.max_tokens == 7 and not chat.logprobs


@pytest.mark.parametrize(
    "body, prompts, param",
    [
        ({"max_tokens": 101}, 1, "max_tokens"),
        ({"n": 5}, 1, "n"),
        ({"best_of": 9}, 1, "best_of"),
        ({"n": 3, "best_of": 2}, 1, "best_of"),
        ({"stop": ["a", "b", "c"]}, 1, "stop"),
        ({"n": 4}, 5, "n"),  # 5 prompts x 4 samples > 16 sequences per batch
        ({"best_of": 4}, 5, "best_of"),
    ],
)
def test_limits_name_the_field(body, prompts, param):
    with pytest.raises(APIError) as err:
        _plan({"prompt": "x", **body}, prompts=prompts)
    assert (err.value.status, err.value.param, err.value.code) == (400, param, "invalid_value")


def test_body_errors_say_what_is_wrong():
    for body, code in [(b"\xc3(", "invalid_encoding"), (b"{", "invalid_json"), (b'"s"', "invalid_type")]:
        with pytest.raises(APIError) as err:
            read_json(body)
        assert (err.value.status, err.value.param, err.value.code) == (400, None, code)
    assert read_json(b'{"a": 1}') == {"a": 1}


def test_field_paths_read_like_openais():
    assert field_path(("messages", 0, "role")) == "messages[0].role"
    assert field_path(("stream_options", "include_usage")) == "stream_options.include_usage"
