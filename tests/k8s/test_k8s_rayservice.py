"""The RayServices' serveConfigV2 is a valid Serve config whose import_path builds the real app.

The build goes through the steps Serve's controller takes for a config it is given (import the
builder, call it with `args`, build the deployments), on tiny models saved to a temp dir in place
of the pipeline's outputs; everything else in `args` is used as written.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from k8s_manifests import VARIANTS
from omegaconf.errors import ConfigAttributeError
from ray._common.utils import import_attr
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve._private.build_app import build_app
from ray.serve.schema import ServeDeploySchema
from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig


def _serve_config(manifests, variant) -> dict:
    return yaml.safe_load(manifests[f"{variant}/RayService"]["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny Qwen3-MoE target and a dense Qwen3 draft, saved as Hugging Face directories."""
    root = tmp_path_factory.mktemp("models")
    shape = dict(vocab_size=64, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    configs = {
        "target": Qwen3MoeConfig(
            **shape, num_hidden_layers=1, moe_intermediate_size=16, num_experts=2, num_experts_per_tok=1
        ),
        "draft": Qwen3Config(**shape, num_hidden_layers=1, intermediate_size=32),
    }
    for name, config in configs.items():
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(root / name)
    return {"model_dir": str(root / "target"), "draft_dir": str(root / "draft")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_v2_passes_serves_own_schema(manifests, variant):
    # The CRD holds serveConfigV2 as a plain string: only Serve's schema checks what is inside.
    config = ServeDeploySchema.model_validate(_serve_config(manifests, variant))
    assert [app.import_path for app in config.applications] == ["serving.app:build_app"]
    assert config.http_options.host == "0.0.0.0" and config.http_options.port == 8000


@pytest.mark.parametrize("variant", VARIANTS)
def test_rayservice_builds_the_real_app_with_its_args(manifests, variant, tiny_models, monkeypatch):
    monkeypatch.setenv("REASONFORGE_API_KEYS", "sk-rf-from-the-secret-0123")  # what the Secret sets
    (app,) = _serve_config(manifests, variant)["applications"]
    assert set(tiny_models) <= set(app["args"]), "the RayService must name both model_dir and draft_dir"
    args = {**app["args"], **tiny_models}
    application = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), args)
    built = build_app(application, name=app["name"], route_prefix=app["route_prefix"])
    (deployment,) = built.deployments
    assert built.ingress_deployment_name == deployment.name
    scaling = deployment._deployment_config.autoscaling_config
    wanted = app["args"]["autoscaling"]
    assert (scaling.min_replicas, scaling.max_replicas) == (wanted["min_replicas"], wanted["max_replicas"])
    assert scaling.max_replicas > scaling.min_replicas  # Serve autoscaling is on
    assert scaling.target_ongoing_requests == wanted["target_ongoing_requests"]
    gpus = deployment.ray_actor_options.get("num_gpus", 0)
    assert gpus == (1 if variant == "gpu" else 0)
    # The replica is constructed with the model directories from args, as the cluster will.
    assert deployment.init_args[:2] == (tiny_models["model_dir"], tiny_models["draft_dir"])
    # Replicas get the key's digest, never the key.
    keys = deployment.init_args[3]
    assert len(keys.digests) == 1 and b"sk-rf-from-the-secret" not in b"".join(keys.digests)


def test_rayservice_without_its_api_key_secret_refuses_to_build(manifests, tiny_models, monkeypatch):
    monkeypatch.delenv("REASONFORGE_API_KEYS", raising=False)
    (app,) = _serve_config(manifests, "cpu")["applications"]
    args = {**app["args"], **tiny_models}
    with pytest.raises(ValueError, match="no API key is configured"):
        call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), args)


def test_rayservice_args_with_a_misspelt_key_fail_to_build(manifests, tiny_models):
    (app,) = _serve_config(manifests, "cpu")["applications"]
    args = {**app["args"], **tiny_models, "max_batch_sise": 8}
    with pytest.raises(ConfigAttributeError, match="max_batch_sise"):
        call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), args)
