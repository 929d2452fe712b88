"""The Serve application builder: one `Application` for the pipeline stage, `serve run` and `serve deploy`.

    serve run serving.app:build_app model_dir=DIR draft_dir=DIR speculative=draft autoscaling.max_replicas=4

and in a Serve config YAML (`serve deploy`, a RayService's `serveConfigV2`):

    applications:
      - name: reasonforge
        route_prefix: /
        import_path: serving.app:build_app
        args: {model_dir: /models/rlvr/hf, draft_dir: /models/distill/hf, limits: {max_tokens: 512}}

Deployment options in the YAML's `deployments:` section override those derived here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from ray.serve import Application

from serving.auth import KeyRing, check_exposure, read_keys
from serving.config import ServeConfig
from serving.deployment import OpenAIServer

log = logging.getLogger("ray.serve")


def build_app(args: Mapping[str, Any]) -> Application:
    """The app from `serve run`/YAML args: model_dir, optional draft_dir, and any ServeConfig field.

    Nested fields take dotted keys (`autoscaling.max_replicas=4`) or nested mappings; the CLI's
    string values are converted to each field's type, and an unknown key fails naming it.
    """
    args = dict(args)
    model_dir = args.pop("model_dir", None)
    if not model_dir:
        raise ValueError(
            "build_app needs model_dir=<a local Hugging Face model directory with its tokenizer>"
        )
    draft_dir = args.pop("draft_dir", None) or None
    return app_for(serve_config(args), model_dir, draft_dir)


def serve_config(overrides: Mapping[str, Any]) -> ServeConfig:
    """ServeConfig defaults with `overrides` applied (dotted keys, nested mappings, strings all work)."""
    merged = OmegaConf.structured(ServeConfig)
    for key, value in overrides.items():
        OmegaConf.update(merged, key, value, merge=True)
    return OmegaConf.to_object(merged)


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Ray Serve deployment options from the config."""
    return {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "autoscaling_config": cfg.autoscaling.as_serve_config(),
        "ray_actor_options": {"num_cpus": cfg.num_cpus_per_replica, "num_gpus": cfg.num_gpus_per_replica},
    }


def app_for(cfg: ServeConfig, model_dir: str | Path, draft_dir: str | Path | None = None) -> Application:
    """The app serving `model_dir` (drafting with `draft_dir` when given) as `cfg` says.

    Relative directories are taken from this process's working directory (where `serve run` was
    typed) and handed to the replicas absolute: a replica runs in a working directory of its own."""
    for name, path in (("model_dir", model_dir), ("draft_dir", draft_dir)):
        if path is not None and not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"{name}={str(path)!r} is not a Hugging Face model directory (no config.json)"
            )
    model = os.path.abspath(model_dir)
    draft = os.path.abspath(draft_dir) if draft_dir is not None else None
    return OpenAIServer.options(**deployment_options(cfg)).bind(model, draft, cfg, key_ring(cfg))


def key_ring(cfg: ServeConfig) -> KeyRing:
    """The digests of the configured API keys, read here (where the app is built) so that the keys
    themselves never travel to replicas; refuses an open endpoint on a non-loopback host."""
    key_file = os.path.abspath(cfg.api_key_file) if cfg.api_key_file else None
    keys = read_keys(key_file, cfg.api_key_env)
    warning = check_exposure(cfg.host, bool(keys), cfg.allow_unauthenticated)
    if warning:
        log.warning(warning)
    return KeyRing.of(keys)
