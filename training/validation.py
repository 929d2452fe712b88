"""Held-out evaluation inside the training loop: the signal a sweep's early stopping reads.

Every `eval_every` steps, and at every checkpoint so that each Ray Train report carries the same
keys, the workers compute the recipe's loss on the rows their batch source holds out of training.
The loop reports these steps through `ray.train.report` (without a checkpoint in between); inside
a Ray Tune trial those reports reach Tune, whose ASHA scheduler stops the worst trials early.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist

from training.config import TrainConfig


@runtime_checkable
class HeldOut(Protocol):
    """A batch source that keeps some of its rows out of training, for evaluation."""

    def held_out_batches(self, rank: int, world: int) -> list[Any]:
        """This rank's micro-batches (with `input_ids` (B, T)) of the held-out rows. Every rank gets
        the same number of batches of the same sizes: AutoEP runs collectives inside the forward."""
        ...


def eval_due(tcfg: TrainConfig, done: int) -> bool:
    """Whether held-out metrics are computed after `done` optimizer steps."""
    return bool(tcfg.eval_every) and (done % tcfg.eval_every == 0 or checkpoint_due(tcfg, done))


def checkpoint_due(tcfg: TrainConfig, done: int) -> bool:
    """Whether the loop saves (and reports) a checkpoint after `done` optimizer steps."""
    return done % tcfg.checkpoint_every == 0 or done == tcfg.max_steps


@torch.no_grad()
def held_out_metrics(engine, source, loss_fn, rank: int, world: int, device) -> dict[str, float]:
    """`eval_loss`: the recipe's loss on the source's held-out rows, averaged over every rank's rows.

    The loss is the training objective as the recipe computes it (for `lm_loss`, the next-token
    loss plus the MoE load-balancing term). Sources without held-out rows give {}.
    """
    batches = source.held_out_batches(rank, world) if isinstance(source, HeldOut) else []
    if not batches:
        return {}
    engine.eval()
    try:
        # Sum of loss x rows, and rows; on `device` because NCCL reduces only GPU tensors.
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in batches:
            loss, _, _ = loss_fn(engine, batch.to(device))
            rows = batch.input_ids.shape[0]
            total += torch.tensor([float(loss) * rows, rows], dtype=torch.float64, device=device)
    finally:
        engine.train()
    if dist.is_initialized():
        dist.all_reduce(total)
    return {"eval_loss": float(total[0] / total[1])}
