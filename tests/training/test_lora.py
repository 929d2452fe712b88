"""LoRA: adapters train, and every export or weight push is the merged plain model."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import LoraConfig
from training.lora import apply_lora, lora_scaling, merge_lora


def test_merge_lora_adds_the_scaled_low_rank_update_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 2.0]])  # (r=1, in=2)
    b = torch.tensor([[3.0], [4.0]])  # (out=2, r=1)
    state = {
        "base_model.model.model.layers.0.q_proj.base_layer.weight": w,
        "base_model.model.model.layers.0.q_proj.lora_A.default.weight": a,
        "base_model.model.model.layers.0.q_proj.lora_B.default.weight": b,
        "base_model.model.model.norm.weight": torch.ones(2),
    }
    merged = merge_lora(state, scaling=0.5)
    # W + 0.5 * B @ A = [[1 + 1.5, 3], [2, 1 + 4]]
    assert torch.equal(merged["model.layers.0.q_proj.weight"], torch.tensor([[2.5, 3.0], [2.0, 5.0]]))
    assert set(merged) == {"model.layers.0.q_proj.weight", "model.norm.weight"}
    plain = {"model.norm.weight": torch.ones(2)}
    assert merge_lora(plain, scaling=0.5) is plain


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def test_the_merged_state_of_a_trained_adapter_is_a_plain_model_with_the_same_outputs():
    model = apply_lora(_tiny_llama(), LoraConfig(enabled=True, r=4, alpha=8.0))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # the base stays frozen
    assert lora_scaling(model) == 2.0 and lora_scaling(_tiny_llama()) == 0.0
    with torch.no_grad():  # a trained adapter: B is zero at init, so move it
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ids = torch.randint(0, 64, (2, 7))
    expected = model(input_ids=ids).logits
    merged = merge_lora({n: p.detach() for n, p in model.named_parameters()}, lora_scaling(model))
    plain = _tiny_llama()
    missing, unexpected = plain.load_state_dict(merged, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_lora_on_modules_the_model_lacks_fails_naming_them():
    with pytest.raises(ValueError, match=r"\['w_q'\] name no module"):
        apply_lora(_tiny_llama(), LoraConfig(enabled=True, target_modules=["w_q"]))
    with pytest.raises(ValueError, match="r >= 1"):
        LoraConfig(r=0)
