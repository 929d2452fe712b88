"""GRPO's maths against hand-computed values."""

import math

import pytest
import torch

from rl.grpo.loss import clipped_surrogate, group_advantages, k3_kl
from rl.tokens import entropy, masked_mean, token_logprobs


def test_group_advantages_centre_and_scale_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 4.0])
    adv = group_advantages(rewards, group_size=4, eps=0.0)
    # group 1: mean 0.5, population std 0.5 -> +-1
    assert adv[:4].tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    # group 2: mean 2.5, std sqrt((3 * 0.25 + 2.25) / 4) = sqrt(0.75)
    s = math.sqrt(0.75)
    assert adv[4:].tolist() == pytest.approx([-0.5 / s, -0.5 / s, -0.5 / s, 1.5 / s])


def test_group_advantages_are_zero_when_a_group_ties():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    for scale in (True, False):
        assert group_advantages(rewards, 3, scale=scale).tolist() == [0.0] * 6


def test_group_advantages_unscaled_only_centre():
    adv = group_advantages(torch.tensor([3.0, 1.0]), 2, scale=False)
    assert adv.tolist() == [1.0, -1.0]


def test_group_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)


def test_clipped_surrogate_matches_ppo_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 0.7 with eps_low 0.2, eps_high 0.28
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    pos, clipped_pos = clipped_surrogate(logp, old, torch.tensor([2.0]), clip_low=0.2, clip_high=0.28)
    # A > 0: -min(r A, clip(r) A) -> r clipped above at 1.28, never below
    assert pos[0].tolist() == pytest.approx([-1.28 * 2, -0.5 * 2, -1.1 * 2, -0.7 * 2])
    assert clipped_pos[0].tolist() == [True, False, False, False]
    neg, clipped_neg = clipped_surrogate(logp, old, torch.tensor([-1.0]), clip_low=0.2, clip_high=0.28)
    # A < 0: -min(-r, -clip(r)) = max(r, clip(r)) -> r clipped below at 0.8, never above
    assert neg[0].tolist() == pytest.approx([1.5, 0.8, 1.1, 0.8])
    assert clipped_neg[0].tolist() == [False, True, False, True]


def test_clipped_surrogate_gradient_vanishes_where_clipped():
    logp = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_()
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([1.0]), clip_low=0.2, clip_high=0.2)
    loss.sum().backward()
    # clipped token: no gradient; unclipped at ratio 1: d(-r)/dlogp = -r = -1
    assert logp.grad[0].tolist() == pytest.approx([0.0, -1.0])


def test_k3_kl_is_zero_for_identical_policies_and_matches_formula():
    lp = torch.log(torch.tensor([0.2, 0.5]))
    assert k3_kl(lp, lp).tolist() == [0.0, 0.0]
    ref = torch.log(torch.tensor([0.4, 0.25]))
    # exp(ref - lp) - (ref - lp) - 1 with ratios 2 and 0.5
    want = [2 - math.log(2) - 1, 0.5 - math.log(0.5) - 1]
    assert k3_kl(lp, ref).tolist() == pytest.approx(want)
    assert all(v >= 0 for v in want)


def test_k3_kl_is_an_unbiased_estimate_of_kl():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    # expectation of k3 over samples x ~ p, computed exactly by weighting each outcome by p(x)
    estimate = float((p * k3_kl(p.log(), q.log())).sum())
    assert estimate == pytest.approx(exact)


def test_masked_mean_and_token_helpers():
    assert float(masked_mean(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0]))) == 2.0
    assert float(masked_mean(torch.tensor([5.0]), torch.tensor([0.0]))) == 0.0
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # temperature 2 flattens: softmax([0, log3 / 2]) at token 1 = sqrt3 / (1 + sqrt3)
    s3 = math.sqrt(3)
    assert token_logprobs(logits, torch.tensor([[1]]), 2.0).item() == pytest.approx(math.log(s3 / (1 + s3)))
    assert entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
