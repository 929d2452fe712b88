"""OpenAI API requests: parsing, validation and OpenAI-style error objects (no Ray, no model).

A request is checked in layers, and any failure is an `APIError`: a 4xx whose body is OpenAI's
`{"error": {"message", "type", "param", "code"}}`, with `param` naming the offending field.
  1. bytes: size (413), UTF-8, a JSON object;
  2. types and ranges (pydantic, strict: "1" is not a number, true is not an integer);
  3. this server's limits (`RequestLimits`) and fields it cannot honour (`check_request`);
  4. the prompt against the tokenizer and the model's context (`encode_prompts`, `render_chat`).
Unknown fields are ignored, as OpenAI does; known fields this server does not implement are
rejected unless they carry their no-op value, so a client never silently gets something else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from serving.config import RequestLimits
from serving.protocol import SamplingParams


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _prompt_list(value: Any) -> list[str | list[int]]:
    """OpenAI's prompt forms: a string, a list of strings, token ids, or a list of token-id lists."""
    if isinstance(value, str) or _is_ids(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(p, str) or _is_ids(p) for p in value):
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of such lists")
    if any(len(p) == 0 for p in value):
        raise ValueError("is empty; give at least one character or token")
    return value


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _stop_list(value: Any) -> list[str]:
    if value is None:
        return []
    strings = [value] if isinstance(value, str) else value
    if not isinstance(strings, list) or not all(isinstance(s, str) and s for s in strings):
        raise ValueError("must be a non-empty string or a list of non-empty strings")
    return strings


def _text_content(value: Any) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts."""
    if isinstance(value, str):
        return value
    parts_ok = isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
    )
    if not parts_ok:
        raise ValueError('must be a string or a list of {"type": "text", "text": "..."} parts')
    return "".join(p["text"] for p in value)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class StreamOptions(_Strict):
    include_usage: bool | None = None


class _GenerationRequest(_Strict):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    best_of: int | None = Field(None, ge=1)  # Best-of-N samples per prompt (an extension for chat)
    stop: Annotated[list[str], PlainValidator(_stop_list)] = Field(default_factory=list)
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # an extension (vLLM's): keep generating past EOS


class CompletionRequest(_GenerationRequest):
    prompt: Annotated[list[str | list[int]], PlainValidator(_prompt_list)]
    logprobs: int | None = Field(None, ge=0, le=5)


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, PlainValidator(_text_content)]


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


R = TypeVar("R", CompletionRequest, ChatCompletionRequest)

# Fields this server does not implement -> the values that ask for nothing (null is always fine).
NO_OP_VALUES: dict[str, tuple] = {
    "echo": (False,),
    "suffix": ("",),
    "logit_bias": ({},),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "tools": ([],),
    "functions": ([],),
    "response_format": ({"type": "text"},),
}


def read_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(
            400, f"request body is not valid UTF-8 (bad byte at offset {err.start})", None, "invalid_encoding"
        ) from err
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise APIError(
            400,
            f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
            None,
            "invalid_json",
        ) from err
    if not isinstance(obj, dict):
        raise APIError(
            400, f"request body must be a JSON object, got a JSON {type(obj).__name__}", None, "invalid_type"
        )
    return obj


def parse_request(schema: type[R], obj: dict[str, Any]) -> R:
    """Validate a JSON object against `schema`; the first problem becomes a 400 naming its field."""
    for name, no_ops in NO_OP_VALUES.items():
        value = obj.get(name)
        if value is not None and not any(type(value) is type(v) and value == v for v in no_ops):
            raise APIError(
                400,
                f"{name}={value!r} is not supported by this server; leave it out",
                name,
                "unsupported_parameter",
            )
    try:
        return schema.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        param = field_path(first["loc"])
        shown = json.dumps(first.get("input"), default=str)[:80] if first["type"] != "missing" else ""
        message = f"{param}: {first['msg'].removeprefix('Value error, ')}" + (
            f" (got {shown})" if shown else ""
        )
        raise APIError(400, message, param, first["type"]) from err


def field_path(loc: Sequence[str | int]) -> str:
    """pydantic's ('messages', 0, 'role') -> OpenAI's 'messages[0].role'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


@dataclass
class Plan:
    """How to answer a validated request: the engine's parameters and what to return per prompt."""

    params: SamplingParams  # params.n = samples drawn per prompt (best_of when Best-of-N)
    n: int  # choices returned per prompt
    best_of: int  # samples per prompt that Best-of-N picks from; == n when not Best-of-N
    stream: bool
    include_usage: bool  # streaming: a last chunk with token counts
    logprobs: bool


