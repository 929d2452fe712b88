"""`reasonforge-sweep`: search spaces are checked before anything runs; a real ASHA sweep over
pretrain (Ray Tune -> the stage function -> Ray Train + DeepSpeed; tiny model, data and steps) is
interrupted, resumed without redoing finished trials, and its best config reruns through
`reasonforge` to the same metric."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.errors import ConfigCompositionException
from ray import tune

from orchestration.search_space import normalise_override, parse_space, parse_value, render_value
from orchestration.sweep import compose_sweep, plan_sweep, run_sweep
from training.tracking import read_metrics

# Tiny data, one Ray Train worker per trial, 6 steps with the held-out loss every 2.
BASE = [
    "run_name=s",
    "logging.wandb_mode=disabled",
    "logging.progress=false",
    "task.pretrain_docs=400",
    "task.sft_pairs=100",
    "task.rl_prompts=20",
    "task.eval_prompts=20",
    "cluster.num_cpus=2",
    "cluster.num_workers=1",
    "pretrain.train.max_steps=6",
    "pretrain.train.warmup_steps=1",
    "pretrain.train.checkpoint_every=4",
    "pretrain.train.eval_every=2",
    "pretrain.train.eval_rows=16",
    "pretrain.train.global_batch_size=8",
    "pretrain.train.micro_batch_per_worker=8",
    "pretrain.train.seq_len=64",
    "pretrain.train.peak_flops_per_worker=1e9",  # skip the matmul benchmark
    "eval.limit=4",
    "eval.max_new_tokens=8",
]
# A learning rate that trains and two far too small to: with rungs at steps 2 and 4 and the
# trials run one at a time in this order, ASHA must stop the tiny ones at the first rung.
LRS = [3e-3, 1e-5, 3e-6]
TINY_LRS = {1e-5, 3e-6}
SWEEP = [
    "~sweep.space.model",
    f"sweep.space.pretrain.train.lr='grid({render_value(LRS)})'",
    "sweep.num_samples=1",
    "sweep.grace_period=2",
    "sweep.max_concurrent_trials=1",
]


def test_each_distribution_parses_to_its_tune_domain():
    dims = parse_space(
        {
            "pretrain": {"train": {"lr": "loguniform(1e-4, 3e-3)", "min_lr_ratio": "uniform(0.0, 0.5)"}},
            "model.num_experts": "choice([4, 8])",
            "pretrain.train.warmup_steps": "randint(1, 10)",
            "optimizer.name": "grid([adamw, muonclip])",
        }
    )
    assert [(d.key, d.kind, d.args) for d in dims] == [
        ("pretrain.train.lr", "loguniform", (1e-4, 3e-3)),
        ("pretrain.train.min_lr_ratio", "uniform", (0.0, 0.5)),
        ("model.num_experts", "choice", ([4, 8],)),
        ("pretrain.train.warmup_steps", "randint", (1, 10)),
        ("optimizer.name", "grid", (["adamw", "muonclip"],)),
    ]
    lr, ratio, experts, warmup, name = (d.domain() for d in dims)
    assert (lr.lower, lr.upper) == (1e-4, 3e-3) and "LogUniform" in type(lr.get_sampler()).__name__
    assert (ratio.lower, ratio.upper) == (0.0, 0.5)
    assert experts.categories == [4, 8]
    assert (warmup.lower, warmup.upper) == (1, 10)
    assert name == tune.grid_search(["adamw", "muonclip"])
    assert [d.probes() for d in dims] == [[1e-4, 3e-3], [0.0, 0.5], [4, 8], [1, 9], ["adamw", "muonclip"]]


@pytest.mark.parametrize("value", [0.0012345678901, 8, "adamw", True, None, [1, 2], "1e-3", "true"])
def test_sampled_values_become_overrides_hydra_reads_back_unchanged(value):
    text = render_value(value)
    assert not re.search(r"\s", text) and parse_value(text) == value


def test_a_value_needing_spaces_cannot_become_an_override():
    with pytest.raises(ValueError, match="without spaces"):
        render_value("two words")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("++sweep.space.pretrain.train.lrr='uniform(1, 2)'", "sweep.space: unknown key 'pretrain.train.lrr'"),
        (
            "++sweep.space.pretrain.train.lr='loguniform(1e-4 3e-3)'",
            "sweep.space.pretrain.train.lr: 'loguniform(1e-4 3e-3)'",
        ),
        ("++sweep.space.pretrain.train.lr='logunif(1e-4, 3e-3)'", "unknown distribution 'logunif'"),
        ("++sweep.space.pretrain.train.lr='loguniform(0, 3e-3)'", "a log scale needs low > 0"),
        (
            "++sweep.space.pretrain.train.lr=3e-3",
            "sweep.space.pretrain.train.lr: 0.003 is not a distribution",
        ),
        (
            "++sweep.space.model.num_experts='choice([4, 8'",
            "sweep.space.model.num_experts: 'choice([4, 8' is not a distribution",
        ),
        (
            "++sweep.space.model.num_experts='uniform(2, 8)'",
            "sweep.space.model.num_experts: value 2.0 is not valid",
        ),
        (
            "++sweep.space.optimizer='choice([adamw, nope])'",
            "sweep.space.optimizer: value 'nope' is not valid",
        ),
        # The data stage reads model.pretrained (a pretrained model brings its tokenizer), so a
        # whole model preset cannot vary under a sweep that runs data once.
        ("++sweep.space.model='choice([moe_tiny, moe_small])'", "also read by upstream stage 'data'"),
        ("++sweep.space.task.seed='choice([1, 2])'", "stage 'pretrain' does not read 'task.seed'"),
    ],
)
def test_invalid_search_space_fails_before_anything_runs_naming_the_key(entry, message, tmp_path):
    overrides = [f"cluster.storage_path={tmp_path}", *BASE, "~sweep.space.model", entry]
    with pytest.raises(ValueError, match=re.escape(message)):
        run_sweep(compose_sweep(overrides), overrides)
    assert not any(tmp_path.iterdir())  # no stage, no sweep directory: nothing started


def test_sweep_without_eval_steps_fails_naming_the_stage_key():
    overrides = [*BASE, "pretrain.train.eval_every=0"]
    with pytest.raises(ValueError, match=re.escape("pretrain.train.eval_every is 0")):
        plan_sweep(compose_sweep(overrides), overrides)


def test_upstream_config_cannot_be_swept_from_a_later_stage():
    overrides = [
        *BASE,
        "sweep.stage=sft",
        "sft.train.eval_every=2",
        "sft.train.eval_rows=8",
        "~sweep.space.pretrain",
    ]
    with pytest.raises(ValueError, match="'model.num_experts' is also read by upstream stage 'pretrain'"):
        plan_sweep(compose_sweep(overrides), overrides)


@pytest.mark.parametrize(
    "stage, section", [("sft", "sft.train"), ("rlvr", "rlvr.train"), ("distill", "distill.train")]
)
def test_any_training_stage_is_swept_by_name_through_its_train_config(stage, section):
    overrides = [
        *BASE,
        f"sweep.stage={stage}",
        "sweep.metric=loss",
        "~sweep.space.pretrain",
        "~sweep.space.model",
        f"+sweep.space.{section}.lr='loguniform(1e-5, 1e-3)'",
        f"{section}.eval_every=2",
    ]
    plan = plan_sweep(compose_sweep(overrides), overrides)
    assert (plan.section, [d.key for d in plan.dims]) == (section, [f"{section}.lr"])


def test_misspelt_sweep_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="sweep.metrc"):
        compose_sweep(["sweep.metrc=loss"])


def _wait_for(find, proc: subprocess.Popen, log: Path, timeout: float):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = find()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) early:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # lets the sweep's driver shut its Ray instance down
    proc.wait(timeout=120)
    raise AssertionError(f"timed out:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def sweep_run(ray_session, tmp_path_factory):
    """The sweep command, Ctrl-C'd once its first trial finished, then run again to resume."""
    root = tmp_path_factory.mktemp("sweep")
    overrides = [f"cluster.storage_path={root}", *BASE, *SWEEP]
    sweep_dir = root / "s" / "sweeps" / "sweep"
    log = root / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestration.sweep", *overrides],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # the log is read while it runs
        )
        first = _wait_for(lambda: list(sweep_dir.glob("trials/*/stage.json")), proc, log, timeout=900)[0]
        # Interrupt only once Tune itself has recorded that trial as completed and started the next:
        # stage.json is written just before the trial function returns, and a Ctrl-C in that gap
        # leaves the trial RUNNING in Tune's state (seen once in CI), so the resume re-runs it.
        done = f"Trial run_trial_{first.parent.name} completed after"
        _wait_for(
            lambda: done in log.read_text() and log.read_text().count("started with configuration") >= 2,
            proc,
            log,
            timeout=300,
        )
        proc.send_signal(signal.SIGINT)
        returncode = proc.wait(timeout=300)
    finished = first.parent
    before = {
        "stage_mtime": first.stat().st_mtime_ns,
        "steps": [r["step"] for r in read_metrics(finished / "stage") if "loss" in r],
        "csv": list(csv.DictReader((sweep_dir / "trials.csv").open())),
    }
    resumed = run_sweep(compose_sweep(overrides), overrides)
    return SimpleNamespace(
        root=root,
        sweep_dir=sweep_dir,
        first_returncode=returncode,
        first_log=log.read_text(),
        finished=finished,
        before=before,
        resumed=resumed,
    )


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_finished_trials(sweep_run):
    assert sweep_run.first_returncode != 0 and "rerun the same command to resume" in sweep_run.first_log
    statuses = {row["trial_id"]: row["status"] for row in sweep_run.before["csv"]}
    assert statuses[sweep_run.finished.name] == "completed" and "unfinished" in statuses.values(), statuses
    # The trial that had finished was not run again: same stage.json, each step trained once.
    assert sweep_run.finished.joinpath("stage.json").stat().st_mtime_ns == sweep_run.before["stage_mtime"]
    steps = [r["step"] for r in read_metrics(sweep_run.finished / "stage") if "loss" in r]
    assert steps == sweep_run.before["steps"] == [1, 2, 3, 4, 5, 6]
    assert sweep_run.resumed.unfinished == 0 and len(sweep_run.resumed.trials) == len(LRS)


