"""The pipeline driver: runs the selected stages in order on Ray, skipping what is already done.

Run directory layout (`<cluster.storage_path>/<run_name>/`):
  pipeline.log          the run log (Hydra's), with any stage's traceback
  <stage>/manifest.json what the stage ran with and produced; present only once it finished
  <stage>/...           the stage's outputs, published atomically with the manifest
  _work/<stage>/        state that must survive a crash (checkpoints to resume from)
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestration.artifacts import MANIFEST, Manifest, hash_json, hash_path, layout_of, versions
from orchestration.atomic import atomic_dir, atomic_write_json
from orchestration.cluster import connect
from orchestration.config import RootConfig
from orchestration.model_sources import localize
from orchestration.report import key_metric
from orchestration.stages import STAGES, StageContext, StageSpec
from orchestration.storage import open_storage
from training.tracking import Tracker

log = logging.getLogger("reasonforge.pipeline")


def resolve_stages(names: list[str]) -> list[StageSpec]:
    """Selected stages in pipeline order; unknown names fail with the list of known ones."""
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise ValueError(f"stages: unknown stage(s) {unknown}; known stages, in order: {list(STAGES)}")
    return [spec for name, spec in STAGES.items() if name in names]


def config_slice(cfg: RootConfig, keys: tuple[str, ...]) -> dict:
    """The values of `keys` (sections, or dotted fields such as "model.pretrained")."""

    def value(dotted: str):
        node = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
        return asdict(node) if is_dataclass(node) else node

    return {k: value(k) for k in keys}


def run_pipeline(cfg: RootConfig) -> dict[str, Manifest]:
    """Run `cfg.stages`; returns each stage's manifest (fresh or reused)."""
    selected = resolve_stages(cfg.stages)
    storage = open_storage(cfg.cluster.storage_path, cfg.cluster.staging_dir)
    run_dir = storage.run_dir(cfg.run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage.pull(cfg.run_name)
    cfg = with_local_model(cfg, run_dir.parent / "_models")
    connect(cfg.cluster)
    done: dict[str, Manifest] = {}
    ran: list[str] = []
    started = time.time()

    def finished(stage: str) -> Manifest | None:
        if stage not in done and (found := _finished(run_dir, stage)) is not None:
            done[stage] = found
        return done.get(stage)

    specs = with_source_stages(selected, finished, cfg)
    for spec in specs:
        inputs, sources = resolve_inputs(spec, finished, run_dir, cfg)
        feeding = _feeding(spec, sources, finished)
        slice_ = config_slice(cfg, spec.reads)
        config_hash = hash_json(slice_)
        fingerprints = {s: done[s].fingerprint for s in feeding}
        stage_dir = run_dir / spec.name
        old = Manifest.load(stage_dir)
        reason = _rerun_reason(old, config_hash, fingerprints, stage_dir) if cfg.resume else "resume=false"
        if reason is None:
            log.info(
                "[%s] skipped: finished earlier with the same config and inputs (%s)", spec.name, stage_dir
            )
            done[spec.name] = old
            storage.push(cfg.run_name, spec.name)  # in case an earlier upload was cut short
            continue
        log.info("[%s] running: %s", spec.name, reason)
        context = {
            "inputs": inputs,
            "sources": sources,
            "upstream_metrics": {s: done[s].metrics for s in feeding},
        }
        try:
            done[spec.name] = _run_stage(spec, cfg, run_dir, slice_, config_hash, fingerprints, context)
        finally:  # after a failure too: the run log, with the traceback, goes up
            storage.push(cfg.run_name, spec.name)
        ran.append(spec.name)
    _print_summary(run_dir, specs, done, ran, time.time() - started)
    return done


def _finished(run_dir: Path, stage: str) -> Manifest | None:
    manifest = Manifest.load(run_dir / stage)
    return manifest if manifest is not None and manifest.outputs_intact(run_dir / stage) else None


def with_local_model(cfg: RootConfig, cache_dir: Path) -> RootConfig:
    """`cfg` with `model.pretrained` a local model directory (a hub id downloaded once), checked
    before anything starts."""
    local = localize(cfg.model.pretrained, cache_dir)
    if local is not None and not (Path(local) / "config.json").is_file():
        raise FileNotFoundError(
            f"model.pretrained={local} is not a Hugging Face model directory (no config.json). A "
            "preset's directory is made once by its prepare step: `make smollm2` for model=smollm2_135m"
        )
    return replace(cfg, model=replace(cfg.model, pretrained=local))


def config_value(cfg: Any, dotted: str | None) -> Any:
    """The config field `dotted` ("model.pretrained"), or None when `dotted` is None."""
    if dotted is None:
        return None
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def with_source_stages(
    specs: list[StageSpec], finished: Callable[[str], Manifest | None], cfg
) -> list[StageSpec]:
    """`specs` plus any stage without inputs of its own (data) that a selected stage needs and
    that has not finished in this run: `stages=[rlvr,distill,serve] model.pretrained=<dir>` makes
    its prompts first. Stages that need a model are never added behind the user's back."""
    names = {spec.name for spec in specs}
    for spec in specs:
        for name, want in spec.inputs.items():
            met = any(s in names or finished(s) is not None for s in want.stages)
            if not want.required or met or config_value(cfg, want.config):
                continue
            first = STAGES[want.stages[0]]
            if not first.inputs:
                log.info("adding stage %r: %r needs its %r and it has not run", first.name, spec.name, name)
                names.add(first.name)
    return [spec for name, spec in STAGES.items() if name in names]


def resolve_inputs(
    spec: StageSpec, finished: Callable[[str], Manifest | None], run_dir: Path, cfg: Any = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """The absolute path of each declared input (the first of its sources that finished, else its
    config field's path) and where each came from; a required input with neither fails, saying
    what to run or set."""
    inputs, sources = {}, {}
    for name, want in spec.inputs.items():
        for source in want.sources:
            stage, output = source.split(".")
            manifest = finished(stage)
            if manifest is None:
                continue
            if output not in manifest.outputs and not want.required:
                break  # absent: a stage finished by older code; a later source would be another stage's
            if output not in manifest.outputs:
                raise RuntimeError(
                    f"stage {spec.name!r} takes {source!r}, but stage {stage!r} has outputs "
                    f"{sorted(manifest.outputs)}"
                )
            inputs[name] = Path(manifest.absolute_outputs(run_dir / stage)[output])
            sources[name] = stage
            break
        else:
            if (path := config_value(cfg, want.config) if cfg is not None else None) is not None:
                inputs[name], sources[name] = Path(path), f"config:{want.config}"
            elif want.required:
                options = " or ".join(repr(s) for s in want.stages)
                or_set = f", or set {want.config}" if want.config else ""
                raise RuntimeError(
                    f"stage {spec.name!r} needs its input {name!r} from stage {options}, which has no "
                    f"finished output in {run_dir}; add {want.stages[0]!r} to `stages`{or_set}"
                )
    return inputs, sources


def _feeding(spec: StageSpec, sources: dict[str, str], finished) -> list[str]:
    """The stages whose outputs (or, for the report, manifests) this stage reads, in pipeline order."""
    if spec.reads_all_manifests:
        earlier = list(STAGES)[: list(STAGES).index(spec.name)]
        return [s for s in earlier if finished(s) is not None]
    return [s for s in STAGES if s in sources.values()]


def _rerun_reason(old: Manifest | None, config_hash: str, inputs: dict, stage_dir: Path) -> str | None:
    if old is None:
        return "no finished manifest"
    if old.config_hash != config_hash:
        return f"config changed ({old.config_hash} -> {config_hash})"
    if old.inputs != inputs:
        return "inputs changed (an upstream stage re-ran)"
    if not old.outputs_intact(stage_dir):
        return "outputs missing or modified"
    return None


def _run_stage(spec, cfg, run_dir, slice_, config_hash, inputs, context: dict) -> Manifest:
    stage_dir = run_dir / spec.name
    for stale in run_dir.glob(f".{spec.name}.*.partial"):  # left by a killed attempt
        shutil.rmtree(stale, ignore_errors=True)
    work_dir = _work_dir_for(run_dir / "_work" / spec.name, config_hash, inputs)
    started = time.time()
    try:
        with atomic_dir(stage_dir) as out_dir:
            tracker = Tracker(out_dir, f"{cfg.run_name}/{spec.name}", cfg.logging, config=slice_)
            try:
                ctx = StageContext(spec.name, run_dir, out_dir, work_dir, tracker, **context)
                result = spec.run(spec.view(cfg), ctx)
            finally:
                tracker.close()
            missing = [n for n, rel in result.outputs.items() if not (out_dir / rel).exists()]
            if missing:
                raise RuntimeError(f"stage {spec.name!r} declared outputs it did not write: {missing}")
            manifest = Manifest(
                stage=spec.name,
                config_hash=config_hash,
                config=slice_,
                inputs=inputs,
                sources={n: _source_label(spec, n, s) for n, s in context["sources"].items()},
                outputs=dict(result.outputs),
                output_hashes={n: hash_path(out_dir / rel) for n, rel in result.outputs.items()},
                output_layout={n: layout_of(out_dir / rel) for n, rel in result.outputs.items()},
                metrics=dict(result.metrics),
                wall_time_s=round(time.time() - started, 3),
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                versions=versions(),
            )
            atomic_write_json(out_dir / MANIFEST, manifest.to_json())
    except BaseException:
        log.exception(
            "[%s] failed after %.1fs; earlier stages' outputs are untouched", spec.name, time.time() - started
        )
        raise
    log.info("[%s] finished in %.1fs -> %s", spec.name, manifest.wall_time_s, stage_dir)
    return manifest


def _source_label(spec: StageSpec, name: str, source: str) -> str:
    """Where input `name` came from, for the manifest: "sft.model" or "config:model.pretrained"."""
    if source.startswith("config:"):
        return source
    return next(s for s in spec.inputs[name].sources if s.split(".")[0] == source)


def _work_dir_for(work_dir: Path, config_hash: str, inputs: dict) -> Path:
    """The stage's crash-surviving state, kept only while it belongs to the same config and inputs:
    resuming a checkpoint of another config would silently train the wrong thing."""
    key = hash_json([config_hash, inputs])
    stamp = work_dir / "identity"
    if work_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
        log.info("discarding %s: it belongs to another config or inputs", work_dir)
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return work_dir


def _print_summary(run_dir: Path, specs, done: dict[str, Manifest], ran: list[str], wall: float) -> None:
    lines = [
        f"\nReasonForge run {run_dir} ({wall:.1f}s)",
        f"{'stage':<10}{'status':<9}{'wall s':>9}  {'key metric':<24}outputs",
    ]
    for spec in specs:
        m = done[spec.name]
        status = "ran" if spec.name in ran else "skipped"
        metric = key_metric(m.metrics)
        lines.append(f"{spec.name:<10}{status:<9}{m.wall_time_s:>9.1f}  {metric:<24}{run_dir / spec.name}")
        for name, rel in m.outputs.items():
            lines.append(f"{'':<54}{name}: {run_dir / spec.name / rel}")
    log.info("\n".join(lines))


if __name__ == "__main__":
    from orchestration.cli import main

    main()
