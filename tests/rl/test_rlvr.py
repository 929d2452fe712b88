"""RLVR on real Ray + Ray Train + DeepSpeed: weight sync, async staleness, a rollout actor killed."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from rl.config import RlvrConfig
from rl.grpo.learner import grpo_recipe
from rl.grpo.sampler import start_grpo_manager
from rl.rollout.rewards import RewardScorer, Scored, instantiate_rewards
from training.config import ExpertParallelConfig, ModelConfig, OptimizerConfig, TrainConfig
from training.loop import TrainJob, fit
from training.models import build_model
from training.tokenizer import load_tokenizer
from training.tracking import LoggingConfig, Tracker, read_metrics


@pytest.fixture(scope="module")
def policy_dir(data_dir, tmp_path_factory) -> Path:
    """A tiny MoE policy saved the way the SFT stage saves it (weights + tokenizer)."""
    out = tmp_path_factory.mktemp("policy")
    tok = load_tokenizer(data_dir / "tokenizer")
    torch.manual_seed(0)
    build_model(ModelConfig(), tok).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _rlvr(**kw) -> RlvrConfig:
    train = TrainConfig(
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        micro_batch_per_worker=4,
        seq_len=96,
        checkpoint_every=10,
        max_failures=0,
    )
    # A random policy never answers right (advantages 0); the balance loss makes every update real.
    base = dict(
        prompts_per_step=4,
        group_size=2,
        max_new_tokens=12,
        num_rollout_workers=2,
        aux_loss_coef=0.01,
        train=train,
    )
    return RlvrConfig(**{**base, **kw})


def _run(cfg: RlvrConfig, data_dir: Path, policy_dir: Path, tmp_path: Path, keep_manager=False):
    manager = start_grpo_manager(cfg, str(policy_dir), str(data_dir / "rl"))
    job = TrainJob(
        name="rl",
        recipe=grpo_recipe(cfg, manager),
        model=ModelConfig(pretrained=str(policy_dir)),
        train=replace(cfg.train, global_batch_size=cfg.prompts_per_step * cfg.group_size),
        optimizer=OptimizerConfig(),
        expert_parallel=ExpertParallelConfig(),
        tokenizer_dir=str(data_dir / "tokenizer"),
        data_dir=str(data_dir / "rl"),
        export_dir=str(tmp_path / "export"),
        work_dir=str(tmp_path / "work"),
    )
    tracker = Tracker(tmp_path / "track", "rl", LoggingConfig(wandb_mode="disabled", progress=False))
    try:
        last = fit(job, tracker)
    finally:
        tracker.close()
        if not keep_manager:
            ray.get(manager.shutdown.remote())
            ray.kill(manager)
    return last, read_metrics(tmp_path / "track"), manager


@pytest.mark.slow
def test_async_rollouts_stay_within_the_staleness_bound_and_workers_end_on_the_learners_weights(
    data_dir, policy_dir, tmp_path
):
    # One run for three behaviours (sync mode, one version per step with no staleness, is the
    # pipeline test's rlvr stage). Rollout worker 0 is killed mid-call at step 1: Ray restarts it,
    # the manager re-sends the current weights and retries its share, and the loop goes on.
    cfg = _rlvr(
        mode="async",
        max_staleness=1,
        kill_rollout_worker_at_step=1,
        train=replace(_rlvr().train, max_steps=4),
    )
    last, rows, manager = _run(cfg, data_dir, policy_dir, tmp_path, keep_manager=True)
    try:
        assert last["step"] == 4 and [r["step"] for r in rows] == [1, 2, 3, 4]
        assert rows[-1]["rollout_worker_restarts"] == 1.0
        # Step 0 has nothing to overlap with; every later batch was generated during the previous
        # step's update, with the weights from before it (the retried share included: its worker
        # got the weights again, never newer than the step's).
        assert [r["rollout_staleness"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
        assert [r["policy_version"] for r in rows] == [1, 2, 3, 4]
        for key in ("reward_mean", "pass_rate", "clip_fraction", "entropy", "sync_time_s", "sync_bytes"):
            assert key in rows[-1], key
        assert rows[-1]["sync_bytes"] > 0
        # The learner's final weights (its export) are what every worker now samples from.
        learner = AutoModelForCausalLM.from_pretrained(tmp_path / "export").state_dict()
        start = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
        for version, state in ray.get(manager.worker_states.remote()):
            assert version == 4
            assert state.keys() >= learner.keys()
            for name, tensor in learner.items():
                torch.testing.assert_close(state[name], tensor, rtol=0, atol=0, msg=name)
        assert any(not torch.equal(learner[k], start[k]) for k in learner), "training changed nothing"
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)


def test_manager_refuses_rollouts_staler_than_allowed(data_dir, policy_dir):
    manager = start_grpo_manager(
        _rlvr(mode="async", num_rollout_workers=1), str(policy_dir), str(data_dir / "rl")
    )
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="would use policy version 0"):
            ray.get(manager.step_batch.remote(2, 0, 1))
    finally:
        ray.get(manager.shutdown.remote())
        ray.kill(manager)


def _hangs(c: Scored) -> float:
    time.sleep(3)  # far past the 0.5 s timeout (short so the test run's exit is not held up)
    return 1.0


def test_a_hanging_reward_scores_zero_within_the_timeout():
    item = Scored(
        text="<answer>4</answer>", num_tokens=3, max_tokens=8, task="arithmetic", answer="4", meta={}
    )
    scorer = RewardScorer([lambda c: 1.0, _hangs], timeout_s=0.5)
    start = time.perf_counter()
    assert scorer.score([item, item]) == [1.0, 1.0]
    assert time.perf_counter() - start < 5
    assert scorer.timeouts == 2


def test_a_raising_reward_scores_zero_and_is_counted():
    item = Scored(text="x", num_tokens=1, max_tokens=8, task="arithmetic", answer="4", meta={})
    scorer = RewardScorer([lambda c: 1 / 0], timeout_s=1.0)
    assert scorer.score([item]) == [0.0]
    assert scorer.errors == 1


def test_rewards_are_built_from_hydra_targets_and_score_by_the_verifier():
    fns = instantiate_rewards(
        [
            {"_target_": "rl.rollout.rewards.Correctness", "weight": 1.0},
            {"_target_": "rl.rollout.rewards.Format", "weight": 0.1},
            {"_target_": "rl.rollout.rewards.LengthPenalty", "weight": 0.5},
        ]
    )
    scorer = RewardScorer(fns, timeout_s=5.0)
    right = Scored("<think>2+2=4</think> <answer>4</answer>", 10, 20, "arithmetic", "4", {})
    wrong = Scored("<think>2+2=5</think> <answer>5</answer>", 10, 20, "arithmetic", "4", {})
    garbage = Scored("no tags at all", 4, 20, "arithmetic", "4", {})
    # right: 1 + 0.1 - 0.5 * 10/20; wrong: format only (no length penalty on wrong answers)
    assert scorer.score([right, wrong, garbage]) == pytest.approx([0.85, 0.1, 0.0])


def test_reward_specs_without_a_target_fail_naming_the_entry():
    with pytest.raises(ValueError, match=r"rlvr.rewards\[0\]"):
        instantiate_rewards([{"weight": 1.0}])


def test_a_worker_never_goes_back_to_older_weights(policy_dir):
    # A recovery re-sending the weights it knew of can race a push of newer ones (async rollouts):
    # the worker keeps the newest, whichever call lands last.
    from rl.rollout.worker import RolloutWorker

    worker = RolloutWorker(str(policy_dir), [{"_target_": "rl.rollout.rewards.Correctness"}], 1.0)
    newer = {k: v + 1.0 for k, v in worker.engine.model.state_dict().items()}
    older = {k: v - 1.0 for k, v in newer.items()}
    assert worker.load_weights(newer, 2) == 2
    assert worker.load_weights(older, 1) == 2
    for name, tensor in worker.engine.model.state_dict().items():
        torch.testing.assert_close(tensor, newer[name], rtol=0, atol=0, msg=name)


def test_an_actor_group_regenerates_a_killed_workers_share_with_the_latest_weights(data_dir, policy_dir):
    from rl.rollout.actor_group import ActorGroup
    from rl.rollout.manager import load_prompt_rows
    from rl.rollout.worker import RolloutParams, rollout_worker_class
    from training.models import load_model

    correctness = [{"_target_": "rl.rollout.rewards.Correctness"}]
    worker_cls = rollout_worker_class(num_cpus=0.5, num_gpus=0, max_restarts=2)
    group = ActorGroup([worker_cls.remote(str(policy_dir), correctness, 1.0) for _ in range(2)], recover=True)
    try:
        newer = {k: v + 0.01 for k, v in load_model(policy_dir).state_dict().items()}
        group.push([ray.put(newer)], 1)
        rows = load_prompt_rows(str(data_dir / "rl"))[:4]
        # Worker 0 exits mid-call: Ray restarts it with the starting weights; the group installs
        # version 1 again before it regenerates the share.
        trajectories, batches = group.sample(rows, RolloutParams(2, 4, 1.0), lambda i: 7 + i, die=True)
        assert group.restarts == 1 and [b.version for b in batches] == [1, 1]
        assert [t.prompt_index for t in trajectories] == [0, 0, 1, 1, 2, 2, 3, 3]  # prompt order kept
        assert [version for version, _ in group.call("state_dict")] == [1, 1]
    finally:
        group.kill()
