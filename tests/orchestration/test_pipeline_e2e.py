"""End to end, as a new user runs it: `make demo` (the README's first command) in a fresh checkout,
with the default relative `outputs/`, runs every default stage (data -> pretrain -> sft -> rlvr ->
distill -> serve -> report), each handing its checkpoint to the next; running it again skips them all.

The only additions to the README's command are tiny sizes, passed as the pipeline's overrides
(`ARGS=...`), and the make variables that point at the already installed virtual environment
instead of installing another one into the checkout.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig

from training.models import load_model
from training.tokenizer import load_tokenizer
from training.tracking import read_metrics

REPO = Path(__file__).resolve().parents[2]
STAGES = ("data", "pretrain", "sft", "rlvr", "distill", "serve", "report")
TINY = [
    "task.pretrain_docs=600",
    "task.sft_pairs=200",
    "task.rl_prompts=40",
    "task.eval_prompts=30",
    "pretrain.train.max_steps=6",
    "pretrain.train.checkpoint_every=3",
    "sft.train.max_steps=4",
    "sft.train.checkpoint_every=2",
    "rlvr.train.max_steps=2",
    "rlvr.prompts_per_step=4",
    "rlvr.group_size=8",
    "rlvr.max_new_tokens=16",
    "distill.train.max_steps=3",
    "distill.prompts_per_step=4",
    "distill.train.micro_batch_per_worker=4",
    "distill.max_new_tokens=16",
    # GKD-style: at seed 0 and 0.5 the steps mix teacher and student samples.
    "distill.on_policy_fraction=0.5",
    "distill.num_teacher_workers=1",
    "distill.num_student_workers=1",
    "distill.draft_eval_prompts=3",
    "eval.limit=10",
    "eval.max_new_tokens=16",
    "logging.progress=false",
]


def _manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def _fresh_checkout(dst: Path) -> Path:
    """The repository's tracked files in `dst`, laid out as `git clone` would (no outputs/, no .venv)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    return dst


def _untracked(checkout: Path) -> set[Path]:
    tracked = set(
        subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    )
    files = {
        p.relative_to(checkout) for p in checkout.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    return files - {Path(t) for t in tracked}


def _make_demo(checkout: Path, timeout: int) -> str:
    """`make demo` in `checkout`, with this test's virtual environment standing in for .venv (the
    stamp is taken as up to date: installing again would repoint the editable install)."""
    venv = Path(sys.prefix)
    cmd = ["make", "demo", f"VENV={venv}", "-o", f"{venv}/.installed-stamp", f"ARGS={shlex.join(TINY)}"]
    proc = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=timeout)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]
    return console


