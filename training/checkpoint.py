"""DeepSpeed checkpoints through Ray Train, and the consolidated Hugging Face export.

Every rank saves its own shard (its experts, its ZeRO partition) into a local temp directory and
reports it; Ray Train copies all ranks' files into one checkpoint directory in storage. Resume
loads that directory back on every rank.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import deepspeed
import ray.train
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from training.lora import lora_scaling, merge_lora

TAG = "ds"


def report(engine, step: int, metrics: dict) -> None:
    """Save this rank's shard and `ray.train.report` it (every rank calls this: it is a barrier)."""
    tmp = tempfile.mkdtemp(prefix="rf_ckpt_")
    try:
        engine.save_checkpoint(tmp, tag=TAG, client_state={"step": step})
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"step_{step:07d}",
        )
    finally:  # the default (synchronous) upload has finished once report returns
        shutil.rmtree(tmp, ignore_errors=True)


def restore(engine) -> int:
    """Load the latest reported checkpoint, if any; returns the step to continue from."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with ckpt.as_directory() as d:
        path, client = engine.load_checkpoint(d, tag=TAG)
        if path is None:
            raise RuntimeError(
                f"checkpoint {d} has no DeepSpeed tag {TAG!r}; files: {sorted(Path(d).iterdir())}"
            )
    return int(client["step"])


def _moe_layers(engine) -> dict[str, torch.nn.Module]:
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    return {name + ".": m for name, m in engine.module.named_modules() if isinstance(m, AutoEPMoELayer)}


def gather_hf_state_dict(engine) -> dict[str, torch.Tensor]:
    """The full model in Hugging Face layout, on every rank: ZeRO-3 partitions gathered, the
    AutoEP experts all-gathered from their expert-parallel ranks, tied weights under each of their
    names (what a strict `load_state_dict` wants) and LoRA adapters merged into their layers.
    Collective: all ranks call it."""
    layers = _moe_layers(engine)
    out: dict[str, torch.Tensor] = {}
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(
        params, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3
    ):
        for name, p in engine.module.named_parameters():
            prefix = next((pre for pre in layers if name.startswith(pre)), None)
            value = p.detach().clone().float().cpu()
            if prefix is None:
                out[name] = value
                continue
            leaf = name[len(prefix) :]
            if leaf == "router.gate.weight":
                out[prefix + "gate.weight"] = value
            elif leaf.startswith("experts.w"):
                group = layers[prefix].ep_group
                parts = [torch.empty_like(p) for _ in range(dist.get_world_size(group))]
                dist.all_gather(parts, p.detach().contiguous(), group=group)
                out[prefix + leaf] = torch.cat(parts, dim=0).float().cpu()  # experts in ep-rank order
            else:
                raise KeyError(f"AutoEP parameter {name!r} has no Hugging Face counterpart")
    for prefix in layers:
        w1, w2, w3 = (out.pop(f"{prefix}experts.w{i}") for i in (1, 2, 3))
        out[prefix + "experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)  # HF chunks gate then up
        out[prefix + "experts.down_proj"] = w2
    first_name = {id(p): n for n, p in engine.module.named_parameters()}
    for name, p in engine.module.named_parameters(remove_duplicate=False):
        if name not in out and first_name.get(id(p)) in out:  # tied (SmolLM2's lm_head = embeddings)
            out[name] = out[first_name[id(p)]]
    return merge_lora(out, lora_scaling(engine.module))


def export_hf(engine, out_dir: str | Path, tokenizer, rank: int) -> None:
    """Write a plain Hugging Face checkpoint (safetensors + tokenizer) from rank 0."""
    state = gather_hf_state_dict(engine)
    if rank == 0:
        config = engine.module.config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
        model.load_state_dict(state, strict=True)
        model.config.use_cache = True
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    dist.barrier()
