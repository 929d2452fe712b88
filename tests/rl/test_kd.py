"""The KD losses against hand-computed values, on the teacher's top-k plus a tail bucket."""

from __future__ import annotations

import math

import pytest
import torch

from rl.config import KD_LOSS_NEEDS_TEACHER
from rl.distill.draft_eval import mean_top1_agreement
from rl.distill.kd import KD_LOSSES, forward_kl, generalized_jsd, reverse_kl, sequence_nll, top1_agreement

TOKEN_LOSSES = {
    "forward_kl": lambda s, p, ids, t: forward_kl(s, p, ids, t),
    "reverse_kl": lambda s, p, ids, t: reverse_kl(s, p, ids, t),
    "jsd": lambda s, p, ids, t: generalized_jsd(s, p, ids, 0.3, t),
}


def _logits(*probs: float) -> torch.Tensor:
    """(1, 1, V) logits whose softmax is `probs` (log-probabilities are valid logits)."""
    return torch.tensor(probs).log().view(1, 1, -1)


def _topk(logits: torch.Tensor, k: int | None = None, temperature: float = 1.0):
    """What a teacher worker ships: its k largest log softmax(logits / T), and their ids."""
    logp = torch.log_softmax(logits / temperature, -1)
    return logp.topk(logp.shape[-1] if k is None else k, dim=-1)


def _full_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


def _full_losses(student, teacher, temperature):
    """The full-vocabulary losses, straight from their definitions (JSD at beta = 0.3)."""
    p, q = torch.softmax(teacher / temperature, -1), torch.softmax(student / temperature, -1)
    m = 0.3 * p + 0.7 * q
    jsd = 0.3 * _full_kl(p, m) + 0.7 * _full_kl(q, m)
    t2 = temperature**2
    return {"forward_kl": t2 * _full_kl(p, q), "reverse_kl": t2 * _full_kl(q, p), "jsd": t2 * jsd}


P = _logits(0.5, 0.5)  # teacher
Q = _logits(0.25, 0.75)  # student


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(2, 3, 7)
    for k in (7, 3, 1):
        for name, loss in TOKEN_LOSSES.items():
            torch.testing.assert_close(
                loss(logits, *_topk(logits, k), 1.0), torch.zeros(2, 3), atol=1e-6, rtol=0, msg=name
            )


def test_forward_and_reverse_kl_match_the_hand_computed_values_and_differ():
    # k = V = 2: KL(P||Q) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
    assert forward_kl(Q, *_topk(P)).item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    # KL(Q||P) = .25 ln(.25/.5) + .75 ln(.75/.5)
    assert reverse_kl(Q, *_topk(P)).item() == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6
    )
    assert forward_kl(Q, *_topk(P)).item() == pytest.approx(0.143841, abs=1e-6)
    assert reverse_kl(Q, *_topk(P)).item() == pytest.approx(0.130812, abs=1e-6)


def test_jsd_at_beta_half_is_symmetric_and_matches_the_hand_value():
    # M = (.375, .625); .5 KL(P||M) + .5 KL(Q||M)
    kl_pm = 0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)
    kl_qm = 0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625)
    expected = 0.5 * kl_pm + 0.5 * kl_qm
    assert generalized_jsd(Q, *_topk(P), 0.5).item() == pytest.approx(expected, abs=1e-6)
    assert generalized_jsd(P, *_topk(Q), 0.5).item() == pytest.approx(expected, abs=1e-6)


def test_jsd_weights_the_teacher_by_beta():
    # beta = .25: M = .25 P + .75 Q = (.3125, .6875); .25 KL(P||M) + .75 KL(Q||M)
    m = (0.3125, 0.6875)
    kl_pm = sum(p * math.log(p / mi) for p, mi in zip((0.5, 0.5), m, strict=True))
    kl_qm = sum(q * math.log(q / mi) for q, mi in zip((0.25, 0.75), m, strict=True))
    assert generalized_jsd(Q, *_topk(P), 0.25).item() == pytest.approx(0.25 * kl_pm + 0.75 * kl_qm, abs=1e-6)
    assert generalized_jsd(Q, *_topk(P), 0.25).item() != pytest.approx(
        generalized_jsd(P, *_topk(Q), 0.25).item(), abs=1e-4
    )
    with pytest.raises(ValueError, match="0 < beta < 1"):
        generalized_jsd(Q, *_topk(P), 1.0)