@pytest.mark.slow
def test_asha_stops_the_tiny_learning_rates_at_the_first_rung(sweep_run):
    rows = list(csv.DictReader((sweep_run.sweep_dir / "trials.csv").open()))
    assert {"trial_id", "status", "step", "eval_loss", "pretrain.train.lr", "checkpoint_path"} <= set(rows[0])
    by_lr = {float(r["pretrain.train.lr"]): r for r in rows}
    assert set(by_lr) == set(LRS)
    # The first trial is alone at every rung, so it always completes; the tiny learning rates ran
    # after the resume and were still compared with it, so ASHA's rungs survived Tuner.restore.
    assert (by_lr[LRS[0]]["status"], by_lr[LRS[0]]["step"]) == ("completed", "6")
    for lr in TINY_LRS:
        assert (by_lr[lr]["status"], by_lr[lr]["step"]) == ("stopped", "2"), by_lr[lr]
    for row in rows:  # every trial ran to the end or stopped at a rung
        assert (row["status"], row["step"]) in {("completed", "6"), ("stopped", "2"), ("stopped", "4")}, row
    # eval_loss reached the stage's own log on the eval steps only, from the real workers.
    completed = [r for r in rows if r["status"] == "completed"]
    for row in completed:
        logged = read_metrics(sweep_run.sweep_dir / "trials" / row["trial_id"] / "stage")
        assert [r["step"] for r in logged if "eval_loss" in r] == [2, 4, 6]
        assert Path(row["checkpoint_path"]).name == "step_0000006" and Path(row["checkpoint_path"]).is_dir()


