"""Continuous batching: rows joining a running batch, shared prompt prefixes, no head-of-line blocking."""

from __future__ import annotations

import pytest
import torch
from conftest import random_prompts
from test_speculative import (
    DIST_SAMPLES,
    PROMPT_SMALL,
    _chi2,
    _chi2_critical,
    _sample_counts,
    small_vocab_pair,  # noqa: F401 (a fixture)
)

from serving.cached_model import CachedModel
from serving.config import SpeculativeConfig
from serving.engine import Engine
from serving.protocol import SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
LOGIT_ATOL = 1e-4  # as in test_engine: cached vs uncached differ by reduction order only


@torch.no_grad()
def test_rows_prefilled_apart_and_merged_match_a_full_forward_pass(target):
    """Two batches of different widths merge into one cache; every row still sees only its tokens."""
    first, second = [[5, 9, 2], [7, 1, 8, 3]], [[4, 4, 6, 1, 2, 9, 8, 7, 3], [11]]
    seqs = [list(p) for p in first + second]
    batches = []
    for prompts in (first, second):
        width = max(map(len, prompts))
        tokens = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
        cached = CachedModel(target, len(prompts), torch.device("cpu"))
        cached.forward(tokens, valid, logits_to_keep=1)
        batches.append(cached)
    step = torch.tensor([[3], [1]])  # the first batch runs a step alone before the second joins
    batches[0].forward(step, torch.ones(2, 1, dtype=torch.bool), logits_to_keep=1)
    seqs[0].append(3), seqs[1].append(1)
    merged = batches[0]
    merged.merge(batches[1])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        step = torch.randint(0, 128, (4, 1), generator=g)
        logits = merged.forward(step, torch.ones(4, 1, dtype=torch.bool), logits_to_keep=1)
        for b, seq in enumerate(seqs):
            seq.append(int(step[b]))
            want = target(torch.tensor([seq])).logits[0, -1]
            assert (logits[b, -1] - want).abs().max() < LOGIT_ATOL
    merged.select(torch.tensor([1, 3]))  # the long prompt leaves: its leading slots go too
    assert merged.mask.shape[1] == len(seqs[1])


@pytest.mark.parametrize(
    "speculative", [None, SpeculativeConfig(k=2), SpeculativeConfig(method="ngram", k=3)]
)
def test_greedy_tokens_are_the_same_when_requests_arrive_mid_batch(target, draft, speculative):
    prompts = random_prompts(9, vocab=128, seed=21)
    lengths = [40, 5, 12, 3, 25, 8, 16, 30, 2]  # per-request max_tokens, mixed
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    alone = [
        Engine(target, max_batch_size=1).generate([p], q)[0].token_ids
        for p, q in zip(prompts, params, strict=True)
    ]
    engine = Engine(
        target, draft_model=draft if speculative else None, speculative=speculative, max_batch_size=4
    )
    scheduler = engine.scheduler()
    got: dict[int, list[int]] = {}
    arrivals = {0: [0, 1], 2: [2, 3, 4], 5: [5], 6: [6, 7, 8]}  # step -> prompts that arrive then
    step = 0
    while scheduler.busy or step <= max(arrivals):
        for i in arrivals.get(step, []):
            scheduler.add(engine.sequences([prompts[i]], params[i], first_index=i))
        for u in scheduler.step():
            got.setdefault(u.prompt_index, []).extend(u.token_ids)
            if u.completion is not None:
                assert u.completion.token_ids == got[u.prompt_index]
        assert scheduler.running <= 4
        step += 1
    assert [got[i] for i in range(9)] == alone


def test_samples_of_a_prompt_prefill_it_once(target):
    calls = []
    hook = target.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    prompts = random_prompts(2, vocab=128, seed=4, min_len=6)
    params = SamplingParams(max_tokens=5, temperature=1.0, n=4, seed=3, ignore_eos=True)
    try:
        out = Engine(target, max_batch_size=16).generate(prompts, params)
    finally:
        hook.remove()
    assert calls[0] == (2, max(map(len, prompts)))  # one prefill row per distinct prompt, not per sample
    assert calls[1:] == [(8, 1)] * 4  # then all 8 samples, one token per row per step
    assert len({tuple(c.token_ids) for c in out}) > 2  # the samples still differ


def test_greedy_samples_sharing_a_prefix_match_the_prompt_alone(target):
    prompts = random_prompts(3, vocab=128, seed=6)
    alone = Engine(target).generate(prompts, GREEDY)
    shared = Engine(target).generate(prompts, SamplingParams(max_tokens=16, temperature=0.0, n=3))
    assert [c.token_ids for c in shared] == [a.token_ids for a in alone for _ in range(3)]


def test_a_long_request_does_not_delay_a_short_one_admitted_after_it(target):
    engine = Engine(target, max_batch_size=4)
    scheduler = engine.scheduler()
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    short = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    scheduler.add(engine.sequences(random_prompts(1, vocab=128, seed=1), long, first_index=0))
    for _ in range(10):
        scheduler.step()
    scheduler.add(engine.sequences(random_prompts(1, vocab=128, seed=2), short, first_index=1))
    steps_to_short = None
    for step in range(1, 50):
        done = [u for u in scheduler.step() if u.completion is not None]
        if any(u.prompt_index == 1 for u in done):
            steps_to_short = step
            break
    # Its first step prefills it (token 1) and decodes with the batch (token 2); then one per step.
    assert steps_to_short == 4
    assert scheduler.running == 1  # the long one is still going


@pytest.mark.parametrize("max_batch", [DIST_SAMPLES // 3 + 7])
def test_sampled_speculation_with_rows_admitted_mid_batch_keeps_the_target_distribution(
    small_vocab_pair,  # noqa: F811 (the fixture imported above)
    max_batch,
):
    """Fewer rows than samples: later samples join a running batch full of rollback holes."""
    target, draft, joint = small_vocab_pair
    engine = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=2), max_batch_size=max_batch)
    stat, df = _chi2(_sample_counts(engine, PROMPT_SMALL, seed=13), joint)
    assert stat < _chi2_critical(df), f"chi2={stat:.1f} with {df} dof"


def test_auto_k_keeps_greedy_tokens(target, draft):
    prompts = random_prompts(12, vocab=128, seed=8)
    plain = Engine(target).generate(prompts, GREEDY)
    cfg = SpeculativeConfig(k=2, k_policy="auto", k_max=4)
    auto = Engine(target, draft_model=draft, speculative=cfg, max_batch_size=5).generate(prompts, GREEDY)
    assert [c.token_ids for c in auto] == [c.token_ids for c in plain]


def test_seeded_samples_are_reproducible_under_auto_k(target, draft):
    prompts = random_prompts(4, vocab=128, seed=12)
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=7, n=2, ignore_eos=True)
    fixed = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=2)).generate(prompts, params)
    auto_cfg = SpeculativeConfig(k=2, k_policy="auto", k_max=4)
    engine = Engine(target, draft_model=draft, speculative=auto_cfg)
    engine.measured_k.k = 4  # as if measurements had moved it: seeded rows must not follow
    auto = engine.generate(prompts, params)
    assert [c.token_ids for c in auto] == [c.token_ids for c in fixed]
