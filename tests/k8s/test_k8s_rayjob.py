"""The RayJobs' entrypoints compose into the config they mean, on the cluster they create.

The entrypoint is split the way bash splits it (KubeRay runs it in a shell), and its overrides go
through the same Hydra composition as `reasonforge` itself: a misspelt key or a value of the wrong
type fails here rather than on the cluster.
"""

from __future__ import annotations

import functools
import math
import shlex
from pathlib import PurePosixPath

import pytest
import yaml
from k8s_manifests import VARIANTS, pod_templates, pyproject, quantity

from orchestration.cli import compose
from orchestration.pipeline import resolve_stages
from orchestration.stages import STAGES


@functools.cache
def _composed(entrypoint: str):
    argv = shlex.split(entrypoint)
    assert argv[0] == "reasonforge" and "reasonforge" in pyproject()["project"]["scripts"]
    return compose(argv[1:])


def _entrypoint_config(manifests, variant):
    return _composed(manifests[f"{variant}/RayJob"]["spec"]["entrypoint"])


def _shared_mounts(doc) -> set[str]:
    return {
        m["mountPath"]
        for pod in pod_templates(doc).values()
        for c in pod["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] == "shared"
    }


def _under(path: str, mounts: set[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(m) for m in mounts)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayjob_runs_the_whole_pipeline_joining_its_cluster(manifests, variant):
    cfg = _entrypoint_config(manifests, variant)
    assert cfg.cluster.address == "auto"
    missing = [s for s in STAGES if s not in cfg.stages]
    assert not missing, f"k8s/{variant}/rayjob.yaml: add {missing} to the entrypoint's stages"
    assert [s.name for s in resolve_stages(cfg.stages)] == list(STAGES)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayjob_writes_runs_to_the_shared_volume(manifests, variant):
    cfg = _entrypoint_config(manifests, variant)
    mounts = _shared_mounts(manifests[f"{variant}/RayJob"])
    # Ray Train workers on other pods read the data and write checkpoints by the driver's paths.
    assert _under(cfg.cluster.storage_path, mounts), cfg.cluster.storage_path
    assert _under(cfg.cluster.staging_dir, mounts), cfg.cluster.staging_dir


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayjob_training_workers_fit_its_worker_groups(manifests, variant):
    """Ray Train asks for num_workers bundles of {CPU: cpus_per_worker, GPU: 1 if use_gpu}; the
    autoscaler can only satisfy that if the groups' largest size holds them."""
    cfg = _entrypoint_config(manifests, variant).cluster
    spec = manifests[f"{variant}/RayJob"]["spec"]["rayClusterSpec"]
    assert cfg.use_gpu == (variant == "gpu")
    capacity = 0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus, gpus = quantity(limits["cpu"]), quantity(limits.get("nvidia.com/gpu", 0))
        per_pod = math.floor(cpus / cfg.cpus_per_worker)
        if cfg.use_gpu:
            per_pod = min(per_pod, int(gpus))
        capacity += per_pod * group["maxReplicas"]
    assert capacity >= cfg.num_workers, (
        f"{variant}: room for {capacity} of {cfg.num_workers} training workers"
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_serves_the_models_the_rayjob_writes(manifests, variant):
    cfg = _entrypoint_config(manifests, variant)
    service = manifests[f"{variant}/RayService"]
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    run_dir = PurePosixPath(cfg.cluster.storage_path) / cfg.run_name
    expected = {"model_dir": "rlvr", "draft_dir": "distill"}
    for arg, stage in expected.items():
        assert stage in cfg.stages
        assert PurePosixPath(app["args"][arg]) == run_dir / stage / "model", (arg, app["args"][arg])
        assert _under(app["args"][arg], _shared_mounts(service)), (
            f"{variant}: {arg} is not on the shared volume"
        )
