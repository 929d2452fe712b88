"""The trained byte-level BPE tokenizer and the chat format it encodes."""

from __future__ import annotations

import json

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from rl.tasks import generate_block
from rl.tasks.config import TaskConfig
from rl.tasks.format import FORMAT_TAGS
from training.tokenizer import (
    ASSISTANT,
    EOS,
    USER,
    load_tokenizer,
    render_completion,
    render_prompt,
    train_tokenizer,
)

VOCAB_SIZE = 400


@pytest.fixture(scope="module")
def samples():
    cfg = TaskConfig(tasks=["arithmetic", "countdown"])
    return generate_block(cfg, "arithmetic", 0, 0, 150) + generate_block(cfg, "countdown", 0, 0, 50)


@pytest.fixture(scope="module")
def trained(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [render_prompt(s.prompt) + render_completion(s.solution) for s in samples]
    return train_tokenizer(texts, VOCAB_SIZE, out, added_tokens=FORMAT_TAGS), out


def test_every_generated_sample_round_trips_exactly(trained, samples):
    tokenizer, _ = trained
    for s in samples:
        for text in (render_prompt(s.prompt), render_completion(s.solution), s.prompt, s.solution):
            assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_round_trips_exactly(trained, text):
    tokenizer, _ = trained
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_digits_are_single_tokens(trained):
    tokenizer, _ = trained
    assert tokenizer.tokenize("12345") == list("12345")
    assert [tokenizer.decode([i]) for i in tokenizer.encode("x=907")][-3:] == ["9", "0", "7"]


def test_special_and_format_tokens_are_single_ids_and_only_format_tags_survive_skip_special(trained):
    tokenizer, _ = trained
    assert [tokenizer.convert_tokens_to_ids(t) for t in (EOS, USER, ASSISTANT)] == [0, 1, 2]
    assert tokenizer.eos_token == tokenizer.pad_token == EOS
    for tag in FORMAT_TAGS:
        assert len(tokenizer.encode(tag)) == 1
    ids = tokenizer.encode(render_prompt("q") + render_completion("<think>a</think> <answer>1</answer>"))
    assert tokenizer.decode(ids, skip_special_tokens=True) == "\nq\n\n<think>a</think> <answer>1</answer>"


def test_chat_template_renders_the_documented_format(trained):
    tokenizer, _ = trained
    user = {"role": "user", "content": "Compute 3+4"}
    assistant = {"role": "assistant", "content": "<think>3+4=7</think> <answer>7</answer>"}
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert prompt == render_prompt("Compute 3+4") == "<|user|>\nCompute 3+4\n<|assistant|>\n"
    whole = tokenizer.apply_chat_template([user, assistant], tokenize=False)
    assert whole == render_prompt("Compute 3+4") + render_completion(assistant["content"])
    assert whole.endswith("<|assistant|>\n<think>3+4=7</think> <answer>7</answer><|endoftext|>")
    system = {"role": "system", "content": "Be brief."}
    with_system = tokenizer.apply_chat_template([system, user], add_generation_prompt=True, tokenize=False)
    assert with_system == render_prompt("Compute 3+4", "Be brief.") == f"<|system|>\nBe brief.\n{prompt}"
    with pytest.raises(
        jinja2.exceptions.TemplateError, match="system, user and assistant turns; got role tool"
    ):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}, user], tokenize=False)


def test_prompt_and_completion_tokenize_independently(trained, samples):
    # The SFT loss mask and RL rollouts rely on this: no token straddles the prompt/completion cut.
    tokenizer, _ = trained
    for s in samples:
        prompt, completion = render_prompt(s.prompt), render_completion(s.solution)
        assert tokenizer.encode(prompt) + tokenizer.encode(completion) == tokenizer.encode(
            prompt + completion
        )


def test_vocabulary_stays_within_the_requested_size(trained):
    tokenizer, out = trained
    assert 256 + 3 + 4 < len(tokenizer) <= VOCAB_SIZE
    assert len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]) + 4 == len(tokenizer)


def test_saved_tokenizer_loads_offline_and_encodes_identically(trained, samples):
    tokenizer, out = trained
    for loaded in (load_tokenizer(out), AutoTokenizer.from_pretrained(str(out))):
        assert len(loaded) == len(tokenizer) and loaded.eos_token_id == 0 and loaded.pad_token_id == 0
        text = render_prompt(samples[0].prompt)
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.apply_chat_template(
            [{"role": "user", "content": samples[0].prompt}], add_generation_prompt=True, tokenize=False
        ) == render_prompt(samples[0].prompt)


def test_load_tokenizer_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
