"""Connecting the driver to Ray: a local instance by default, an existing cluster with an address."""

from __future__ import annotations

import logging

import ray

from orchestration.config import ClusterConfig
from training.tracking import record_cost

log = logging.getLogger(__name__)


def connect(cfg: ClusterConfig) -> None:
    """Start or join Ray once per process; `address="auto"` joins the cluster we run inside."""
    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address)
    else:
        # The dashboard (on loopback) serves Ray's state API. Ray Train's PlacementGroupCleaner
        # asks it every second whether the train controller lives: without it each fit logs
        # "Failed to query Ray Train Controller actor state" once a second, and the state client
        # falls back to 127.0.0.1:8265, where another Ray's dashboard answers "no such actor" and
        # the cleaner removes this run's placement group mid-training (seen here).
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=True)
        record_cost("ray_start", "local")
    log.info("ray: %s", ray.cluster_resources())
