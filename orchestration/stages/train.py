"""The `pretrain` and `sft` adapters, and what every training stage shares: the one way to build a
training job from the run's config, and held-out pass@1 of the model a stage exports.

pretrain: next-token loss over the data stage's packed corpus, from a fresh model (or
`model.pretrained`). sft: loss on completion tokens only, starting from pretrain's export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestration.stages.context import StageContext, StageResult
from rl.evaluate import EvalScores, eval_split, gain_metrics, prompts_sha, score
from training.config import ModelConfig, StageTrainConfig, TrainConfig
from training.loop import Recipe, TrainJob, fit
from training.recipes import PRETRAIN, SFT

log = logging.getLogger(__name__)

# The config a training stage reads besides its own section; `cluster` is in `runs_on`.
TRAINING_READS = ("model", "optimizer", "expert_parallel", "eval")


def train_job(
    cfg,
    ctx: StageContext,
    *,
    recipe: Recipe,
    model: ModelConfig,
    section: StageTrainConfig,
    data: str,
    train: TrainConfig | None = None,
    name: str | None = None,
    export_dir: Path | None = None,
) -> TrainJob:
    """The one way a stage builds its training job: `model` trained by `recipe` on the input `data`
    with the stage's `section` (its `train`, or `train` when the stage derived it, and its optimizer
    choice over the root `optimizer`), on `cluster.num_workers` workers, exported to `<out_dir>/model`."""
    cluster = cfg.cluster
    return TrainJob(
        name=name or ctx.name,
        recipe=recipe,
        model=model,
        train=train or section.train,
        optimizer=replace(cfg.optimizer, name=section.optimizer) if section.optimizer else cfg.optimizer,
        expert_parallel=cfg.expert_parallel,
        tokenizer_dir=str(ctx.input("tokenizer")),
        data_dir=str(ctx.input(data)),
        export_dir=str(export_dir or ctx.out_dir / "model"),
        work_dir=str(ctx.work_dir),
        lora=section.lora,
        num_workers=cluster.num_workers,
        cpus_per_worker=cluster.cpus_per_worker,
        use_gpu=cluster.use_gpu,
    )


def picked(last: dict[str, Any], keys: Iterable[str]) -> dict[str, float]:
    """The training metrics a manifest records: the last step's values of `keys` it has, its step
    count and the trained model's parameter counts."""
    return {k: last[k] for k in keys if k in last} | {
        "steps": last.get("step", 0),
        "params_total": last["params_total"],
        "params_active": last["params_active"],
    }


EVAL_SCORES = "eval_scores.json"


def _start_scores(cfg, ctx: StageContext) -> EvalScores | None:
    """The per-prompt eval scores of the model the stage starts from: its upstream stage's, or,
    for the user's own model (or an upstream stage that kept none, or scored other prompts), scored
    here once and kept in the work dir so that a resumed attempt does not score it again."""
    if "start" not in ctx.inputs:
        return None
    if "start_scores" in ctx.inputs:
        upstream = EvalScores.load(ctx.input("start_scores"))
        if upstream.prompts_sha == prompts_sha(eval_split(ctx.input("eval"), cfg.eval)["prompt"]):
            return upstream
    cached = ctx.work_dir / f"start_{EVAL_SCORES}"
    if cached.exists():
        return EvalScores.load(cached)
    log.info("%s: scoring the start model %s on the eval split", ctx.name, ctx.input("start"))
    scores = score(ctx.input("start"), ctx.input("eval"), cfg.eval)
    cached.parent.mkdir(parents=True, exist_ok=True)  # a sweep trial's work dir is made by fit
    scores.save(cached)
    return scores


def evaluated(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Add held-out pass@1 (with its standard error) of the stage's `model` output to its manifest
    metrics, keep the per-prompt scores as the output `eval_scores`, and, for a stage with a
    `start` model, what it added over that model on the same prompts (paired)."""

    def run_and_evaluate(cfg, ctx: StageContext) -> StageResult:
        start = _start_scores(cfg, ctx)
        result = run(cfg, ctx)
        scores = score(ctx.out_dir / result.outputs["model"], ctx.input("eval"), cfg.eval)
        scores.save(ctx.out_dir / EVAL_SCORES)
        result.outputs["eval_scores"] = EVAL_SCORES
        metrics = scores.metrics() | (gain_metrics(start, scores) if start is not None else {})
        ctx.tracker.log({f"eval/{k}": v for k, v in metrics.items()})
        result.metrics.update(metrics)
        return result

    return run_and_evaluate


# The dataset's counts (training.loop.data_metrics): records read, kept, dropped and truncated for
# being longer than seq_len (SFT), rows and tokens trained on, and the padding share of packed rows.
DATA_KEYS = (
    "data_records",
    "data_kept",
    "data_dropped",
    "data_truncated",
    "data_rows",
    "data_tokens",
    "data_padding_share",
)
LM_KEYS = ("loss", "aux_loss", "tokens_per_s", "mfu", "max_attn_logit", *DATA_KEYS)


def _train_lm(
    cfg, ctx: StageContext, recipe: Recipe, section: StageTrainConfig, model: ModelConfig
) -> StageResult:
    last = fit(train_job(cfg, ctx, recipe=recipe, model=model, section=section, data="data"), ctx.tracker)
    return StageResult(outputs={"model": "model"}, metrics=picked(last, LM_KEYS))


def run_pretrain(cfg, ctx: StageContext) -> StageResult:
    return _train_lm(cfg, ctx, PRETRAIN, cfg.pretrain, cfg.model)


def run_sft(cfg, ctx: StageContext) -> StageResult:
    start = replace(cfg.model, pretrained=str(ctx.input("start")))
    return _train_lm(cfg, ctx, SFT, cfg.sft, start)
