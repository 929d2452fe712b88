"""The acceptance rule (hand-computed and exact in distribution) and speculative decoding end to end."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_prompts, tiny_draft, tiny_target

import serving.scheduler as scheduler_module
from serving.config import SpeculativeConfig
from serving.engine import CachedModel, Engine
from serving.protocol import SamplingParams
from serving.sampling import SamplingTensors, sample
from serving.speculative import (
    AcceptanceTracker,
    Draft,
    DraftModelProposer,
    MeasuredK,
    accept,
    choose_k,
    expected_tokens,
)

# ---------------------------------------------------------------- the rule, by hand


def test_rejected_draft_resamples_from_the_residual():
    p = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])  # (B=1, k+1=2, V=2)
    draft = Draft(torch.tensor([[0]]), torch.tensor([[True]]), torch.tensor([[[1.0, 0.0]]]))
    # p(0)/q(0) = 0.5 < u = 0.6: rejected; residual max(0, p - q) = [0, 0.5] -> token 1 whatever u is
    n, nxt = accept(p, draft, torch.tensor([[0.6]]), torch.tensor([0.0]))
    assert (n.item(), nxt.item()) == (0, 1)


def test_accepted_draft_is_followed_by_a_bonus_token_from_the_last_position():
    p = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
    draft = Draft(torch.tensor([[0]]), torch.tensor([[True]]), torch.tensor([[[1.0, 0.0]]]))
    n, nxt = accept(p, draft, torch.tensor([[0.4]]), torch.tensor([0.1]))  # 0.4 < 0.5: accepted
    assert (n.item(), nxt.item()) == (1, 0)  # bonus ~ p[1] = [0.25, 0.75] at u=0.1 -> 0
    n, nxt = accept(p, draft, torch.tensor([[0.4]]), torch.tensor([0.3]))
    assert (n.item(), nxt.item()) == (1, 1)


def test_acceptance_stops_at_the_first_rejection():
    p = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # greedy target: 1, 2, then 0
    q = torch.eye(3)[[1, 0]].unsqueeze(0)  # greedy draft proposes 1, 0
    n, nxt = accept(
        p,
        Draft(torch.tensor([[1, 0]]), torch.ones(1, 2, dtype=torch.bool), q),
        torch.zeros(1, 2),
        torch.zeros(1),
    )
    assert (n.item(), nxt.item()) == (1, 2)  # keeps 1, rejects 0, corrects to the target's argmax 2


def test_deterministic_draft_rejection_removes_only_that_token():
    p = torch.tensor([[[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]])
    draft = Draft(torch.tensor([[1]]), torch.tensor([[True]]), None)  # n-gram: q is one-hot at 1
    # accepted with prob p(1) = 0.5; at u=0.7 rejected -> residual [0.2, 0, 0.3] / 0.5
    n, nxt = accept(p, draft, torch.tensor([[0.7]]), torch.tensor([0.39]))
    assert (n.item(), nxt.item()) == (0, 0)
    n, nxt = accept(p, draft, torch.tensor([[0.7]]), torch.tensor([0.41]))
    assert (n.item(), nxt.item()) == (0, 2)


def test_invalid_draft_slots_are_never_accepted_and_subtract_nothing():
    p = torch.tensor([[[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]])
    draft = Draft(torch.tensor([[1]]), torch.tensor([[False]]), None)
    n, nxt = accept(p, draft, torch.tensor([[0.0]]), torch.tensor([0.5]))
    assert (n.item(), nxt.item()) == (0, 1)  # sampled from p itself: cdf 0.2, 0.7 -> token 1


def test_rows_accept_independently():
    p = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).unsqueeze(1).repeat(1, 3, 1)  # both rows: target always says 1
    tokens = torch.tensor([[1, 1], [0, 1]])
    q = torch.nn.functional.one_hot(tokens, 2).float()
    n, nxt = accept(
        p, Draft(tokens, torch.ones(2, 2, dtype=torch.bool), q), torch.zeros(2, 2), torch.zeros(2)
    )
    assert n.tolist() == [2, 0] and nxt.tolist() == [1, 1]


# ---------------------------------------------------------------- the rule, in distribution


def _first_token_distribution(rule, p, q, draws: int, seed: int) -> torch.Tensor:
    """Empirical distribution of the first emitted token for one (p, q) pair under `rule`."""
    g = torch.Generator().manual_seed(seed)
    vocab = p.shape[-1]
    pp = p.expand(draws, 2, vocab)
    qq = q.expand(draws, 1, vocab)
    x = sample(qq[:, 0], torch.rand(draws, generator=g))
    draft = Draft(x.unsqueeze(1), torch.ones(draws, 1, dtype=torch.bool), qq)
    n, nxt = rule(pp, draft, torch.rand(draws, 1, generator=g), torch.rand(draws, generator=g))
    first = torch.where(n > 0, x, nxt)
    return torch.bincount(first, minlength=vocab).double() / draws


def _residual_is_p(p, draft, u_accept, u_sample):
    """A wrong rule: on rejection resample from p instead of norm(max(0, p - q))."""
    n, _ = accept(p, draft, u_accept, u_sample)
    return n, sample(p[torch.arange(len(n)), n], u_sample)


def test_acceptance_rule_output_is_distributed_as_the_target():
    p0 = torch.tensor([0.05, 0.10, 0.25, 0.60])
    q0 = torch.tensor([0.40, 0.30, 0.20, 0.10])
    p = torch.stack([p0, torch.full((4,), 0.25)]).unsqueeze(0)
    draws = 400_000  # TV noise ~ sqrt(V / draws) ~ 0.003
    got = _first_token_distribution(accept, p, q0.view(1, 1, 4), draws, seed=0)
    assert 0.5 * (got - p0.double()).abs().sum() < 0.01
    wrong = _first_token_distribution(_residual_is_p, p, q0.view(1, 1, 4), draws, seed=0)
    assert 0.5 * (wrong - p0.double()).abs().sum() > 0.05  # the same check catches a wrong residual


# ---------------------------------------------------------------- adaptive k


def test_expected_tokens_is_the_truncated_geometric_mean():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_choose_k_maximises_expected_speedup():
    # alpha=0.8, cost 0.1: E/(1+0.1k) = 1.636, 2.033, 2.271, 2.401, 2.459, 2.470, 2.448 for k=1..7
    assert choose_k(0.8, 0.1, 1, 7) == 6
    assert choose_k(0.8, 0.1, 1, 4) == 4
    assert choose_k(0.0, 0.1, 1, 8) == 1  # nothing is ever accepted: the smallest k
    assert choose_k(0.95, 0.0, 2, 8) == 8  # free drafts that are usually right: the largest k
    assert choose_k(0.3, 0.5, 1, 8) == 1  # 1.3/1.5=0.867 beats 1.39/2.0


def test_acceptance_tracker_counts_only_drafts_the_target_judged():
    tracker = AcceptanceTracker(decay=1.0, prior=0.0)
    tracker.judged = 0.0
    # row 0: 2 of 4 accepted, third rejected (3 judged); row 1: all 4 accepted (4 judged)
    rate = tracker.update(torch.tensor([2, 4]), torch.tensor([4, 4]))
    assert rate == pytest.approx(6 / 7)


# ---------------------------------------------------------------- the draft model's cache


@torch.no_grad()
def test_draft_cache_after_rollbacks_gives_the_same_q_as_a_fresh_forward(draft):
    prompts = [[5, 9, 2], [7, 1, 8, 3, 6]]
    tokens = torch.tensor([[0, 0] + prompts[0], prompts[1]])
    valid = torch.tensor([[False, False, True, True, True], [True] * 5])
    proposer = DraftModelProposer(CachedModel(draft, 2, torch.device("cpu")))
    proposer.start(tokens, valid)  # prefills the prompts
    params = SamplingTensors.build([1.0, 1.0], [0, 0], [1.0, 1.0])
    g = torch.Generator().manual_seed(0)
    first = torch.randint(0, 128, (2,), generator=g)  # the target's first tokens, from its own prefill
    proposer.commit(torch.zeros(2, dtype=torch.long), first)
    committed = [list(p) + [int(t)] for p, t in zip(prompts, first, strict=True)]
    # (k, accepted per row): rejections at different depths, all accepted, and a step with no draft
    for k, n_accepted in [(3, [0, 3]), (2, [2, 1]), (0, [0, 0]), (4, [4, 4]), (1, [0, 1]), (3, [1, 2])]:
        if k:
            d = proposer.propose(k, params, torch.rand(2, k, generator=g))
            for b in range(2):  # q at each drafted position equals the uncached draft's distribution
                ids = torch.tensor([committed[b] + d.tokens[b, :-1].tolist()])
                want = draft(ids).logits[0, -k:].softmax(-1)
                assert torch.allclose(d.probs[b], want, atol=1e-5)
        next_tokens = torch.randint(0, 128, (2,), generator=g)
        proposer.commit(torch.tensor(n_accepted), next_tokens)
        for b in range(2):
            committed[b] += (d.tokens[b, : n_accepted[b]].tolist() if k else []) + [int(next_tokens[b])]


# ---------------------------------------------------------------- end to end

PROMPTS = random_prompts(240, vocab=128, seed=0)
GREEDY = SamplingParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def target_only_greedy(target):
    return [c.token_ids for c in Engine(target, max_batch_size=48).generate(PROMPTS, GREEDY)]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculative_matches_target_only_in_batches(target, draft, target_only_greedy, k):
    engine = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=k), max_batch_size=16)
    out = engine.generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in out] == target_only_greedy
    # Rows really did accept different amounts: the masked-rollback path was exercised.
    assert 0.2 < engine.stats.acceptance_rate < 0.9
    assert len({c.metrics.accepted_tokens for c in out}) > 5


@pytest.mark.parametrize("k", [2, 4])
def test_greedy_speculative_matches_target_only_one_prompt_at_a_time(target, draft, target_only_greedy, k):
    engine = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=k), max_batch_size=1)
    out = engine.generate(PROMPTS[:48], GREEDY)
    assert [c.token_ids for c in out] == target_only_greedy[:48]


@pytest.mark.parametrize("k", [1, 4])
def test_greedy_ngram_speculation_matches_target_only(target, target_only_greedy, k):
    engine = Engine(target, speculative=SpeculativeConfig(method="ngram", k=k), max_batch_size=16)
    out = engine.generate(PROMPTS, GREEDY)
    assert [c.token_ids for c in out] == target_only_greedy
    assert engine.stats.accepted_tokens > 0


def test_greedy_adaptive_k_matches_target_only(target, draft, target_only_greedy):
    cfg = SpeculativeConfig(k=2, k_policy="adaptive", k_min=1, k_max=6, draft_cost=0.05)
    engine = Engine(target, draft_model=draft, speculative=cfg, max_batch_size=16)
    assert [c.token_ids for c in engine.generate(PROMPTS, GREEDY)] == target_only_greedy


def test_speculative_logprobs_are_the_targets(target, draft):
    sampled = SamplingParams(max_tokens=12, temperature=0.8, seed=3)
    plain = Engine(target).generate(PROMPTS[:6], sampled)
    spec = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=3)).generate(
        PROMPTS[:6], sampled
    )
    for c in spec:  # score the speculative tokens with the plain engine's full forward pass
        ids = torch.tensor([c.prompt_token_ids + c.token_ids])
        logits = target(ids).logits[0, len(c.prompt_token_ids) - 1 : -1] / 0.8
        want = logits.log_softmax(-1).gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)
    assert len(plain) == len(spec)


# ---------------------------------------------------------------- sampled: the target's distribution

VOCAB_SMALL = 8
DIST_TOKENS = 3  # the first verify step drafts 2 tokens, so acceptance of a second draft is covered
DIST_SAMPLES = 6000


def _chi2_critical(df: int, z: float = 3.29) -> float:
    """Upper 0.05% quantile of chi-square(df) by Wilson-Hilferty (z = 3.29)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _exact_joint(model, prompt: list[int]) -> torch.Tensor:
    """P(x1..xT | prompt) for every continuation, by brute force over the V^(T-1) prefixes."""
    prefixes = torch.cartesian_prod(*[torch.arange(VOCAB_SMALL)] * (DIST_TOKENS - 1))
    ids = torch.cat([torch.tensor(prompt).expand(len(prefixes), -1), prefixes], dim=1)
    with torch.no_grad():
        probs = model(ids).logits[:, -DIST_TOKENS:].double().softmax(-1)  # (prefixes, T, V)
    joint = torch.ones(len(prefixes), dtype=torch.float64)
    for t in range(DIST_TOKENS - 1):
        joint = joint * probs[:, t].gather(-1, prefixes[:, t : t + 1]).squeeze(-1)
    # each prefix (x1..x_{T-1}) appears once; the last token's distribution completes the joint
    return (joint.unsqueeze(-1) * probs[:, -1]).flatten()


