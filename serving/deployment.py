"""The Serve deployment: an OpenAI-compatible FastAPI app over one Engine per replica.

A request is parsed and checked (`openai_api`), tokenized, and becomes a `Job`, queued to the
replica's one engine thread (`serving.engine_loop`), which batches continuously: a job joins the
running batch at the next decode step (up to `max_batch_size` sequences, each keeping its own
sampling parameters) and leaves the step it is done. Each step's tokens fan back out to the jobs'
handlers, which answer as JSON or as server-sent events. A handler that stops early (Serve cancels
it when its client disconnects) flags its job, and the engine drops the job's rows before its next
step, so the slot and the compute come back.
Serve sends a replica at most `max_ongoing_requests` and queues `max_queued_requests` more; beyond
that its proxy answers 503 at once.

No `from __future__ import annotations` here: Serve's ingress rebuilds the route functions, and
FastAPI then cannot resolve string annotations such as `Request`.
"""

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.auth import KeyRing, Quotas, RateLimited
from serving.batch import SequenceUpdate
from serving.best_of_n import load_callable, resolve_scorer, select_best, whole_text
from serving.config import ServeConfig
from serving.detokenize import TextStream
from serving.engine import Engine, resolve_device
from serving.engine_loop import EngineLoop, Job
from serving.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Plan,
    encode_prompts,
    error_body,
    parse_request,
    plan_request,
    read_json,
    render_chat,
)
from serving.openai_responses import (
    API,
    SSE_DONE,
    ChatAPI,
    CompletionsAPI,
    TokenLogprobs,
    chunk,
    models_list,
    response,
    sse,
    usage,
)
from serving.prometheus import ServeMetrics
from serving.protocol import Completion

log = logging.getLogger("ray.serve")

app = FastAPI(title="ReasonForge", description="OpenAI-compatible completions from a ReasonForge model")


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    body = error_body(f"{request.method} {request.url.path}: {err.detail}", "invalid_request_error")
    return JSONResponse(body, status_code=err.status_code)


@dataclass(frozen=True)
class Endpoint:
    """What differs between /v1/completions and /v1/chat/completions on the way in and out."""

    name: str
    schema: type[CompletionRequest] | type[ChatCompletionRequest]
    prompts: Callable  # (request, tokenizer) -> (prompts, the request field they came from)
    shapes: type[API]


