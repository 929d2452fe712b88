"""Every path in the config made absolute once, on the driver, when the config is composed.

Ray Train workers, rollout actors, Serve replicas and Tune trials do not run in the driver's
working directory (each gets its own under the Ray session directory), so a relative path read
there names another place: the default `cluster.storage_path=outputs` once made pretrain write its
export under `<ray session>/artifacts/...` and the next stage fail. Resolving here, before anything
starts, means no actor ever resolves a relative path, and manifests record where things really are.
URIs (`s3://`, `gs://`, `file://`, ...) name their own filesystem and stay as they are.
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

# Every config field that names a file or directory on the driver's filesystem, dotted from the
# root. tests/orchestration/test_paths.py fails when a new field looks like a path and is missing.
PATH_FIELDS = (
    "cluster.storage_path",
    "cluster.staging_dir",
    "model.pretrained",
    "distill.student.pretrained",
    "task.gsm8k_files",
    "task.dataset.files",
    "serve.api_key_file",
)


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str, base: str | Path) -> str:
    """`path` against `base` (with `~` expanded and `..` folded); a URI unchanged."""
    if is_uri(path):
        return path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _absolute_value(value: Any, base: str | Path) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return absolute(value, base)
    if isinstance(value, list | tuple):
        return type(value)(absolute(v, base) for v in value)
    raise TypeError(f"a path field holds {type(value).__name__} {value!r}; expected str or list[str]")


def _replace_at(node: Any, keys: list[str], base: str | Path) -> Any:
    head, *rest = keys
    value = getattr(node, head)
    new = _replace_at(value, rest, base) if rest else _absolute_value(value, base)
    return replace(node, **{head: new})


def with_absolute_paths(cfg: Any, base: str | Path | None = None) -> Any:
    """A copy of the root config whose PATH_FIELDS are absolute, relative ones taken from `base`
    (default: this process's working directory, where the user typed the command)."""
    base = os.path.abspath(base if base is not None else os.getcwd())
    for dotted in PATH_FIELDS:
        cfg = _replace_at(cfg, dotted.split("."), base)
    return cfg


def path_like_fields(node: Any, prefix: str = "") -> list[str]:
    """Dotted names of the dataclass fields under `node` whose names say they hold a path."""
    found = []
    for f in fields(node):
        name = f"{prefix}{f.name}"
        value = getattr(node, f.name)
        if is_dataclass(value):
            found += path_like_fields(value, f"{name}.")
        elif any(word in f.name for word in ("path", "dir", "file", "pretrained")):
            found.append(name)
    return found
