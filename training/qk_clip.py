"""QK-clip (Kimi K2, MuonClip): cap each attention head's largest pre-softmax logit at `tau`.

During training forwards an attention wrapper records, per layer and head, the largest scaled
q.k logit over valid (causal, unpadded) positions. After the optimizer step, a head whose max
logit S exceeds tau is rescaled by gamma = tau / S, split between its query and key weights so
that every q.k product of that head shrinks by exactly gamma.

Deviations from the paper, and why:
- GQA: a key head is shared by several query heads. The shared key gets sqrt(min gamma of its
  group) and each query head the rest, so every head's logits scale by exactly its own gamma
  (for plain multi-head attention this is the paper's sqrt/sqrt split).
- QK-norm (Qwen3): q and k are RMS-normalised after the projection, so rescaling W_q/W_k would be
  undone. The norm gains are the only scale knobs and they are shared by all heads of a layer, so
  the layer is scaled by the smallest gamma among its heads (clipping its other heads too).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPL = "sdpa_maxlogit"


def clip_factors(max_logits: torch.Tensor, tau: float, kv_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head query scales (H,) and per-key-head scales (H // kv_groups,) for QK-clip.

    q_scale[h] * k_scale[h // kv_groups] == min(1, tau / max_logits[h]) for every head h.
    """
    gamma = torch.clamp(tau / max_logits.clamp_min(1e-12), max=1.0)
    k_scale = gamma.view(-1, kv_groups).amin(dim=1).sqrt()
    q_scale = gamma / k_scale.repeat_interleave(kv_groups)
    return q_scale, k_scale


class MaxLogitRecorder:
    """Running per-head max logit of each attention layer since the last `reset()`."""

    def __init__(self) -> None:
        self.max_logits: dict[int, torch.Tensor] = {}

    def update(self, layer: int, per_head: torch.Tensor) -> None:
        prev = self.max_logits.get(layer)
        self.max_logits[layer] = per_head if prev is None else torch.maximum(prev, per_head)

    def reset(self) -> None:
        self.max_logits = {}

    def all_reduce(self) -> None:
        """Make every data-parallel rank see the global max, so all apply the same clip."""
        if dist.is_available() and dist.is_initialized():
            for t in self.max_logits.values():
                dist.all_reduce(t, op=dist.ReduceOp.MAX)

    def overall_max(self) -> float:
        return max((float(t.max()) for t in self.max_logits.values()), default=float("nan"))


def _max_logits(module, query, key, attention_mask, scaling) -> torch.Tensor:
    k = repeat_kv(key, module.num_key_value_groups)
    logits = (query.float() @ k.float().transpose(-1, -2)) * scaling  # (B, H, Tq, Tk)
    if attention_mask is None:  # sdpa's is_causal path: build the causal pattern ourselves
        tq, tk = logits.shape[-2:]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=logits.device).tril(tk - tq)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    logits = logits.masked_fill(~allowed, float("-inf"))
    return logits.amax(dim=(0, 2, 3))


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    recorder: MaxLogitRecorder | None = getattr(module, "_max_logit_recorder", None)
    if recorder is not None and module.training:
        with torch.no_grad():
            recorder.update(
                module.layer_idx, _max_logits(module, query, key, attention_mask, kwargs["scaling"])
            )
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTN_IMPL, _recording_attention)
AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in model.modules()
        if hasattr(m, "q_proj") and hasattr(m, "k_proj") and hasattr(m, "layer_idx")
    ]


def attach_recorder(model: nn.Module) -> MaxLogitRecorder:
    """Switch the model to the recording attention and return the recorder it fills."""
    recorder = MaxLogitRecorder()
    model.set_attn_implementation(ATTN_IMPL)
    for attn in attention_modules(model):
        attn._max_logit_recorder = recorder
    return recorder


def _scale_rows(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply each head's block of output rows of a (heads * head_dim, in) weight."""
    heads = scale.numel()
    return (weight.view(heads, -1, weight.shape[-1]) * scale.view(-1, 1, 1).to(weight.dtype)).view_as(weight)


@torch.no_grad()
def apply_qk_clip(model: nn.Module, recorder: MaxLogitRecorder, tau: float, set_param) -> int:
    """Rescale the heads over `tau`; returns how many heads were clipped.

    `set_param(param, fn)` replaces a parameter's full value by `fn(full_value)`; the trainer
    passes one that also updates DeepSpeed's fp32 master copy and ZeRO-3 partitions.
    """
    clipped = 0
    for attn in attention_modules(model):
        max_logits = recorder.max_logits.get(attn.layer_idx)
        if max_logits is None or float(max_logits.max()) <= tau:
            continue
        groups = attn.num_key_value_groups
        q_scale, k_scale = clip_factors(max_logits, tau, groups)
        clipped += int((max_logits > tau).sum())
        if hasattr(attn, "q_norm"):
            layer = math.sqrt(min(1.0, tau / float(max_logits.max())))
            set_param(attn.q_norm.weight, lambda w, s=layer: w * s)
            set_param(attn.k_norm.weight, lambda w, s=layer: w * s)
        else:
            set_param(attn.q_proj.weight, lambda w, s=q_scale: _scale_rows(w, s))
            set_param(attn.k_proj.weight, lambda w, s=k_scale: _scale_rows(w, s))
    return clipped


def set_plain_param(param: nn.Parameter, fn) -> None:
    """`set_param` for a model outside DeepSpeed."""
    param.data.copy_(fn(param.data))
