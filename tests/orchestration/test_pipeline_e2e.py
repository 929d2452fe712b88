"""End to end: data -> pretrain -> sft through the real command, tiny sizes, and a rerun that skips."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TINY = ["task.pretrain_docs=600", "task.sft_pairs=200", "task.rl_prompts=20", "task.eval_prompts=30",
        "pretrain.max_steps=6", "pretrain.checkpoint_every=3", "sft.max_steps=4", "sft.checkpoint_every=2",
        "eval.limit=20", "eval.max_new_tokens=24", "logging.wandb_mode=disabled", "logging.progress=false"]


@pytest.mark.slow
def test_data_pretrain_sft_pipeline_then_rerun_skips_everything(tmp_path):
    cmd = [sys.executable, "-m", "orchestration.pipeline", f"cluster.storage_path={tmp_path}", "run_name=e2e", *TINY]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    run = tmp_path / "e2e"
    sft = json.loads((run / "sft" / "manifest.json").read_text())
    pre = json.loads((run / "pretrain" / "manifest.json").read_text())
    assert sft["inputs"]["pretrain"] == pre["fingerprint"]
    for m in (pre, sft):
        assert 0.0 <= m["metrics"]["pass@1"] <= 1.0 and m["metrics"]["eval_prompts"] == 20
        assert m["metrics"]["params_total"] > m["metrics"]["params_active"]  # MoE: top-2 of 4 experts
    assert (run / "sft" / "model" / "model.safetensors").exists()

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    log = second.stdout + second.stderr
    assert all(f"[{s}] skipped" in log for s in ("data", "pretrain", "sft"))