def _assert_distilled(run: Path, m: dict) -> None:
    """The distill stage: a student and a same-init baseline, both trained and both drafting."""
    student = load_model(run / "distill" / "model")
    baseline = load_model(run / "distill" / "baseline" / "model")
    assert student.config.model_type == baseline.config.model_type == "qwen3"
    assert student.config.vocab_size == len(load_tokenizer(run / "distill" / "model"))
    init = load_model(run / "_work" / "distill" / "student_init")
    for trained in (student, baseline):  # both started from the saved init and moved away from it
        assert any(
            not torch.equal(a, b) for a, b in zip(trained.parameters(), init.parameters(), strict=True)
        )
    for prefix in ("", "baseline_"):
        assert 0.0 <= m[f"{prefix}top1_agreement"] <= 1.0
        assert 0.0 <= m[f"{prefix}acceptance_rate"] <= 1.0 and m[f"{prefix}speedup"] > 0
        # Greedy speculative decoding reproduces the teacher's greedy output, whatever the draft.
        assert m[f"{prefix}same_as_teacher"] == 1.0
    assert 0.0 <= m["pass@1"] <= 1.0 and 0.0 <= m["baseline_pass@1"] <= 1.0 and "teacher_pass@1" in m
    assert 0 < m["student_params"] < m["teacher_params"]
    steps = [r for r in read_metrics(run / "distill") if "kd_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert {r["on_policy"] for r in steps} == {0.0, 1.0}  # seed 0 at 0.5: teacher step, then student steps
    assert all(r["teacher_logprob_bytes"] > 0 and 0 <= r["top1_agreement"] <= 1 for r in steps)
    assert [r["step"] for r in read_metrics(run / "distill" / "baseline")] == [1, 2, 3]


@pytest.mark.slow
def test_make_demo_in_a_fresh_checkout_runs_every_stage_then_a_rerun_skips_them_all(tmp_path):
    checkout = _fresh_checkout(tmp_path / "rf")
    log = _make_demo(checkout, timeout=900)
    # The default relative `outputs` is the driver's working directory's, for every stage (before
    # paths were resolved on the driver, Ray Train workers exported into their own directories,
    # issue 14), and nothing is written anywhere else in the checkout.
    run = checkout / "outputs" / "demo"
    assert {p.parts[0] for p in _untracked(checkout)} == {"outputs"}
    m = {stage: _manifest(run, stage) for stage in STAGES}

    # Each stage consumed the previous stage's checkpoint, by fingerprint.
    for upstream, stage in [("data", "pretrain"), ("pretrain", "sft"), ("sft", "rlvr"), ("rlvr", "distill")]:
        assert m[stage]["inputs"][upstream] == m[upstream]["fingerprint"], stage
    assert {"rlvr", "distill"} <= set(m["serve"]["inputs"])  # the RL model, drafted by the student

    assert set(m["data"]["outputs"]) == {"tokenizer", "pretrain", "sft", "rl", "eval"}
    assert str(run / "data" / "tokenizer") in log  # the summary says where outputs are
    for stage in ("pretrain", "sft", "rlvr"):
        metrics = m[stage]["metrics"]
        assert 0.0 <= metrics["pass@1"] <= 1.0 and metrics["eval_prompts"] == 10
        assert AutoConfig.from_pretrained(run / stage / "model").model_type == "qwen3_moe"
    assert m["sft"]["metrics"]["params_total"] > m["sft"]["metrics"]["params_active"]  # top-2 of 4 experts
    assert m["rlvr"]["metrics"]["steps"] == 2 and "pass@1_gain" in m["rlvr"]["metrics"]
    rl_rows = [r for r in read_metrics(run / "rlvr") if "reward_mean" in r]
    assert [r["step"] for r in rl_rows] == [1, 2]
    # rlvr.mode=sync (the default): step s trains on rollouts of version s, never stale.
    assert [(r["rollout_staleness"], r["policy_version"]) for r in rl_rows] == [(0.0, 1), (0.0, 2)]
    _assert_distilled(run, m["distill"]["metrics"])
    serve = m["serve"]["metrics"]
    assert serve["ok"] == serve["requests"] == 10 and 0.0 <= serve["endpoint_pass@1"] <= 1.0
    assert len((run / "serve" / "answers.jsonl").read_text().splitlines()) == 10
    # The deployable Serve config names the models by absolute path: it works from any directory.
    app = yaml.safe_load((run / "serve" / "serve_config.yaml").read_text())["applications"][0]
    assert (app["args"]["model_dir"], app["args"]["draft_dir"]) == (
        str(run / "rlvr" / "model"),
        str(run / "distill" / "model"),
    )
    report = (run / "report" / "report.md").read_text()
    assert all(stage in report for stage in STAGES[:-1])
    assert {p.name for p in (run / "report" / "plots").glob("*.png")} >= {"loss.png", "pass_at_1.png"}

    # wandb ran offline inside each stage directory; metrics.jsonl sits beside it; the run log.
    assert list((run / "data" / "wandb").glob("offline-run-*"))
    assert (run / "pretrain" / "metrics.jsonl").read_text().strip()
    assert "[data] running" in (run / "pipeline.log").read_text()

    # The console shows progress and the summary table, not Ray Train's state-API warnings.
    assert "ReasonForge run " + str(run) in log and "key metric" in log
    assert "Failed to query Ray Train Controller actor state" not in log

    log = _make_demo(checkout, timeout=300)
    assert all(f"[{s}] skipped" in log for s in STAGES), log[-4000:]
    assert not any(f"[{s}] running" in log for s in STAGES)
