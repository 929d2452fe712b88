"""Fitness checks that keep the architecture honest: the package split and import direction."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it may import (STYLE.md: orchestration -> training, rl, serving;
# rl -> training, serving; serving -> training; nothing imports orchestration).
ALLOWED = {
    "orchestration": {"training", "rl", "serving"},
    "rl": {"training", "serving"},
    "serving": {"training"},
    "training": set(),
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_top_level_layout_exists():
    for name in [
        "orchestration",
        "training",
        "rl",
        "serving",
        "conf",
        "tests",
        "pyproject.toml",
        "README.md",
        "Makefile",
        ".ci/run",
    ]:
        assert (ROOT / name).exists(), name


def test_imports_flow_one_way():
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            for imported in _imported_packages(path) - allowed - {package}:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_readme_shows_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci/run").read_text()
