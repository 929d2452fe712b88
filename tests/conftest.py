"""Shared fixtures: one real Ray session for the whole test run."""

from __future__ import annotations

import os

import pytest

# Tests never talk to wandb's servers and never download from a hub.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        # With the dashboard, as orchestration.cluster.connect starts it: Ray Train's placement
        # group cleaner needs the state API it serves.
        ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_dir(ray_session, tmp_path_factory):
    """A small data-stage output (tokenizer and every split), made once per test run."""
    from orchestration.cli import compose
    from orchestration.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("data_run")
    overrides = [
        f"cluster.storage_path={root}",
        "run_name=d",
        "stages=[data]",
        "logging.wandb_mode=disabled",
        "task.pretrain_docs=400",
        "task.sft_pairs=100",
        "task.rl_prompts=20",
        "task.eval_prompts=20",
    ]
    run_pipeline(compose(overrides))
    return root / "d" / "data"