def test_top2_of_four_tokens_matches_the_hand_computed_bucket_losses():
    # Teacher (.15, .5, .05, .3): top-2 ids (1, 3), log(.5, .3), tail .2.
    # Student (.2, .4, .3, .1): at ids (1, 3) (.4, .1), its own tail .5.
    teacher, student = _logits(0.15, 0.5, 0.05, 0.3), _logits(0.2, 0.4, 0.3, 0.1)
    values, ids = _topk(teacher, 2)
    assert ids.tolist() == [[[1, 3]]]
    p, q = (0.5, 0.3, 0.2), (0.4, 0.1, 0.5)
    forward = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.1) + 0.2 * math.log(0.2 / 0.5)
    reverse = 0.4 * math.log(0.4 / 0.5) + 0.1 * math.log(0.1 / 0.3) + 0.5 * math.log(0.5 / 0.2)
    assert forward == pytest.approx(0.257898, abs=1e-6)
    assert forward_kl(student, values, ids).item() == pytest.approx(forward, abs=1e-6)
    assert reverse_kl(student, values, ids).item() == pytest.approx(reverse, abs=1e-6)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]  # (.45, .25, .35)
    jsd = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m, strict=True)) + 0.5 * sum(
        b * math.log(b / c) for b, c in zip(q, m, strict=True)
    )
    assert generalized_jsd(student, values, ids, 0.5).item() == pytest.approx(jsd, abs=1e-6)


