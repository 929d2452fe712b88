"""QK-clip: the factor maths, and that a real model's max logit is capped at tau after clipping."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen3MoeConfig

from training.qk_clip import apply_qk_clip, attach_recorder, clip_factors, set_plain_param


def test_clip_factors_multiply_to_gamma_per_head():
    max_logits = torch.tensor([200.0, 50.0, 400.0, 100.0])
    q, k = clip_factors(max_logits, tau=100.0, kv_groups=2)
    gamma = torch.tensor([0.5, 1.0, 0.25, 1.0])
    assert torch.allclose(q * k.repeat_interleave(2), gamma)
    # Shared key takes sqrt of the group's smallest gamma: sqrt(0.5), sqrt(0.25).
    assert torch.allclose(k, torch.tensor([math.sqrt(0.5), 0.5]))


def test_clip_factors_are_sqrt_split_for_multi_head_attention():
    q, k = clip_factors(torch.tensor([400.0, 10.0]), tau=100.0, kv_groups=1)
    assert torch.allclose(q, torch.tensor([0.5, 1.0])) and torch.allclose(k, torch.tensor([0.5, 1.0]))


def _toy(arch: str, layers: int = 1):
    # One layer: clipping layer l changes the inputs of layer l+1, so only there is the cap exact.
    common = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_experts_per_tok=2,
    )
    if arch == "mixtral":
        cfg = MixtralConfig(**common, intermediate_size=32, num_local_experts=4)
    else:
        cfg = Qwen3MoeConfig(**common, intermediate_size=32, moe_intermediate_size=32, num_experts=4)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # blow up the query/key scale so logits sit far above tau
        for name, p in model.named_parameters():
            if any(s in name for s in ("q_proj", "k_proj", "q_norm", "k_norm")):
                p.mul_(6.0)
    return model


@pytest.mark.parametrize("arch", ["mixtral", "qwen3_moe"])
def test_qk_clip_caps_max_logit_at_tau(arch):
    model = _toy(arch).train()
    recorder = attach_recorder(model)
    ids = torch.randint(0, 64, (3, 16))
    model(input_ids=ids)
    before = recorder.overall_max()
    tau = before / 4
    assert apply_qk_clip(model, recorder, tau, set_plain_param) > 0

    recorder.reset()
    model(input_ids=ids)
    after = recorder.overall_max()
    assert after <= tau * (1 + 1e-4), (before, tau, after)
    if arch == "mixtral":  # per-head clipping: the hottest head lands on tau exactly
        assert after == pytest.approx(tau, rel=1e-4)


def test_recorder_ignores_eval_forwards_and_matches_manual_logits():
    model = _toy("mixtral").train()
    recorder = attach_recorder(model)
    ids = torch.randint(0, 64, (1, 8))
    model.eval()
    model(input_ids=ids)
    assert recorder.max_logits == {}
    model.train()
    model(input_ids=ids)
    # Recompute layer 0's pre-softmax logits by hand.
    attn = model.model.layers[0].self_attn
    h = model.model.embed_tokens(ids)
    h = model.model.layers[0].input_layernorm(h)
    q = attn.q_proj(h).view(1, 8, 4, 8).transpose(1, 2)
    k = attn.k_proj(h).view(1, 8, 2, 8).transpose(1, 2)
    cos, sin = model.model.rotary_emb(h, torch.arange(8)[None])
    from transformers.models.mixtral.modeling_mixtral import apply_rotary_pos_emb

    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(2, dim=1)
    logits = (q @ k.transpose(-1, -2)) * attn.scaling
    logits = logits.masked_fill(~torch.ones(8, 8, dtype=torch.bool).tril(), float("-inf"))
    assert torch.allclose(recorder.max_logits[0], logits.amax(dim=(0, 2, 3)), rtol=1e-4)
