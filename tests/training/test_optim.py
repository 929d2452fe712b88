"""Muon's update is orthogonal, the lr schedule, and the DeepSpeed config derived from ours."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from deepspeed.runtime.zero.muon.original_muon import muon_update

from training.config import ExpertParallelConfig, OptimizerConfig, TrainConfig, with_global_batch
from training.deepspeed_config import autoep_size, deepspeed_config, gradient_clipping
from training.optim import lr_factor


def test_muon_update_of_a_matrix_is_near_orthogonal():
    torch._dynamo.config.disable = True  # DeepSpeed compiles it; eager is the same maths
    torch.manual_seed(0)
    g = torch.randn(32, 64) @ torch.diag(torch.logspace(-3, 1, 64))  # badly conditioned gradient
    update = muon_update(g.clone(), torch.zeros_like(g), beta=0.0, nesterov=False)
    sv = torch.linalg.svdvals(update / update.norm(dim=None) * (32**0.5))
    grad_sv = torch.linalg.svdvals(g)
    assert grad_sv.max() / grad_sv.min() > 100
    # Newton-Schulz (5 steps) lands every singular value in a band around 1, not exactly on it:
    # over 30 seeds the band was [0.49, 1.36] while the gradient's condition number was > 100.
    assert sv.min() > 0.4 and sv.max() < 1.6, sv


def test_lr_schedule_warms_up_then_decays_to_floor():
    f = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))


def _ds(opt="muonclip", zero=1, **train):
    return deepspeed_config(
        TrainConfig(zero_stage=zero, **train),
        OptimizerConfig(name=opt),
        ExpertParallelConfig(),
        world_size=2,
        model_type="qwen3_moe",
        num_experts=4,
        on_gpu=False,
    )


def test_deepspeed_config_derives_accumulation_and_autoep():
    cfg = _ds(global_batch_size=64, micro_batch_per_worker=8)
    assert cfg["gradient_accumulation_steps"] == 4 and cfg["train_batch_size"] == 64
    assert cfg["expert_parallel"]["autoep_size"] == 2 and cfg["bf16"]["enabled"] is False
    assert cfg["optimizer"]["type"] == "Muon" and cfg["gradient_clipping"] == 0.0


def test_muon_zero3_turns_reduce_scatter_off_and_adamw_clips():
    assert _ds(zero=3)["zero_optimization"]["reduce_scatter"] is False
    assert "reduce_scatter" not in _ds(zero=2)["zero_optimization"]
    adamw = _ds(opt="adamw")
    assert adamw["optimizer"]["type"] == "AdamW" and adamw["gradient_clipping"] == 1.0


def test_bad_batch_and_expert_split_are_named():
    with pytest.raises(ValueError, match="global_batch_size=30"):
        _ds(global_batch_size=30, micro_batch_per_worker=8)
    with pytest.raises(ValueError, match="autoep_size=3"):
        autoep_size(ExpertParallelConfig(autoep_size=3), num_experts=4, world_size=2)
    assert autoep_size(ExpertParallelConfig(), num_experts=6, world_size=4) == 1  # uneven: no EP


def test_a_stage_batch_the_learner_cannot_split_fails_naming_the_stage_knobs():
    train = TrainConfig(micro_batch_per_worker=16, global_batch_size=None)
    assert with_global_batch(train, 64, 2, "rlvr.prompts_per_step x rlvr.group_size").global_batch_size == 64
    with pytest.raises(
        ValueError, match=r"rlvr.prompts_per_step x rlvr.group_size = 16 .* x workers \(2\) = 32"
    ):
        with_global_batch(train, 16, 2, "rlvr.prompts_per_step x rlvr.group_size")


def test_a_derived_batch_set_by_hand_fails_instead_of_being_ignored():
    source = "rlvr.prompts_per_step x rlvr.group_size"
    assert with_global_batch(TrainConfig(global_batch_size=64), 64, 2, source).global_batch_size == 64
    with pytest.raises(
        ValueError, match=r"global_batch_size=32, but rlvr.prompts_per_step x rlvr.group_size = 64"
    ):
        with_global_batch(TrainConfig(global_batch_size=32), 64, 2, source)
    with pytest.raises(ValueError, match="global_batch_size is not set"):
        TrainConfig(global_batch_size=None).accumulation_steps(2)


def test_gradient_clipping_defaults_per_optimizer_and_refuses_a_clip_muon_would_ignore():
    assert gradient_clipping(TrainConfig(), muon=False) == 1.0
    assert gradient_clipping(TrainConfig(grad_clip=0.5), muon=False) == 0.5
    assert gradient_clipping(TrainConfig(), muon=True) == 0.0
    assert gradient_clipping(TrainConfig(grad_clip=0.0), muon=True) == 0.0
    with pytest.raises(ValueError, match="grad_clip=1.0 has no effect with optimizer muonclip"):
        gradient_clipping(TrainConfig(grad_clip=1.0), muon=True)
