"""`reasonforge-sweep` (= `python -m orchestration.sweep`): Ray Tune over one training stage.

    reasonforge-sweep run_name=lr pretrain.train.eval_every=20 pretrain.train.eval_rows=256 [sweep.* overrides]

- The `sweep.*` overrides set the search (SweepConfig); every other override is the base config
  of every trial. The search space is checked against the composed config before anything runs.
- The stage's upstream stages run once through the pipeline (or are reused when finished).
- A trial is a Ray Tune function that composes the pipeline config (base overrides plus its
  point) and runs the stage function itself, the code `reasonforge` runs. Its `fit` builds the
  stage's Ray Train TorchTrainer, which inside a trial forwards each `ray.train.report` to Tune
  (training/loop.py `_tune_callbacks`): every `<stage>.eval_every` steps, so ASHA stops bad trials
  early. This is Ray 2.60's supported pairing of Tune with Ray Train V2; `Tuner(trainer)` is
  deprecated and rejects V2 trainers.
- An interrupted sweep resumes with `Tuner.restore` when the same command runs again: finished
  trials are kept; an unfinished trial restarts its stage, and Ray Train resumes it from its
  latest checkpoint.

Sweep directory `<storage_path>/<run_name>/sweeps/<sweep.name>/`:
  spec.json            what the sweep searches (a resumed sweep must match it)
  trials/<trial_id>/   stage/ (metrics.jsonl, model/), _work/ (Ray Train checkpoints) and
                       stage.json once the stage function returned
  trials.csv           one row per trial: status, last step, metric, point, checkpoint
  best.json            the best trial: point, metric, checkpoint path, exported model
  best_overrides.txt   `reasonforge $(cat best_overrides.txt)` reruns it through the pipeline
  sweep.log, .hydra/   the run log and composed config; the rest is Ray Tune's own state
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from orchestration.atomic import atomic_write_json
from orchestration.cli import CONF_DIR, compose, to_root
from orchestration.cluster import connect
from orchestration.config import RootConfig, SweepConfig
from orchestration.pipeline import resolve_inputs, run_pipeline
from orchestration.search_space import Dimension, normalise_override, override, parse_space
from orchestration.stages import STAGES, StageContext, StageSpec
from orchestration.storage import open_storage
from orchestration.sweep_results import SweepOutcome, write_results
from orchestration.sweep_scheduling import SCHEDULERS, FreeStoppedTrials, free_after_sweep
from training.config import StageTrainConfig, TrainConfig
from training.tracking import Tracker

log = logging.getLogger("reasonforge.sweep")

# Tune state and trial outputs; the rest of the sweep directory (the run log) survives a restart.
KEEP_ON_RESTART = ("sweep.log", ".hydra")


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: what every trial runs and what it varies."""

    stage: str
    section: str  # the stage's TrainConfig key: "pretrain", "rlvr.train", ...
    dims: tuple[Dimension, ...]
    base_overrides: tuple[str, ...]  # the command line minus sweep.*, whitespace-free
    max_steps: int  # the most steps any trial runs (ASHA's horizon)

    def spec(self, sweep: SweepConfig) -> dict:
        """What a resumed sweep must share with the interrupted one."""
        keep = ("metric", "mode", "num_samples", "scheduler", "grace_period", "reduction_factor", "seed")
        return {
            "stage": self.stage,
            "space": {d.key: [d.kind, list(d.args)] for d in self.dims},
            "base_overrides": list(self.base_overrides),
            **{k: getattr(sweep, k) for k in keep},
        }


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def train_section(cfg: RootConfig, spec: StageSpec) -> str:
    """The key of the stage's TrainConfig (`<stage>.train`: every training stage has that shape)."""
    for key in spec.reads:
        if isinstance(_get(cfg, key), StageTrainConfig):
            return f"{key}.train"
    raise ValueError(
        f"sweep.stage={spec.name!r} has no TrainConfig among the config it reads {spec.reads}; "
        "only training stages can be swept"
    )


def _upstream(spec: StageSpec) -> list[str]:
    """Every stage `spec` depends on, directly or through another, in pipeline order."""
    seen, todo = set(), list(spec.upstream)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(STAGES[name].upstream)
    return [name for name in STAGES if name in seen]


