"""Held-out pass@1: greedy answers from the engine, scored by the task verifiers (no reward model).

Every stage that produces a model reports this number, so the pipeline shows what each stage
bought on the same prompts. The per-prompt scores are kept (`EvalScores`) so that two models
scored on the same prompts can be compared pairwise: the standard error of a paired difference is
far smaller than that of two independent proportions when the models agree on most prompts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset, load_from_disk

from rl.config import EvalConfig
from rl.tasks import verify
from rl.tasks.format import ANSWER_FORMAT_KEY
from serving.engine import Engine
from serving.protocol import SamplingParams


@dataclass(frozen=True)
class EvalScores:
    """One model's scores on an eval split: one 0/1 per prompt, in the split's order."""

    # sha256 of the prompts scored, in order: scores pair only on the same prompts.
    prompts_sha: str
    scores: list[float]
    # Under the strict `<answer>` tags, where the run's answer format is more lenient; else None.
    strict_scores: list[float] | None
    response_tokens: list[int]

    def metrics(self) -> dict[str, float]:
        n = len(self.scores)
        p = sum(self.scores) / n
        out = {
            "pass@1": p,
            "pass@1_se": binomial_se(p, n),
            "eval_prompts": float(n),
            "mean_response_tokens": sum(self.response_tokens) / n,
        }
        if self.strict_scores is not None:
            out["pass@1_strict"] = sum(self.strict_scores) / n
        return out

    def save(self, path: Path) -> None:
        """Written whole or not at all: a resumed stage reads the start model's scores back."""
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> EvalScores:
        return cls(**json.loads(path.read_text()))


def binomial_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n independent prompts: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1.0 - p) / n)


def paired_difference(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Mean of after - before over the same prompts and its standard error, sd(d) / sqrt(n) with
    the sample standard deviation (n - 1); needs at least two prompts."""
    if len(before) != len(after) or len(before) < 2:
        raise ValueError(f"paired scores need the same n >= 2 prompts; got {len(before)} and {len(after)}")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(var / n)


def gain_metrics(start: EvalScores, end: EvalScores) -> dict[str, float]:
    """What a stage added over the model it started from, on the same prompts, paired (the
    standard errors need at least two prompts)."""
    if start.prompts_sha != end.prompts_sha:
        raise ValueError(
            "the start model was scored on other eval prompts; a paired gain needs the same ones"
        )
    n, before = len(start.scores), sum(start.scores) / len(start.scores)
    out = {"start_pass@1": before, "pass@1_gain": sum(end.scores) / n - before}
    if n >= 2:
        out["start_pass@1_se"] = binomial_se(before, n)
        out["pass@1_gain_se"] = paired_difference(start.scores, end.scores)[1]
    return out


def eval_split(eval_dir: str | Path, cfg: EvalConfig) -> Dataset:
    """The prompts an evaluation scores: the first `cfg.limit` of the eval split."""
    ds = load_from_disk(str(eval_dir))
    if len(ds) == 0 or cfg.limit < 1:
        raise ValueError(
            f"no held-out prompts to score ({len(ds)} in {eval_dir}, eval.limit={cfg.limit}); "
            "set task.eval_prompts and eval.limit >= 1"
        )
    return ds.select(range(min(cfg.limit, len(ds))))


def prompts_sha(prompts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


def score(model_dir: str | Path, eval_dir: str | Path, cfg: EvalConfig) -> EvalScores:
    """Greedy answers of the model in `model_dir` to the first `cfg.limit` prompts of the split."""
    engine = Engine.from_pretrained(model_dir, max_batch_size=cfg.batch_size)
    return score_rows(engine, eval_split(eval_dir, cfg), cfg.max_new_tokens)


def score_rows(engine: Engine, rows: Dataset, max_new_tokens: int) -> EvalScores:
    """Greedy answers to `rows` (columns prompt, task, answer and meta as JSON), verified; also
    under the strict tags where the rows' answer format is more lenient."""
    prompts = list(rows["prompt"])
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, logprobs=False)
    outs = engine.generate(prompts, params)
    metas = [json.loads(meta) for meta in rows["meta"]]
    scored = list(zip(outs, rows["task"], rows["answer"], metas, strict=True))
    scores = [verify(task, out.text, answer, meta) for out, task, answer, meta in scored]
    strict = None
    if any(meta.get(ANSWER_FORMAT_KEY, "tags") != "tags" for meta in metas):
        strict = [
            verify(task, out.text, answer, {**meta, ANSWER_FORMAT_KEY: "tags"})
            for out, task, answer, meta in scored
        ]
    return EvalScores(
        prompts_sha=prompts_sha(prompts),
        scores=scores,
        strict_scores=strict,
        response_tokens=[len(out.token_ids) for out in outs],
    )


def pass_at_1(model_dir: str | Path, eval_dir: str | Path, cfg: EvalConfig) -> dict[str, float]:
    return score(model_dir, eval_dir, cfg).metrics()