@pytest.mark.slow
def test_best_overrides_rerun_through_reasonforge_reproduce_the_best_metric(sweep_run):
    best = json.loads((sweep_run.sweep_dir / "best.json").read_text())
    rows = {r["trial_id"]: r for r in sweep_run.resumed.trials}
    assert best["value"] == min(r["eval_loss"] for r in rows.values() if r["eval_loss"] is not None)
    assert Path(best["checkpoint_path"]).is_dir()
    reasonforge = Path(sys.executable).parent / "reasonforge"
    overrides_file = sweep_run.sweep_dir / "best_overrides.txt"
    proc = subprocess.run(
        ["bash", "-c", f'"{reasonforge}" $(cat "{overrides_file}")'],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[data] skipped" in proc.stdout + proc.stderr  # the sweep's data, reused
    rerun = read_metrics(sweep_run.root / "s" / "pretrain")
    at_best_step = [r["eval_loss"] for r in rerun if r.get("step") == best["step"] and "eval_loss" in r]
    assert at_best_step == [pytest.approx(best["value"], rel=1e-5)]


@pytest.mark.parametrize(
    "space, message",
    [
        ({}, "sweep.space is empty"),
        (
            {"pretrain": {"train": {"lr": "uniform(1, 2)"}}, "pretrain.train.lr": "uniform(1, 2)"},
            "given twice",
        ),
        ({"model.num_experts": "choice(4)"}, "expected one non-empty list of values"),
        ({"pretrain.train.warmup_steps": "randint(1.5, 4)"}, "expected two integers"),
        ({"pretrain.train.lr": "uniform(3, 1)"}, "low must be below high"),
        ({"pretrain.train.lr": "uniform(1, [)"}, "cannot read the arguments"),
    ],
)
def test_malformed_spaces_fail_naming_the_key(space, message):
    with pytest.raises(ValueError, match=message):
        parse_space(space)


def test_overrides_are_written_without_spaces_and_sweeps_are_refused():
    assert render_value({"a": [1, None, True]}) == "{a:[1,null,true]}"
    assert normalise_override("task.tasks=[arithmetic, countdown]") == "task.tasks=[arithmetic,countdown]"
    assert normalise_override("~sweep.space.model") == "~sweep.space.model"
    with pytest.raises(ValueError, match="is a Hydra sweep"):
        normalise_override("pretrain.train.lr=1e-3,1e-4")
    with pytest.raises(ValueError, match=r"override 'pretrain.train.lr=\['"):
        normalise_override("pretrain.train.lr=[")
    with pytest.raises(ValueError, match="without spaces or quotes"):
        render_value("it's a b")
