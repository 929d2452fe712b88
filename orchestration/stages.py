"""The stage table: each pipeline stage, its entry function, the config it reads, what it needs.

A stage entry is a plain function `run(cfg: RootConfig, ctx: StageContext) -> StageResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rl import datagen
from rl.evaluate import pass_at_1
from training import pretrain
from training.stage import StageContext, StageResult


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[..., StageResult]
    # Root config keys this stage reads: a change in any re-runs it (and everything after it).
    config_keys: tuple[str, ...]
    # Stages whose outputs it consumes.
    needs: tuple[str, ...] = ()


def evaluated(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Add held-out pass@1 of the stage's `model` output to its manifest metrics."""

    def run_and_evaluate(cfg, ctx: StageContext) -> StageResult:
        result = run(cfg, ctx)
        scores = pass_at_1(ctx.out_dir / result.outputs["model"], ctx.artifact("data", "eval"), cfg.eval)
        ctx.tracker.log({f"eval/{k}": v for k, v in scores.items()})
        result.metrics.update(scores)
        return result

    return run_and_evaluate


TRAINING_KEYS = ("model", "optimizer", "expert_parallel", "eval")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec("data", datagen.run, config_keys=("task",)),
        StageSpec("pretrain", evaluated(pretrain.run_pretrain), ("pretrain", *TRAINING_KEYS), needs=("data",)),
        StageSpec("sft", evaluated(pretrain.run_sft), ("sft", *TRAINING_KEYS), needs=("data", "pretrain")),
    ]
}

__all__ = ["STAGES", "StageSpec", "StageContext", "StageResult"]
