"""The CUDA path: masks with holes under the GPU attention kernels, greedy parity, seeded sampling."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import random_prompts

from serving.config import SpeculativeConfig
from serving.engine import CachedModel, Engine
from serving.protocol import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def cuda_pair(target, draft):
    return copy.deepcopy(target).cuda(), copy.deepcopy(draft).cuda()


@torch.no_grad()
def test_cuda_cache_with_holes_matches_a_full_forward_pass(cuda_pair):
    model, _ = cuda_pair
    prompts = [[5, 9, 2], [7, 1, 8, 3, 3, 6, 4]]
    tokens = torch.tensor([[0] * 4 + prompts[0], prompts[1]], device="cuda")
    valid = torch.tensor([[False] * 4 + [True] * 3, [True] * 7], device="cuda")
    cached = CachedModel(model, 2, torch.device("cuda"))
    cached.forward(tokens, valid, logits_to_keep=1)
    chunk = torch.tensor([[11, 12, 13], [21, 22, 23]], device="cuda")
    cached.forward(chunk, torch.ones_like(chunk, dtype=torch.bool), logits_to_keep=3)
    cached.rollback(torch.tensor([2, 0], device="cuda"))  # row 0 keeps 11 only: two holes
    step = torch.tensor([[31], [32]], device="cuda")
    got = cached.forward(step, torch.ones_like(step, dtype=torch.bool), logits_to_keep=1)[:, -1]
    for b, seq in enumerate([prompts[0] + [11, 31], prompts[1] + [21, 22, 23, 32]]):
        want = model(torch.tensor([seq], device="cuda")).logits[0, -1]
        assert torch.isfinite(got[b]).all()
        assert (got[b] - want).abs().max() < 1e-3  # TF32-free fp32; kernels differ from the CPU's


def test_cuda_greedy_speculative_matches_target_only_and_the_cpu(cuda_pair, target):
    model, draft = cuda_pair
    prompts = random_prompts(96, vocab=128, seed=0)
    plain = [c.token_ids for c in Engine(model, max_batch_size=32).generate(prompts, GREEDY)]
    for cfg in (SpeculativeConfig(k=3), SpeculativeConfig(method="ngram", k=3)):
        spec = Engine(model, draft_model=draft, speculative=cfg, max_batch_size=16).generate(prompts, GREEDY)
        assert [c.token_ids for c in spec] == plain
    cpu = [c.token_ids for c in Engine(target, max_batch_size=32).generate(prompts[:16], GREEDY)]
    assert plain[:16] == cpu


def test_cuda_sampling_is_seeded_per_request(cuda_pair):
    model, draft = cuda_pair
    engine = Engine(model, draft_model=draft, speculative=SpeculativeConfig(k=2))
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=9)
    alone = engine.generate([[1, 2, 3]], params)[0].token_ids
    mixed = engine.generate([[4, 4], [1, 2, 3]], [SamplingParams(max_tokens=4, seed=1), params])
    assert mixed[1].token_ids == alone
