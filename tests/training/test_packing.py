"""SFT packing: a packed row computes what each of its sequences computes alone, and trains on the
same tokens. Tiny random models of each attention family we train (Llama, Qwen3, Qwen3-MoE)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config, Qwen3MoeConfig

from rl.tasks.format import FORMAT_TAGS
from training.data import IGNORE, PromptCompletionPairs, batch_indices, pack_in_order
from training.loop import lm_loss
from training.qk_clip import ATTN_IMPL, attach_recorder
from training.tokenizer import render_completion, render_prompt, train_tokenizer

# Token lengths 22, 26, 101, 56, 24, 26: at seq_len 80 the 101 is dropped and the rest pack, in
# order, into rows of 48 (two sequences), 80 (two, full) and 26 tokens (one).
RECORDS = [
    ("Compute 2+3", "<think>2+3=5</think> <answer>5</answer>"),
    ("Compute 12+7", "<think>12+7=19</think> <answer>19</answer>"),
    ("Compute 1+1", "<think>" + "1+1=2, " * 12 + "</think> <answer>2</answer>"),
    ("Compute " + "+".join(["1"] * 20), "<think>20</think> <answer>20</answer>"),
    ("Compute 9*9", "<think>9*9=81</think> <answer>81</answer>"),
    ("Compute 40-8", "<think>40-8=32</think> <answer>32</answer>"),
]
SEQ_LEN = 80


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packing")
    prompts = [render_prompt(q) for q, _ in RECORDS]
    completions = [render_completion(s) for _, s in RECORDS]
    tok = train_tokenizer(
        [p + c for p, c in zip(prompts, completions, strict=True)] * 5, 300, tmp / "tok", FORMAT_TAGS
    )
    Dataset.from_dict({"prompt": prompts, "completion": completions}).save_to_disk(tmp / "sft")
    packed = PromptCompletionPairs(tmp / "sft", tok, SEQ_LEN, pack=True)
    single = PromptCompletionPairs(tmp / "sft", tok, SEQ_LEN)
    assert [len(r) for r in packed.rows] == [2, 2, 1]  # the layout the tests below rely on
    return SimpleNamespace(dir=tmp / "sft", tok=tok, packed=packed, single=single)


def _tiny(arch: str, vocab: int, attn: str):
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "qwen3": lambda: Qwen3Config(**common),
        "qwen3_moe": lambda: Qwen3MoeConfig(
            **common, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2
        ),
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(configs[arch](), dtype=torch.float32)
    if attn == ATTN_IMPL:  # the training loop's attention: sdpa that records max logits
        attach_recorder(model)
    else:
        model.set_attn_implementation(attn)
    return model.train()  # as in the loop (these configs have no dropout)


def _spans(data: PromptCompletionPairs, row: int) -> list[tuple[int, int, int]]:
    """(sequence, start, end) of each sequence in packed `row`."""
    out, at = [], 0
    for s in data.rows[row]:
        out.append((s, at, at + len(data.seqs[s])))
        at += len(data.seqs[s])
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager", ATTN_IMPL])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe"])
@torch.no_grad()
def test_packed_row_logits_equal_each_sequence_run_alone(sft, arch, attn):
    model = _tiny(arch, len(sft.tok), attn)
    batch = sft.packed.collate(list(range(len(sft.packed))))  # 3 rows: padded, full, padded
    logits = model(**batch.model_inputs()).logits
    for row in range(len(sft.packed)):
        for s, start, end in _spans(sft.packed, row):
            alone = model(**sft.single.collate([s]).model_inputs()).logits[0]
            torch.testing.assert_close(logits[row, start:end], alone, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_a_packed_row_without_its_positions_attends_across_sequences(sft):
    # The check above has teeth: plain causal attention over the same row (or position_ids with
    # the cache transformers makes by default) lets the second sequence see the first.
    model = _tiny("qwen3", len(sft.tok), "sdpa")
    batch = sft.packed.collate([0])
    (_, _, _), (s, start, end) = _spans(sft.packed, 0)
    alone = model(**sft.single.collate([s]).model_inputs()).logits[0]
    causal = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[0]
    cached = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits[0]
    for logits in (causal, cached):
        assert not torch.allclose(logits[start:end], alone, atol=1e-3)


def test_packed_labels_are_the_unpacked_labels_concatenated(sft):
    batch = sft.packed.collate(list(range(len(sft.packed))))
    for row in range(len(sft.packed)):
        spans = _spans(sft.packed, row)
        expected = torch.cat([sft.single.collate([s]).labels[0] for s, _, _ in spans])
        used = spans[-1][2]
        assert torch.equal(batch.labels[row, :used], expected)
        assert (batch.labels[row, used:] == IGNORE).all()  # padding
        assert batch.position_ids[row, :used].tolist() == [p for _, a, b in spans for p in range(b - a)]
    assert batch.num_tokens == sum(len(s) for s in sft.packed.seqs)


@torch.no_grad()
def test_packed_loss_through_lm_loss_is_the_token_weighted_loss_of_each_sequence(sft):
    # lm_loss is the loop's loss: this is the path that carries position_ids to the model.
    model = _tiny("qwen3", len(sft.tok), ATTN_IMPL)
    loss, _, _ = lm_loss(model, sft.packed.collate(list(range(len(sft.packed)))))
    total, targets = 0.0, 0
    for s in range(len(sft.single)):
        batch = sft.single.collate([s])
        n = int((batch.labels[0, 1:] != IGNORE).sum())  # the loss predicts token t from t-1
        total += float(lm_loss(model, batch)[0]) * n
        targets += n
    assert float(loss) == pytest.approx(total / targets, rel=1e-5)


def test_pack_in_order_fills_rows_greedily_in_order():
    assert pack_in_order([5, 4, 3, 6, 2], 10) == [[0, 1], [2, 3], [4]]
    assert pack_in_order([10, 1, 9], 10) == [[0], [1, 2]]  # a row may be exactly seq_len


def test_packing_is_built_once_deterministically_and_counted(sft):
    again = PromptCompletionPairs(sft.dir, sft.tok, SEQ_LEN, pack=True)
    assert again.rows == sft.packed.rows
    kw = dict(world=1, micro_bs=2, accum=1, n=len(again), seed=3)
    first, second = (d.collate(batch_indices(4, 0, 0, **kw)) for d in (sft.packed, again))
    assert torch.equal(first.input_ids, second.input_ids) and torch.equal(first.labels, second.labels)
    stats = sft.packed.stats
    assert (stats["records"], stats["kept"], stats["dropped"], stats["rows"]) == (6, 5, 1, 3)
    assert stats["tokens"] == 22 + 26 + 56 + 24 + 26
    assert stats["padding_share"] == pytest.approx(1 - stats["tokens"] / (3 * SEQ_LEN))
    assert all(sum(len(sft.packed.seqs[s]) for s in row) <= SEQ_LEN for row in sft.packed.rows)
