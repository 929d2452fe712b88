"""The shared training loop on real Ray Train + DeepSpeed: ZeRO stages, AutoEP, export, resume,
recovery from a killed worker. Tiny model, tiny data, a few steps each."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, TrainConfig
from training.loop import TrainJob, fit
from training.pretrain import PRETRAIN
from training.tokenizer import load_tokenizer
from training.tracking import LoggingConfig, Tracker, read_metrics


def _job(data_dir: Path, tmp_path: Path, name="t", **train) -> TrainJob:
    train = {"max_steps": 3, "global_batch_size": 8, "micro_batch_per_worker": 4, "seq_len": 64,
             "checkpoint_every": 2, "max_failures": 0, "warmup_steps": 1, **train}
    return TrainJob(name=name, recipe=PRETRAIN, model=ModelConfig(), train=TrainConfig(**train),
                    optimizer=OptimizerConfig(), expert_parallel=ExpertParallelConfig(),
                    tokenizer_dir=str(data_dir / "tokenizer"), data_dir=str(data_dir / "pretrain"),
                    export_dir=str(tmp_path / "export"), work_dir=str(tmp_path / "work"))


def _fit(job: TrainJob, track_dir: Path) -> dict:
    tracker = Tracker(track_dir, job.name, LoggingConfig(wandb_mode="disabled", progress=False))
    try:
        return fit(job, tracker)
    finally:
        tracker.close()


@pytest.mark.parametrize("zero", [1, 2, pytest.param(3, marks=pytest.mark.slow)])
def test_zero_stage_trains_and_exports_a_loadable_model(zero, data_dir, tmp_path):
    job = _job(data_dir, tmp_path, zero_stage=zero)
    last = _fit(job, tmp_path / "track")
    assert last["step"] == 3
    rows = read_metrics(tmp_path / "track")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "aux_loss", "tokens_per_s", "mfu", "max_attn_logit", "expert_share/3", "lr"):
        assert key in rows[-1], key
    assert sum(rows[-1][f"expert_share/{i}"] for i in range(4)) == pytest.approx(1.0)

    # The export holds all 4 experts (gathered from both expert-parallel ranks) and loads/generates.
    # (transformers saves the fused expert tensors as one gate/up/down matrix per expert)
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    experts = {k.split(".")[5] for k in weights if k.startswith("model.layers.0.mlp.experts.")}
    assert experts == {"0", "1", "2", "3"}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    tok = load_tokenizer(tmp_path / "export")
    ids = tok("<|user|>\nCompute 2+3\n<|assistant|>\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or tok.eos_token_id in out[0, ids.shape[1]:].tolist()

    if zero < 3:  # each expert-parallel rank saved only its own half of the experts
        ckpt = tmp_path / "work" / "t" / "step_0000003" / "ds"
        names = sorted(p.name for p in ckpt.glob("layer_0_expert_*_model_states.pt"))
        assert names == [f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)]


def test_training_lowers_the_loss(data_dir, tmp_path):
    _fit(_job(data_dir, tmp_path, max_steps=12, checkpoint_every=100, zero_stage=1), tmp_path / "track")
    losses = [r["loss"] for r in read_metrics(tmp_path / "track")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses


def test_restart_resumes_from_the_latest_checkpoint(data_dir, tmp_path):
    job = _job(data_dir, tmp_path, max_steps=4)
    _fit(job, tmp_path / "first")
    # Same run name and storage: Ray Train hands the workers the step-4 checkpoint.
    _fit(replace(job, train=replace(job.train, max_steps=6)), tmp_path / "second")
    assert [r["step"] for r in read_metrics(tmp_path / "second")] == [5, 6]


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_run_finishes(data_dir, tmp_path):
    job = _job(data_dir, tmp_path, max_steps=5, fail_at_step=3, max_failures=1)
    last = _fit(job, tmp_path / "track")
    assert last["step"] == 5
    assert (tmp_path / "work" / "t.failure_injected").exists()
    # Rank 1 died before step 4; the new worker group resumed from the step-2 checkpoint.
    assert [r["step"] for r in read_metrics(tmp_path / "track")] == [1, 2, 3, 3, 4, 5]


def test_qk_clip_keeps_the_max_logit_at_tau_during_training(data_dir, tmp_path):
    job = _job(data_dir, tmp_path, max_steps=3)
    job = replace(job, optimizer=OptimizerConfig(qk_clip_tau=1.0))  # far below the natural max logit
    _fit(job, tmp_path / "track")
    rows = read_metrics(tmp_path / "track")
    assert all(r["qk_clipped_heads"] > 0 for r in rows)
    # The clip reached DeepSpeed's fp32 master weights: had it touched only the module copy, the
    # optimizer step would restore the old scale and the next forward's max logit would not drop.
    assert rows[1]["max_attn_logit"] < 0.6 * rows[0]["max_attn_logit"], rows
