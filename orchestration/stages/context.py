"""The stage contract: what a stage adapter declares, receives and returns.

An adapter is a plain function `run(cfg, ctx) -> StageResult`. `cfg` is a `ConfigView`: only the
config sections its `StageSpec` declares can be read, so the cache key (the hash of the sections it
`reads`) covers everything that shapes its outputs. It writes only under `ctx.out_dir` (a fresh temp
directory the driver publishes atomically when the stage returns) and keeps anything that must
survive a crash for resumption (checkpoints) under `ctx.work_dir`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.tracking import Tracker


@dataclass(frozen=True)
class Input:
    """An earlier stage's output that a stage consumes: the first of `sources` ("stage.output")
    whose stage has finished in the run, else the path in the config field `config` when it is set
    (a user's own model: `model.pretrained`). A required input with neither fails the stage."""

    sources: tuple[str, ...]
    required: bool = True
    # Dotted config field holding a path to use when no source stage has finished; the stage must
    # read it (so the path is part of its cache key).
    config: str | None = None

    def __post_init__(self) -> None:
        bad = [s for s in self.sources if s.count(".") != 1]
        if not self.sources or bad:
            raise ValueError(f"Input sources are 'stage.output' strings; got {self.sources}")

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s.split(".")[0] for s in self.sources)


def first_of(*sources: str, config: str | None = None) -> Input:
    return Input(tuple(sources), config=config)


def optional(*sources: str) -> Input:
    return Input(tuple(sources), required=False)


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: Callable[..., StageResult]
    # Config sections that shape the stage's outputs: their hash is its cache key, so a change in
    # any re-runs it (and everything after it).
    reads: tuple[str, ...]
    # Named inputs: earlier stages' outputs, resolved to absolute paths before the stage starts.
    inputs: Mapping[str, Input] = field(default_factory=dict)
    # Sections it may read that say where and how visibly it runs (cluster size, logging), not what
    # it computes: outside the cache key, so moving a finished run to a bigger cluster re-runs nothing.
    runs_on: tuple[str, ...] = ()
    # Reads the manifests of every earlier stage that has finished (the report).
    reads_all_manifests: bool = False

    def __post_init__(self) -> None:
        unread = [
            f"{n}: {i.config}" for n, i in self.inputs.items() if i.config and not self.reads_key(i.config)
        ]
        if unread:
            raise ValueError(f"stage {self.name!r} takes inputs from config it does not read: {unread}")

    def view(self, cfg: Any) -> ConfigView:
        """What the adapter is handed: `cfg` restricted to `reads` and `runs_on`."""
        return ConfigView(cfg, self.name, (*self.reads, *self.runs_on))

    def reads_key(self, key: str) -> bool:
        """Whether the dotted config `key` is (part of) what the stage reads."""
        return any(key == r or key.startswith(f"{r}.") or r.startswith(f"{key}.") for r in self.reads)

    @property
    def upstream(self) -> tuple[str, ...]:
        """Stages whose outputs it may consume, in declaration order."""
        return tuple(dict.fromkeys(s for inp in self.inputs.values() for s in inp.stages))


@dataclass
class StageResult:
    # name -> path relative to the stage's output dir (e.g. {"model": "hf"}).
    outputs: dict[str, str] = field(default_factory=dict)
    # Headline numbers recorded in the manifest (e.g. {"pass@1": 0.42}).
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class StageContext:
    name: str
    run_dir: Path  # outputs/<run_name>
    out_dir: Path  # where this attempt writes its outputs (published atomically on success)
    work_dir: Path  # survives failed attempts: checkpoints to resume from
    tracker: Tracker
    # The stage's declared inputs: input name -> absolute path of the chosen earlier output.
    inputs: dict[str, Path] = field(default_factory=dict)
    # Input name -> the stage it came from (for a `first_of` input, the one that finished first),
    # or "config:<field>" for a path taken from the config.
    sources: dict[str, str] = field(default_factory=dict)
    # Manifest metrics of the stages feeding this one (every finished stage, for the report).
    upstream_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise KeyError(
                f"stage {self.name!r} has no input {name!r} in this run; it has {sorted(self.inputs)}"
            )
        return self.inputs[name]

    def source_metric(self, name: str, metric: str) -> Any:
        """A metric of the stage input `name` came from (e.g. the start model's pass@1), or None."""
        return self.upstream_metrics.get(self.sources.get(name, ""), {}).get(metric)


class ConfigView:
    """The root config as one stage may see it: reading an undeclared section raises, naming it.

    A declared name may be dotted (`"model.pretrained"`): the stage then sees that one field of
    the section, and its cache key covers that field only.
    """

    def __init__(self, cfg: Any, stage: str, sections: Iterable[str], prefix: str = ""):
        self._cfg, self._stage, self._sections, self._prefix = cfg, stage, frozenset(sections), prefix

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._sections:
            return getattr(self._cfg, key)
        inner = {s.split(".", 1)[1] for s in self._sections if s.startswith(f"{key}.")}
        if inner:
            return ConfigView(getattr(self._cfg, key), self._stage, inner, f"{self._prefix}{key}.")
        readable = sorted(f"{self._prefix}{s}" for s in self._sections)
        raise AttributeError(
            f"stage {self._stage!r} read cfg.{self._prefix}{key}, which its StageSpec does not declare (it "
            f"may read {readable}); add {self._prefix + key!r} to its `reads` (or `runs_on`) in "
            "orchestration/stages/__init__.py so a change to it re-runs the stage"
        )

    def __reduce__(self):  # pickled with a stage into Ray tasks: keep the restriction
        return (ConfigView, (self._cfg, self._stage, self._sections, self._prefix))
