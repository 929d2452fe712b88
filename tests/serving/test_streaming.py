"""Engine.stream (per-step tokens, cancellation) and TextStream (text deltas for server-sent events)."""

from __future__ import annotations

import pytest
from conftest import random_prompts
from served_model import save_tiny_models

from serving.config import SpeculativeConfig
from serving.detokenize import TextStream
from serving.engine import Engine
from serving.protocol import SamplingParams


@pytest.fixture(scope="module")
def text_engine(tmp_path_factory):
    models = save_tiny_models(tmp_path_factory.mktemp("stream"))
    return Engine.from_pretrained(
        models.target, "cpu", draft_dir=models.draft, speculative=SpeculativeConfig(k=3)
    )


def test_stream_steps_add_up_to_generate(target, draft):
    engine = Engine(target, draft_model=draft, speculative=SpeculativeConfig(k=3), max_batch_size=3)
    prompts = random_prompts(5, vocab=128, seed=8)  # two static batches
    params = [SamplingParams(max_tokens=12, temperature=t, seed=i) for i, t in enumerate([0, 1, 0, 0.7, 1])]
    tokens: dict[tuple[int, int], list[int]] = {}
    finished = []
    for updates in engine.stream(prompts, params):
        for u in updates:
            tokens.setdefault((u.prompt_index, u.sample_index), []).extend(u.token_ids)
            if u.completion:
                finished.append(u.completion)
    want = engine.generate(prompts, params)
    assert sorted((c.prompt_index, c.sample_index) for c in finished) == [(i, 0) for i in range(5)]
    assert [tokens[(i, 0)] for i in range(5)] == [w.token_ids for w in want]
    assert engine.stats.requests == 10  # the stream's five and generate's five


def test_a_cancelled_prompt_leaves_the_batch_and_the_others_are_unaffected(target):
    engine = Engine(target, max_batch_size=8)
    prompts = random_prompts(3, vocab=128, seed=9)
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=5, n=2, ignore_eos=True)
    cancelled = set()
    seen_after_cancel = []
    done = []
    for step, updates in enumerate(engine.stream(prompts, params, cancelled=lambda i: i in cancelled)):
        if step == 3:
            cancelled.add(1)
        elif step > 3:
            seen_after_cancel += [u.prompt_index for u in updates]
        done += [u.completion for u in updates if u.completion]
    assert 1 not in seen_after_cancel and {c.prompt_index for c in done} == {0, 2}
    alone = engine.generate([prompts[0], prompts[2]], params)
    assert [c.token_ids for c in done if c.prompt_index == 0] == [a.token_ids for a in alone[:2]]
    assert engine.stats.requests == 4 + 4  # cancelled sequences are not counted


def test_text_deltas_join_to_the_completion_and_never_show_a_stop_string(text_engine):
    prompts = ["The quick brown", "Reasoning models think", "What is 3 + 4?"]
    free = text_engine.generate(prompts, SamplingParams(max_tokens=40, temperature=0))
    # Stops of two and three characters, each first occurring a few characters into one completion.
    stops = [free[0].text[3:5], free[1].text[2:5]]
    params = SamplingParams(max_tokens=40, temperature=0, stop=stops)
    streams = {i: TextStream(text_engine.tokenizer, stops) for i in range(len(prompts))}
    deltas: dict[int, list[str]] = {i: [] for i in streams}
    finals = {}
    for updates in text_engine.stream(prompts, params):
        for u in updates:
            s = streams[u.prompt_index]
            deltas[u.prompt_index].append(s.finish(u.completion.text) if u.completion else s.add(u.token_ids))
            if u.completion:
                finals[u.prompt_index] = u.completion
    for i, completion in finals.items():
        assert "".join(deltas[i]) == completion.text
        sent = ""
        for d in deltas[i]:
            sent += d
            assert not any(stop in sent for stop in stops)
    assert [finals[i].finish_reason for i in range(2)] == ["stop", "stop"]
