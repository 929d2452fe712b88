"""The `data` adapter: problems for `task`, split into pretrain/SFT/RL/eval, and the tokenizer."""

from __future__ import annotations

from orchestration.stages.context import StageContext, StageResult
from rl.tasks.datagen import draw_samples
from rl.tasks.format import FORMAT_TAGS
from training.corpus import OUTPUTS, write_corpus


def run(cfg, ctx: StageContext) -> StageResult:
    task, samples = draw_samples(cfg.task, ctx.tracker)
    metrics = write_corpus(samples, task.vocab_size, ctx.out_dir, added_tokens=FORMAT_TAGS)
    ctx.tracker.log(metrics)
    return StageResult(outputs=dict(OUTPUTS), metrics=metrics)
