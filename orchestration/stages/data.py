"""The `data` adapter: problems for `task`, split into pretrain/SFT/RL/eval, and the tokenizer.

With `model.pretrained` the run uses that model's own tokenizer and chat template, and no
tokenizer is trained; otherwise ReasonForge trains its small byte-level BPE on the training
splits, with the answer format's tags as single tokens.
"""

from __future__ import annotations

from orchestration.stages.context import StageContext, StageResult
from rl.tasks.datagen import draw_samples
from rl.tasks.format import FORMAT_TAGS
from training.chat import check_chat_template
from training.corpus import OUTPUTS, tokenizer_training_text, write_corpus
from training.tokenizer import load_tokenizer, train_tokenizer


def run(cfg, ctx: StageContext) -> StageResult:
    task, samples = draw_samples(cfg.task, ctx.tracker)
    pretrained = cfg.model.pretrained
    if pretrained:
        tokenizer = load_tokenizer(pretrained)
        check_chat_template(tokenizer, f"model.pretrained={pretrained}")
    else:
        text = tokenizer_training_text(samples, task.system_prompt)
        tokenizer = train_tokenizer(text, task.vocab_size, ctx.work_dir / "tokenizer", FORMAT_TAGS)
    metrics = write_corpus(samples, tokenizer, ctx.out_dir, task.system_prompt)
    metrics["tokenizer_trained"] = float(not pretrained)
    ctx.tracker.log(metrics)
    return StageResult(outputs=dict(OUTPUTS), metrics=metrics)
