"""The stage table: each pipeline stage, its entry function, the config it reads, what it needs.

A stage entry is a plain function `run(cfg: RootConfig, ctx: StageContext) -> StageResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from orchestration import report
from rl import datagen, distill, rlvr
from rl.evaluate import pass_at_1
from rl.tasks import verify
from serving import stage as serve_stage
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
    # Stages it reads only if they have finished in the run directory (absent ones are left out);
    # those present join its inputs, so it re-runs when any of them changes.
    uses: tuple[str, ...] = ()


def evaluated(run: Callable[..., StageResult]) -> Callable[..., StageResult]:
    """Add held-out pass@1 of the stage's `model` output to its manifest metrics."""

    def run_and_evaluate(cfg, ctx: StageContext) -> StageResult:
        result = run(cfg, ctx)
        scores = pass_at_1(ctx.out_dir / result.outputs["model"], ctx.artifact("data", "eval"), cfg.eval)
        ctx.tracker.log({f"eval/{k}": v for k, v in scores.items()})
        result.metrics.update(scores)
        if "start_pass@1" in result.metrics:  # what this stage added over the model it started from
            result.metrics["pass@1_gain"] = scores["pass@1"] - result.metrics["start_pass@1"]
        return result

    return run_and_evaluate


TRAINING_KEYS = ("model", "optimizer", "expert_parallel", "eval")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec("data", datagen.run, config_keys=("task",)),
        StageSpec(
            "pretrain", evaluated(pretrain.run_pretrain), ("pretrain", *TRAINING_KEYS), needs=("data",)
        ),
        StageSpec("sft", evaluated(pretrain.run_sft), ("sft", *TRAINING_KEYS), needs=("data", "pretrain")),
        StageSpec("rlvr", evaluated(rlvr.run_rlvr), ("rlvr", *TRAINING_KEYS), needs=("data", "sft")),
        StageSpec(
            "distill", evaluated(distill.run_distill), ("distill", *TRAINING_KEYS), needs=("data", "rlvr")
        ),
        # The best model that finished (rlvr, else sft) behind the OpenAI endpoint; distill's drafts.
        StageSpec(
            "serve",
            partial(serve_stage.run, verify=verify),
            ("serve", "eval"),
            needs=("data",),
            uses=(*serve_stage.MODEL_STAGES, serve_stage.DRAFT_STAGE),
        ),
    ]
}
# Last, reading whatever finished before it: the run's one-page report.
STAGES["report"] = StageSpec("report", report.run, config_keys=(), uses=tuple(STAGES))

__all__ = ["STAGES", "StageSpec", "StageContext", "StageResult"]