def _sample_counts(engine: Engine, prompt: list[int], seed: int) -> torch.Tensor:
    params = SamplingParams(
        max_tokens=DIST_TOKENS, temperature=1.0, n=DIST_SAMPLES, seed=seed, logprobs=False
    )
    codes = torch.tensor([c.token_ids for c in engine.generate([prompt], params)])
    flat = (codes * VOCAB_SMALL ** torch.arange(DIST_TOKENS - 1, -1, -1)).sum(-1)
    return torch.bincount(flat, minlength=VOCAB_SMALL**DIST_TOKENS).double()


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic with cells of expected count < 5 pooled into one."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().view(1)])
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


PROMPT_SMALL = [3, 1, 4, 1, 5, 3, 1]


@pytest.fixture(scope="module")
def small_vocab_pair():
    target = tiny_target(VOCAB_SMALL, seed=5, head_scale=5.0, layer_scale=1.0)
    draft = tiny_draft(target, seed=6, layer_scale=1.0, share=False)  # its own weights: q far from p
    with torch.no_grad():
        ids = torch.tensor([PROMPT_SMALL])
        p1, q1 = target(ids).logits[0, -1].softmax(-1), draft(ids).logits[0, -1].softmax(-1)
    assert 0.5 * (p1 - q1).abs().sum() > 0.3  # a rule that let the draft through would show
    return target, draft, _exact_joint(target, PROMPT_SMALL)


