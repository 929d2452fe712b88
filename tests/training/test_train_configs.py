"""Bad model, optimizer and loop settings fail when the config is built, naming the key."""

from __future__ import annotations

import pytest

from training.config import ModelConfig, OptimizerConfig, StageTrainConfig, TrainConfig


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelConfig(num_attention_heads=4, num_key_value_heads=3), r"must be a multiple of"),
        (
            lambda: ModelConfig(num_experts=4, num_experts_per_tok=5),
            r"num_experts_per_tok=5 must be in 1..model",
        ),
        (lambda: OptimizerConfig(name="sgd"), r"optimizer.name must be muonclip or adamw"),
        (lambda: TrainConfig(zero_stage=4), r"zero_stage must be 0, 1, 2 or 3"),
        (lambda: TrainConfig(precision="fp16"), r"precision must be bf16 or fp32"),
        (lambda: TrainConfig(max_steps=0), r"max_steps, global_batch_size and micro_batch_per_worker"),
        (lambda: TrainConfig(eval_every=-1), r"eval_every and eval_rows must be >= 0"),
        (lambda: StageTrainConfig(optimizer="lion"), r"optimizer must be one of"),
    ],
)
def test_bad_settings_fail_naming_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()
