"""The KD losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rl.config import KD_LOSS_NEEDS_TEACHER
from rl.distill.draft_eval import mean_top1_agreement
from rl.distill.kd import KD_LOSSES, forward_kl, generalized_jsd, reverse_kl, sequence_nll, top1_agreement


def _logits(*probs: float) -> torch.Tensor:
    """(1, 1, V) logits whose softmax is `probs` (log-probabilities are valid logits)."""
    return torch.tensor(probs).log().view(1, 1, -1)


P = _logits(0.5, 0.5)  # teacher
Q = _logits(0.25, 0.75)  # student


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(2, 3, 7)
    logprobs = torch.log_softmax(logits, -1)
    for loss in (forward_kl, reverse_kl):
        torch.testing.assert_close(loss(logits, logprobs), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(generalized_jsd(logits, logprobs, 0.3), torch.zeros(2, 3), atol=1e-6, rtol=0)


def test_forward_and_reverse_kl_match_the_hand_computed_values_and_differ():
    # KL(P||Q) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
    assert forward_kl(Q, P).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # KL(Q||P) = .25 ln(.25/.5) + .75 ln(.75/.5)
    assert reverse_kl(Q, P).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)
    assert forward_kl(Q, P).item() == pytest.approx(0.143841, abs=1e-6)
    assert reverse_kl(Q, P).item() == pytest.approx(0.130812, abs=1e-6)


def test_jsd_at_beta_half_is_symmetric_and_matches_the_hand_value():
    # M = (.375, .625); .5 KL(P||M) + .5 KL(Q||M)
    kl_pm = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
    kl_qm = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    expected = 0.5 * kl_pm + 0.5 * kl_qm
    assert generalized_jsd(Q, P, 0.5).item() == pytest.approx(expected, abs=1e-6)
    assert generalized_jsd(P, Q, 0.5).item() == pytest.approx(expected, abs=1e-6)


def test_jsd_weights_the_teacher_by_beta():
    # beta = .25: M = .25 P + .75 Q = (.3125, .6875); .25 KL(P||M) + .75 KL(Q||M)
    m = (0.3125, 0.6875)
    kl_pm = sum(p * math.log(p / mi) for p, mi in zip((0.5, 0.5), m, strict=True))
    kl_qm = sum(q * math.log(q / mi) for q, mi in zip((0.25, 0.75), m, strict=True))
    assert generalized_jsd(Q, P, 0.25).item() == pytest.approx(0.25 * kl_pm + 0.75 * kl_qm, abs=1e-6)
    assert generalized_jsd(Q, P, 0.25).item() != pytest.approx(generalized_jsd(P, Q, 0.25).item(), abs=1e-4)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        generalized_jsd(Q, P, 1.0)


def test_temperature_softens_both_sides_and_scales_by_its_square():
    teacher = _logits(0.2, 0.8)  # logit gap ln 4; at T=2 the gap is ln 2: (1/3, 2/3)
    student = _logits(0.5, 0.5)  # uniform at any temperature
    kl = (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.5)
    assert forward_kl(student, teacher, temperature=2.0).item() == pytest.approx(4 * kl, abs=1e-6)
    # Shipping log-probs instead of logits changes nothing: the shift cancels in the softmax.
    raw = torch.tensor([[[3.0, -1.0, 0.5]]])
    s = torch.tensor([[[0.1, 0.2, 0.3]]])
    for t in (0.5, 1.0, 3.0):
        torch.testing.assert_close(forward_kl(s, torch.log_softmax(raw, -1), t), forward_kl(s, raw, t))


def test_sequence_nll_is_minus_log_prob_of_the_target():
    logits = _logits(0.25, 0.75)
    assert sequence_nll(logits, torch.tensor([[1]])).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_top1_agreement_compares_argmaxes():
    student = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    teacher = torch.tensor([[[-2.0, -0.1], [-0.1, -2.0]]]).flip(-1)  # argmax 0 then 1
    assert top1_agreement(student, teacher).tolist() == [[0.0, 0.0]]
    assert top1_agreement(student, student.log_softmax(-1)).tolist() == [[1.0, 1.0]]


def test_registry_losses_are_zero_exactly_when_the_student_is_the_teacher():
    logits = torch.randn(1, 4, 5)
    targets = torch.randint(0, 5, (1, 4))
    for name, spec in KD_LOSSES.items():
        if spec.needs_teacher:
            same = spec.per_token(logits, targets, torch.log_softmax(logits, -1), 0.5, 1.0)
            other = spec.per_token(logits, targets, torch.log_softmax(torch.randn(1, 4, 5), -1), 0.5, 1.0)
            assert same.abs().max() < 1e-6 and other.min() > 0, name
        else:
            torch.testing.assert_close(
                spec.per_token(logits, targets, None, 0.5, 1.0), sequence_nll(logits, targets)
            )


def test_the_config_offers_exactly_the_kd_losses_that_exist():
    assert {name: loss.needs_teacher for name, loss in KD_LOSSES.items()} == KD_LOSS_NEEDS_TEACHER


def test_mean_top1_agreement_pools_positions_over_sequences_of_different_lengths():
    teacher = [torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0]])]
    student = [torch.tensor([[0.0, 3.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])]
    # argmaxes: teacher 1, 0 | 0; student 1, 1 | 0 -> 2 of 3 positions agree (not the mean of 1/2 and 1).
    assert mean_top1_agreement(teacher, student) == pytest.approx(2 / 3)
