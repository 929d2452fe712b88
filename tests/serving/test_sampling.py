"""Logits processing and sampling against hand-computed values."""

from __future__ import annotations

import math

import torch

from serving.sampling import (
    SamplingTensors,
    draw_uniforms,
    make_generators,
    process_logits,
    sample,
    token_logprobs,
)


def _params(temperature, top_k=None, top_p=None) -> SamplingTensors:
    n = len(temperature)
    return SamplingTensors.build(temperature, top_k or [0] * n, top_p or [1.0] * n)


def test_temperature_divides_logits_before_softmax():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    probs = process_logits(logits, _params([1.0]))
    assert torch.allclose(probs, torch.tensor([[0.25, 0.75]]))
    # T=0.5 squares the odds: 1:9
    probs = process_logits(logits, _params([0.5]))
    assert torch.allclose(probs, torch.tensor([[0.1, 0.9]]))


def test_greedy_row_is_one_hot_at_argmax():
    logits = torch.tensor([[0.1, 2.0, 1.9, -1.0]])
    assert torch.equal(process_logits(logits, _params([0.0])), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


def test_top_k_keeps_the_k_most_likely_tokens():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))
    probs = process_logits(logits, _params([1.0], top_k=[2]))
    assert torch.allclose(probs, torch.tensor([[0.0, 4 / 7, 0.0, 3 / 7]]))


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    # sorted 0.5, 0.3 (mass 0.8 reaches 0.8) -> the rest dropped
    probs = process_logits(logits, _params([1.0], top_p=[0.8]))
    assert torch.allclose(probs, torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    # 0.79: still needs the second token; 0.5: the first alone reaches it
    assert torch.allclose(process_logits(logits, _params([1.0], top_p=[0.79])), probs)
    assert torch.allclose(
        process_logits(logits, _params([1.0], top_p=[0.5])), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    )


def test_rows_use_their_own_parameters():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]])).repeat(4, 1)
    probs = process_logits(
        logits, _params([1.0, 0.0, 1.0, 1.0], top_k=[0, 0, 1, 0], top_p=[1.0, 1.0, 1.0, 0.6])
    )
    assert torch.allclose(probs[0], torch.tensor([0.1, 0.4, 0.2, 0.3]))
    assert torch.equal(probs[1], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(probs[2], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(probs[3], torch.tensor([0.0, 4 / 7, 0.0, 3 / 7]))


def test_inverse_cdf_sample_picks_the_bucket_containing_u():
    probs = torch.tensor([[0.2, 0.3, 0.5]]).repeat(5, 1)
    u = torch.tensor([0.0, 0.1, 0.25, 0.45, 0.9])
    assert sample(probs, u).tolist() == [0, 0, 1, 1, 2]


def test_sample_never_returns_a_zero_probability_token():
    probs = torch.tensor([[0.0, 0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    u = torch.tensor([1.0 - 1e-7, 1.0])  # 1.0 itself guards the rounding edge u*total >= cdf[-1]
    assert sample(probs, u).tolist() == [2, 3]
    assert sample(probs, torch.zeros(2)).tolist() == [1, 3]


def test_token_logprobs_are_log_softmax_of_scaled_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    tokens = torch.tensor([2, 0])
    got = token_logprobs(logits, tokens, torch.tensor([0.0, 0.5]))
    want = torch.stack([logits[0].log_softmax(-1)[2], (logits[1] / 0.5).log_softmax(-1)[0]])
    assert torch.allclose(got, want)


def test_uniforms_depend_only_on_the_rows_own_seed():
    alone = draw_uniforms(make_generators([7]), 5, "cpu")
    batched = draw_uniforms(make_generators([3, 7, 11]), 5, "cpu")
    assert torch.equal(alone[0], batched[1])
    assert not torch.equal(batched[0], batched[1])
