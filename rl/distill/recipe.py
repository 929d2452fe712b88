"""Distillation's recipe for the shared training loop: a teacher teaches a small student.

The student shares the teacher's tokenizer; its batches come from the distillation manager
(teacher- or student-sampled sequences, with the teacher's top-k log-probabilities when the loss
needs them), its loss is one of `rl.distill.kd.KD_LOSSES`, and after each step its weights go to the
student rollout workers (on-policy steps sample from them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from rl.config import DistillConfig
from rl.distill.kd import KD_LOSSES, top1_agreement
from rl.rollout.learner import RolloutSource, WeightSync, align
from rl.rollout.worker import Trajectory
from rl.tokens import masked_mean
from training.loop import Recipe, TrainJob
from training.models import build_model, keep_layers, load_model
from training.tokenizer import load_tokenizer


@dataclass
class DistillBatch:
    """Right-padded prompt+completion sequences; per-target-token tensors are `(B, T-1)`."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T-1) float: 1 where the target token is a completion token
    # (B, T-1, k) the teacher's k largest log p_teacher (at the distillation temperature) and
    # (B, T-1, k) int32 their token ids; None for seq_kd.
    teacher_logprobs: torch.Tensor | None
    teacher_ids: torch.Tensor | None
    token_scale: float  # as PolicyBatch's: the step's loss is the mean over its completion tokens

    def to(self, device) -> DistillBatch:
        teacher = [None if x is None else x.to(device) for x in (self.teacher_logprobs, self.teacher_ids)]
        return DistillBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.mask.to(device),
            *teacher,
            self.token_scale,
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(trajectories: list[Trajectory], pad_id: int, token_scale: float) -> DistillBatch:
    """The aligned sequences, plus the teacher's top-k at the same targets."""
    ids, attn, mask = align(trajectories, pad_id)
    if trajectories[0].teacher_logprobs is None:
        return DistillBatch(ids, attn, mask, None, None, token_scale)
    (b, t), k = mask.shape, trajectories[0].teacher_logprobs.shape[-1]
    # Uniform over tokens 0..k-1 where there is no target: finite (a NaN would survive the mask's
    # zero), and masked out of the loss anyway.
    values = torch.full((b, t, k), -math.log(k))
    top_ids = torch.arange(k, dtype=torch.int32).expand(b, t, k).clone()
    for i, traj in enumerate(trajectories):
        rows = slice(len(traj.prompt_ids) - 1, len(traj.prompt_ids) - 1 + len(traj.completion_ids))
        values[i, rows], top_ids[i, rows] = traj.teacher_logprobs, traj.teacher_ids
    return DistillBatch(ids, attn, mask, values, top_ids, token_scale)


def kd_loss(model, batch: DistillBatch, *, cfg: DistillConfig):
    """The configured KD loss, token-level over the step (plus the balance loss of an MoE student)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1]
    # One vocabulary for teacher and student is checked once, before the stage starts (the distill
    # adapter compares the tokenizers): no per-step check, which would sync the device every step.
    teacher, teacher_ids = batch.teacher_logprobs, batch.teacher_ids
    per_token = KD_LOSSES[cfg.loss].per_token(
        logits, batch.input_ids[:, 1:], teacher, teacher_ids, cfg.beta, cfg.temperature
    )
    loss = (per_token * batch.mask).sum() * batch.token_scale
    metrics = {"kd_loss": float(masked_mean(per_token.detach(), batch.mask))}
    if teacher is not None:
        agree = top1_agreement(logits.detach(), teacher, teacher_ids)
        metrics["top1_agreement"] = float(masked_mean(agree, batch.mask))
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


def save_student_init(cfg: DistillConfig, tokenizer_dir: Path, out: Path, teacher: Path) -> Path:
    """The student's starting weights (fresh, `student.pretrained`, or the teacher's
    `student_layers`) with the tokenizer: the student workers load it, and the baseline starts
    from the very same weights."""
    tok = load_tokenizer(tokenizer_dir)
    if cfg.student_layers is not None:
        model = keep_layers(load_model(teacher, expected_vocab=len(tok)), cfg.student_layers)
    else:
        model = build_model(cfg.student, tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
