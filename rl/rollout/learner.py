"""The learner's side of the rollout layer, as pieces of a training-loop recipe: a batch source
that takes a rank's share of each step from the rollout manager, and the after-step hook that
pushes the new weights to the manager's policy workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rl.rollout.worker import Trajectory


def align(trajectories: list[Trajectory], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids `(B, T)`, their attention mask, and the float target mask
    `(B, T-1)` that is 1 where the target is a completion token (logits at position j predict
    token j+1, so completion token k of a prompt of length p is target p-1+k)."""
    width = max(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories)
    b = len(trajectories)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    mask = torch.zeros((b, width - 1))
    for i, t in enumerate(trajectories):
        p, c = len(t.prompt_ids), len(t.completion_ids)
        ids[i, : p + c] = torch.tensor(t.prompt_ids + t.completion_ids)
        attn[i, : p + c] = 1
        mask[i, p - 1 : p - 1 + c] = 1.0
    return ids, attn, mask


@dataclass(frozen=True)
class RolloutSource:
    """A learner rank's micro-batches of a step: its share of the step's rollouts."""

    manager: Any  # RolloutManager actor handle
    micro_bs: int
    pad_id: int
    # (trajectories, pad_id, token_scale) -> a micro-batch: GRPO's PolicyBatch, or distillation's.
    collate_fn: Callable[[list[Trajectory], int, float], Any]

    def step_batches(self, step: int, rank: int, world: int, accum: int) -> tuple[list[Any], dict]:
        import ray

        share, metrics = ray.get(self.manager.step_batch.remote(step, rank, world))
        if len(share) != accum * self.micro_bs:
            raise ValueError(
                f"step {step}: rank {rank} got {len(share)} trajectories, expected {accum} x {self.micro_bs}"
            )
        scale = accum * world / max(1.0, metrics["completion_tokens"])
        chunks = [share[i : i + self.micro_bs] for i in range(0, len(share), self.micro_bs)]
        return [self.collate_fn(c, self.pad_id, scale) for c in chunks], metrics


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
