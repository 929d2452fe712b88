"""Paths are made absolute once, on the driver, when the config is composed: no Ray actor, Train
worker or Tune trial (each in a working directory of its own) ever resolves a relative path."""

from __future__ import annotations

from orchestration.cli import compose
from orchestration.config import RootConfig
from orchestration.paths import PATH_FIELDS, absolute, path_like_fields


def test_every_field_that_names_a_path_is_resolved():
    # A new `*_dir`, `*path*`, `*file*` or `pretrained` field must join PATH_FIELDS, or a relative
    # value would reach a Ray worker as it is.
    assert set(path_like_fields(RootConfig())) == set(PATH_FIELDS)


def test_relative_paths_become_absolute_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/u")
    cfg = compose(
        [
            "model.pretrained=models/../base",
            "distill.student.pretrained=./student",
            "task.gsm8k_files=[data/train.jsonl,'~/gsm8k/test.parquet']",
        ]
    )
    assert cfg.cluster.storage_path == str(tmp_path / "outputs")  # the default
    assert cfg.cluster.staging_dir == str(tmp_path / "outputs" / ".staging")
    assert cfg.model.pretrained == str(tmp_path / "base")
    assert cfg.distill.student.pretrained == str(tmp_path / "student")
    assert cfg.task.gsm8k_files == [str(tmp_path / "data" / "train.jsonl"), "/home/u/gsm8k/test.parquet"]


def test_uris_and_absolute_paths_stay_as_written(tmp_path):
    for uri in ("s3://bucket/runs", "gs://b/p", "file:///srv/runs"):
        assert compose([f"cluster.storage_path={uri}"]).cluster.storage_path == uri
    assert compose(["cluster.staging_dir=/mnt/stage"]).cluster.staging_dir == "/mnt/stage"
    assert compose(["model.pretrained=null"]).model.pretrained is None


def test_base_dir_replaces_the_working_directory(tmp_path):
    # A Tune trial composes the sweep's command line with the driver's directory as base_dir.
    cfg = compose(["cluster.storage_path=runs"], base_dir=tmp_path)
    assert cfg.cluster.storage_path == str(tmp_path / "runs")
    assert absolute("a/b", "/x") == "/x/a/b" and absolute("s3://a/b", "/x") == "s3://a/b"