def test_the_tail_bucket_charges_the_student_for_its_mass_outside_the_teachers_top_k():
    teacher = _logits(0.5, 0.3, 0.15, 0.05)
    values, ids = _topk(teacher, 2)
    # Same top-2 probabilities, its tail spread differently: the bucket losses cannot tell.
    reshuffled = _logits(0.5, 0.3, 0.05, 0.15)
    # Same top-2 ratio (renormalised top-2 alone would call it perfect) but .6 in the tail.
    leaky = _logits(0.25, 0.15, 0.3, 0.3)
    for name, loss in TOKEN_LOSSES.items():
        assert abs(loss(reshuffled, values, ids, 1.0).item()) < 1e-6, name
        assert loss(leaky, values, ids, 1.0).item() > 0.05, name
    # .5 ln(.5/.25) + .3 ln(.3/.15) + .2 ln(.2/.6)
    assert forward_kl(leaky, values, ids).item() == pytest.approx(
        0.8 * math.log(2) - 0.2 * math.log(3), abs=1e-6
    )


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_top_k_losses_equal_the_full_vocabulary_losses_when_k_is_v(temperature):
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 11) * 3, torch.randn(2, 3, 11) * 3
    expected = _full_losses(student, teacher, temperature)
    for name, loss in TOKEN_LOSSES.items():
        got = loss(student, *_topk(teacher, None, temperature), temperature)
        torch.testing.assert_close(got, expected[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_truncated_losses_are_nonnegative_and_zero_only_for_the_teacher(k):
    torch.manual_seed(1)
    teacher = torch.randn(4, 5, 7) * 2
    for temperature in (0.5, 2.0):
        top = _topk(teacher, k, temperature)
        for name, loss in TOKEN_LOSSES.items():
            other = loss(torch.randn(4, 5, 7) * 2, *top, temperature)
            same = loss(teacher, *top, temperature)
            assert other.min() > 0 and same.abs().max() < 1e-5, (name, temperature)


def test_temperature_is_the_teachers_before_its_top_k_and_scales_by_its_square():
    # The teacher ships log softmax(logits / T): (.2, .8) at T=2 is (1/3, 2/3). A uniform student
    # stays uniform; the loss is T^2 KL.
    teacher, uniform = _logits(0.2, 0.8), _logits(0.5, 0.5)
    kl = (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.5)
    assert forward_kl(uniform, *_topk(teacher, None, 2.0), 2.0).item() == pytest.approx(4 * kl, abs=1e-6)
    # The losses soften the student themselves: the teacher's own logits match it at any T.
    for t in (0.5, 3.0):
        assert forward_kl(teacher, *_topk(teacher, 1, t), t).abs().item() < 1e-6


@pytest.mark.parametrize("k", [2, 11])
def test_gradient_reaches_the_student_logits_and_equals_full_kd_at_k_v(k):
    torch.manual_seed(2)
    teacher = torch.randn(2, 3, 11)
    for name, loss in TOKEN_LOSSES.items():
        student = (torch.randn(2, 3, 11) * 2).requires_grad_()
        loss(student, *_topk(teacher, k, 2.0), 2.0).sum().backward()
        grad = student.grad
        assert torch.isfinite(grad).all() and grad.abs().min() > 0, name  # tail tokens too
        if k == 11:
            reference = student.detach().clone().requires_grad_()
            _full_losses(reference, teacher, 2.0)[name].sum().backward()
            torch.testing.assert_close(grad, reference.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_sequence_nll_is_minus_log_prob_of_the_target():
    logits = _logits(0.25, 0.75)
    assert sequence_nll(logits, torch.tensor([[1]])).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_top1_agreement_compares_argmaxes():
    student = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    teacher = torch.tensor([[[-2.0, -0.1], [-0.1, -2.0]]]).flip(-1)  # argmax 0 then 1
    assert top1_agreement(student, teacher).tolist() == [[0.0, 0.0]]
    assert top1_agreement(student, student.log_softmax(-1)).tolist() == [[1.0, 1.0]]


def test_top1_agreement_on_the_teachers_top_k_reads_its_first_id():
    student = torch.tensor([[[0.0, 3.0, 1.0, 2.0], [0.0, 3.0, 1.0, 2.0]]])  # argmax 1 at both
    teacher = torch.tensor([[[0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.1, 0.6]]]).log()  # argmax 1 then 3
    values, ids = teacher.topk(2, dim=-1)
    assert ids[..., 0].tolist() == [[1, 3]]
    assert top1_agreement(student, values, ids.int()).tolist() == [[1.0, 0.0]]


def test_registry_losses_are_zero_exactly_when_the_student_is_the_teacher():
    logits = torch.randn(1, 4, 5)
    targets = torch.randint(0, 5, (1, 4))
    for name, spec in KD_LOSSES.items():
        if spec.needs_teacher:
            same = spec.per_token(logits, targets, *_topk(logits, 3), 0.5, 1.0)
            other = spec.per_token(logits, targets, *_topk(torch.randn(1, 4, 5), 3), 0.5, 1.0)
            assert same.abs().max() < 1e-6 and other.min() > 0, name
        else:
            torch.testing.assert_close(
                spec.per_token(logits, targets, None, None, 0.5, 1.0), sequence_nll(logits, targets)
            )


def test_the_config_offers_exactly_the_kd_losses_that_exist():
    assert {name: loss.needs_teacher for name, loss in KD_LOSSES.items()} == KD_LOSS_NEEDS_TEACHER


def test_mean_top1_agreement_pools_positions_over_sequences_of_different_lengths():
    teacher = [torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0]])]
    student = [torch.tensor([[0.0, 3.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0]])]
    # argmaxes: teacher 1, 0 | 0; student 1, 1 | 0 -> 2 of 3 positions agree (not the mean of 1/2 and 1).
    assert mean_top1_agreement(teacher, student) == pytest.approx(2 / 3)
