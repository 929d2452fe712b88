"""Tiny random-init models for the engine tests: a Qwen3-MoE target and a dense Qwen3 draft.

Random models are near-uniform, which makes greedy ties and 0% draft acceptance likely; so the
lm_head is scaled up (clear argmaxes) and the draft shares the target's embedding and lm_head with
damped layers, so it agrees with the target often but not always (acceptance ~0.5). The target's
own layers stay strong enough that its outputs depend on context, which a cache bug would change.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen3Config, Qwen3MoeConfig


def tiny_target(
    vocab: int, seed: int = 0, head_scale: float = 20.0, layer_scale: float = 0.3
) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    _scale(model, head_scale, layer_scale)
    return model


def tiny_draft(
    target: PreTrainedModel, seed: int = 1, layer_scale: float = 0.1, share: bool = True
) -> PreTrainedModel:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=target.config.vocab_size,
        hidden_size=target.config.hidden_size,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=target.config.max_position_embeddings,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        if share:
            model.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
            model.lm_head.weight.copy_(target.lm_head.weight)
        else:
            model.lm_head.weight.mul_(target.lm_head.weight.norm() / model.lm_head.weight.norm())
    _scale(model, 1.0, layer_scale)
    return model


def _scale(model: PreTrainedModel, head_scale: float, layer_scale: float) -> None:
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        for name, param in model.named_parameters():
            if "o_proj" in name or "down_proj" in name:  # each layer's write into the residual stream
                param.mul_(layer_scale)


def random_prompts(count: int, vocab: int, seed: int, min_len: int = 2, max_len: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=g)
    return [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="session")
def target() -> PreTrainedModel:
    return tiny_target(vocab=128)


@pytest.fixture(scope="session")
def draft(target) -> PreTrainedModel:
    return tiny_draft(target)


@pytest.fixture(autouse=True)
def _one_thread():
    # Models this small run several times faster on one thread, more so on a shared 2-core box
    # where intra-op threads wait on each other.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