@pytest.mark.parametrize("k", [1, 2])
def test_sampled_speculative_decoding_preserves_the_target_distribution(small_vocab_pair, k):
    target, draft, joint = small_vocab_pair
    engine = Engine(
        target, draft_model=draft, speculative=SpeculativeConfig(k=k), max_batch_size=DIST_SAMPLES
    )
    stat, df = _chi2(_sample_counts(engine, PROMPT_SMALL, seed=11), joint)
    assert stat < _chi2_critical(df), f"chi2={stat:.1f} with {df} dof"
    assert 0.2 < engine.stats.acceptance_rate < 0.8


def test_distribution_check_rejects_a_wrong_acceptance_rule(small_vocab_pair, monkeypatch):
    target, draft, joint = small_vocab_pair
    monkeypatch.setattr(scheduler_module, "accept", _residual_is_p)  # a known-wrong rule in the real loop
    engine = Engine(
        target, draft_model=draft, speculative=SpeculativeConfig(k=2), max_batch_size=DIST_SAMPLES
    )
    stat, df = _chi2(_sample_counts(engine, PROMPT_SMALL, seed=11), joint)
    assert stat > _chi2_critical(df)


def test_sampled_ngram_speculation_preserves_the_target_distribution(small_vocab_pair):
    target, _, joint = small_vocab_pair
    engine = Engine(target, speculative=SpeculativeConfig(method="ngram", k=2), max_batch_size=DIST_SAMPLES)
    stat, df = _chi2(_sample_counts(engine, PROMPT_SMALL, seed=12), joint)
    assert stat < _chi2_critical(df), f"chi2={stat:.1f} with {df} dof"
    assert engine.stats.accepted_tokens > 100  # lookups were made and some were kept


