"""A tiny random Llama with SmolLM2-135M-Instruct's real tokenizer and chat template, saved as a
local Hugging Face directory: the shape of a user's pretrained model at test cost."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

SMOLLM2_TOKENIZER = Path(__file__).parent / "fixtures" / "smollm2_tokenizer"


def save_tiny_llama(out: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    tok = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        tie_word_embeddings=True,  # as SmolLM2's
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out
