"""The DeepSpeed config dict, derived from our typed configs (never written by hand)."""

from __future__ import annotations

from training.config import ExpertParallelConfig, OptimizerConfig, TrainConfig

# DeepSpeed AutoEP presets by Hugging Face model_type.
AUTOEP_PRESETS = {"qwen3_moe": "qwen3_moe", "mixtral": "mixtral"}


def autoep_size(ep: ExpertParallelConfig, num_experts: int, world_size: int) -> int:
    """Configured size, else the worker count when the experts divide evenly over it, else 1."""
    if not ep.enabled or num_experts == 0:
        return 1
    size = ep.autoep_size or (world_size if num_experts % world_size == 0 else 1)
    if num_experts % size or world_size % size:
        raise ValueError(
            f"expert_parallel.autoep_size={size} must divide both the expert count ({num_experts}) "
            f"and the worker count ({world_size})"
        )
    return size


def optimizer_section(train: TrainConfig, opt: OptimizerConfig) -> dict:
    if opt.name == "muonclip":
        # DeepSpeed's MuonWithAuxAdam: `lr` is Muon's, `adam_lr` the AdamW half's.
        return {
            "type": "Muon",
            "params": {
                "lr": train.lr * opt.muon_lr_ratio,
                "momentum": opt.momentum,
                "weight_decay": opt.weight_decay,
                "adam_lr": train.lr,
                "betas": list(opt.betas),
                "eps": opt.eps,
            },
        }
    return {
        "type": "AdamW",
        "params": {
            "lr": train.lr,
            "betas": list(opt.betas),
            "eps": opt.eps,
            "weight_decay": opt.weight_decay,
        },
    }


def deepspeed_config(
    train: TrainConfig,
    opt: OptimizerConfig,
    ep: ExpertParallelConfig,
    *,
    world_size: int,
    model_type: str,
    num_experts: int,
    on_gpu: bool,
) -> dict:
    muon = opt.name == "muonclip"
    zero: dict = {"stage": train.zero_stage}
    if muon and train.zero_stage == 3:
        # stage3.py raises "Muon and reduce scatter cannot be used together"; stages 1-2 with MoE
        # assert the opposite, so only ZeRO-3 turns it off.
        zero["reduce_scatter"] = False
    cfg = {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_per_worker,
        "gradient_accumulation_steps": train.accumulation_steps(world_size),
        # DeepSpeed clips after Muon has orthogonalised the update, shrinking it by the global
        # norm (~40x measured); MuonClip bounds its updates by construction instead.
        "gradient_clipping": gradient_clipping(train, muon),
        "zero_optimization": zero,
        "optimizer": optimizer_section(train, opt),
        "bf16": {"enabled": on_gpu and train.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    size = autoep_size(ep, num_experts, world_size)
    if size > 1:
        if model_type not in AUTOEP_PRESETS:
            raise ValueError(
                f"expert_parallel: no DeepSpeed AutoEP preset for model type {model_type!r}; "
                f"known: {sorted(AUTOEP_PRESETS)}; set expert_parallel.enabled=false"
            )
        cfg["expert_parallel"] = {
            "enabled": True,
            "autoep_size": size,
            "preset_model": AUTOEP_PRESETS[model_type],
            "use_grouped_mm": ep.use_grouped_mm,
        }
    return cfg


def gradient_clipping(train: TrainConfig, muon: bool) -> float:
    """DeepSpeed's clip norm: `train.grad_clip`, by default 1.0 with AdamW and off with Muon."""
    if not muon:
        return 1.0 if train.grad_clip is None else train.grad_clip
    if train.grad_clip:
        raise ValueError(
            f"grad_clip={train.grad_clip} has no effect with optimizer muonclip (DeepSpeed would clip after "
            "Muon orthogonalises, shrinking every update); leave grad_clip unset or use optimizer adamw"
        )
    return 0.0
