"""The `distill` stage: the RLVR model teaches a small dense student, which then drafts for it.

The student (`distill.student`, the dense_tiny preset by default) shares the data stage's
tokenizer and is trained by the shared Ray Train + DeepSpeed loop with the recipe below: its
batches come from the distillation manager (teacher- or student-sampled sequences, with the
teacher's log-distributions when the loss needs them), its loss is one of `rl.kd.KD_LOSSES`, and
after each step its weights go to the student rollout workers (on-policy steps sample from them).

With `distill.compare_baseline` a second student, from the same init and for as many steps, learns
from the SFT data alone; both then draft for the teacher, so the manifest shows what distillation
bought. Outputs: the student's (and the baseline's) Hugging Face export; metrics: pass@1 and
parameters of student and teacher, top-1 agreement, acceptance rate and speedup.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import ray
import torch
from datasets import load_from_disk

from rl.config import DistillConfig
from rl.distill_manager import start_distill_manager
from rl.draft_eval import draft_report
from rl.evaluate import pass_at_1
from rl.grpo import masked_mean
from rl.kd import KD_LOSSES, top1_agreement
from rl.learner import RolloutSource, WeightSync
from rl.learner import collate as policy_collate
from rl.rollout import Trajectory
from training.config import with_global_batch
from training.loop import Recipe, TrainJob, fit
from training.models import build_model, load_model, parameter_counts
from training.pretrain import SFT
from training.stage import StageContext, StageResult
from training.tokenizer import load_tokenizer
from training.tracking import LoggingConfig, Tracker

log = logging.getLogger(__name__)


@dataclass
class DistillBatch:
    """Right-padded prompt+completion sequences; per-target-token tensors are `(B, T-1)`."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T-1) float: 1 where the target token is a completion token
    teacher_logprobs: torch.Tensor | None  # (B, T-1, V) log p_teacher, None for seq_kd
    token_scale: float  # as PolicyBatch's: the step's loss is the mean over its completion tokens

    def to(self, device) -> DistillBatch:
        teacher = None if self.teacher_logprobs is None else self.teacher_logprobs.to(device)
        return DistillBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.mask.to(device),
            teacher,
            self.token_scale,
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(trajectories: list[Trajectory], pad_id: int, token_scale: float) -> DistillBatch:
    """GRPO's collate for the token alignment, plus the teacher's distributions at the same targets."""
    base = policy_collate(trajectories, pad_id, token_scale)
    teacher = None
    if trajectories[0].teacher_logprobs is not None:
        b, t = base.mask.shape
        vocab = trajectories[0].teacher_logprobs.shape[-1]
        # Uniform where there is no target: finite, and masked out of the loss anyway.
        teacher = torch.full((b, t, vocab), -math.log(vocab))
        for i, traj in enumerate(trajectories):
            p = len(traj.prompt_ids)
            teacher[i, p - 1 : p - 1 + len(traj.completion_ids)] = traj.teacher_logprobs
    return DistillBatch(base.input_ids, base.attention_mask, base.mask, teacher, token_scale)


