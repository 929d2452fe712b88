"""Knowledge-distillation losses as pure functions, and the registry `distill.loss` names.

Shapes: student logits `(B, T, V)`; the teacher arrives as log-probabilities `(B, T, V)` at
temperature 1 (what the teacher workers ship). Softening them by T here is exact: log-probs differ
from logits by a per-position constant, which the softmax removes. Every loss is per position
`(B, T)`; the caller masks and averages.

Token-level losses are scaled by T^2 (Hinton et al. 2015) so that their gradients keep the same
size whatever the temperature. The generalised JSD is GKD's (Agarwal et al. 2023,
arXiv:2306.13649): JSD_b(P || Q) = b KL(P || M) + (1 - b) KL(Q || M) with M = b P + (1 - b) Q,
P the teacher and Q the student, as in TRL's GKDTrainer. Its ends vanish (b -> 0 or 1 gives 0),
so the registry takes b in (0, 1) and offers forward_kl and reverse_kl for the ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _soften(logits_or_logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits_or_logprobs.float() / temperature, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def forward_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float = 1.0):
    """T^2 KL(teacher || student): mass-covering, the classic logit KD."""
    t = temperature
    return t * t * _kl(_soften(teacher_logprobs, t), _soften(student_logits, t))


def reverse_kl(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float = 1.0):
    """T^2 KL(student || teacher): mode-seeking, the student may drop teacher modes it cannot fit."""
    t = temperature
    return t * t * _kl(_soften(student_logits, t), _soften(teacher_logprobs, t))


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, beta: float = 0.5, temperature: float = 1.0
):
    """T^2 JSD_beta(teacher || student) with the mixture M = beta teacher + (1 - beta) student."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"generalised JSD needs 0 < beta < 1 (use forward_kl / reverse_kl); got {beta}")
    t = temperature
    log_p, log_q = _soften(teacher_logprobs, t), _soften(student_logits, t)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
    return t * t * (beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m))


def sequence_nll(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log q(target): sequence-level KD is plain SFT on the teacher's sampled tokens (Kim & Rush 2016)."""
    logp = torch.log_softmax(student_logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def top1_agreement(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """1.0 where the student's most likely token is the teacher's, per position `(B, T)`."""
    return (student_logits.argmax(-1) == teacher_logprobs.argmax(-1)).float()


@dataclass(frozen=True)
class KdLoss:
    # (student_logits, targets, teacher_logprobs or None, beta, temperature) -> per-position loss.
    per_token: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float, float], torch.Tensor]
    # Whether the teacher workers must score every token (full-vocabulary log-probabilities).
    needs_teacher: bool


KD_LOSSES: dict[str, KdLoss] = {
    "seq_kd": KdLoss(lambda s, y, p, beta, t: sequence_nll(s, y), needs_teacher=False),
    "forward_kl": KdLoss(lambda s, y, p, beta, t: forward_kl(s, p, t), needs_teacher=True),
    "reverse_kl": KdLoss(lambda s, y, p, beta, t: reverse_kl(s, p, t), needs_teacher=True),
    "jsd": KdLoss(lambda s, y, p, beta, t: generalized_jsd(s, p, beta, t), needs_teacher=True),
}
