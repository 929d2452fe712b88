"""Connecting the driver to Ray: a local instance by default, an existing cluster with an address."""

from __future__ import annotations

import logging

import ray

from orchestration.config import ClusterConfig

log = logging.getLogger(__name__)


def connect(cfg: ClusterConfig) -> None:
    """Start or join Ray once per process; `address="auto"` joins the cluster we run inside."""
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False)
    log.info("ray: %s", ray.cluster_resources())
