"""The `pretrain` and `sft` stages: the shared training loop with their recipes.

pretrain: next-token loss over packed documents of the data stage's corpus, from a fresh model
(or `model.pretrained`). sft: loss on completion tokens only, starting from pretrain's export.
"""

from __future__ import annotations

from dataclasses import replace

from training.data import PackedCorpus, PromptCompletionPairs
from training.loop import Recipe, TrainJob, dataset_recipe, fit
from training.models import load_model, parameter_counts
from training.stage import StageContext, StageResult

PRETRAIN = dataset_recipe(PackedCorpus)
SFT = dataset_recipe(PromptCompletionPairs)


def _train(cfg, ctx: StageContext, recipe: Recipe, train_cfg, data: str, model_cfg) -> StageResult:
    job = TrainJob(
        name=ctx.name,
        recipe=recipe,
        model=model_cfg,
        train=train_cfg,
        optimizer=cfg.optimizer,
        expert_parallel=cfg.expert_parallel,
        tokenizer_dir=str(ctx.artifact("data", "tokenizer")),
        data_dir=str(ctx.artifact("data", data)),
        export_dir=str(ctx.out_dir / "model"),
        work_dir=str(ctx.work_dir),
        num_workers=cfg.cluster.num_workers,
        cpus_per_worker=cfg.cluster.cpus_per_worker,
        use_gpu=cfg.cluster.use_gpu,
    )
    last = fit(job, ctx.tracker)
    counts = parameter_counts(load_model(ctx.out_dir / "model"))
    keys = ("loss", "aux_loss", "tokens_per_s", "mfu", "max_attn_logit")
    metrics = {k: last[k] for k in keys if k in last}
    return StageResult(
        outputs={"model": "model"},
        metrics={
            **metrics,
            "steps": last.get("step", 0),
            "params_total": counts["total"],
            "params_active": counts["active"],
        },
    )


def run_pretrain(cfg, ctx: StageContext) -> StageResult:
    return _train(cfg, ctx, PRETRAIN, cfg.pretrain, "pretrain", cfg.model)


def run_sft(cfg, ctx: StageContext) -> StageResult:
    start = replace(cfg.model, pretrained=str(ctx.artifact("pretrain", "model")))
    return _train(cfg, ctx, SFT, cfg.sft, "sft", start)
