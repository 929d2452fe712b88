"""The GRPO learner as a recipe for the shared training loop (training/loop.py).

Its batches come from the rollout manager instead of a dataset, its loss is GRPO's clipped
surrogate, and after every optimizer step it pushes the new weights to the rollout workers.
DeepSpeed (ZeRO, AutoEP), checkpoints, resume and failure recovery are the loop's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from rl.config import RlvrConfig
from rl.grpo import clipped_surrogate, entropy, k3_kl, masked_mean, token_logprobs
from rl.rollout import Trajectory
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
    width = max(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories)
    b = len(trajectories)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width - 1))
    old = torch.zeros((b, width - 1))
    with_ref = trajectories[0].ref_logprobs is not None
    ref = torch.zeros((b, width - 1)) if with_ref else None
    for i, t in enumerate(trajectories):
        p, c = len(t.prompt_ids), len(t.completion_ids)
        ids[i, : p + c] = torch.tensor(t.prompt_ids + t.completion_ids)
        attn[i, : p + c] = 1
        # logits at position j predict token j+1: completion token k sits at target p-1+k.
        mask[i, p - 1 : p - 1 + c] = 1.0
        old[i, p - 1 : p - 1 + c] = torch.tensor(t.logprobs)
        if ref is not None:
            ref[i, p - 1 : p - 1 + c] = torch.tensor(t.ref_logprobs)
    adv = torch.tensor([t.advantage for t in trajectories], dtype=torch.float32)
    return PolicyBatch(ids, attn, mask, old, adv, ref, token_scale)


@dataclass(frozen=True)
class RolloutSource:
    """A learner rank's micro-batches of a step: its share of the step's rollouts."""

    manager: Any  # RolloutManager actor handle (or a subclass's: rl.distill_manager)
    micro_bs: int
    pad_id: int
    # (trajectories, pad_id, token_scale) -> a micro-batch: GRPO's PolicyBatch, or distillation's.
    collate_fn: Callable[[list[Trajectory], int, float], Any] = collate

    def step_batches(self, step: int, rank: int, world: int, accum: int) -> tuple[list[PolicyBatch], dict]:
        import ray

        share, metrics = ray.get(self.manager.step_batch.remote(step, rank, world))
        if len(share) != accum * self.micro_bs:
            raise ValueError(
                f"step {step}: rank {rank} got {len(share)} trajectories, expected {accum} x {self.micro_bs}"
            )
        scale = accum * world / max(1.0, metrics["completion_tokens"])
        chunks = [share[i : i + self.micro_bs] for i in range(0, len(share), self.micro_bs)]
        return [self.collate_fn(c, self.pad_id, scale) for c in chunks], metrics


def _rollout_source(manager, job, tokenizer) -> RolloutSource:
    return RolloutSource(manager, job.train.micro_batch_per_worker, tokenizer.pad_token_id)


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


@dataclass(frozen=True)
class WeightSync:
    """After each step: gather the full HF state dict (a collective) and push it from rank 0."""

    manager: Any

    def __call__(self, engine, version: int, rank: int) -> dict[str, float]:
        import ray
        import torch.distributed as dist

        from training.checkpoint import gather_hf_state_dict

        start = time.perf_counter()
        state = gather_hf_state_dict(engine)
        metrics: dict[str, float] = {}
        if rank == 0:
            nbytes = sum(t.numel() * t.element_size() for t in state.values())
            metrics = ray.get(self.manager.push_weights.remote([ray.put(state)], version, nbytes))
            metrics["sync_total_s"] = time.perf_counter() - start
        # No rank may ask for the next rollouts before the workers hold this version.
        dist.barrier()
        return metrics


def grpo_recipe(cfg: RlvrConfig, manager) -> Recipe:
    return Recipe(
        make_source=partial(_rollout_source, manager),
        loss=partial(grpo_loss, cfg=cfg),
        after_step=WeightSync(manager),
    )
