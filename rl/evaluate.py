"""Held-out pass@1: greedy answers from the engine, scored by the task verifiers (no reward model).

Every stage that produces a model reports this number, so the pipeline shows what each stage
bought on the same prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import load_from_disk

from rl.config import EvalConfig
from rl.tasks import verify
from serving.engine import Engine
from serving.protocol import SamplingParams


def pass_at_1(model_dir: str | Path, eval_dir: str | Path, cfg: EvalConfig) -> dict[str, float]:
    ds = load_from_disk(str(eval_dir))
    ds = ds.select(range(min(cfg.limit, len(ds))))
    engine = Engine.from_pretrained(model_dir, max_batch_size=cfg.batch_size)
    params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=0.0, logprobs=False)
    outs = engine.generate(list(ds["prompt"]), params)
    scores = [
        verify(task, out.text, answer, json.loads(meta))
        for out, task, answer, meta in zip(outs, ds["task"], ds["answer"], ds["meta"], strict=True)
    ]
    return {
        "pass@1": sum(scores) / len(scores),
        "eval_prompts": float(len(scores)),
        "mean_response_tokens": sum(len(o.token_ids) for o in outs) / len(outs),
    }
