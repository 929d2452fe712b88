"""Hugging Face causal LMs built from our config: Qwen3-MoE (default), Mixtral, dense Qwen3, Qwen2, Llama.

Models are never downloaded: either built fresh from `ModelConfig` with the tokenizer's vocabulary,
or loaded from a local directory (`model.pretrained=<dir>`: an earlier stage's export, or any Hugging
Face causal LM saved there, whatever its architecture), which must share the run's tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

from training.config import ModelConfig


def _common(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def _qwen3_moe(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    return Qwen3MoeConfig(
        **_common(cfg, tok),
        intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        norm_topk_prob=True,
        output_router_logits=True,  # so the forward pass adds the load-balancing loss
        router_aux_loss_coef=cfg.router_aux_loss_coef,
    )


def _mixtral(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    common = _common(cfg, tok)
    common.pop("rope_parameters")  # Mixtral's default rope; theta still settable below
    return MixtralConfig(
        **common,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        intermediate_size=cfg.moe_intermediate_size,  # Mixtral's experts use `intermediate_size`
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        output_router_logits=True,
        router_aux_loss_coef=cfg.router_aux_loss_coef,
    )


def _qwen3_dense(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    return Qwen3Config(**_common(cfg, tok), intermediate_size=cfg.intermediate_size)


def _qwen2(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    return Qwen2Config(**_common(cfg, tok), intermediate_size=cfg.intermediate_size)


def _llama(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    return LlamaConfig(**_common(cfg, tok), intermediate_size=cfg.intermediate_size)


ARCHS: dict[str, Callable[[ModelConfig, PreTrainedTokenizerBase], PretrainedConfig]] = {
    "qwen3_moe": _qwen3_moe,
    "mixtral": _mixtral,
    "qwen3": _qwen3_dense,
    "qwen2": _qwen2,
    "llama": _llama,
}


def hf_config(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PretrainedConfig:
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={cfg.arch!r} is not one of {sorted(ARCHS)}")
    return ARCHS[cfg.arch](cfg, tok)


def build_model(cfg: ModelConfig, tok: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A fresh fp32 model from `cfg`, or the local checkpoint `cfg.pretrained` (which must read the
    same vocabulary as `tok` when it ships a tokenizer)."""
    if cfg.pretrained:
        check_tokenizer(cfg.pretrained, tok)
        return load_model(cfg.pretrained, expected_vocab=len(tok))
    torch.manual_seed(0)  # identical init on every worker; DeepSpeed also broadcasts rank 0's
    return AutoModelForCausalLM.from_config(hf_config(cfg, tok), dtype=torch.float32)


def load_model(path: str | Path, expected_vocab: int | None = None, dtype=torch.float32) -> PreTrainedModel:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"model.pretrained={str(path)!r} is not a Hugging Face model directory "
            "(no config.json); give a local directory written by save_pretrained"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    vocab = model.get_input_embeddings().num_embeddings
    if expected_vocab is not None and vocab < expected_vocab:
        raise ValueError(
            f"model at {path} has {vocab} embeddings but the tokenizer has {expected_vocab} tokens"
        )
    return model


def keep_layers(model: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """`model` with only its decoder layers `layers`, in that order and renumbered, everything
    else (embeddings, final norm, head) kept: a student or draft that starts from its teacher's
    weights (layer dropping, as in ShortGPT or Sheared-LLaMA's init) instead of from noise."""
    count = model.config.num_hidden_layers
    if not layers or len(set(layers)) != len(layers) or not all(0 <= i < count for i in layers):
        raise ValueError(
            f"layers must be distinct indices in 0..{count - 1} of the model's {count} "
            f"(distill.student_layers); got {list(layers)}"
        )
    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(decoder.layers[i] for i in layers)
    for new_index, layer in enumerate(decoder.layers):
        # The KV cache is indexed by each attention module's layer_idx.
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_index
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    model.config.num_hidden_layers = len(layers)
    return model


def check_tokenizer(model_dir: str | Path, tok: PreTrainedTokenizerBase) -> None:
    """Fail, naming both, when the model directory's own tokenizer is not `tok`'s vocabulary: its
    embedding rows would mean other strings than the run's token ids."""
    from training.tokenizer import check_same_vocabulary, load_tokenizer

    if (Path(model_dir) / "tokenizer.json").is_file():
        check_same_vocabulary(
            load_tokenizer(model_dir), f"the model at {model_dir}", tok, "the run's tokenizer"
        )


def is_moe(model: PreTrainedModel) -> bool:
    return getattr(model.config, "num_experts", getattr(model.config, "num_local_experts", 0)) > 0


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Total parameters, active ones per token (experts counted at top-k / num_experts), and the
    active ones outside the vocabulary matrices (input embedding, and output head when untied):
    the usual figure for comparing model sizes, as those matrices scale with the tokenizer rather
    than with the model's depth and width."""
    total = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    active = total
    if is_moe(model):
        c = model.config
        n_exp = getattr(c, "num_experts", None) or c.num_local_experts
        active = total - experts + experts * c.num_experts_per_tok // n_exp
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    vocab_matrices = embedding.numel()
    if head is not None and head.weight is not embedding:
        vocab_matrices += head.weight.numel()
    return {"total": total, "active": active, "non_embedding": active - vocab_matrices}
