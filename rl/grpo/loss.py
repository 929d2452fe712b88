"""GRPO's maths as pure functions: group advantages, the clipped surrogate, the k3 KL estimator.

Shapes: rewards are flat `(num_prompts * group_size,)`, prompt-major (a group's G samples are
adjacent). Token tensors are `(B, T)` with a float `mask` that is 1 on completion tokens.
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - mean of its group), divided by the group's std when `scale` (DeepSeekMath's GRPO).

    The std is the population std (ddof 0). A group whose rewards are all equal carries no signal
    and gets advantage 0 for every sample, whatever `scale`.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.view(-1)


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss -min(r A, clip(r, 1-low, 1+high) A), r = pi/pi_old; and where it clipped.

    `advantages` is per sequence `(B,)` or per token `(B, T)`. A separate upper bound
    (`clip_high` > `clip_low`, DAPO's clip-higher) leaves low-probability tokens room to grow.
    """
    adv = advantages.unsqueeze(-1) if advantages.ndim == 1 else advantages
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(ref - logp) - (ref - logp) - 1 (Schulman's k3): >= 0, unbiased."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0
