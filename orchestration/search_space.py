"""Sweep search spaces: config keys with distributions, parsed before any trial starts.

    space:
      pretrain: {train: {lr: loguniform(1e-4, 3e-3)}}  # or the dotted key  pretrain.train.lr: ...
      model: {num_experts: choice([4, 8])}              # sampled
      optimizer: {name: grid([adamw, muonclip])}        # every value, times sweep.num_samples
      pretrain.train.warmup_steps: randint(1, 10)       # upper bound excluded, as in ray.tune.randint

Arguments are read with Hydra's override grammar, so `[adamw, muonclip]` and `1e-4` mean what they
mean on the command line. A sampled point becomes Hydra overrides (`pretrain.train.lr=0.00123`); a
trial composes the pipeline config with the sweep's base overrides plus these, as `reasonforge`
would with the same command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from ray import tune

_PARSER = OverridesParser.create()
_CALL = re.compile(r"\s*(\w+)\s*\((.*)\)\s*", re.DOTALL)


@dataclass(frozen=True)
class Distribution:
    domain: Callable[[list], Any]  # parsed arguments -> the Ray Tune domain
    check: Callable[[list], str | None]  # what is wrong with the arguments, or None
    probes: Callable[[list], list]  # values composed before any trial: the bounds, or every value
    form: str  # how it is written, for error messages


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _bounds(kind: type, positive: bool = False) -> Callable[[list], str | None]:
    def check(args: list) -> str | None:
        if len(args) != 2 or not all(_is_number(a) and (kind is float or isinstance(a, int)) for a in args):
            return f"expected two {'integers' if kind is int else 'numbers'} (low, high); got {args}"
        if args[0] >= args[1]:
            return f"low must be below high; got {args}"
        if positive and args[0] <= 0:
            return f"a log scale needs low > 0; got {args}"
        return None

    return check


def _values(args: list) -> str | None:
    if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
        return f"expected one non-empty list of values, e.g. choice([4, 8]); got {args}"
    return None


def _as_floats(args: list) -> list:
    return [float(a) for a in args]


DISTRIBUTIONS: dict[str, Distribution] = {
    # Probed as floats: an int field must refuse them, as it will refuse the samples.
    "uniform": Distribution(lambda a: tune.uniform(*a), _bounds(float), _as_floats, "uniform(low, high)"),
    "loguniform": Distribution(
        lambda a: tune.loguniform(*a), _bounds(float, positive=True), _as_floats, "loguniform(low, high)"
    ),
    "randint": Distribution(
        lambda a: tune.randint(*a), _bounds(int), lambda a: [a[0], a[1] - 1], "randint(low, high)"
    ),
    "choice": Distribution(lambda a: tune.choice(a[0]), _values, lambda a: list(a[0]), "choice([v, ...])"),
    "grid": Distribution(lambda a: tune.grid_search(a[0]), _values, lambda a: list(a[0]), "grid([v, ...])"),
}


@dataclass(frozen=True)
class Dimension:
    key: str  # dotted config key, e.g. "pretrain.train.lr"
    kind: str  # a name in DISTRIBUTIONS
    args: tuple  # the parsed arguments

    def domain(self) -> Any:
        return DISTRIBUTIONS[self.kind].domain(list(self.args))

    def probes(self) -> list:
        return DISTRIBUTIONS[self.kind].probes(list(self.args))


def flatten(space: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested and dotted keys alike to dotted keys; a key given both ways is an error."""
    out: dict[str, Any] = {}
    for k, v in space.items():
        key = f"{prefix}{k}"
        items = flatten(v, f"{key}.") if isinstance(v, Mapping) else {key: v}
        for flat, value in items.items():
            if flat in out:
                raise ValueError(f"sweep.space: key {flat!r} is given twice (nested and dotted)")
            out[flat] = value
    return out


def parse_space(space: Mapping) -> list[Dimension]:
    """`sweep.space` as dimensions; errors name the key and the text."""
    dims = [parse_dimension(key, text) for key, text in flatten(space).items()]
    if not dims:
        raise ValueError(
            "sweep.space is empty; give at least one key, e.g. pretrain.train.lr: loguniform(1e-4, 3e-3)"
        )
    return dims


def parse_dimension(key: str, text: Any) -> Dimension:
    forms = ", ".join(d.form for d in DISTRIBUTIONS.values())
    match = _CALL.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"sweep.space.{key}: {text!r} is not a distribution; expected one of {forms}")
    kind, inner = match.groups()
    if kind not in DISTRIBUTIONS:
        raise ValueError(
            f"sweep.space.{key}: unknown distribution {kind!r} in {text!r}; expected one of {forms}"
        )
    try:
        args = parse_value(f"[{inner}]")
    except HydraException as err:
        raise ValueError(f"sweep.space.{key}: cannot read the arguments of {text!r}: {err}") from None
    problem = DISTRIBUTIONS[kind].check(args)
    if problem:
        raise ValueError(f"sweep.space.{key}: {text!r}: {problem}")
    return Dimension(key, kind, tuple(args))


def parse_value(text: str) -> Any:
    """A value in Hydra's override grammar (`[4, 8]`, `1e-4`, `adamw`, `null`)."""
    return _PARSER.parse_override(f"_={text}").value()


def render_value(value: Any) -> str:
    """The override text Hydra reads back as `value`, without whitespace (so that
    `reasonforge $(cat best_overrides.txt)` survives the shell's word splitting)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(render_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{render_value(v)}" for k, v in value.items()) + "}"
    for text in (str(value), "'" + str(value).replace("'", "\\'") + "'"):
        if not re.search(r"\s", text) and _reads_back(text, value):
            return text
    raise ValueError(f"cannot write {value!r} as a command-line override without spaces or quotes")


def _reads_back(text: str, value: Any) -> bool:
    try:
        return parse_value(text) == value
    except HydraException:
        return False


def override(key: str, value: Any) -> str:
    return f"{key}={render_value(value)}"


def normalise_override(text: str) -> str:
    """A base override of the sweep command in a whitespace-free form; sweeps are refused."""
    try:
        parsed = _PARSER.parse_override(text)
    except HydraException as err:
        raise ValueError(f"override {text!r}: {err}") from None
    if parsed.is_sweep_override():
        raise ValueError(f"override {text!r} is a Hydra sweep; put the search in sweep.space instead")
    if not re.search(r"\s", text):
        return text
    if parsed.value() is None and parsed.is_delete():
        return parsed.get_key_element()
    return f"{parsed.get_key_element()}={render_value(parsed.value())}"
