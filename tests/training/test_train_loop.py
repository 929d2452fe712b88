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
from training.recipes import PRETRAIN
from training.tokenizer import load_tokenizer
from training.tracking import LoggingConfig, Tracker, read_metrics


def _job(data_dir: Path, tmp_path: Path, name="t", **train) -> TrainJob:
    train = {
        "max_steps": 3,
        "global_batch_size": 8,
        "micro_batch_per_worker": 4,
        "seq_len": 64,
        "checkpoint_every": 2,
        "max_failures": 0,
        "warmup_steps": 1,
        **train,
    }
    return TrainJob(
        name=name,
        recipe=PRETRAIN,
        model=ModelConfig(),
        train=TrainConfig(**train),
        optimizer=OptimizerConfig(),
        expert_parallel=ExpertParallelConfig(),
        tokenizer_dir=str(data_dir / "tokenizer"),
        data_dir=str(data_dir / "pretrain"),
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
    )


def _fit(job: TrainJob, track_dir: Path) -> dict:
    tracker = Tracker(track_dir, job.name, LoggingConfig(wandb_mode="disabled", progress=False))
    try:
        return fit(job, tracker)
    finally:
        tracker.close()


def _assert_exports_a_loadable_moe(export: Path) -> None:
    # The export holds all 4 experts (gathered from both expert-parallel ranks) and loads/generates.
    # (transformers saves the fused expert tensors as one gate/up/down matrix per expert)
    weights = load_file(str(export / "model.safetensors"))
    experts = {k.split(".")[5] for k in weights if k.startswith("model.layers.0.mlp.experts.")}
    assert experts == {"0", "1", "2", "3"}
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tok = load_tokenizer(export)
    ids = tok("<|user|>\nCompute 2+3\n<|assistant|>\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5 or tok.eos_token_id in out[0, ids.shape[1] :].tolist()


def _assert_each_ep_rank_saved_its_own_experts(ckpt: Path) -> None:
    names = sorted(p.name for p in ckpt.glob("layer_0_expert_*_model_states.pt"))
    assert names == [f"layer_0_expert_{e}_mp_rank_00_model_states.pt" for e in range(4)]


@pytest.mark.slow
def test_zero3_trains_qk_clips_and_exports_a_loadable_model(data_dir, tmp_path):
    # ZeRO-3: every parameter partitioned (ZeRO-1, the default, is the killed run's below; ZeRO-2
    # differs from it only in DeepSpeed's gradient partitioning, a config value tested in test_optim).
    job = _job(data_dir, tmp_path, zero_stage=3)
    job = replace(job, optimizer=OptimizerConfig(qk_clip_tau=1.0))  # far below the natural max logit
    last = _fit(job, tmp_path / "track")
    assert last["step"] == 3
    rows = read_metrics(tmp_path / "track")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["qk_clipped_heads"] > 0 for r in rows)
    # The clip reached DeepSpeed's fp32 master weights (partitioned, under ZeRO-3): had it touched
    # only the module copy, the optimizer step would restore the old scale and the next forward's
    # max logit would not drop.
    assert rows[1]["max_attn_logit"] < 0.6 * rows[0]["max_attn_logit"], rows
    _assert_exports_a_loadable_moe(tmp_path / "export")


@pytest.fixture(scope="module")
def killed_run(data_dir, tmp_path_factory):
    """The default setup (ZeRO-1, AutoEP over both workers), 12 steps; rank 1 dies before step 6
    (one restart allowed). One run for the tests below: a run that survives a killed worker must
    still learn and export as well as one that did not."""
    tmp = tmp_path_factory.mktemp("killed")
    job = _job(data_dir, tmp, max_steps=12, checkpoint_every=4, fail_at_step=5, max_failures=1)
    return job, tmp, _fit(job, tmp / "track")


@pytest.mark.slow
def test_killed_worker_is_replaced_and_the_run_finishes(killed_run):
    _, tmp, last = killed_run
    assert last["step"] == 12
    assert (tmp / "work" / "t.failure_injected").exists()
    # Rank 1 died before step 6; the new worker group resumed from the step-4 checkpoint.
    assert [r["step"] for r in read_metrics(tmp / "track")] == [1, 2, 3, 4, 5, *range(5, 13)]


@pytest.mark.slow
def test_training_lowers_the_loss_and_exports_a_loadable_model(killed_run):
    _, tmp, last = killed_run
    # fit counts them (hidden size 64; `<|system|>`, the fourth special token, added one
    # embedding row and one output row: +128 over the 159,744 / 110,592 before it).
    assert (last["params_total"], last["params_active"]) == (159_872, 110_720)
    rows = read_metrics(tmp / "track")
    for key in ("loss", "aux_loss", "tokens_per_s", "mfu", "max_attn_logit", "expert_share/3", "lr"):
        assert key in rows[-1], key
    assert sum(rows[-1][f"expert_share/{i}"] for i in range(4)) == pytest.approx(1.0)
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    _assert_exports_a_loadable_moe(tmp / "export")
    _assert_each_ep_rank_saved_its_own_experts(tmp / "work" / "t" / "step_0000012" / "ds")


@pytest.mark.slow
def test_restart_resumes_from_the_latest_checkpoint(killed_run):
    job, tmp, _ = killed_run
    # Same run name and storage: Ray Train hands the workers the step-12 checkpoint.
    longer = replace(job, train=replace(job.train, max_steps=14), export_dir=str(tmp / "export14"))
    _fit(longer, tmp / "second")
    assert [r["step"] for r in read_metrics(tmp / "second")] == [13, 14]
