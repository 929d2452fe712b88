"""Training throughput arithmetic: model FLOPs per token, MFU, measured peak, expert load."""

from __future__ import annotations

import time

import torch


def flops_per_token(
    active_params: int, embedding_params: int, layers: int, attn_width: int, seq_len: int
) -> float:
    """Forward + backward FLOPs per token (PaLM appendix B): 6 N for the matmuls of the active,
    non-embedding parameters, plus 12 L d T for attention scores and values."""
    return 6.0 * (active_params - embedding_params) + 12.0 * layers * attn_width * seq_len


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float) -> float:
    return tokens_per_s * flops_per_tok / peak_flops


def measure_peak_flops(device: torch.device, seconds: float = 0.5) -> float:
    """Achieved matmul FLOP/s of this worker: fp32 on CPU (no native bf16 here), bf16 on GPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (512, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    iters, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iters += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2.0 * n**3 * iters / (time.perf_counter() - start)


def expert_token_share(router_logits: tuple[torch.Tensor, ...], top_k: int) -> list[float]:
    """Fraction of routed token slots each expert received, averaged over layers.

    Each element of `router_logits` is (tokens, experts) for one MoE layer; a perfectly balanced
    router gives 1 / experts everywhere.
    """
    shares = []
    for logits in router_logits:
        chosen = logits.topk(top_k, dim=-1).indices.flatten()
        counts = torch.bincount(chosen, minlength=logits.shape[-1]).float()
        shares.append(counts / counts.sum())
    return torch.stack(shares).mean(0).tolist()
