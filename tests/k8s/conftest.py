"""Fixtures for the k8s tests: the manifests, loaded once; helpers live in k8s_manifests.py."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_manifests import K8S, SCHEMAS, VARIANTS, load_docs


@pytest.fixture(scope="session", autouse=True)
def _schemas_present():
    if not (SCHEMAS / "rayjob_v1-strict.json").exists():
        pytest.fail(f"the KubeRay schemas are missing: expected {SCHEMAS} (shared/ beside the repository)")


@pytest.fixture(scope="session")
def manifests() -> dict[str, dict[str, Any]]:
    """`<variant>/<kind>` (e.g. "gpu/RayJob") and "storage" -> the document."""
    found = {"storage": load_docs(K8S / "storage.yaml")[0]}
    for variant in VARIANTS:
        for path in sorted((K8S / variant).glob("*.yaml")):
            for doc in load_docs(path):
                found[f"{variant}/{doc['kind']}"] = doc
    return found
