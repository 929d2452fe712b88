"""Every manifest in k8s/ passes the strict KubeRay/Kubernetes schemas and the operator's own checks,
a broken copy fails them, and the manifests agree with each other (cluster spec, volume, images)."""

from __future__ import annotations

import copy

import pytest
import yaml
from k8s_manifests import (
    K8S,
    VARIANTS,
    load_docs,
    manifest_files,
    operator_errors,
    pod_templates,
    pyproject,
    ray_pin,
    schema_errors,
)

FILES = manifest_files()


def test_k8s_holds_every_manifest_the_readme_names():
    names = {str(p.relative_to(K8S)) for p in FILES}
    assert names == {"storage.yaml", "redis.yaml"} | {
        f"{v}/{k}.yaml" for v in VARIANTS for k in ("raycluster", "rayjob", "rayservice")
    }
    readme = (K8S / "README.md").read_text()
    assert all(name in readme for name in names), "k8s/README.md must name every manifest"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_passes_strict_schema_and_operator_checks(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        errors = schema_errors(doc) + operator_errors(doc)
        assert not errors, f"{path} {doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)


def _set(doc: dict, path: str, value) -> None:
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value


def _delete(doc: dict, path: str) -> None:
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    del node[last]


HEAD = "spec/rayClusterSpec/headGroupSpec"
GPU_GROUP = "spec/rayClusterSpec/workerGroupSpecs/1"

# (what breaks, how, the error path (or text) that must be reported)
BREAKAGES = [
    (
        "misspelt RayJob field",
        lambda d: _set(d, "spec/shutdownAfterJobFinish", True),
        "spec: Additional properties",
    ),
    (
        "misspelt worker group field",
        lambda d: _set(d, f"{GPU_GROUP}/maxReplica", 4),
        "spec/rayClusterSpec/workerGroupSpecs/1: Additional properties",
    ),
    (
        "misspelt container field in a pod template",
        lambda d: _set(d, f"{HEAD}/template/spec/containers/0/volumeMount", []),
        f"{HEAD}/template/spec/containers/0: Additional properties",
    ),
    (
        "number given as a string",
        lambda d: _set(d, "spec/ttlSecondsAfterFinished", "3600"),
        "spec/ttlSecondsAfterFinished",
    ),
    (
        "rayStartParams value not a string",
        lambda d: _set(d, f"{HEAD}/rayStartParams/num-cpus", 0),
        f"{HEAD}/rayStartParams/num-cpus",
    ),
    (
        "container without a name",
        lambda d: _delete(d, f"{HEAD}/template/spec/containers/0/name"),
        "'name' is a required",
    ),
    (
        "minReplicas above maxReplicas",
        lambda d: _set(d, f"{GPU_GROUP}/minReplicas", 3),
        "minReplicas <= replicas",
    ),
    (
        "name too long for KubeRay",
        lambda d: _set(d, "metadata/name", "reasonforge-" + "x" * 40),
        "metadata/name",
    ),
    (
        "TTL without shutdown",
        lambda d: _set(d, "spec/shutdownAfterJobFinishes", False),
        "ttlSecondsAfterFinished needs",
    ),
]


@pytest.mark.parametrize("what, breaks, reported", BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_broken_copy_of_the_rayjob_fails_naming_the_place(what, breaks, reported, tmp_path):
    good = load_docs(K8S / "gpu" / "rayjob.yaml")[0]
    broken = copy.deepcopy(good)
    breaks(broken)
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(broken))
    errors = [e for doc in load_docs(path) for e in schema_errors(doc) + operator_errors(doc)]
    assert any(reported in e for e in errors), f"{what}: expected an error about {reported!r}, got {errors}"
    assert not schema_errors(good) + operator_errors(good)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayjob_creates_the_same_cluster_as_the_raycluster(manifests, variant):
    # One cluster shape per variant: `ray job submit` to the RayCluster and the RayJob run alike.
    assert (
        manifests[f"{variant}/RayJob"]["spec"]["rayClusterSpec"] == manifests[f"{variant}/RayCluster"]["spec"]
    )


def test_every_ray_pod_mounts_the_shared_volume_at_one_path(manifests):
    pvc = manifests["storage"]
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    mounts = set()
    for key, doc in manifests.items():
        for group, pod in pod_templates(doc).items():
            volumes = {
                v["name"]
                for v in pod.get("volumes", [])
                if (v.get("persistentVolumeClaim") or {}).get("claimName") == pvc["metadata"]["name"]
            }
            assert volumes, f"{key} {group}: no volume of claim {pvc['metadata']['name']!r}"
            for container in pod["containers"]:
                paths = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in volumes]
                assert paths, f"{key} {group}/{container['name']}: does not mount the shared volume"
                mounts.update(paths)
    assert mounts == {"/mnt/reasonforge"}


def test_images_and_ray_versions_match_the_project(manifests):
    version, pin = pyproject()["project"]["version"], ray_pin()
    for key, doc in manifests.items():
        variant = key.split("/")[0]
        for spec in [
            s for s in (doc["spec"].get(k) for k in ("rayClusterSpec", "rayClusterConfig")) if s
        ] or ([doc["spec"]] if doc["kind"] == "RayCluster" else []):
            assert spec["rayVersion"] == pin, (
                f"{key}: rayVersion {spec['rayVersion']} != pyproject's ray=={pin}"
            )
        for group, pod in pod_templates(doc).items():
            for container in pod["containers"]:
                assert container["image"] == f"registry.example.com/reasonforge:{version}-{variant}", (
                    f"{key} {group}: image {container['image']}"
                )


def _gpus(pod: dict) -> int:
    return max(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_has_gpu_workers_only_if_it_is_the_gpu_one(manifests, variant):
    for kind in ("RayCluster", "RayJob", "RayService"):
        doc = manifests[f"{variant}/{kind}"]
        pods = pod_templates(doc)
        gpu_groups = [g for g, pod in pods.items() if _gpus(pod)]
        assert bool(gpu_groups) == (variant == "gpu"), f"{variant}/{kind}: GPU groups {gpu_groups}"
        assert _gpus(pods["head"]) == 0, f"{variant}/{kind}: the head should not hold a GPU"
        for group in gpu_groups:
            tolerations = pods[group].get("tolerations", [])
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), f"{variant}/{kind} {group}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ray_clusters_autoscale_with_a_cpu_free_head(manifests, variant):
    for kind in ("RayCluster", "RayJob", "RayService"):
        doc = manifests[f"{variant}/{kind}"]
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
        assert spec["enableInTreeAutoscaling"] is True, f"{variant}/{kind}"
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f"{variant}/{kind}"
        assert all(g["maxReplicas"] > g["minReplicas"] for g in spec["workerGroupSpecs"]), f"{variant}/{kind}"
