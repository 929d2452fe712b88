"""The `distill` adapter: the RLVR model teaches a small dense student, which then drafts for it.

The student (`distill.student`, the dense_tiny preset by default) shares the data stage's
tokenizer and is trained by the shared loop with `rl.distill`'s recipe. With
`distill.compare_baseline` a second student, from the same init and for as many steps, learns
from the SFT data alone; both then draft for the teacher, so the manifest shows what distillation
bought. Outputs: the student's (and the baseline's) Hugging Face export; metrics: pass@1 and
parameters of student and teacher, top-1 agreement, acceptance rate and speedup.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import ray
from datasets import load_from_disk

from orchestration.stages.context import StageContext, StageResult
from orchestration.stages.train import train_job
from rl.distill.draft_eval import draft_report
from rl.distill.recipe import distill_recipe, save_student_init
from rl.distill.sampler import start_distill_manager
from rl.evaluate import pass_at_1
from rl.rollout.manager import running
from training.config import TrainConfig, with_global_batch
from training.loop import Recipe, TrainJob, fit
from training.models import load_model, parameter_counts
from training.recipes import SFT
from training.tokenizer import check_same_vocabulary, load_tokenizer
from training.tracking import LoggingConfig, Tracker

log = logging.getLogger(__name__)


def _train(cfg) -> TrainConfig:
    d = cfg.distill
    return with_global_batch(
        d.train,
        d.prompts_per_step * d.samples_per_prompt,
        cfg.cluster.num_workers,
        "distill.prompts_per_step x distill.samples_per_prompt",
    )


def _job(cfg, ctx: StageContext, name: str, recipe: Recipe, init: Path, data: str, export: Path) -> TrainJob:
    model = replace(cfg.distill.student, pretrained=str(init))
    return train_job(
        cfg,
        ctx,
        recipe=recipe,
        model=model,
        section=cfg.distill,
        train=_train(cfg),
        data=data,
        name=name,
        export_dir=export,
    )


def _distill(cfg, ctx: StageContext, teacher: Path, init: Path) -> dict:
    d = cfg.distill
    prompts = str(ctx.input(d.prompts_split))
    log.info("distill: %s from %s (on-policy share %.2f)", d.loss, teacher, d.on_policy_fraction)
    with running(start_distill_manager(d, str(teacher), str(init), prompts)) as manager:
        job = _job(
            cfg, ctx, ctx.name, distill_recipe(d, manager), init, d.prompts_split, ctx.out_dir / "model"
        )
        return fit(job, ctx.tracker)


def _baseline(cfg, ctx: StageContext, init: Path) -> Path:
    """The same student, init and steps, trained on the SFT split alone (no teacher)."""
    out = ctx.out_dir / "baseline"
    # Its own metrics file; wandb stays with the distilled run (a second wandb run would end it).
    tracker = Tracker(
        out, f"{ctx.name}_baseline", LoggingConfig(wandb_mode="disabled", progress=cfg.logging.progress)
    )
    try:
        fit(_job(cfg, ctx, f"{ctx.name}_baseline", SFT, init, "sft", out / "model"), tracker)
    finally:
        tracker.close()
    return out / "model"


def check_local_cpus(cfg) -> None:
    """Ray Train waits for ever for a worker group that cannot fit beside the teacher and student
    workers; on a local Ray, whose CPUs are fixed, say so at once instead."""
    d, cluster = cfg.distill, cfg.cluster
    if cluster.address is not None:  # a cluster may autoscale
        return
    students = d.num_student_workers if d.on_policy_fraction > 0 else 0
    need = cluster.num_workers * cluster.cpus_per_worker + d.worker_cpus * (d.num_teacher_workers + students)
    have = ray.cluster_resources().get("CPU", 0.0)
    if need + 0.01 > have:  # 0.01: the manager actor
        raise ValueError(
            f"distill needs {need + 0.01:g} CPUs (cluster.num_workers x cluster.cpus_per_worker + "
            f"distill.worker_cpus x {d.num_teacher_workers} teacher and {students} student workers + 0.01) "
            f"but the local Ray has {have:g} (cluster.num_cpus); lower distill.worker_cpus or the worker counts"
        )


def run(cfg, ctx: StageContext) -> StageResult:
    d = cfg.distill
    check_local_cpus(cfg)
    _train(cfg)  # a batch the learner cannot split fails before any actor starts
    teacher = ctx.input("teacher")
    # The teacher's log-probs index the student's vocabulary: one tokenizer, or fail before any work.
    check_same_vocabulary(
        load_tokenizer(teacher),
        f"the teacher ({teacher})",
        load_tokenizer(ctx.input("tokenizer")),
        "the student",
    )
    init = save_student_init(d, ctx.input("tokenizer"), ctx.work_dir / "student_init", teacher)
    last = _distill(cfg, ctx, teacher, init)
    outputs, drafts = {"model": "model"}, {"": ctx.out_dir / "model"}
    metrics = {k: last[k] for k in ("loss", "kd_loss", "top1_agreement", "tokens_per_s") if k in last}
    metrics = {f"train_{k}": v for k, v in metrics.items()} | {"steps": last.get("step", 0)}
    eval_dir = ctx.input("eval")
    if d.compare_baseline:
        drafts["baseline_"] = _baseline(cfg, ctx, init)
        outputs["baseline_model"] = "baseline/model"
        metrics["baseline_pass@1"] = pass_at_1(drafts["baseline_"], eval_dir, cfg.eval)["pass@1"]
    prompts = list(load_from_disk(str(eval_dir))["prompt"][: d.draft_eval_prompts])
    metrics |= draft_report(teacher, drafts, prompts, k=d.draft_k, max_new_tokens=cfg.eval.max_new_tokens)
    teacher_pass = ctx.source_metric("teacher", "pass@1")
    if teacher_pass is None:  # the rlvr manifest always has it; a hand-built context may not
        teacher_pass = pass_at_1(teacher, eval_dir, cfg.eval)["pass@1"]
    teacher_params = parameter_counts(load_model(teacher))
    student_params = parameter_counts(load_model(ctx.out_dir / "model"))
    metrics |= {
        "teacher_pass@1": teacher_pass,
        "teacher_params": teacher_params["total"],
        "teacher_params_active": teacher_params["active"],
        "teacher_params_non_embedding": teacher_params["non_embedding"],
        "student_params": student_params["total"],
        "student_params_non_embedding": student_params["non_embedding"],
        "student_teacher_non_embedding_ratio": student_params["non_embedding"]
        / teacher_params["non_embedding"],
    }
    ctx.tracker.log({f"summary/{k}": v for k, v in metrics.items()})
    return StageResult(outputs=outputs, metrics=metrics)
