"""The config tree: defaults compose, typos and wrong types fail at start naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from orchestration.cli import compose
from orchestration.config import RootConfig
from serving.best_of_n import load_callable


def test_default_config_composes_to_typed_objects():
    cfg = compose()
    assert isinstance(cfg, RootConfig)
    assert cfg.stages[0] == "data"
    assert cfg.cluster.address is None and cfg.logging.wandb_mode == "offline"


def test_override_reaches_typed_field():
    cfg = compose(["pretrain.train.max_steps=7", "run_name=x"])
    assert cfg.pretrain.train.max_steps == 7 and cfg.run_name == "x"


@pytest.mark.parametrize(
    "override, named",
    [("pretrain.lrr=1", "lrr"), ("task.seeed=3", "seeed"), ("pretrain.train.max_steps=abc", "max_steps")],
)
def test_bad_override_fails_naming_the_key(override, named):
    with pytest.raises(ConfigCompositionException) as err:
        compose([override])
    assert named in str(err.value) + str(err.value.__cause__)


def test_cli_exits_nonzero_on_misspelt_key():
    # The real console entry point, as a user would type it.
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.pipeline", "pretrain.lrr=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "lrr" in proc.stderr and "pretrain" in proc.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("sweep.mode=up", "sweep.mode must be min or max"),
        ("sweep.num_samples=0", "sweep.num_samples, sweep.grace_period and sweep.max_concurrent_trials"),
        ("sweep.reduction_factor=1", "sweep.reduction_factor must be >= 2"),
    ],
)
def test_bad_sweep_settings_fail_naming_the_key(override, message):
    with pytest.raises(Exception, match=message):
        compose([override])


def test_the_smollm2_experiment_composes_with_what_its_comments_promise():
    """conf/experiment/smollm2_arithmetic.yaml: a misspelt key there would fail only at run time,
    after `make smollm2`; here it fails in a second."""
    cfg = compose(["+experiment=smollm2_arithmetic"])
    assert cfg.model.pretrained.endswith("models/smollm2-135m-instruct")
    assert cfg.task.tasks == ["reasoning_gym"] and cfg.task.answer_format == "last_number"
    assert cfg.task.reasoning_gym.dataset == "chain_sum" and cfg.eval.limit == cfg.task.eval_prompts == 500
    assert cfg.rlvr.lora.enabled and cfg.stages == ["data", "rlvr", "distill", "serve", "report"]
    # 7 of SmolLM2's 30 layers: at most a quarter of its non-embedding parameters.
    assert len(cfg.distill.student_layers) / 30 <= 0.25
    # Best-of-N's extractor is imported only when the endpoint starts, hours into the run.
    extract = load_callable(cfg.serve.answer_extractor, "serve.answer_extractor")
    assert extract("so it is 12, then 42.") == "42"
