"""k8s/Dockerfile installs what pyproject.toml declares, on the Ray image of the pinned version.

No Docker here: the checks read the Dockerfile's instructions, and the dependency layer is built the
way the Dockerfile builds it (a wheel from only the files it has copied by then), then compared
with pyproject.toml's dependencies.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import zipfile

from k8s_manifests import K8S, ROOT, pyproject, ray_pin
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

DOCKERFILE = K8S / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.MULTILINE)]


def pip_installs() -> list[tuple[int, list[str]]]:
    """(instruction index, arguments after `pip install`) for every pip install the image runs."""
    found = []
    for i, (op, args) in enumerate(instructions()):
        if op != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append((i, words[words.index("install") + 1 :]))
    return found


def _canonical(requirements) -> set[str]:
    return {str(Requirement(str(r))) for r in requirements}


def test_base_image_is_the_official_ray_image_of_the_pinned_version():
    ops = instructions()
    args = dict(a.split("=", 1) for op, a in ops if op == "ARG" and "=" in a)
    (base,) = [a for op, a in ops if op == "FROM"]
    image = args.get(base.strip("${}"), base)
    match = re.fullmatch(r"rayproject/ray:([\d.]+)-py(\d)(\d+)", image)
    assert match, f"k8s/Dockerfile: base image {image!r} is not rayproject/ray:<version>-py<XY>"
    assert match[1] == ray_pin(), f"base image Ray {match[1]} != pyproject's ray=={ray_pin()}"
    python = f"{match[2]}.{match[3]}"
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(python)
    # The GPU build in the comments and in k8s/README.md names the same Ray and Python.
    for text in (DOCKERFILE.read_text(), (K8S / "README.md").read_text()):
        for tag in re.findall(r"rayproject/ray:([\w.-]+)", text):
            assert tag.startswith(f"{ray_pin()}-py{match[2]}{match[3]}"), tag


def test_every_pip_install_installs_the_project_from_pyproject():
    installs = pip_installs()
    assert installs, "k8s/Dockerfile installs nothing with pip"
    for _, words in installs:
        targets = [w for w in words if not w.startswith("-")]
        # Anything else named here would install a set pyproject.toml does not declare.
        assert targets == ["."], f"pip install {' '.join(words)}: install the project (.) only"


def test_dependency_layer_builds_exactly_pyprojects_dependencies(tmp_path):
    ops = instructions()
    first, words = next((i, w) for i, w in pip_installs() if "--no-deps" not in w)
    copied = [a.split() for op, a in ops[:first] if op == "COPY"]
    sources = [s for args in copied for s in args[:-1] if not s.startswith("--")]
    assert "pyproject.toml" in sources and "." not in sources, sources
    for name in sources:
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    # The same build pip runs in the image for `pip install .`, on only the files copied by then.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", "."],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    installed = {r for r in _canonical(requires) if "extra ==" not in r}
    assert installed == _canonical(pyproject()["project"]["dependencies"])


def test_code_is_installed_editable_after_copying_the_repository():
    # `reasonforge` finds conf/ beside its packages (orchestration/cli.py CONF_DIR): only an
    # editable install of the copied tree keeps that true in the image.
    ops = instructions()
    copy_all = max(i for i, (op, a) in enumerate(ops) if op == "COPY" and a.split()[-2:] == [".", "."])
    last, words = pip_installs()[-1]
    assert last > copy_all and "-e" in words and "--no-deps" in words


def test_build_context_leaves_out_local_environments_and_outputs():
    ignored = set((K8S / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", ".git", "outputs", "wandb"} <= ignored
