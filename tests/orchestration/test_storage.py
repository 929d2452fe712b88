"""cluster.storage_path as a path, a file:// URI or a mirrored remote store, on real filesystems.

The "remote" is a pyarrow LocalFileSystem behind a file:// URI of another temp dir: the same
pyarrow calls an s3:// or gs:// mirror makes, against a store we can reach here.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import pyarrow.fs as pafs
import pytest

from orchestration import pipeline, storage
from orchestration.cli import CONF_DIR, compose
from orchestration.storage import RemoteMirror, local_root, open_storage

TINY_DATA = [
    "stages=[data]",
    "task.pretrain_docs=64",
    "task.sft_pairs=32",
    "task.rl_prompts=16",
    "task.eval_prompts=16",
    "logging.wandb_mode=disabled",
    "logging.progress=false",
    "run_name=r",
]


def _stage(run_dir: Path, name: str, files: dict[str, str], manifest: dict | None) -> None:
    for rel, text in files.items():
        (run_dir / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name / rel).write_text(text)
    if manifest is not None:
        (run_dir / name / "manifest.json").write_text(json.dumps(manifest))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def remote(tmp_path) -> RemoteMirror:
    (tmp_path / "bucket").mkdir()
    return RemoteMirror.from_uri(f"file://{tmp_path / 'bucket'}")


def test_plain_path_and_file_uri_are_used_in_place(tmp_path):
    for path in (str(tmp_path), f"file://{tmp_path}"):
        found = open_storage(path, str(tmp_path / "staging"))
        assert found.local_root == tmp_path and found.mirror is None
    with pytest.raises(ValueError, match="cluster.storage_path='file://host/x'"):
        open_storage("file://host/x", str(tmp_path))


def test_remote_uri_is_staged_under_staging_dir():
    assert local_root("s3://bucket/runs/a", "/stage") == Path("/stage/s3/bucket/runs/a")
    assert local_root("gs://bucket", "stage") == Path("stage/gs/bucket")


def test_unknown_scheme_fails_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"cluster.storage_path='nosuch://x'.*s3://bucket/prefix"):
        open_storage("nosuch://x", str(tmp_path))


@pytest.mark.parametrize(
    "storage_path, log_dir",
    [("outputs", "outputs/r"), ("file:///srv/runs", "/srv/runs/r"), ("s3://b/runs", "/stage/s3/b/runs/r")],
)
def test_hydra_writes_the_run_log_beside_the_local_run_directory(storage_path, log_dir):
    # Before the local_root resolver, a URI here made Hydra create ./file:/... or ./s3:/... dirs.
    overrides = [f"cluster.storage_path={storage_path}", "cluster.staging_dir=/stage", "run_name=r"]
    with hydra.initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = hydra.compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.run.dir == log_dir


def test_finished_stage_goes_up_and_comes_back_on_a_fresh_machine(tmp_path, remote):
    run_dir = tmp_path / "staging1" / "r"
    _stage(run_dir, "data", {"a.txt": "A", "sub/b.txt": "B"}, manifest={"v": 1})
    _stage(run_dir, "pretrain", {"half.txt": "crashed before its manifest"}, manifest=None)
    (run_dir / "pipeline.log").write_text("log line\n")

    assert remote.push(run_dir, "r", "data") and not remote.push(run_dir, "r", "pretrain")
    remote.push_logs(run_dir, "r")
    assert remote.finished_stages("r") == ["data"]
    assert (tmp_path / "bucket" / "r" / "logs" / remote.stamp / "pipeline.log").read_text() == "log line\n"

    fresh = tmp_path / "staging2" / "r"
    assert remote.pull(fresh, "r") == ["data"]
    assert _tree(fresh / "data") == _tree(run_dir / "data")
    assert not (fresh / "pretrain").exists()
    # Unchanged on both sides: nothing moves.
    assert remote.pull(fresh, "r") == [] and not remote.push(run_dir, "r", "data")


def test_changed_stage_replaces_the_remote_copy_without_stale_files(tmp_path, remote):
    run_dir = tmp_path / "staging" / "r"
    _stage(run_dir, "data", {"old.txt": "old"}, manifest={"v": 1})
    remote.push(run_dir, "r", "data")
    (run_dir / "data" / "old.txt").unlink()
    _stage(run_dir, "data", {"new.txt": "new"}, manifest={"v": 2})
    assert remote.push(run_dir, "r", "data")
    assert _tree(tmp_path / "bucket" / "r" / "data") == {"manifest.json": b'{"v": 2}', "new.txt": b"new"}


def test_remote_copy_wins_over_a_differing_local_one(tmp_path, remote):
    run_dir = tmp_path / "staging" / "r"
    _stage(run_dir, "data", {"x.txt": "remote"}, manifest={"v": "remote"})
    remote.push(run_dir, "r", "data")
    _stage(run_dir, "data", {"x.txt": "local"}, manifest={"v": "local"})
    assert remote.pull(run_dir, "r") == ["data"]
    assert (run_dir / "data" / "x.txt").read_text() == "remote"


class DropsConnection(pafs.LocalFileSystem):
    """A real local filesystem whose Nth upload fails, as a dropped connection to a bucket would."""

    def __init__(self, fail_at: int):
        super().__init__()
        self.fail_at, self.opened = fail_at, 0

    def open_output_stream(self, path, *args, **kwargs):
        self.opened += 1
        if self.opened == self.fail_at:
            raise OSError(f"connection dropped while uploading {path}")
        return super().open_output_stream(path, *args, **kwargs)


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_interrupted_upload_never_leaves_a_stage_that_reads_finished(tmp_path, remote, fail_at):
    run_dir = tmp_path / "staging" / "r"
    _stage(run_dir, "data", {"a.txt": "v1"}, manifest={"v": 1})
    remote.push(run_dir, "r", "data")
    _stage(run_dir, "data", {"a.txt": "v2", "b.txt": "v2"}, manifest={"v": 2})
    flaky = RemoteMirror(DropsConnection(fail_at), remote.root, remote.uri)
    with pytest.raises(OSError, match="connection dropped"):
        flaky.push(run_dir, "r", "data")  # three uploads: a.txt, b.txt, then the manifest
    # Neither the old manifest over new files nor the new one over missing files: no manifest.
    assert remote.finished_stages("r") == []
    assert remote.pull(tmp_path / "fresh" / "r", "r") == []
    # The next push (the next run's, for a stage it skips) completes the upload.
    assert remote.push(run_dir, "r", "data") and remote.finished_stages("r") == ["data"]


def test_pipeline_with_file_uri_runs_the_data_stage_then_skips_it(ray_session, tmp_path, caplog):
    cfg = compose([f"cluster.storage_path=file://{tmp_path}", *TINY_DATA])
    pipeline.run_pipeline(cfg)
    manifest = json.loads((tmp_path / "r" / "data" / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"tokenizer", "pretrain", "sft", "rl", "eval"}
    caplog.set_level("INFO", logger="reasonforge.pipeline")
    pipeline.run_pipeline(cfg)
    assert "[data] skipped" in caplog.text and "[data] running" not in caplog.text


def test_pipeline_resumes_from_the_remote_copy_on_a_fresh_staging_dir(
    ray_session, tmp_path, caplog, monkeypatch
):
    # file:// normally names a shared mount used in place; here it stands in for a bucket.
    monkeypatch.setattr(storage, "LOCAL_SCHEMES", frozenset())
    uri = f"file://{tmp_path / 'bucket'}"
    (tmp_path / "bucket").mkdir()
    first = compose(
        [f"cluster.storage_path={uri}", f"cluster.staging_dir={tmp_path / 'machine1'}", *TINY_DATA]
    )
    pipeline.run_pipeline(first)
    staged = tmp_path / "machine1" / "file" / str(tmp_path / "bucket").strip("/") / "r"
    assert _tree(tmp_path / "bucket" / "r" / "data") == _tree(staged / "data")

    caplog.set_level("INFO", logger="reasonforge")
    second = compose(
        [f"cluster.storage_path={uri}", f"cluster.staging_dir={tmp_path / 'machine2'}", *TINY_DATA]
    )
    pipeline.run_pipeline(second)
    assert "[data] downloaded" in caplog.text and "[data] skipped" in caplog.text
    assert "[data] running" not in caplog.text
