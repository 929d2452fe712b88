"""The suite's cost budget: Ray Train runs and Ray cluster starts, counted per tier, not timed.

Every `training.loop.fit` and every Ray start by `orchestration.cluster.connect` (or the shared test
session) appends a line to $REASONFORGE_RUN_LEDGER, from any process: Tune trials and the
`make demo` subprocess included. Each line is charged to the tier of the test that was running
(`slow` if it is marked so, else `default`). A run above a tier's budget fails, with the tests
that spent it: a new fit or Ray start must be paid for by raising the number here, on purpose.
Later tiers (kill/resume, multi-node, vLLM) get a marker and a row of their own.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

# tier -> kind -> most allowed per run of the whole suite. "session" is the one Ray instance the
# tests share (tests/conftest.py), whichever test starts it.
BUDGETS = {
    "session": {"ray_start": 1},
    "default": {"train_run": 0, "ray_start": 0},
    # make demo twice (5 training runs: pretrain, sft, rlvr, distill and its baseline), the sweep
    # (its command interrupted, resumed, the best rerun: 5), the training loop (3), GRPO (1), a
    # pretrained model with its own tokenizer through sft, rlvr and distill (3).
    "slow": {"train_run": 17, "ray_start": 4},
}
SESSION = "test session"


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.write_text("")
        self.spent: dict[str, Counter] = defaultdict(Counter)
        self.by_test: dict[str, Counter] = defaultdict(Counter)

    def charge_since(self, offset: int, tier: str, test: str) -> int:
        """Charge the lines written since `offset` to `tier`; returns the new offset."""
        with open(self.path, "rb") as f:
            f.seek(offset)
            new = f.read()
        for line in new.decode().splitlines():
            entry = json.loads(line)
            kind = entry["kind"]
            self.spent["session" if entry["name"] == SESSION else tier][kind] += 1
            self.by_test[test][kind] += 1
        return offset + len(new)

    def overruns(self) -> list[str]:
        return [
            f"tier {tier!r}: {self.spent[tier][kind]} {kind} > budget {limit}"
            for tier, limits in BUDGETS.items()
            for kind, limit in limits.items()
            if self.spent[tier][kind] > limit
        ] + [f"tier {tier!r} has no budget" for tier in self.spent if tier not in BUDGETS]

    def report(self) -> list[str]:
        lines = [
            f"cost budget: {tier}: "
            + ", ".join(f"{self.spent[tier][k]}/{limit} {k}" for k, limit in BUDGETS[tier].items())
            for tier in BUDGETS
        ]
        spenders = sorted(self.by_test.items(), key=lambda kv: -sum(kv[1].values()))
        lines += [f"  {dict(c)}  {test}" for test, c in spenders]
        return lines
