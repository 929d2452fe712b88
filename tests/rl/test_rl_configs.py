"""Bad task, GRPO and distillation settings fail when the config is built, naming the key."""

from __future__ import annotations

import pytest

from rl.config import DistillConfig, RlvrConfig
from rl.tasks.config import ArithmeticConfig, CountdownConfig, TaskConfig


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ArithmeticConfig(num_ops=[3, 2]), r"task.arithmetic.num_ops must be an inclusive range"),
        (lambda: ArithmeticConfig(ops=["/"]), r"task.arithmetic.ops must be a non-empty subset"),
        (lambda: CountdownConfig(num_numbers=[2, 6]), r"num_numbers max is 6"),
        (lambda: TaskConfig(tasks=[]), r"task.tasks must be a non-empty list"),
        (lambda: TaskConfig(tasks=["arithmetic"], weights=[1, 2]), r"task.weights has 2 entries"),
        (lambda: TaskConfig(weights=[-1.0]), r"task.weights must be >= 0"),
        (lambda: TaskConfig(rl_prompts=-1), r"task.rl_prompts must be >= 0"),
        (lambda: TaskConfig(pretrain_docs=0, sft_pairs=0, rl_prompts=0), r"nothing to train on"),
        (lambda: TaskConfig(eval_fraction=1.0), r"task.eval_fraction must be in \(0, 1\)"),
        (lambda: TaskConfig(tasks=["gsm8k"]), r"task.gsm8k_files is empty"),
        (lambda: TaskConfig(vocab_size=200), r"task.vocab_size must be >= 300"),
        (lambda: TaskConfig(block_size=0), r"task.block_size must be >= 1"),
        (lambda: RlvrConfig(mode="eager"), r"rlvr.mode must be sync or async"),
        (lambda: RlvrConfig(group_size=1), r"rlvr.group_size must be >= 2"),
        (lambda: RlvrConfig(num_rollout_workers=0), r"rlvr.prompts_per_step and rlvr.num_rollout_workers"),
        (lambda: RlvrConfig(temperature=0.0), r"rlvr.temperature must be > 0"),
        (lambda: RlvrConfig(mode="async", max_staleness=0), r"rlvr.max_staleness must be >= 1"),
        (lambda: RlvrConfig(clip_low=1.0), r"rlvr.clip_low must be in \[0, 1\)"),
        (lambda: RlvrConfig(rollout_quantize="int4"), r"rlvr.rollout_quantize must be null or .int8."),
        (lambda: RlvrConfig(optimizer="sgd"), r"optimizer must be one of \('muonclip', 'adamw'\) or null"),
        (lambda: DistillConfig(loss="mse"), r"distill.loss='mse' is not one of"),
        (lambda: DistillConfig(prompts_split="eval"), r"prompts_split='eval'"),
        (lambda: DistillConfig(kd_top_k=0), r"kd_top_k=0; expected .*kd_top_k>=1 or null"),
        (lambda: DistillConfig(student_layers=[]), r"student_layers=\[\]; expected .*distinct layer indices"),
        (lambda: DistillConfig(student_layers=[0, 0]), r"student_layers=\[0, 0\]"),
    ],
)
def test_bad_settings_fail_naming_the_key(build, message):
    with pytest.raises(ValueError, match=message):
        build()
