"""The `rlvr` adapter: GRPO on the SFT (or pretrain) model with verifiable rewards.

Rollout worker actors sample groups with the serving engine and score them with the task
verifiers; the learner is the shared Ray Train + DeepSpeed loop with the GRPO recipe; each new
policy version is pushed back to the workers. Output: the RL policy as a Hugging Face export,
per-step metrics, and a reward-curve PNG.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from orchestration.stages.context import StageContext, StageResult
from orchestration.stages.train import picked, train_job
from rl.grpo.learner import grpo_recipe
from rl.grpo.reward_curve import plot_rewards
from rl.grpo.sampler import start_grpo_manager
from rl.rollout.manager import running
from training.config import with_global_batch
from training.loop import fit
from training.tracking import read_metrics

log = logging.getLogger(__name__)

KEYS = ("reward_mean", "pass_rate", "response_tokens_mean", "rollout_tokens_per_s", "sync_time_s", "kl")


def run(cfg, ctx: StageContext) -> StageResult:
    rl = cfg.rlvr
    start_model = str(ctx.input("start"))
    log.info("rlvr: GRPO from the %s model %s (%s mode)", ctx.sources["start"], start_model, rl.mode)
    train = with_global_batch(
        rl.train,
        rl.prompts_per_step * rl.group_size,
        cfg.cluster.num_workers,
        "rlvr.prompts_per_step x rlvr.group_size",
    )
    with running(start_grpo_manager(rl, start_model, str(ctx.input("prompts")))) as manager:
        job = train_job(
            cfg,
            ctx,
            recipe=grpo_recipe(rl, manager),
            model=replace(cfg.model, pretrained=start_model),
            section=rl,
            train=train,
            data="prompts",
        )
        last = fit(job, ctx.tracker)
    plot_rewards(read_metrics(ctx.out_dir), ctx.out_dir / "reward_curve.png")
    return StageResult(
        outputs={"model": "model", "reward_curve": "reward_curve.png"}, metrics=picked(last, KEYS)
    )
