"""Fitness checks that keep the architecture honest: the package split and import direction."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it may import (STYLE.md: orchestration -> training, rl, serving;
# rl -> training, serving; serving -> training; benchmarks use any; nothing imports
# orchestration but benchmarks, and nothing imports benchmarks).
ALLOWED = {
    "benchmarks": {"orchestration", "training", "rl", "serving"},
    "orchestration": {"training", "rl", "serving"},
    "rl": {"training", "serving"},
    "serving": {"training"},
    "training": set(),
}
# A "package.module:attr" string is an import too (config defaults, Hydra targets): it is resolved
# with importlib wherever the config is used, e.g. inside every Serve replica.
STRING_IMPORT = re.compile(r"^([a-z_]+)(\.[a-z_0-9]+)*:[A-Za-z_][A-Za-z_0-9]*$")


# rl/ by concern: tasks (and data generation) stand alone; the rollout layer is shared by GRPO
# and distillation, which do not know each other. Subpackage -> project modules it must not import.
RL_FORBIDDEN = {
    "rl/tasks": ("training", "serving", "rl.config", "rl.rollout", "rl.grpo", "rl.distill", "rl.evaluate"),
    "rl/rollout": ("rl.grpo", "rl.distill"),
    "rl/grpo": ("rl.distill",),
    "rl/distill": ("rl.grpo",),
}
# Stage names that are not also data-split names: a library holding one knows the pipeline.
STAGE_ONLY_NAMES = {"rlvr", "distill", "serve", "report"}


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, string imports ("pkg.mod:attr") included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            if STRING_IMPORT.match(node.value):
                names.add(node.value.split(":")[0])
    return names


def _imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _imported_modules(path)} & set(ALLOWED)


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


def test_string_imports_are_seen_by_the_layout_check(tmp_path):
    sneaky = tmp_path / "m.py"
    sneaky.write_text('EXTRACT = "rl.tasks.format:extract_answer"\nURL = "http://x:80"\n')
    assert _imported_packages(sneaky) == {"rl"}


def test_composing_the_config_imports_no_torch_and_no_engine():
    # Every stage, sweep trial and test composes the config; it must stay cheap and side-effect free.
    code = (
        "import sys; from orchestration.cli import compose; compose(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'deepspeed', 'transformers') "
        "or m == 'serving.engine'); print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_imports_flow_one_way():
    bad = []
    for package, allowed in ALLOWED.items():
        for path in (ROOT / package).rglob("*.py"):
            for imported in _imported_packages(path) - allowed - {package}:
                bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_rl_is_split_by_concern_with_one_way_imports():
    bad = []
    for folder, forbidden in RL_FORBIDDEN.items():
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imported_modules(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
    assert not list((ROOT / "rl").glob("*manager*.py")), "managers live in rl/rollout (one, composed)"


def test_libraries_know_no_stage_names():
    # Only orchestration wires stages together: a library that names one (a table of which stage's
    # model to load, a hard-coded upstream) has pipeline knowledge that belongs in the stage table.
    bad = []
    for package in ("training", "rl", "serving"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in STAGE_ONLY_NAMES:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} names stage {node.value!r}")
                if isinstance(node, ast.Name) and node.id in ("StageContext", "StageResult"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses the stage contract")
    assert not bad, "\n".join(bad)


def test_readme_shows_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_the_readme_stage_diagram_is_the_stage_table():
    from orchestration.stages import STAGES
    from orchestration.stages.diagram import mermaid

    text = (ROOT / "README.md").read_text()
    drawn = text.split("<!-- stages:start -->\n", 1)[1].split("\n<!-- stages:end -->", 1)[0]
    assert drawn == f"```mermaid\n{mermaid(STAGES)}\n```", (
        "regenerate: python -m orchestration.stages.diagram"
    )
