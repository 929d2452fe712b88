"""The engine: cache correctness, parity with transformers, finish reasons, text, loading, seeds."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import random_prompts, tiny_draft, tiny_target

from rl.tasks.format import FORMAT_TAGS
from serving.config import SpeculativeConfig
from serving.engine import CachedModel, Engine, resolve_device
from serving.metrics import summarize
from serving.protocol import SamplingParams

GREEDY = SamplingParams(max_tokens=16, temperature=0.0)
# fp32 logits here reach |10|; cached vs uncached differ by reduction order only (seen: <= 3e-6).
LOGIT_ATOL = 1e-4


def _full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@torch.no_grad()
def test_incremental_decoding_with_holes_matches_a_full_forward_pass(target):
    prompts = [[5, 9, 2], [7, 1, 8, 3, 3, 6, 4], [11]]
    width = max(map(len, prompts))
    tokens = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    valid = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    cached = CachedModel(target, 3, torch.device("cpu"))
    seqs = [list(p) for p in prompts]

    def check(logits: torch.Tensor, n_last: int) -> None:
        for b, seq in enumerate(seqs):
            want = _full_logits(target, seq)[-n_last:]
            assert (logits[b, -n_last:] - want).abs().max() < LOGIT_ATOL

    check(cached.forward(tokens, valid, logits_to_keep=1), 1)  # left-padded prefill
    g = torch.Generator().manual_seed(0)
    for _ in range(4):  # one token at a time
        step = torch.randint(0, 128, (3, 1), generator=g)
        for b in range(3):
            seqs[b].append(int(step[b]))
        check(cached.forward(step, torch.ones(3, 1, dtype=torch.bool), logits_to_keep=1), 1)
    for drop in ([0, 2, 4], [1, 1, 3], [2, 0, 1]):  # 4 at once, then per-row rollback leaves holes
        chunk = torch.randint(0, 128, (3, 4), generator=g)
        for b in range(3):
            seqs[b].extend(chunk[b].tolist())
        check(cached.forward(chunk, torch.ones(3, 4, dtype=torch.bool), logits_to_keep=4), 4)
        cached.rollback(torch.tensor(drop))
        for b in range(3):
            del seqs[b][len(seqs[b]) - drop[b] :]
    assert cached.mask.shape[1] < width + 4 + 3 * 4  # slots all rows rejected were cropped
    step = torch.randint(0, 128, (3, 1), generator=g)
    for b in range(3):
        seqs[b].append(int(step[b]))
    check(cached.forward(step, torch.ones(3, 1, dtype=torch.bool), logits_to_keep=1), 1)
    cached.select(torch.tensor([2, 0]))  # finished rows leave the batch
    seqs = [seqs[2], seqs[0]]
    step = torch.tensor([[3], [4]])
    for b in range(2):
        seqs[b].append(int(step[b]))
    check(cached.forward(step, torch.ones(2, 1, dtype=torch.bool), logits_to_keep=1), 1)


def test_greedy_matches_transformers_generate(target):
    prompts = random_prompts(6, vocab=128, seed=3)
    out = Engine(target, max_batch_size=6).generate(prompts, GREEDY)
    for prompt, completion in zip(prompts, out, strict=True):
        ids = torch.tensor([prompt])
        ref = target.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False, pad_token_id=0
        )
        assert completion.token_ids == ref[0, len(prompt) :].tolist()


def test_moe_batch_gives_the_same_tokens_as_one_prompt_at_a_time(target):
    prompts = random_prompts(12, vocab=128, seed=4, min_len=1, max_len=20)
    batched = Engine(target, max_batch_size=12).generate(prompts, GREEDY)
    alone = Engine(target, max_batch_size=1).generate(prompts, GREEDY)
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]


def test_logprobs_are_the_untruncated_tempered_policy(target):
    params = SamplingParams(max_tokens=10, temperature=0.7, top_k=20, seed=0)
    for c in Engine(target).generate(random_prompts(3, vocab=128, seed=5), params):
        logits = (
            _full_logits(target, c.prompt_token_ids + c.token_ids)[len(c.prompt_token_ids) - 1 : -1] / 0.7
        )
        want = logits.log_softmax(-1).gather(-1, torch.tensor(c.token_ids).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)


def test_max_tokens_finishes_with_length(target):
    out = Engine(target).generate([[1, 2, 3]], SamplingParams(max_tokens=7, temperature=0.0))[0]
    assert len(out.token_ids) == 7 and out.finish_reason == "length"
    assert out.metrics.generated_tokens == 7 and out.metrics.latency_s >= out.metrics.first_token_s > 0


def test_context_length_caps_max_tokens(target):
    prompt = [1] * (target.config.max_position_embeddings - 3)
    out = Engine(target).generate([prompt], SamplingParams(max_tokens=50, temperature=0.0))[0]
    assert len(out.token_ids) == 3 and out.finish_reason == "length"
    with pytest.raises(ValueError, match="context"):
        Engine(target).generate([[1] * target.config.max_position_embeddings], GREEDY)


@pytest.mark.parametrize("speculative", [None, SpeculativeConfig(k=3)])
def test_eos_finishes_with_stop_and_is_kept(target, draft, speculative):
    free = Engine(target).generate([[4, 5, 6]], GREEDY)[0].token_ids
    eos_at = next(i for i, t in enumerate(free) if i >= 2 and t not in free[:i])
    model = copy.deepcopy(target)
    model.config.eos_token_id = free[eos_at]
    engine = Engine(model, draft_model=draft, speculative=speculative)
    out = engine.generate([[4, 5, 6]], GREEDY)[0]
    assert out.token_ids == free[: eos_at + 1] and out.finish_reason == "stop"
    past_eos = engine.generate([[4, 5, 6]], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    assert len(past_eos[0].token_ids) == 16


def test_n_samples_follow_the_seed_and_differ_from_each_other(target):
    engine = Engine(target)
    params = SamplingParams(max_tokens=8, temperature=1.0, n=4, seed=123)
    first = engine.generate([[1, 2], [3, 4, 5]], params)
    assert [(c.prompt_index, c.sample_index) for c in first] == [(p, s) for p in range(2) for s in range(4)]
    assert [c.token_ids for c in first] == [c.token_ids for c in engine.generate([[1, 2], [3, 4, 5]], params)]
    assert len({tuple(c.token_ids) for c in first[:4]}) > 1
    other_seed = engine.generate([[1, 2]], SamplingParams(max_tokens=8, temperature=1.0, n=4, seed=124))
    assert [c.token_ids for c in other_seed] != [c.token_ids for c in first[:4]]


def test_greedy_and_sampled_rows_share_a_batch(target):
    prompts = random_prompts(4, vocab=128, seed=6)
    mixed = [GREEDY, SamplingParams(max_tokens=16, temperature=1.0, seed=1)] * 2
    out = Engine(target).generate(prompts, mixed)
    greedy_alone = Engine(target).generate(prompts[::2], GREEDY)
    assert [out[0].token_ids, out[2].token_ids] == [c.token_ids for c in greedy_alone]


def test_self_draft_accepts_every_greedy_token(target):
    engine = Engine(target, draft_model=target, speculative=SpeculativeConfig(k=3), max_batch_size=8)
    out = engine.generate(random_prompts(8, vocab=128, seed=7), GREEDY)
    assert engine.stats.acceptance_rate == 1.0
    # 16 tokens: 1 from the prefill, then steps of k+1 = 4 (4, 4, 4), then the last 3 (k capped at 2)
    assert all(c.metrics.verify_steps == 5 for c in out)


def test_summarize_reports_acceptance_and_accepted_length(target, draft):
    engine = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=2))
    out = engine.generate(random_prompts(4, vocab=128, seed=8), GREEDY)
    s = summarize(out, wall_s=2.0)
    accepted, proposed, steps = (
        sum(getattr(c.metrics, f) for c in out) for f in ("accepted_tokens", "draft_tokens", "verify_steps")
    )
    assert s["generated_tokens"] == 64 and s["tokens_per_s"] == 32.0
    assert s["acceptance_rate"] == accepted / proposed
    assert s["mean_accepted_length"] == (accepted + steps) / steps


def test_auto_device_is_cuda_when_available_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_inputs_are_named_in_the_error(target, tmp_path):
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingParams(top_p=0.0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Engine.from_pretrained(tmp_path / "nowhere", device="cpu")
    with pytest.raises(ValueError, match="method='beam'"):
        Engine(target, speculative=SpeculativeConfig(method="beam"))
    with pytest.raises(ValueError, match="draft model"):
        Engine(target, speculative=SpeculativeConfig(method="draft"))
    with pytest.raises(ValueError, match="vocab_size=64"):
        Engine(target, draft_model=tiny_draft(tiny_target(64)), speculative=SpeculativeConfig())
    with pytest.raises(ValueError, match="tokenizer"):
        Engine(target).generate(["text"], GREEDY)


# ---------------------------------------------------------------- text: tokenizer, stop strings, loading

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens and the target verifies them.",
    "Reasoning models think step by step before they answer.",
] * 20


@pytest.fixture(scope="module")
def text_engine(tmp_path_factory):
    from training.tokenizer import train_tokenizer

    out_dir = tmp_path_factory.mktemp("tok")
    tokenizer = train_tokenizer(CORPUS, vocab_size=320, out_dir=out_dir, added_tokens=FORMAT_TAGS)
    model = tiny_target(vocab=len(tokenizer), seed=2)
    return Engine(model, tokenizer, draft_model=tiny_draft(model), speculative=None)


def test_stop_string_cuts_the_text_and_finishes_with_stop(text_engine):
    prompt = "The quick brown"
    free = text_engine.generate([prompt], SamplingParams(max_tokens=40, temperature=0.0))[0]
    assert free.finish_reason == "length"
    # A random model emits stray bytes (decoded as U+FFFD); take a stop string from a whole-word token.
    pieces = [text_engine.tokenizer.decode([t]) for t in free.token_ids[3:]]
    stop = next(p for p in pieces if len(p.strip()) >= 2 and p.strip().isascii() and p.strip().isalpha())
    cut = free.text[: free.text.find(stop)]
    out = text_engine.generate(
        [prompt], SamplingParams(max_tokens=40, temperature=0.0, stop=["never-there", stop])
    )[0]
    assert out.finish_reason == "stop" and out.text == cut
    # ids end at the token that completed the stop string
    assert out.token_ids == free.token_ids[: len(out.token_ids)]
    decode = text_engine.tokenizer.decode
    assert stop in decode(out.token_ids) and stop not in decode(out.token_ids[:-1])


def test_from_pretrained_loads_a_local_directory(text_engine, tmp_path):
    text_engine.model.save_pretrained(tmp_path / "target")
    text_engine.tokenizer.save_pretrained(tmp_path / "target")
    text_engine.draft_model.save_pretrained(tmp_path / "draft")
    loaded = Engine.from_pretrained(
        tmp_path / "target", device="auto", draft_dir=tmp_path / "draft", speculative=SpeculativeConfig(k=2)
    )
    assert loaded.device.type == resolve_device("auto").type and loaded.model.dtype == (
        torch.bfloat16 if loaded.device.type == "cuda" else torch.float32
    )
    prompts = ["Reasoning models", "The lazy dog"]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    texts = [c.text for c in loaded.generate(prompts, params)]
    if loaded.device.type == "cpu":  # bf16 on a GPU may break near-ties differently from fp32
        assert texts == [c.text for c in text_engine.generate(prompts, params)]
    assert loaded.stats.draft_tokens > 0
    assert loaded.tokenizer.eos_token_id in loaded.eos_ids


def test_int8_engine_mostly_agrees_with_fp32_and_requantises_new_weights(target):
    prompts = random_prompts(8, vocab=128, seed=31)
    fp32 = Engine(target).generate(prompts, GREEDY)
    engine = Engine(copy.deepcopy(target), quantize="int8")
    assert type(engine.model.lm_head).__name__ == "Linear" and engine.model is not engine.float_model
    assert "quantized" in type(engine.model.lm_head).__module__
    int8 = engine.generate(prompts, GREEDY)
    # First tokens see identical contexts: int8 error must not flip a clear argmax there.
    assert sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(fp32, int8, strict=True)) >= 7
    other = tiny_target(vocab=128, seed=9)
    engine.load_weights(other.state_dict())
    want = Engine(other).generate(prompts, GREEDY)
    after = engine.generate(prompts, GREEDY)
    assert sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(want, after, strict=True)) >= 7
    with pytest.raises(ValueError, match="quantize='int4' is not one of"):
        Engine(target, quantize="int4")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("k_policy", "fastest", "k_policy in ('fixed', 'adaptive', 'auto')"),
        ("quantize", "int4", "quantize in (null, 'int8')"),
    ],
)
def test_serve_config_names_a_bad_engine_setting(field, value, message):
    from serving.config import ServeConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        ServeConfig(**{field: value})
    with pytest.raises(ValueError, match="k_policy='fastest' is not one of"):
        SpeculativeConfig(k_policy="fastest")


@pytest.mark.slow  # a cold torch.compile: ~30 s on 2 cores
def test_compiled_decode_gives_the_eager_greedy_tokens(target):
    prompts = random_prompts(3, vocab=128, seed=1)
    want = Engine(target).generate(prompts, GREEDY)
    engine = Engine(target, compile=True)
    assert engine.decode_forward is not engine.model
    for _ in range(2):  # cold, then warm (rows leave between steps: the batch size changes too)
        assert [c.token_ids for c in engine.generate(prompts, GREEDY)] == [c.token_ids for c in want]