def _check_key(cfg: RootConfig, key: str, spec: StageSpec) -> None:
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = [f.name for f in fields(node)] if is_dataclass(node) else list(node or {})
        if part not in names:
            where = ".".join(parts[:i]) or "the root config"
            raise ValueError(f"sweep.space: unknown key {key!r}: {where} has no {part!r} (it has {names})")
        node = getattr(node, part) if is_dataclass(node) else node[part]
    if not spec.reads_key(key):
        raise ValueError(
            f"sweep.space: stage {spec.name!r} does not read {key!r}; it reads {list(spec.reads)}"
        )
    for name in _upstream(spec):
        if STAGES[name].reads_key(key):
            raise ValueError(
                f"sweep.space: {key!r} is also read by upstream stage {name!r}, which the sweep runs once "
                f"with the base config; sweep {name!r} instead"
            )


def _compose_point(base: list[str], key: str, value: Any) -> RootConfig:
    try:
        return compose([*base, override(key, value)])
    except (HydraException, OmegaConfBaseException, ValueError, TypeError) as err:
        why = f"{err} ({err.__cause__})" if err.__cause__ else str(err)
        raise ValueError(f"sweep.space.{key}: value {value!r} is not valid there: {why}") from err


def plan_sweep(cfg: RootConfig, overrides: list[str]) -> SweepPlan:
    """Check the sweep against the composed config; raises before any trial or Ray start."""
    sweep = cfg.sweep
    if sweep.stage not in STAGES:
        raise ValueError(f"sweep.stage={sweep.stage!r} is not a stage; known: {list(STAGES)}")
    if sweep.scheduler not in SCHEDULERS:
        raise ValueError(f"sweep.scheduler={sweep.scheduler!r}; expected one of {list(SCHEDULERS)}")
    spec = STAGES[sweep.stage]
    section = train_section(cfg, spec)
    train: TrainConfig = _get(cfg, section)
    if train.eval_every < 1:
        raise ValueError(
            f"{section}.eval_every is 0, so trials would report nothing to rank them by; set it "
            f"(e.g. {section}.eval_every=20)"
        )
    if sweep.metric == "eval_loss" and train.eval_rows < 1:
        raise ValueError(f"sweep.metric=eval_loss needs held-out rows: set {section}.eval_rows (e.g. 256)")
    base = [normalise_override(o) for o in overrides if not _is_sweep_override(o)]
    dims = parse_space(sweep.space)
    max_steps = train.max_steps
    for dim in dims:
        _check_key(cfg, dim.key, spec)
        for value in dim.probes():
            max_steps = max(max_steps, _get(_compose_point(base, dim.key, value), section).max_steps)
    if sweep.scheduler == "asha" and sweep.grace_period > max_steps:
        raise ValueError(
            f"sweep.grace_period={sweep.grace_period} exceeds {section}.max_steps={max_steps}: ASHA "
            "would never compare trials"
        )
    return SweepPlan(sweep.stage, section, tuple(dims), tuple(base), max_steps)


def _is_sweep_override(text: str) -> bool:
    key = text.lstrip("+~").split("=", 1)[0]
    return key.split(".")[0] in ("sweep", "hydra")


def point_overrides(point: dict[str, Any]) -> list[str]:
    return [override(key, value) for key, value in point.items()]


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (handed to the Tune function with `tune.with_parameters`)."""

    stage: str
    base_overrides: tuple[str, ...]
    run_dir: str  # absolute: Tune moves each trial into its own working directory
    trials_dir: str
    inputs: dict[str, Path]  # the stage's inputs, resolved once on the driver
    sources: dict[str, str]
    upstream_metrics: dict[str, dict[str, Any]]
    # The driver's working directory: relative paths on the command line mean paths from there,
    # not from the trial's own working directory.
    base_dir: str


def run_trial(config: dict, setup: TrialSetup) -> None:
    """One trial: the stage function on the base config plus this trial's point."""
    overrides = [*setup.base_overrides, *point_overrides(config["point"])]
    cfg = compose(overrides, base_dir=setup.base_dir)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(setup.trials_dir) / trial_id
    out_dir = trial_dir / "stage"
    tracker = Tracker(
        out_dir, f"{cfg.run_name}/{setup.stage}/{trial_id}", cfg.logging, {"overrides": overrides}
    )
    try:
        ctx = StageContext(
            name=setup.stage,
            run_dir=Path(setup.run_dir),
            out_dir=out_dir,
            work_dir=trial_dir / "_work",
            tracker=tracker,
            inputs=setup.inputs,
            sources=setup.sources,
            upstream_metrics=setup.upstream_metrics,
        )
        spec = STAGES[setup.stage]
        result = spec.run(spec.view(cfg), ctx)
    finally:
        tracker.close()
    outputs = {name: str(out_dir / rel) for name, rel in result.outputs.items()}
    atomic_write_json(trial_dir / "stage.json", {"outputs": outputs, "metrics": dict(result.metrics)})


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _upstream_context(cfg: RootConfig, plan: SweepPlan, run_dir: Path) -> dict[str, dict]:
    """The trial's inputs, sources and upstream metrics, after running its upstream stages once."""
    names = _upstream(STAGES[plan.stage])
    done = run_pipeline(replace(cfg, stages=names)) if names else {}
    inputs, sources = resolve_inputs(STAGES[plan.stage], done.get, run_dir, cfg)
    metrics = {s: done[s].metrics for s in sources.values() if s in done}
    return {"inputs": inputs, "sources": sources, "upstream_metrics": metrics}


