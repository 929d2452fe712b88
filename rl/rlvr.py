"""The `rlvr` stage: GRPO on the SFT (or pretrain) model with verifiable rewards.

Rollout worker actors sample groups with the serving engine and score them with the task
verifiers; the learner is the shared Ray Train + DeepSpeed loop with the GRPO recipe; each new
policy version is pushed back to the workers. Output: the RL policy as a Hugging Face export,
per-step metrics, and a reward-curve PNG.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import ray

from rl.learner import grpo_recipe
from rl.rollout_manager import start_manager
from training.config import with_global_batch
from training.loop import TrainJob, fit
from training.models import load_model, parameter_counts
from training.stage import StageContext, StageResult
from training.tracking import read_metrics

log = logging.getLogger(__name__)

# Which upstream model RL starts from, best first.
START_STAGES = ("sft", "pretrain")


def start_stage(ctx: StageContext) -> str:
    for name in START_STAGES:
        if name in ctx.artifacts:
            return name
    raise KeyError(f"stage 'rlvr' needs a model from one of {START_STAGES}; none has run in {ctx.run_dir}")


def run_rlvr(cfg, ctx: StageContext) -> StageResult:
    rl = cfg.rlvr
    source = start_stage(ctx)
    start_model = str(ctx.artifact(source, "model"))
    log.info("rlvr: GRPO from the %s model %s (%s mode)", source, start_model, rl.mode)
    train = with_global_batch(
        rl.train,
        rl.prompts_per_step * rl.group_size,
        cfg.cluster.num_workers,
        "rlvr.prompts_per_step x rlvr.group_size",
    )
    manager = start_manager(rl, start_model, str(ctx.artifact("data", "rl")))
    job = TrainJob(
        name=ctx.name,
        recipe=grpo_recipe(rl, manager),
        model=replace(cfg.model, pretrained=start_model),
        train=train,
        optimizer=replace(cfg.optimizer, name=rl.optimizer) if rl.optimizer else cfg.optimizer,
        expert_parallel=cfg.expert_parallel,
        tokenizer_dir=str(ctx.artifact("data", "tokenizer")),
        data_dir=str(ctx.artifact("data", "rl")),
        export_dir=str(ctx.out_dir / "model"),
        work_dir=str(ctx.work_dir),
        num_workers=cfg.cluster.num_workers,
        cpus_per_worker=cfg.cluster.cpus_per_worker,
        use_gpu=cfg.cluster.use_gpu,
    )
    try:
        last = fit(job, ctx.tracker)
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)
    plot_rewards(read_metrics(ctx.out_dir), ctx.out_dir / "reward_curve.png")
    counts = parameter_counts(load_model(ctx.out_dir / "model"))
    keys = ("reward_mean", "pass_rate", "response_tokens_mean", "rollout_tokens_per_s", "sync_time_s", "kl")
    metrics = {k: last[k] for k in keys if k in last}
    start_pass = ctx.upstream_metrics.get(source, {}).get("pass@1")
    if start_pass is not None:
        metrics["start_pass@1"] = start_pass
    return StageResult(
        outputs={"model": "model", "reward_curve": "reward_curve.png"},
        metrics={**metrics, "steps": last.get("step", 0), "params_total": counts["total"]},
    )


def plot_rewards(rows: list[dict], path: Path) -> None:
    """Mean reward, pass rate and response length per step, from the stage's metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "reward_mean" in r and "step" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["reward_mean"] for r in rows], label="mean reward")
    ax1.plot(steps, [r["pass_rate"] for r in rows], label="rollout pass rate")
    ax1.set_xlabel("step")
    ax1.legend()
    ax1.set_title("RLVR reward")
    ax2.plot(steps, [r["response_tokens_mean"] for r in rows], color="tab:green")
    ax2.set_xlabel("step")
    ax2.set_title("response length (tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
