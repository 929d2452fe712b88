"""`reasonforge` (= `python -m orchestration.pipeline`): Hydra parses, the driver runs."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from orchestration.config import RootConfig, register_configs
from orchestration.paths import with_absolute_paths
from orchestration.storage import register_resolver

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

register_configs()
register_resolver()


def to_root(cfg: DictConfig, base_dir: str | Path | None = None) -> RootConfig:
    """Typed config object, every path in it absolute (relative ones taken from `base_dir`, default
    the working directory); dataclass `__post_init__` checks run here, before anything starts."""
    return with_absolute_paths(OmegaConf.to_object(cfg), base_dir)


def compose(overrides: list[str] | None = None, base_dir: str | Path | None = None) -> RootConfig:
    """The config `reasonforge <overrides>` would run with (for tests, notebooks and the sweep),
    relative paths taken from `base_dir` (default: the working directory).

    Inside a running `hydra.main` of this project (e.g. `reasonforge-sweep`'s) Hydra is already
    initialised on the same config directory, and initialising it again raises."""
    if GlobalHydra.instance().is_initialized():
        return to_root(hydra.compose(config_name="config", overrides=overrides or []), base_dir)
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return to_root(hydra.compose(config_name="config", overrides=overrides or []), base_dir)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    from orchestration.pipeline import run_pipeline

    run_pipeline(to_root(cfg))


if __name__ == "__main__":
    main()
