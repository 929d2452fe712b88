"""The stage table: each pipeline stage, its adapter, the config it reads and the outputs it takes.

An adapter (`orchestration/stages/<stage>.py`) resolves nothing itself: the driver hands it its
declared inputs as absolute paths (`ctx.input(name)`) and a view of the config that holds only the
sections declared here, so the cache key (the hash of `reads`) cannot miss what the stage reads.
The libraries (training, rl, serving) know no stage names; this table is where stages meet.
"""

from __future__ import annotations

from orchestration.stages import data, distill, report, rlvr, serve
from orchestration.stages.context import (
    ConfigView,
    Input,
    StageContext,
    StageResult,
    StageSpec,
    first_of,
    optional,
)
from orchestration.stages.train import TRAINING_READS, evaluated, run_pretrain, run_sft

# Every training stage: the tokenizer, its data split, and the held-out split its pass@1 is taken on.
TOKENIZER, EVAL = first_of("data.tokenizer"), first_of("data.eval")
RUNS_ON = ("cluster", "logging")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        # model.pretrained: a pretrained model brings its own tokenizer; none is trained then.
        StageSpec("data", data.run, reads=("task", "model.pretrained"), runs_on=RUNS_ON),
        StageSpec(
            "pretrain",
            evaluated(run_pretrain),
            reads=("pretrain", *TRAINING_READS),
            inputs={"tokenizer": TOKENIZER, "data": first_of("data.pretrain"), "eval": EVAL},
            runs_on=RUNS_ON,
        ),
        StageSpec(
            "sft",
            evaluated(run_sft),
            reads=("sft", *TRAINING_READS),
            inputs={
                "tokenizer": TOKENIZER,
                "data": first_of("data.sft"),
                "eval": EVAL,
                # A run without pretrain fine-tunes the user's model.pretrained.
                "start": first_of("pretrain.model", config="model.pretrained"),
                # The start model's per-prompt eval scores, for a paired gain (absent: scored here).
                "start_scores": optional("pretrain.eval_scores"),
            },
            runs_on=RUNS_ON,
        ),
        StageSpec(
            "rlvr",
            evaluated(rlvr.run),
            reads=("rlvr", *TRAINING_READS),
            # GRPO starts from the SFT model, or from pretrain's when a run has no SFT, or from the
            # user's model.pretrained when it has neither.
            inputs={
                "tokenizer": TOKENIZER,
                "prompts": first_of("data.rl"),
                "eval": EVAL,
                "start": first_of("sft.model", "pretrain.model", config="model.pretrained"),
                "start_scores": optional("sft.eval_scores", "pretrain.eval_scores"),
            },
            runs_on=RUNS_ON,
        ),
        StageSpec(
            "distill",
            evaluated(distill.run),
            # Its model: distill.student; model.pretrained teaches when no rlvr model exists.
            reads=("distill", "optimizer", "expert_parallel", "eval", "model.pretrained"),
            inputs={
                "tokenizer": TOKENIZER,
                # Prompts come from the split `distill.prompts_split` names; the no-teacher
                # baseline trains on sft.
                "rl": first_of("data.rl"),
                "sft": first_of("data.sft"),
                "eval": EVAL,
                "teacher": first_of("rlvr.model", config="model.pretrained"),
            },
            runs_on=RUNS_ON,
        ),
        # The best model that finished (rlvr, else sft, else the user's own) behind the OpenAI
        # endpoint; distill's drafts.
        StageSpec(
            "serve",
            serve.run,
            reads=("serve", "eval", "model.pretrained"),
            inputs={
                "eval": EVAL,
                "model": first_of("rlvr.model", "sft.model", config="model.pretrained"),
                "draft": optional("distill.model"),
            },
            runs_on=RUNS_ON,
        ),
        # Last, reading whatever finished before it: the run's one-page report.
        StageSpec("report", report.run, reads=(), reads_all_manifests=True),
    ]
}

__all__ = [
    "STAGES",
    "ConfigView",
    "Input",
    "StageContext",
    "StageResult",
    "StageSpec",
    "first_of",
    "optional",
]
