"""Stage manifests: what a finished stage was run with and what it produced.

A stage directory counts as finished only if its `manifest.json` exists; the driver writes the
manifest into the stage's temp directory and publishes the whole directory with one rename, so a
crash can never leave outputs that look done.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]


def hash_path(path: Path) -> str:
    """Content hash of a file or a directory tree (names and bytes)."""
    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def layout_of(path: Path) -> list[list]:
    """File names and sizes under `path`: a cheap check that outputs are still as published."""
    base = path if path.is_dir() else path.parent
    return [[str(f.relative_to(base)), f.stat().st_size] for f in _files(path)]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "ray", "deepspeed", "transformers", "datasets", "reasonforge"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    try:
        out["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        out["git"] = "unknown"
    return out


@dataclass
class Manifest:
    stage: str
    config_hash: str
    config: dict[str, Any]
    # stage -> fingerprint of each upstream stage this one consumed.
    inputs: dict[str, str]
    # output name -> path relative to the stage directory.
    outputs: dict[str, str]
    # output name -> content hash, and -> [[file, size], ...] for the cheap integrity check.
    output_hashes: dict[str, str]
    output_layout: dict[str, list]
    metrics: dict[str, Any]
    wall_time_s: float
    finished_at: str
    versions: dict[str, str] = field(default_factory=dict)
    # input name -> where it came from: "<stage>.<output>", or "config:<field>" (a user's path).
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Identity of this result: what it was made from and what it contains."""
        return hash_json([self.config_hash, self.inputs, self.output_hashes])

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fingerprint": self.fingerprint}

    @classmethod
    def load(cls, stage_dir: Path) -> Manifest | None:
        path = stage_dir / MANIFEST
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data.pop("fingerprint", None)
        return cls(**data)

    def outputs_intact(self, stage_dir: Path) -> bool:
        for name, rel in self.outputs.items():
            path = stage_dir / rel
            if not path.exists() or layout_of(path) != self.output_layout.get(name):
                return False
        return True

    def absolute_outputs(self, stage_dir: Path) -> dict[str, str]:
        return {name: str((stage_dir / rel).resolve()) for name, rel in self.outputs.items()}