def kd_loss(model, batch: DistillBatch, *, cfg: DistillConfig):
    """The configured KD loss, token-level over the step (plus the balance loss of an MoE student)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1]
    teacher = batch.teacher_logprobs
    if teacher is not None and teacher.shape[-1] != logits.shape[-1]:
        raise ValueError(
            f"teacher vocabulary {teacher.shape[-1]} != student's {logits.shape[-1]}: "
            "distillation needs the student built on the teacher's tokenizer"
        )
    per_token = KD_LOSSES[cfg.loss].per_token(
        logits, batch.input_ids[:, 1:], teacher, cfg.beta, cfg.temperature
    )
    loss = (per_token * batch.mask).sum() * batch.token_scale
    metrics = {"kd_loss": float(masked_mean(per_token.detach(), batch.mask))}
    if teacher is not None:
        metrics["top1_agreement"] = float(masked_mean(top1_agreement(logits.detach(), teacher), batch.mask))
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        loss = loss + getattr(getattr(model, "module", model).config, "router_aux_loss_coef", 0.0) * aux
    return loss, metrics, getattr(out, "router_logits", None)


def _distill_source(manager, job: TrainJob, tokenizer) -> RolloutSource:
    return RolloutSource(
        manager, job.train.micro_batch_per_worker, tokenizer.pad_token_id, collate_fn=collate
    )


def distill_recipe(cfg: DistillConfig, manager) -> Recipe:
    return Recipe(
        make_source=partial(_distill_source, manager),
        loss=partial(kd_loss, cfg=cfg),
        after_step=WeightSync(manager),
    )


def save_student_init(cfg: DistillConfig, tokenizer_dir: Path, out: Path) -> Path:
    """The student's starting weights (fresh, or `student.pretrained`) with the tokenizer: the
    student workers load it, and the baseline starts from the very same weights."""
    tok = load_tokenizer(tokenizer_dir)
    build_model(cfg.student, tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _train_config(cfg):
    d = cfg.distill
    return with_global_batch(
        d.train,
        d.prompts_per_step * d.samples_per_prompt,
        cfg.cluster.num_workers,
        "distill.prompts_per_step x distill.samples_per_prompt",
    )


def _job(cfg, ctx: StageContext, name: str, recipe: Recipe, init: Path, data: str, export: Path) -> TrainJob:
    d = cfg.distill
    return TrainJob(
        name=name,
        recipe=recipe,
        model=replace(d.student, pretrained=str(init)),
        train=_train_config(cfg),
        optimizer=cfg.optimizer,
        expert_parallel=cfg.expert_parallel,
        tokenizer_dir=str(ctx.artifact("data", "tokenizer")),
        data_dir=str(ctx.artifact("data", data)),
        export_dir=str(export),
        work_dir=str(ctx.work_dir),
        num_workers=cfg.cluster.num_workers,
        cpus_per_worker=cfg.cluster.cpus_per_worker,
        use_gpu=cfg.cluster.use_gpu,
    )


def _distill(cfg, ctx: StageContext, teacher: Path, init: Path) -> dict:
    d = cfg.distill
    prompts = str(ctx.artifact("data", d.prompts_split))
    log.info("distill: %s from %s (on-policy share %.2f)", d.loss, teacher, d.on_policy_fraction)
    manager = start_distill_manager(d, str(teacher), str(init), prompts)
    job = _job(cfg, ctx, ctx.name, distill_recipe(d, manager), init, d.prompts_split, ctx.out_dir / "model")
    try:
        return fit(job, ctx.tracker)
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)


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


def run_distill(cfg, ctx: StageContext) -> StageResult:
    d = cfg.distill
    check_local_cpus(cfg)
    _train_config(cfg)  # a batch the learner cannot split fails before any actor starts
    teacher = ctx.artifact("rlvr", "model")
    init = save_student_init(d, ctx.artifact("data", "tokenizer"), ctx.work_dir / "student_init")
    last = _distill(cfg, ctx, teacher, init)
    outputs, drafts = {"model": "model"}, {"": ctx.out_dir / "model"}
    metrics = {k: last[k] for k in ("loss", "kd_loss", "top1_agreement", "tokens_per_s") if k in last}
    metrics = {f"train_{k}": v for k, v in metrics.items()} | {"steps": last.get("step", 0)}
    eval_dir = ctx.artifact("data", "eval")
    if d.compare_baseline:
        drafts["baseline_"] = _baseline(cfg, ctx, init)
        outputs["baseline_model"] = "baseline/model"
        metrics["baseline_pass@1"] = pass_at_1(drafts["baseline_"], eval_dir, cfg.eval)["pass@1"]
    prompts = list(load_from_disk(str(eval_dir))["prompt"][: d.draft_eval_prompts])
    metrics |= draft_report(teacher, drafts, prompts, k=d.draft_k, max_new_tokens=cfg.eval.max_new_tokens)
    teacher_pass = ctx.upstream_metrics.get("rlvr", {}).get("pass@1")
    if teacher_pass is None:  # the rlvr manifest always has it; a hand-built context may not
        teacher_pass = pass_at_1(teacher, eval_dir, cfg.eval)["pass@1"]
    teacher_params = parameter_counts(load_model(teacher))
    metrics |= {
        "teacher_pass@1": teacher_pass,
        "teacher_params": teacher_params["total"],
        "teacher_params_active": teacher_params["active"],
        "student_params": parameter_counts(load_model(ctx.out_dir / "model"))["total"],
    }
    ctx.tracker.log({f"summary/{k}": v for k, v in metrics.items()})
    return StageResult(outputs=outputs, metrics=metrics)