def test_same_seed_gives_the_same_sample_alone_or_in_a_batch(target, draft):
    params = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=42)
    for cfg in (None, SpeculativeConfig(k=3)):
        engine = Engine(target, draft_model=draft, speculative=cfg)
        alone = engine.generate([PROMPTS[0]], params)[0].token_ids
        others = [SamplingParams(max_tokens=5 + i, temperature=0.7, seed=i) for i in range(3)]
        batched = engine.generate(
            [PROMPTS[5], PROMPTS[0], PROMPTS[9], PROMPTS[1]], [others[0], params, *others[1:]]
        )
        assert batched[1].token_ids == alone
        assert engine.generate([PROMPTS[0]], params)[0].token_ids == alone


# ---------------------------------------------------------------- k_policy="auto"


@pytest.mark.parametrize("speed", [{0: 100.0, 2: 60.0, 4: 40.0}, {0: 100.0, 2: 180.0, 4: 150.0}])
def test_measured_k_runs_the_fastest_arm_and_probes_the_others_rarely(speed):
    policy = MeasuredK([2, 4], start=2)  # probes from every 48 steps, backing off to every 1536
    ks = []
    for _ in range(3000):
        ks.append(policy.k)
        policy.observe(tokens=int(speed[policy.k]), seconds=1.0)
    fastest = max(speed, key=speed.get)
    assert policy.best() == fastest
    head, tail = ks[:500], ks[500:]
    assert head.count(fastest) / len(head) > 0.8  # the opening round and the first, frequent probes
    assert tail.count(fastest) / len(tail) > 0.97  # losing arms are probed ever more rarely
    throughput = sum(speed[k] for k in ks) / len(ks)
    assert throughput >= 0.97 * speed[fastest]


def test_measured_k_follows_a_change_in_which_arm_is_fastest():
    policy = MeasuredK([2], start=2)
    for speed in ({0: 100.0, 2: 150.0}, {0: 100.0, 2: 50.0}):
        for _ in range(400):
            policy.observe(tokens=int(speed[policy.k]), seconds=1.0)
        assert policy.best() == max(speed, key=speed.get)
