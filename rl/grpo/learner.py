"""The GRPO learner as a recipe for the shared training loop (training/loop.py).

Its batches come from the rollout manager instead of a dataset, its loss is GRPO's clipped
surrogate, and after every optimizer step it pushes the new weights to the rollout workers.
DeepSpeed (ZeRO, AutoEP), checkpoints, resume and failure recovery are the loop's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from rl.config import RlvrConfig
from rl.grpo.loss import clipped_surrogate, k3_kl
from rl.rollout.learner import RolloutSource, WeightSync, align
from rl.rollout.worker import Trajectory
from rl.tokens import entropy, masked_mean, token_logprobs
from training.loop import Recipe


@dataclass
class PolicyBatch:
    """Right-padded prompt+completion sequences; per-target-token tensors are `(B, T-1)`."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T-1) float: 1 where the target token is a completion token
    old_logprobs: torch.Tensor  # (B, T-1) the sampling policy's log-probs at those targets
    advantages: torch.Tensor  # (B,)
    ref_logprobs: torch.Tensor | None  # (B, T-1), only with a KL term
    # Multiplies the summed token loss so that averaging over micro-batches and ranks (what
    # DeepSpeed does) yields the mean over every completion token of the step.
    token_scale: float

    def to(self, device) -> PolicyBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PolicyBatch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.mask),
            move(self.old_logprobs),
            move(self.advantages),
            move(self.ref_logprobs),
            self.token_scale,
        )

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(trajectories: list[Trajectory], pad_id: int, token_scale: float) -> PolicyBatch:
    ids, attn, mask = align(trajectories, pad_id)
    old = torch.zeros(mask.shape)
    with_ref = trajectories[0].ref_logprobs is not None
    ref = torch.zeros(mask.shape) if with_ref else None
    for i, t in enumerate(trajectories):
        p, c = len(t.prompt_ids), len(t.completion_ids)
        old[i, p - 1 : p - 1 + c] = torch.tensor(t.logprobs)
        if ref is not None:
            ref[i, p - 1 : p - 1 + c] = torch.tensor(t.ref_logprobs)
    adv = torch.tensor([t.advantage for t in trajectories], dtype=torch.float32)
    return PolicyBatch(ids, attn, mask, old, adv, ref, token_scale)


def _rollout_source(manager, job, tokenizer) -> RolloutSource:
    return RolloutSource(manager, job.train.micro_batch_per_worker, tokenizer.pad_token_id, collate)


def grpo_loss(model, batch: PolicyBatch, *, cfg: RlvrConfig):
    """GRPO's clipped surrogate (+ k3 KL), token-level over the step, plus the MoE balance loss."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1]
    logp = token_logprobs(logits, batch.input_ids[:, 1:], cfg.temperature)
    per_token, clipped = clipped_surrogate(
        logp, batch.old_logprobs, batch.advantages, clip_low=cfg.clip_low, clip_high=cfg.clip_high
    )
    metrics = {}
    if batch.ref_logprobs is not None:
        kl = k3_kl(logp, batch.ref_logprobs)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = float(masked_mean(kl.detach(), batch.mask))
    loss = (per_token * batch.mask).sum() * batch.token_scale
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        loss = loss + cfg.aux_loss_coef * aux
        metrics["aux_loss"] = float(aux.detach())
    with torch.no_grad():
        metrics.update(
            clip_fraction=float(masked_mean(clipped.float(), batch.mask)),
            entropy=float(masked_mean(entropy(logits, cfg.temperature), batch.mask)),
            ratio_mean=float(masked_mean(torch.exp(logp - batch.old_logprobs), batch.mask)),
            pg_loss=float(masked_mean(per_token, batch.mask)),
        )
    return loss, metrics, getattr(out, "router_logits", None)


def grpo_recipe(cfg: RlvrConfig, manager) -> Recipe:
    return Recipe(
        make_source=partial(_rollout_source, manager),
        loss=partial(grpo_loss, cfg=cfg),
        after_step=WeightSync(manager),
    )