def _prepare_dir(sweep_dir: Path, spec: dict, resume: bool) -> bool:
    """Whether to restore the Tune state in `sweep_dir`; otherwise clear it for a fresh sweep."""
    spec_file = sweep_dir / "spec.json"
    if resume and spec_file.exists() and tune.Tuner.can_restore(sweep_dir):
        old = json.loads(spec_file.read_text())
        if old != spec:
            changed = sorted(k for k in spec if old.get(k) != spec[k])
            raise ValueError(
                f"sweep {sweep_dir} was started with different {changed}; resuming it would mix "
                "searches. Use another sweep.name, or sweep.resume=false to start it over"
            )
        return True
    if sweep_dir.exists():
        for entry in sweep_dir.iterdir():
            if entry.name not in KEEP_ON_RESTART:
                log.info("sweep: removing %s (starting the sweep over)", entry)
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec_file, spec)
    return False


def run_sweep(cfg: RootConfig, overrides: list[str]) -> SweepOutcome:
    """Plan, run (or resume) and summarise the sweep; `overrides` is the sweep's command line."""
    sweep = cfg.sweep
    plan = plan_sweep(cfg, overrides)
    run_dir = open_storage(cfg.cluster.storage_path, cfg.cluster.staging_dir).run_dir(cfg.run_name)
    sweep_dir = run_dir / "sweeps" / sweep.name
    connect(cfg.cluster)
    upstream = _upstream_context(cfg, plan, run_dir)
    restore = _prepare_dir(sweep_dir, plan.spec(sweep), sweep.resume)
    setup = TrialSetup(
        plan.stage,
        plan.base_overrides,
        str(run_dir),
        str(sweep_dir / "trials"),
        **upstream,
        base_dir=os.getcwd(),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": sweep.trial_cpus})
    if restore:
        log.info("sweep: resuming %s (finished trials are kept)", sweep_dir)
        tuner = tune.Tuner.restore(str(sweep_dir), trainable=trainable, resume_unfinished=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"point": {d.key: d.domain() for d in plan.dims}},
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                scheduler=SCHEDULERS[sweep.scheduler](sweep, plan.max_steps),
                # Tune ignores TuneConfig.max_concurrent_trials when given a BasicVariantGenerator.
                search_alg=BasicVariantGenerator(
                    max_concurrent=sweep.max_concurrent_trials, random_state=sweep.seed
                ),
                num_samples=sweep.num_samples,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name, storage_path=str(sweep_dir.parent), callbacks=[FreeStoppedTrials()]
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        free_after_sweep()
    return write_results(grid, sweep_dir, sweep, plan.base_overrides, _stages_to(plan.stage))


def _stages_to(stage: str) -> list[str]:
    """The pipeline up to and including `stage`: what reruns the best trial."""
    return [*_upstream(STAGES[stage]), stage]


def compose_sweep(overrides: list[str] | None = None) -> RootConfig:
    """The config `reasonforge-sweep <overrides>` runs with (for tests and notebooks)."""
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return to_root(hydra.compose(config_name="sweep_config", overrides=overrides or []))


@hydra.main(config_path=CONF_DIR, config_name="sweep_config", version_base=None)
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    outcome = run_sweep(to_root(cfg), list(HydraConfig.get().overrides.task))
    if outcome.unfinished:
        sys.exit(
            f"sweep interrupted with {outcome.unfinished} trial(s) unfinished; rerun the same command to resume"
        )


if __name__ == "__main__":
    main()
