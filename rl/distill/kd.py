"""Knowledge-distillation losses as pure functions, and the registry `distill.loss` names.

Shapes: student logits `(B, T, V)`; the teacher arrives as its top-k, `teacher_logprobs` `(B, T, k)`
(its k largest log-probabilities at each position) and `teacher_ids` `(B, T, k)` (their token ids).
The full `(B, T, V)` does not travel: at V = 49152 it is 196,608 fp32 bytes a token, the top-64 with
int32 ids 512. Every loss is per position `(B, T)`; the caller masks and averages.

Top-k with the tail kept: the token-level losses compare two distributions over k + 1 buckets, the
teacher's k tokens and one tail bucket for all the others. The teacher's tail holds
1 - sum(exp(topk)); the student's buckets are its own probabilities of the same k tokens and its
remaining mass. Renormalising the top-k alone instead would let the student spread mass outside
them for free. Top-k KD stays a biased estimate of full KD (Anshumann et al. 2025, arXiv:2503.16870):
the tail bucket charges the student for its mass outside the k tokens, not for how it spreads it
there. With k = V the tail is empty and these are the full-vocabulary losses. A tail mass is
1 - a sum of fp32 probabilities, off by up to ~1e-5 at large V, so it is floored at TAIL_FLOOR and
each side renormalised over its buckets: k = V gives no log(0), and the KLs stay >= 0.

Temperature: softening truncated log-probabilities by T is not exact (the tail's share at T depends
on how its mass is spread, which one number cannot tell), so the teacher workers apply it before
taking the top-k, log_softmax(logits / T), and the losses take the teacher already softened; they
soften the student themselves. Token-level losses are scaled by T^2 (Hinton et al. 2015) so that
their gradients keep the same size whatever the temperature.

The generalised JSD is GKD's (Agarwal et al. 2023, arXiv:2306.13649): JSD_b(P || Q) = b KL(P || M)
+ (1 - b) KL(Q || M) with M = b P + (1 - b) Q, P the teacher and Q the student, as in TRL's
GKDTrainer. Its ends vanish (b -> 0 or 1 gives 0), so the registry takes b in (0, 1) and offers
forward_kl and reverse_kl for the ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# Least tail mass: above zero, so that log(tail) is finite when the top-k holds (nearly) everything.
TAIL_FLOOR = 1e-6


def _with_tail(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """`(..., k)` log-probabilities of k tokens -> `(..., k + 1)` with the tail bucket last."""
    tail = (1.0 - topk_logprobs.exp().sum(-1, keepdim=True)).clamp(min=TAIL_FLOOR).log()
    buckets = torch.cat([topk_logprobs, tail], dim=-1)
    return buckets - buckets.logsumexp(-1, keepdim=True)


def _buckets(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher, student) log-probabilities over the k + 1 buckets, `(B, T, k + 1)` each."""
    student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return _with_tail(teacher_logprobs.float()), _with_tail(student.gather(-1, teacher_ids.long()))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """T^2 KL(teacher || student): mass-covering, the classic logit KD."""
    log_p, log_q = _buckets(student_logits, teacher_logprobs, teacher_ids, temperature)
    return temperature**2 * _kl(log_p, log_q)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """T^2 KL(student || teacher): mode-seeking, the student may drop teacher modes it cannot fit."""
    log_p, log_q = _buckets(student_logits, teacher_logprobs, teacher_ids, temperature)
    return temperature**2 * _kl(log_q, log_p)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """T^2 JSD_beta(teacher || student) with the mixture M = beta teacher + (1 - beta) student."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"generalised JSD needs 0 < beta < 1 (use forward_kl / reverse_kl); got {beta}")
    log_p, log_q = _buckets(student_logits, teacher_logprobs, teacher_ids, temperature)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1.0 - beta)]), dim=0)
    return temperature**2 * (beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m))


def sequence_nll(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log q(target): sequence-level KD is plain SFT on the teacher's sampled tokens (Kim & Rush 2016)."""
    logp = torch.log_softmax(student_logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def top1_agreement(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, teacher_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """1.0 where the student's most likely token is the teacher's, per position `(B, T)`.

    The teacher's log-probabilities are over the whole vocabulary, or over `teacher_ids` (its top-k).
    """
    top = teacher_logprobs.argmax(-1, keepdim=True)
    if teacher_ids is not None:
        top = teacher_ids.gather(-1, top)
    return (student_logits.argmax(-1) == top.squeeze(-1)).float()


@dataclass(frozen=True)
class KdLoss:
    # (student_logits, targets, teacher top-k log-probs or None, their ids or None, beta, temperature)
    # -> per-position loss.
    per_token: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, float, float], torch.Tensor
    ]
    # Whether the teacher workers must score every token (their top-k log-probabilities).
    needs_teacher: bool


KD_LOSSES: dict[str, KdLoss] = {
    "seq_kd": KdLoss(lambda s, y, p, ids, beta, t: sequence_nll(s, y), needs_teacher=False),
    "forward_kl": KdLoss(lambda s, y, p, ids, beta, t: forward_kl(s, p, ids, t), needs_teacher=True),
    "reverse_kl": KdLoss(lambda s, y, p, ids, beta, t: reverse_kl(s, p, ids, t), needs_teacher=True),
    "jsd": KdLoss(lambda s, y, p, ids, beta, t: generalized_jsd(s, p, ids, beta, t), needs_teacher=True),
}
