"""The manifests in k8s/ and the checks they must pass (used by tests/k8s/).

Schemas: ../shared/k8s-schemas (KubeRay v1.7.0 CRDs, Kubernetes v1.33 kinds), the `-strict`
variants, which reject unknown fields as `kubectl apply` does. The KubeRay operator's own checks
(ray-operator/controllers/ray/utils/validation.go), which no schema holds, are re-stated in
`operator_errors` for the rules these manifests could break.
"""

from __future__ import annotations

import functools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
SCHEMAS = ROOT.parent / "shared" / "k8s-schemas"
VARIANTS = ("cpu", "gpu")
KUBE_VERSION = "1.33.0"

# KubeRay's name limits (validation.go): the operator derives longer names from these.
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
GROUP_RESOURCE_PARAMS = ("num-cpus", "num-gpus", "memory", "resources")


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def schema_path(doc: dict[str, Any]) -> Path:
    """The strict schema for a document, laid out as ../shared/k8s-schemas/README.md says."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if group == "ray.io":
        path = SCHEMAS / f"{doc['kind'].lower()}_{version}-strict.json"
    else:
        suffix = f"-{group.split('.')[0]}" if group else ""
        path = (
            SCHEMAS / f"v{KUBE_VERSION}-standalone-strict" / f"{doc['kind'].lower()}{suffix}-{version}.json"
        )
    if not path.exists():
        raise FileNotFoundError(f"no schema for {doc['apiVersion']} {doc['kind']}: expected {path}")
    return path


@functools.cache
def _validator(path: Path) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(path.read_text()))


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """`<path>: <message>` for every place `doc` breaks its strict schema."""
    errors = _validator(schema_path(doc)).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def cluster_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayCluster spec a Ray manifest creates (RayJob and RayService embed one)."""
    spec = doc.get("spec") or {}
    nested = {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }
    found = nested.get(doc["kind"])
    return [found] if found else []


def _group_errors(where: str, group: dict[str, Any]) -> list[str]:
    errors = []
    if group.get("resources") and set(group.get("rayStartParams") or {}) & set(GROUP_RESOURCE_PARAMS):
        errors.append(f"{where}: rayStartParams sets {GROUP_RESOURCE_PARAMS} and the group sets resources")
    if "labels" in (group.get("rayStartParams") or {}):
        errors.append(f"{where}: rayStartParams must not set labels")
    return errors


def operator_errors(doc: dict[str, Any]) -> list[str]:
    """The KubeRay operator's checks (validation.go) that a JSON schema cannot express."""
    errors, kind, name = [], doc["kind"], doc["metadata"]["name"]
    if kind in MAX_NAME and (len(name) > MAX_NAME[kind] or not DNS_1035.match(name)):
        errors.append(
            f"metadata/name: {name!r} must be a DNS-1035 label of at most {MAX_NAME[kind]} characters"
        )
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
            errors.append(f"spec/submissionMode: {spec['submissionMode']!r} is not one of {SUBMISSION_MODES}")
        if spec.get("ttlSecondsAfterFinished") and not spec.get("shutdownAfterJobFinishes"):
            errors.append("spec/ttlSecondsAfterFinished needs spec/shutdownAfterJobFinishes: true")
        if not (spec.get("rayClusterSpec") or spec.get("clusterSelector")):
            errors.append("spec: a RayJob needs rayClusterSpec or clusterSelector")
        for key in ("activeDeadlineSeconds", "backoffLimit", "preRunningDeadlineSeconds"):
            if key in spec and spec[key] <= 0:
                errors.append(f"spec/{key} must be > 0 when set, got {spec[key]}")
    for cluster in cluster_specs(doc):
        errors += _group_errors("headGroupSpec", cluster.get("headGroupSpec") or {})
        for group in cluster.get("workerGroupSpecs") or []:
            where = f"workerGroupSpecs/{group.get('groupName')}"
            errors += _group_errors(where, group)
            low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
            if not low <= group.get("replicas", low) <= high:
                errors.append(
                    f"{where}: need minReplicas <= replicas <= maxReplicas, got {low}, {group.get('replicas')}, {high}"
                )
    return errors


def pod_templates(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """group name -> pod spec, for every Ray pod a manifest creates."""
    pods = {}
    for cluster in cluster_specs(doc):
        pods["head"] = cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs") or []:
            pods[group["groupName"]] = group["template"]["spec"]
    return pods


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or count quantity ("16", "500m", 8) as a number."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    """The version of pyproject's `ray[...]==X` pin."""
    for dep in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"ray(\[[^]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError("pyproject.toml has no exact `ray==` pin")
