"""Optimizer pieces the DeepSpeed config can't express: the Muon/AdamW split and the lr schedule."""

from __future__ import annotations

import math

import deepspeed
from torch.optim.lr_scheduler import LambdaLR

# Routers (MoE gates) stay on AdamW: Muon's orthogonalised step would equalise the gate's
# singular values, i.e. push every expert's logit direction to the same scale, which fights
# the load balancing the router learns (Kimi K2 keeps routers off Muon too).
ADAMW_NAME_PARTS = (".mlp.gate.", ".mlp.router.", ".block_sparse_moe.gate.")


def lr_factor(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler(warmup: int, total: int, min_ratio: float):
    """A callable DeepSpeed turns into the lr scheduler (it scales every param group's lr)."""
    return lambda optimizer: LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup=warmup, total=total, min_ratio=min_ratio)
    )


def route_routers_to_adamw() -> None:
    """Make DeepSpeed's Muon tagging leave MoE routers on the AdamW half.

    DeepSpeed decides Muon vs Adam by a `use_muon` attribute that `deepspeed.set_optimizer_flags`
    sets for every >=2-D parameter not named embed/lm_head, and it re-runs that after AutoEP has
    replaced the MoE layers, so an attribute set beforehand is lost (DeepSpeed 0.19.8,
    runtime/engine.py). Wrapping that function is the one hook both call sites go through.
    """
    original = deepspeed.set_optimizer_flags
    if getattr(original, "_routers_on_adamw", False):
        return

    def tag(config_class, model):
        original(config_class, model)
        for name, p in model.named_parameters():
            if any(part in name for part in ADAMW_NAME_PARTS):
                p.use_muon = False

    tag._routers_on_adamw = True
    deepspeed.set_optimizer_flags = tag
