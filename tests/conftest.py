"""Shared fixtures: one real Ray session for the whole test run; the suite's cost budget."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from cost_budget import SESSION, Ledger

from training.tracking import RUN_LEDGER_ENV, record_cost

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
        record_cost("ray_start", SESSION)
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


_LEDGER: Ledger | None = None


def pytest_configure(config):
    global _LEDGER
    # Before any Ray starts: its workers, Tune trials and subprocesses inherit the variable.
    fd, path = tempfile.mkstemp(prefix="reasonforge-run-ledger-", suffix=".jsonl")
    os.close(fd)
    os.environ[RUN_LEDGER_ENV] = path
    _LEDGER = Ledger(Path(path))
    config._ledger_offset = 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    tier = "slow" if item.get_closest_marker("slow") else "default"
    item.config._ledger_offset = _LEDGER.charge_since(item.config._ledger_offset, tier, item.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _LEDGER is not None:
        for line in _LEDGER.report():
            terminalreporter.write_line(line)
        for line in _LEDGER.overruns():
            terminalreporter.write_line(f"COST BUDGET EXCEEDED: {line}", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _LEDGER is not None and _LEDGER.overruns() and session.exitstatus == 0:
        session.exitstatus = 1