def plan_request(
    req: CompletionRequest | ChatCompletionRequest,
    limits: RequestLimits,
    num_prompts: int,
    max_sequences: int,
    best_of_default: int = 0,
) -> Plan:
    """Apply this server's limits; `best_of_default` > 0 is a Best-of-N model alias's N."""
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or limits.default_max_tokens
    n = req.n or 1
    best_of = req.best_of or best_of_default or n
    want_logprobs = _wants_logprobs(req)
    checks = [
        ("max_tokens", max_tokens <= limits.max_tokens, f"at most {limits.max_tokens}"),
        ("n", n <= limits.n, f"at most {limits.n}"),
        ("best_of", best_of <= limits.best_of, f"at most {limits.best_of}"),
        ("best_of", best_of >= n, f"at least n={n}, the choices it picks from"),
        (
            "best_of",
            best_of == n or not req.stream,
            "equal to n when streaming (Best-of-N picks after sampling)",
        ),
        ("stop", len(req.stop) <= limits.stop, f"at most {limits.stop} strings"),
        (
            "n" if best_of == n else "best_of",
            num_prompts * best_of <= max_sequences,
            f"such that prompts x samples <= {max_sequences} (got {num_prompts} x {best_of})",
        ),
    ]
    for param, ok, expected in checks:
        if not ok:
            value = {"max_tokens": max_tokens, "n": n, "best_of": best_of, "stop": req.stop}[param]
            raise APIError(
                400, f"{param}={value!r} is out of range: must be {expected}", param, "invalid_value"
            )
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=list(req.stop),
        seed=req.seed,
        n=best_of,
        logprobs=want_logprobs or best_of > n,  # scorers may rank by log-probability
        ignore_eos=bool(req.ignore_eos),
    )
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Plan(params, n, best_of, bool(req.stream), include_usage, want_logprobs)


def _wants_logprobs(req: CompletionRequest | ChatCompletionRequest) -> bool:
    """Per-token log-probs of the chosen tokens; alternatives (top logprobs) are not computed."""
    if isinstance(req, CompletionRequest):
        top, param = req.logprobs, "logprobs"
        wanted = req.logprobs is not None
    else:
        top, param = req.top_logprobs, "top_logprobs"
        wanted = bool(req.logprobs)
    if top:
        raise APIError(
            400,
            f"{param}={top}: top alternatives are not computed by this server; use 0",
            param,
            "unsupported_parameter",
        )
    return wanted


def encode_prompts(
    prompts: list[str | list[int]], tokenizer, context: int, vocab: int, param: str
) -> list[list[int]]:
    """Token ids of each prompt, each leaving room for at least one generated token.

    A chat prompt (`param == "messages"`) is the chat template's text, which already holds the
    model's BOS and turn markers, so the tokenizer adds nothing (as in training and vLLM's chat
    API); a raw completion prompt gets the tokenizer's usual special tokens.
    """
    out = []
    special = param != "messages"
    for i, prompt in enumerate(prompts):
        where = param if len(prompts) == 1 else f"{param}[{i}]"
        ids = tokenizer.encode(prompt, add_special_tokens=special) if isinstance(prompt, str) else prompt
        if not ids:
            raise APIError(400, f"{where} encodes to no tokens", where, "invalid_value")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(
                400, f"{where} has token ids outside [0, {vocab}): {bad[:5]}", where, "invalid_value"
            )
        if len(ids) >= context:
            raise APIError(
                400,
                f"{where} has {len(ids)} tokens; this model's context is {context} tokens, "
                f"so a prompt may have at most {context - 1}",
                where,
                "context_length_exceeded",
            )
        out.append(list(ids))
    return out


def render_chat(messages: list[ChatMessage], tokenizer) -> str:
    """The prompt text the tokenizer's chat template makes of the conversation."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise APIError(
            400,
            "this model's tokenizer has no chat template; use /v1/completions",
            "messages",
            "no_chat_template",
        )
    from jinja2.exceptions import TemplateError

    try:
        return tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=False,
        )
    except TemplateError as err:  # the template refuses the conversation (e.g. a role it lacks)
        raise APIError(
            400, f"messages: the model's chat template refuses them: {err}", "messages", "invalid_value"
        ) from err
