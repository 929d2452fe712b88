"""OpenAI API responses: completion and chat objects, stream chunks, server-sent events, usage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from serving.protocol import Completion

SSE_DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completions: Sequence[Completion]) -> dict[str, Any]:
    """Token counts; every sample counts, also those Best-of-N discarded (they were computed).

    Speculative decoding reports through OpenAI's Predicted Outputs fields, which mean the same
    thing: draft tokens the completion kept (accepted) and those it did not (rejected).
    """
    generated = sum(c.metrics.generated_tokens for c in completions)
    drafted = sum(c.metrics.draft_tokens for c in completions)
    accepted = sum(c.metrics.accepted_tokens for c in completions)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": generated,
        "total_tokens": prompt_tokens + generated,
        "completion_tokens_details": {
            "accepted_prediction_tokens": accepted,
            "rejected_prediction_tokens": drafted - accepted,
        },
    }


@dataclass
class TokenLogprobs:
    tokens: list[str]  # each generated token decoded on its own
    logprobs: list[float]
    text_offset: int = 0  # where the first token starts in the choice's text (streaming: text sent so far)


class CompletionsAPI:
    """Shapes of POST /v1/completions."""

    object: ClassVar[str] = "text_completion"
    chunk_object: ClassVar[str] = "text_completion"
    id_prefix: ClassVar[str] = "cmpl-"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None, logprobs: TokenLogprobs | None) -> dict:
        return {
            "index": index,
            "text": text,
            "logprobs": _legacy_logprobs(logprobs),
            "finish_reason": finish_reason,
        }

    @staticmethod
    def chunk_choice(
        index: int, text: str, finish_reason: str | None, logprobs: TokenLogprobs | None, first: bool
    ) -> dict:
        return CompletionsAPI.choice(index, text, finish_reason, logprobs)


class ChatAPI:
    """Shapes of POST /v1/chat/completions."""

    object: ClassVar[str] = "chat.completion"
    chunk_object: ClassVar[str] = "chat.completion.chunk"
    id_prefix: ClassVar[str] = "chatcmpl-"

    @staticmethod
    def choice(index: int, text: str, finish_reason: str | None, logprobs: TokenLogprobs | None) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": _chat_logprobs(logprobs),
            "finish_reason": finish_reason,
        }

    @staticmethod
    def chunk_choice(
        index: int, text: str, finish_reason: str | None, logprobs: TokenLogprobs | None, first: bool
    ) -> dict:
        delta: dict[str, str] = {"role": "assistant"} if first else {}
        if text or first:
            delta["content"] = text
        return {
            "index": index,
            "delta": delta,
            "logprobs": _chat_logprobs(logprobs),
            "finish_reason": finish_reason,
        }


API = CompletionsAPI | ChatAPI


def response(api: type[API], rid: str, created: int, model: str, choices: list[dict], usage: dict) -> dict:
    return {
        "id": rid,
        "object": api.object,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def chunk(
    api: type[API], rid: str, created: int, model: str, choices: list[dict], usage: dict | None = None
) -> dict:
    out = {"id": rid, "object": api.chunk_object, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _legacy_logprobs(lp: TokenLogprobs | None) -> dict | None:
    if lp is None:
        return None
    offsets, at = [], lp.text_offset
    for token in lp.tokens:
        offsets.append(at)
        at += len(token)
    return {"tokens": lp.tokens, "token_logprobs": lp.logprobs, "top_logprobs": None, "text_offset": offsets}


def _chat_logprobs(lp: TokenLogprobs | None) -> dict | None:
    if lp is None:
        return None
    return {
        "content": [
            {"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
            for t, v in zip(lp.tokens, lp.logprobs, strict=True)
        ]
    }


def models_list(names: Sequence[str], created: int) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "reasonforge"} for name in names
        ],
    }
