"""The `serve` adapter: the run's best model behind the OpenAI endpoint, measured over HTTP.

The model is the stage table's `model` input (rlvr's when that finished in this run, else sft's);
its `draft` input (the distill stage's student) drafts for it when present (else `serve.speculative=auto` drafts by n-gram
lookup). The stage deploys the app on Ray Serve, sends the first `eval.limit` held-out questions
as greedy chat requests (`serve.eval_concurrency` at a time), scores the answers with the task
verifiers and records endpoint pass@1, latency percentiles and the draft acceptance rate. Then it
deletes the app, or with `serve.keep_alive=true` leaves it up and prints how to call it (a Ray
started by this process lives only as long as the process, so the stage then waits for Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from datasets import load_from_disk
from ray import serve

from orchestration.stages.context import StageContext, StageResult
from rl.tasks import verify
from serving.app import app_for
from serving.auth import read_keys
from serving.config import ServeConfig
from serving.load import Reply, post_all, summarize

log = logging.getLogger("reasonforge.serve")


def run(cfg, ctx: StageContext) -> StageResult:
    scfg: ServeConfig = cfg.serve
    model_dir, draft_dir = ctx.input("model"), ctx.inputs.get("draft")
    # The stage is a client like any other: with keys configured it authenticates with the first.
    keys = read_keys(scfg.api_key_file, scfg.api_key_env)
    log.info("serving the %s model %s (draft: %s)", ctx.sources["model"], model_dir, draft_dir or "none")
    base = f"http://{scfg.host}:{scfg.port}{scfg.route_prefix.rstrip('/')}"
    serve.start(http_options={"host": scfg.host, "port": scfg.port})
    serve.run(app_for(scfg, model_dir, draft_dir), name=scfg.app_name, route_prefix=scfg.route_prefix)
    try:
        metrics = _evaluate(cfg, ctx, f"{base}/v1/chat/completions", keys[0] if keys else None)
    finally:
        if not scfg.keep_alive:
            serve.delete(scfg.app_name)
    _write_serve_config(ctx.out_dir / "serve_config.yaml", scfg, model_dir, draft_dir)
    log.info("endpoint %s: %s", base, json.dumps(metrics))
    if scfg.keep_alive:
        _announce(base, scfg.model_name, keyed=bool(keys))
        if cfg.cluster.address is None:
            # Ctrl-C also stops the local Ray (same process group), so there is no app left to delete.
            _wait_for_interrupt()
    return StageResult(
        outputs={"answers": "answers.jsonl", "serve_config": "serve_config.yaml"}, metrics=metrics
    )


def _evaluate(cfg, ctx: StageContext, url: str, api_key: str | None) -> dict[str, float]:
    """Greedy answers to the held-out questions over HTTP, scored; writes answers.jsonl."""
    rows = load_from_disk(str(ctx.input("eval")))
    rows = rows.select(range(min(cfg.eval.limit, len(rows))))
    payloads = [
        {
            "model": cfg.serve.model_name,
            # The very turns the eval prompts were rendered from (system turn included): the
            # endpoint's chat template then renders the same prompt text pass@1 was taken on.
            "messages": json.loads(turns),
            "max_tokens": cfg.eval.max_new_tokens,
            "temperature": 0.0,
        }
        for turns in rows["messages"]
    ]
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per eval request
    started = time.perf_counter()
    replies = asyncio.run(post_all(url, payloads, cfg.serve.eval_concurrency, api_key=api_key))
    metrics = summarize(replies, time.perf_counter() - started)
    failed = [r for r in replies if r.status != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(replies)} eval requests to {url} failed, e.g. {failed[0]}")
    rewards = _score(rows, replies)
    metrics.update({"endpoint_pass@1": sum(rewards) / len(rewards), "eval_prompts": float(len(rewards))})
    ctx.tracker.log({f"serve/{k}": v for k, v in metrics.items()})
    _write_answers(ctx.out_dir / "answers.jsonl", rows, replies, rewards)
    return metrics


def _score(rows, replies: list[Reply]) -> list[float]:
    texts = [r.body["choices"][0]["message"]["content"] for r in replies]
    return [
        verify(task, text, answer, json.loads(meta))
        for text, task, answer, meta in zip(texts, rows["task"], rows["answer"], rows["meta"], strict=True)
    ]


def _write_answers(path: Path, rows, replies: list[Reply], rewards: list[float]) -> None:
    with open(path, "w") as f:
        for row_id, reply, reward in zip(rows["id"], replies, rewards, strict=True):
            text = reply.body["choices"][0]["message"]["content"]
            record = {"id": row_id, "text": text, "reward": reward, "latency_s": round(reply.latency_s, 4)}
            f.write(json.dumps(record) + "\n")


def _write_serve_config(path: Path, scfg: ServeConfig, model_dir: Path, draft_dir: Path | None) -> None:
    """A Serve config file that deploys the same endpoint: `serve deploy` / `serve run` it."""
    args: dict[str, Any] = {"model_dir": str(model_dir), **asdict(scfg)}
    if draft_dir is not None:
        args["draft_dir"] = str(draft_dir)
    config: Mapping[str, Any] = {
        "http_options": {"host": scfg.host, "port": scfg.port},
        "applications": [
            {
                "name": scfg.app_name,
                "route_prefix": scfg.route_prefix,
                "import_path": "serving.app:build_app",
                "args": args,
            }
        ],
    }
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))


def _announce(base: str, model: str, keyed: bool) -> None:
    # The hint names the key by a shell variable, never by value.
    auth = ' -H "Authorization: Bearer $API_KEY"' if keyed else ""
    key = "os.environ['API_KEY']" if keyed else "'none'"
    print(
        f"\nReasonForge endpoint up at {base}/v1 (model {model!r}{', API key required' if keyed else ''})\n"
        f"  curl {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "What is 3 + 4?"}}]}}\'\n'
        f"  python -c \"import os; from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key={key}); "
        f"print(c.chat.completions.create(model='{model}', "
        f"messages=[{{'role': 'user', 'content': 'What is 3 + 4?'}}]).choices[0].message.content)\"\n",
        flush=True,
    )


def _wait_for_interrupt() -> None:
    log.info("the endpoint lives as long as this process (a local Ray); press Ctrl-C to stop it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("Ctrl-C: shutting the endpoint down")