ENDPOINTS = {
    "completions": Endpoint(
        "completions", CompletionRequest, lambda r, tok: (r.prompt, "prompt"), CompletionsAPI
    ),
    "chat": Endpoint(
        "chat", ChatCompletionRequest, lambda r, tok: ([render_chat(r.messages, tok)], "messages"), ChatAPI
    ),
}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it passes `limit` bytes (declared or actual)."""
    declared = request.headers.get("content-length", "")
    too_big = APIError(413, f"request body is over the limit of {limit} bytes", None, "request_too_large")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_big
        chunks.append(part)
    return b"".join(chunks)


@serve.deployment
@serve.ingress(app)
class OpenAIServer:
    """A replica: one engine, the OpenAI routes, Prometheus metrics."""

    def __init__(self, model_dir: str, draft_dir: str | None, cfg: ServeConfig, keys: KeyRing):
        self.cfg = cfg
        self.keys = keys  # digests only (serving.app.key_ring)
        self.quotas = Quotas(cfg.quota.requests_per_minute, cfg.quota.tokens_per_minute)
        device = resolve_device(cfg.device)
        if device.type == "cpu":  # Ray gives the replica num_cpus cores; more threads would oversubscribe
            torch.set_num_threads(max(1, int(cfg.num_cpus_per_replica)))
        self.engine = Engine.from_pretrained(
            model_dir,
            device,
            cfg.dtype,
            draft_dir=draft_dir,
            speculative=cfg.speculative_config(has_draft=draft_dir is not None),
            max_batch_size=cfg.max_batch_size,
            seed=cfg.seed,
            quantize=cfg.quantize,
        )
        self.tokenizer = self.engine.tokenizer
        if self.tokenizer is None:
            raise ValueError(f"model_dir={model_dir!r} has no tokenizer; the OpenAI API needs one")
        config = self.engine.model.config
        self.context, self.vocab = config.max_position_embeddings, config.vocab_size
        self.scorer = resolve_scorer(cfg.best_of_scorer)
        self.extract = (
            load_callable(cfg.answer_extractor, "serve.answer_extractor")
            if cfg.answer_extractor
            else whole_text
        )
        self.models = {cfg.model_name: 0}  # name -> Best-of-N samples it implies (0: none)
        if cfg.best_of_alias_n:
            self.models[f"{cfg.model_name}-best-of-{cfg.best_of_alias_n}"] = cfg.best_of_alias_n
        self.metrics = ServeMetrics()
        self.engine_loop = EngineLoop(self.engine, self.metrics.step)  # the engine is not thread-safe
        self.created = int(time.time())

    @app.get("/health")
    async def health(self) -> dict:
        return {"status": "ok", "models": list(self.models), **self.metrics.snapshot()}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        try:
            self._authenticate(request, "models")
        except APIError as err:
            return self._refuse(err, "models")
        return JSONResponse(models_list(list(self.models), self.created))

    def _authenticate(self, request: Request, endpoint: str) -> str:
        """The caller's key_id after the key check and its quota; raises a 401 or 429 APIError."""
        try:
            client = self.keys.authenticate(request.headers.get("authorization"))
        except APIError:
            self.metrics.rejected("unauthenticated", endpoint)
            raise
        try:
            self.quotas.admit(client)
        except RateLimited as err:
            self.metrics.rejected(f"{err.limit}_quota", endpoint, client)
            raise
        return client

    def _refuse(self, err: APIError, endpoint: str) -> JSONResponse:
        self.metrics.request(endpoint, err.status)
        headers = {}
        if isinstance(err, RateLimited):
            headers["Retry-After"] = str(err.retry_after)
        elif err.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._answer(request, ENDPOINTS["completions"])

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, ENDPOINTS["chat"])

    async def _answer(self, request: Request, endpoint: Endpoint) -> Response:
        started = time.perf_counter()
        try:
            client = self._authenticate(request, endpoint.name)
            job, plan, model = await self._prepare(request, endpoint, client)
        except APIError as err:
            return self._refuse(err, endpoint.name)
        rid = endpoint.shapes.id_prefix + uuid.uuid4().hex
        if plan.stream:
            events = self._stream(endpoint, job, plan, rid, model, started)
            return StreamingResponse(events, media_type="text/event-stream")
        completions = await self._collect(job)
        body = self._respond(endpoint.shapes, job, plan, completions, rid, model)
        self.metrics.request(endpoint.name, 200, time.perf_counter() - started)
        return JSONResponse(body)

    async def _prepare(self, request: Request, endpoint: Endpoint, client: str) -> tuple[Job, Plan, str]:
        req = parse_request(endpoint.schema, read_json(await read_body(request, self.cfg.limits.body_bytes)))
        if req.model not in self.models:
            raise APIError(
                404,
                f"model {req.model!r} does not exist; this server has {sorted(self.models)}",
                "model",
                "model_not_found",
            )
        prompts, param = endpoint.prompts(req, self.tokenizer)
        plan = plan_request(
            req, self.cfg.limits, len(prompts), self.cfg.max_batch_size, self.models[req.model]
        )
        ids = encode_prompts(prompts, self.tokenizer, self.context, self.vocab, param)
        return Job(ids, plan.params, client), plan, req.model

    async def _job_updates(self, job: Job) -> AsyncIterator[list[SequenceUpdate]]:
        """This job's share of each engine step, until all of its sequences finished.

        When the consumer stops early (Serve cancels the handler of a client that went away), the
        `finally` flags the job and the engine drops its rows before the next step.
        """
        remaining, generated = job.sequences, 0
        try:
            async with aclosing(self.engine_loop.updates(job)) as steps:
                async for updates in steps:
                    remaining -= sum(u.completion is not None for u in updates)
                    generated += sum(len(u.token_ids) for u in updates)
                    yield updates
        finally:
            job.cancelled.set()
            if remaining:
                self.metrics.cancelled(remaining)
            self.quotas.charge_tokens(job.client, generated)
            self.metrics.client_tokens(job.client, generated)

    async def _collect(self, job: Job) -> list[Completion]:
        done = []
        async for updates in self._job_updates(job):
            done.extend(u.completion for u in updates if u.completion)
        self.metrics.finished(sum(map(len, job.prompts)), done)
        return sorted(done, key=lambda c: (c.prompt_index, c.sample_index))

    def _respond(
        self, shapes: type[API], job: Job, plan: Plan, completions: list[Completion], rid: str, model: str
    ):
        choices = []
        for p in range(len(job.prompts)):
            samples = [c for c in completions if c.prompt_index == p]
            if plan.best_of > plan.n:
                samples = select_best(samples, plan.n, self.scorer, self.extract)
            for i, c in enumerate(samples):
                lp = self._token_logprobs(c.token_ids, c.logprobs, 0) if plan.logprobs else None
                choices.append(shapes.choice(p * plan.n + i, c.text, c.finish_reason, lp))
        prompt_tokens = sum(map(len, job.prompts))
        return response(shapes, rid, int(time.time()), model, choices, usage(prompt_tokens, completions))

    async def _stream(
        self, endpoint: Endpoint, job: Job, plan: Plan, rid: str, model: str, started: float
    ) -> AsyncIterator[bytes]:
        """Server-sent events: a chunk per decode step with new text, then usage and [DONE]."""
        shapes, created = endpoint.shapes, int(time.time())
        status = 499  # nginx's "client closed request", unless the stream ends otherwise
        texts = {
            (p, s): TextStream(self.tokenizer, job.params.stop)
            for p in range(len(job.prompts))
            for s in range(plan.n)
        }
        opened: set[tuple[int, int]] = set()
        done: list[Completion] = []
        prompt_tokens = sum(map(len, job.prompts))
        waiting_for_text = True
        try:
            async for updates in self._job_updates(job):
                choices = [c for u in updates if (c := self._chunk_choice(shapes, u, texts, opened, plan))]
                if choices:
                    if waiting_for_text and any(t.sent for t in texts.values()):
                        waiting_for_text = False
                        self.metrics.first_token(endpoint.name, time.perf_counter() - started)
                    yield sse(chunk(shapes, rid, created, model, choices))
                done.extend(u.completion for u in updates if u.completion)
            self.metrics.finished(prompt_tokens, done)
            if plan.include_usage:
                yield sse(chunk(shapes, rid, created, model, [], usage(prompt_tokens, done)))
            yield SSE_DONE
            status = 200
        except Exception as err:  # the headers went out already: report in-band, log the traceback
            status = 500
            log.exception("stream %s failed", rid)
            yield sse(error_body(f"generation failed: {err}", "server_error"))
            yield SSE_DONE
        finally:
            self.metrics.request(endpoint.name, status, time.perf_counter() - started)

    def _chunk_choice(self, shapes, u: SequenceUpdate, texts, opened: set, plan: Plan) -> dict | None:
        key = (u.prompt_index, u.sample_index)
        text = texts[key]
        sent_before = len(text.sent)
        delta = text.finish(u.completion.text) if u.completion else text.add(u.token_ids)
        first = key not in opened
        if not (delta or u.completion or first or plan.logprobs):
            return None
        opened.add(key)
        lp = self._token_logprobs(u.token_ids, u.logprobs, sent_before) if plan.logprobs else None
        finish = u.completion.finish_reason if u.completion else None
        return shapes.chunk_choice(u.prompt_index * plan.n + u.sample_index, delta, finish, lp, first)

    def _token_logprobs(self, ids: list[int], logprobs: list[float] | None, offset: int) -> TokenLogprobs:
        tokens = [self.tokenizer.decode([t], skip_special_tokens=True) for t in ids]
        return TokenLogprobs(tokens, list(logprobs or []), offset)
