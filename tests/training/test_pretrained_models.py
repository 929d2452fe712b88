"""A user's pretrained model: loaded whatever its architecture, and never paired with a tokenizer
whose ids mean other strings (teacher/student, target/draft, model/run)."""

from __future__ import annotations

import pytest
import torch
from pretrained_model import save_tiny_llama
from transformers import AutoTokenizer

from rl.tasks.format import FORMAT_TAGS
from serving.engine import Engine
from training.config import ModelConfig
from training.models import ARCHS, build_model, keep_layers, load_model, parameter_counts
from training.tokenizer import check_same_vocabulary, train_tokenizer


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    corpus = ["What is 2 + 3?", "<think>2+3=5</think> <answer>5</answer>"] * 20
    return train_tokenizer(corpus, 320, tmp_path_factory.mktemp("ours"), FORMAT_TAGS)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "m")


def test_a_model_with_another_tokenizer_fails_naming_both_vocabularies(ours, llama_dir):
    n = len(ours)
    with pytest.raises(ValueError, match=rf"vocabulary of 49152 tokens .*one of {n} tokens"):
        build_model(ModelConfig(pretrained=str(llama_dir)), ours)
    smollm2 = AutoTokenizer.from_pretrained(llama_dir)
    with pytest.raises(ValueError, match=rf"the teacher and the student .*49152 tokens.*{n} tokens"):
        check_same_vocabulary(smollm2, "the teacher", ours, "the student")
    check_same_vocabulary(smollm2, "a", AutoTokenizer.from_pretrained(llama_dir), "b")  # same: passes
    model = build_model(ModelConfig(pretrained=str(llama_dir)), smollm2)
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152


def test_a_draft_with_another_tokenizer_fails_at_load_naming_both(ours, llama_dir, tmp_path):
    draft = tmp_path / "draft"
    build_model(
        ModelConfig(arch="llama", hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8),
        ours,
    ).save_pretrained(draft)
    ours.save_pretrained(draft)
    with pytest.raises(
        ValueError,
        match=rf"different tokenizers: the target's vocabulary has 49152 tokens.*the draft's {len(ours)}",
    ):
        Engine.from_pretrained(llama_dir, draft_dir=draft)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_registered_architecture_builds_fresh_with_the_tokenizers_vocabulary(arch, ours):
    cfg = ModelConfig(arch=arch, hidden_size=16, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    model = build_model(cfg, ours)
    assert model.config.model_type == arch and model.get_input_embeddings().num_embeddings == len(ours)


def test_a_student_cut_from_its_teachers_layers_keeps_those_weights_and_decodes_with_a_cache(tmp_path):
    """keep_layers: the kept layers are the teacher's own, renumbered so that the KV cache (indexed
    by each attention's layer_idx) holds one entry per kept layer: cached greedy decoding gives
    the tokens a full forward pass picks."""
    teacher = load_model(save_tiny_llama(tmp_path / "t", layers=4))
    kept_q = teacher.model.layers[3].self_attn.q_proj.weight.clone()
    student = keep_layers(load_model(tmp_path / "t"), [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert torch.equal(student.model.layers[1].self_attn.q_proj.weight, kept_q)
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    student.save_pretrained(tmp_path / "s")
    student = load_model(tmp_path / "s")
    ids = torch.tensor([[1, 5, 9, 14]])
    cached = student.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True)
    seq = ids
    for _ in range(6):  # no cache: the argmax of a full forward pass each step
        seq = torch.cat([seq, student(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)
    with pytest.raises(ValueError, match=r"distinct indices in 0..3"):
        keep_layers(load_model(tmp_path / "t"), [0, 4])


def test_non_embedding_parameters_leave_out_the_vocabulary_matrices(llama_dir):
    model = load_model(llama_dir)  # tied embeddings: one V x 32 matrix
    counts = parameter_counts(model)
    attention = 32 * 32 + 2 * (32 * 16) + 32 * 32  # q (2 heads x 16), k and v (1 head x 16), o
    mlp = 3 * 32 * 64
    layer = attention + mlp + 2 * 32  # two RMSNorms
    assert counts["non_embedding"] == 2 * layer + 32  # and the final norm
    assert counts["total"] == counts["non_embedding"] + model.config.vocab_size * 32
