"""The manifests keep everyone out who does not belong: Ray token auth, network isolation with only
the endpoint port open, locked-down pods, GCS fault tolerance for the RayService, API keys from a
Secret. Each test fails when its setting is removed from any manifest."""

from __future__ import annotations

import pytest
import yaml
from k8s_manifests import K8S, VARIANTS, cluster_specs, load_docs, pod_templates

RAY_KINDS = ("RayCluster", "RayJob", "RayService")
INTERNAL_PORTS = {6379, 8265, 10001}  # GCS, dashboard + job API, Ray client
ENDPOINT_PORT = 8000


def _clusters(manifests):
    for variant in VARIANTS:
        for kind in RAY_KINDS:
            (spec,) = cluster_specs(manifests[f"{variant}/{kind}"])
            yield f"{variant}/{kind}", spec


def test_every_ray_cluster_requires_ray_token_auth(manifests):
    for key, spec in _clusters(manifests):
        assert (spec.get("authOptions") or {}).get("mode") == "token", key
        major, minor = map(int, spec["rayVersion"].split(".")[:2])
        assert (major, minor) >= (2, 52), f"{key}: Ray token auth needs Ray >= 2.52"


def _rule_ports(rules) -> set[int]:
    return {p["port"] for rule in rules or [] for p in rule.get("ports") or []}


def test_network_policy_denies_ingress_and_opens_only_the_endpoint_port(manifests):
    for key, spec in _clusters(manifests):
        policy = spec.get("networkPolicy") or {}
        assert policy.get("mode") in ("DenyAll", "DenyAllIngress"), key
        opened = set()
        for role in ("head", "worker"):
            rules = (policy.get(role) or {}).get("ingressRules")
            opened |= _rule_ports(rules)
            for rule in rules or []:
                assert rule.get("ports"), f"{key} {role}: a rule without ports admits every port"
        for group in policy.get("workerGroups") or []:
            opened |= _rule_ports(group.get("ingressRules"))
        assert not opened & INTERNAL_PORTS, f"{key} opens internal ports {opened & INTERNAL_PORTS}"
        expected = {ENDPOINT_PORT} if key.endswith("RayService") else set()
        assert opened == expected, f"{key}: ingress ports {opened}, expected {expected}"


def test_every_pod_runs_as_non_root_without_privileges_on_a_read_only_root(manifests):
    for key, doc in manifests.items():
        for group, pod in pod_templates(doc).items():
            sc = pod.get("securityContext") or {}
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, f"{key} {group}"
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{key} {group}"
            writable = {
                v["name"] for v in pod.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v
            }
            for container in pod["containers"]:
                where = f"{key} {group}/{container['name']}"
                csc = container.get("securityContext") or {}
                assert csc.get("allowPrivilegeEscalation") is False, where
                assert csc.get("capabilities") == {"drop": ["ALL"]}, where
                assert csc.get("readOnlyRootFilesystem") is True, where
                mounted = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in writable}
                # Ray's session directory and the compile/model caches must stay writable.
                assert {"/tmp", "/home/ray/.cache"} <= mounted, f"{where}: writable mounts {mounted}"


def test_the_autoscaler_sidecar_is_locked_down_too(manifests):
    for key, spec in _clusters(manifests):
        sc = spec["autoscalerOptions"].get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("runAsNonRoot") is True, key
        assert sc.get("capabilities") == {"drop": ["ALL"]}, key


def test_rayservice_keeps_its_gcs_state_in_the_password_protected_redis(manifests):
    docs = {d["kind"]: d for d in load_docs(K8S / "redis.yaml")}
    service, deployment = docs["Service"], docs["Deployment"]
    assert service["spec"]["type"] == "ClusterIP"
    port = service["spec"]["ports"][0]["port"]
    (redis,) = deployment["spec"]["template"]["spec"]["containers"]
    password_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}["REDIS_PASSWORD"]
    assert "--requirepass" in redis["args"] and "$(REDIS_PASSWORD)" in redis["args"]
    for variant in VARIANTS:
        (spec,) = cluster_specs(manifests[f"{variant}/RayService"])
        ft = spec.get("gcsFaultToleranceOptions") or {}
        assert ft.get("redisAddress") == f"{service['metadata']['name']}:{port}", variant
        assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == password_env, variant


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_listens_off_loopback_with_api_keys_from_a_secret_on_every_pod(manifests, variant):
    doc = manifests[f"{variant}/RayService"]
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["host"] == "0.0.0.0" and not app["args"].get("allow_unauthenticated")
    env_name = app["args"].get("api_key_env", "REASONFORGE_API_KEYS")
    for group, pod in pod_templates(doc).items():
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert "secretKeyRef" in env[env_name]["valueFrom"], f"{variant} {group}"
            assert "value" not in env[env_name], f"{variant} {group}: a key written into the manifest"
