"""Where run directories live: a local path, a `file://` URI, or a remote store mirrored stage by stage.

Stages, Ray Train workers and the HF export all read and write plain local paths. So a
`cluster.storage_path` that is a path or a `file://` URI is used as is; on a multi-node cluster it
must be a mount that every pod sees at the same path (a ReadWriteMany volume, see k8s/README.md).

Any other pyarrow URI (s3://, gs://, hdfs://, abfs://) is mirrored: the run directories live in a
local staging copy under `cluster.staging_dir`, each stage is uploaded when it finishes (manifest
last, so a stage that reads finished remotely is complete) and, at start, every finished remote
stage whose manifest differs from the staged one is downloaded, so a run resumes on a fresh
machine. The bucket is the source of truth; the staging copy is a cache. Checkpoints of a stage in
progress (`_work/`) stay in the staging copy only.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from omegaconf import OmegaConf

from orchestration.artifacts import MANIFEST
from orchestration.atomic import atomic_dir

log = logging.getLogger("reasonforge.storage")

# URI schemes that name this machine's filesystem: used in place, never mirrored.
LOCAL_SCHEMES = frozenset({"file", "local"})
# Run-level entries Hydra writes beside the stages (hydra.job.name=pipeline, output_subdir=.hydra).
RUN_LOGS = ("pipeline.log", ".hydra")


def _scheme(storage_path: str) -> str | None:
    return urlsplit(storage_path).scheme if "://" in storage_path else None


def local_root(storage_path: str, staging_dir: str) -> Path:
    """The directory on this machine that holds run directories for `storage_path`."""
    scheme = _scheme(storage_path)
    if scheme is None:
        return Path(storage_path)
    if scheme in LOCAL_SCHEMES:
        try:
            return Path(pafs.FileSystem.from_uri(storage_path)[1])
        except ValueError as err:
            raise ValueError(f"cluster.storage_path={storage_path!r}: {err}") from err
    parts = urlsplit(storage_path)
    return Path(staging_dir) / scheme / parts.netloc / parts.path.strip("/")


@dataclass
class RemoteMirror:
    """A copy of the run directories in a pyarrow filesystem, kept one finished stage at a time."""

    fs: pafs.FileSystem
    root: str  # path inside `fs` (for s3: bucket/prefix)
    uri: str  # as the user wrote it, for messages
    # Names this driver's logs remotely (logs/<stamp>/), so a rerun never overwrites an earlier log.
    stamp: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ"))

    @classmethod
    def from_uri(cls, uri: str) -> RemoteMirror:
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
        except ValueError as err:  # pyarrow's ArrowInvalid: unknown scheme, bad host, ...
            raise ValueError(
                f"cluster.storage_path={uri!r}: pyarrow cannot open it ({err}); expected a local path "
                "or a pyarrow filesystem URI such as file:///mnt/shared, s3://bucket/prefix, gs://bucket/prefix"
            ) from err
        return cls(fs, root.rstrip("/"), uri)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _read(self, path: str) -> bytes | None:
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _upload(self, src: Path, dst: str) -> None:
        self.fs.create_dir(dst.rpartition("/")[0], recursive=True)
        with open(src, "rb") as fin, self.fs.open_output_stream(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 24)

    def finished_stages(self, run_name: str) -> list[str]:
        """Stage directories of `run_name` in the remote copy that hold a manifest."""
        selector = pafs.FileSelector(self._path(run_name), allow_not_found=True)
        dirs = [i.base_name for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.Directory]
        return sorted(
            d
            for d in dirs
            if not d.startswith((".", "_"))
            and self.fs.get_file_info(self._path(run_name, d, MANIFEST)).type == pafs.FileType.File
        )

    def pull(self, run_dir: Path, run_name: str) -> list[str]:
        """Download each finished remote stage whose manifest differs from the local one."""
        pulled = []
        for stage in self.finished_stages(run_name):
            local = run_dir / stage / MANIFEST
            if local.exists() and local.read_bytes() == self._read(self._path(run_name, stage, MANIFEST)):
                continue
            with atomic_dir(run_dir / stage) as tmp:  # a crash mid-download keeps the old local copy
                pafs.copy_files(
                    self._path(run_name, stage),
                    str(tmp),
                    source_filesystem=self.fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
            log.info("[%s] downloaded from %s/%s", stage, self.uri, run_name)
            pulled.append(stage)
        return pulled

    def push(self, run_dir: Path, run_name: str, stage: str) -> bool:
        """Upload `stage` if it finished and the remote manifest differs: files first, manifest last."""
        manifest = run_dir / stage / MANIFEST
        if not manifest.exists():
            return False
        remote = self._path(run_name, stage)
        old = self._read(f"{remote}/{MANIFEST}")
        if old == manifest.read_bytes():
            return False
        if old is not None:
            # The old manifest goes before anything else: an upload cut short then leaves a
            # stage without one, which reads as unfinished, never as old metadata over new files.
            self.fs.delete_file(f"{remote}/{MANIFEST}")
        self.fs.delete_dir_contents(remote, missing_dir_ok=True)
        for src in sorted(p for p in (run_dir / stage).rglob("*") if p.is_file() and p != manifest):
            self._upload(src, f"{remote}/{src.relative_to(run_dir / stage).as_posix()}")
        self._upload(manifest, f"{remote}/{MANIFEST}")
        log.info("[%s] uploaded to %s/%s/%s", stage, self.uri, run_name, stage)
        return True

    def push_logs(self, run_dir: Path, run_name: str) -> None:
        """Copy the run log and Hydra's config record to logs/<stamp>/ (overwritten by this driver only)."""
        for name in RUN_LOGS:
            src = run_dir / name
            files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
            for f in (f for f in files if f.exists()):
                self._upload(f, self._path(run_name, "logs", self.stamp, f.relative_to(run_dir).as_posix()))


@dataclass
class Storage:
    """The run directories' local root, plus the remote mirror when storage_path is a remote URI."""

    local_root: Path
    mirror: RemoteMirror | None = None

    def run_dir(self, run_name: str) -> Path:
        return self.local_root / run_name

    def pull(self, run_name: str) -> list[str]:
        """Bring finished stages from the remote copy; returns the stages downloaded."""
        return self.mirror.pull(self.run_dir(run_name), run_name) if self.mirror else []

    def push(self, run_name: str, stage: str) -> bool:
        """Upload `stage` if it changed since the last upload, and the run's logs; returns whether it did."""
        if self.mirror is None:
            return False
        pushed = self.mirror.push(self.run_dir(run_name), run_name, stage)
        self.mirror.push_logs(self.run_dir(run_name), run_name)
        return pushed


def open_storage(storage_path: str, staging_dir: str) -> Storage:
    """Parse `cluster.storage_path`; a remote URI gets a mirror and a staging copy under `staging_dir`."""
    root = local_root(storage_path, staging_dir)
    scheme = _scheme(storage_path)
    if scheme is None or scheme in LOCAL_SCHEMES:
        return Storage(root)
    return Storage(root, RemoteMirror.from_uri(storage_path))


def register_resolver() -> None:
    """`${local_root:<storage_path>,<staging_dir>}` for conf/config.yaml: the run log goes beside the stages."""
    if not OmegaConf.has_resolver("local_root"):
        OmegaConf.register_new_resolver("local_root", lambda path, staging: str(local_root(path, staging)))
