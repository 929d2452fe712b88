"""k8s/Dockerfile installs pyproject.toml's dependencies from a hashed lock, on the Ray image of the
pinned version, and runs as a non-root user.

No Docker here: the checks read the Dockerfile's instructions and k8s/requirements.lock.
"""

from __future__ import annotations

import re
import shlex

from k8s_manifests import K8S, pyproject, ray_pin
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

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


LOCK = K8S / "requirements.lock"


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, hashes) of every package in k8s/requirements.lock."""
    joined = re.sub(r"\\\n\s*", " ", LOCK.read_text())
    pins = {}
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        name, _, version = requirement.strip().partition("==")
        assert version, f"k8s/requirements.lock: {requirement!r} is not pinned with =="
        pins[canonicalize_name(name)] = (version, [h.strip() for h in options])
    return pins


def test_every_pip_install_installs_the_hashed_lock_or_the_project_alone():
    installs = pip_installs()
    assert installs, "k8s/Dockerfile installs nothing with pip"
    for _, words in installs:
        assert "--no-deps" in words, f"pip install {' '.join(words)}: may pull in what the lock does not pin"
        if "-r" in words:
            assert words[words.index("-r") + 1] == "requirements.lock" and "--require-hashes" in words
        else:
            assert [w for w in words if not w.startswith("-")] == ["."], f"pip install {' '.join(words)}"
    assert any("-r" in words for _, words in installs), "the image must install k8s/requirements.lock"


def test_lock_pins_every_dependency_of_pyproject_to_an_allowed_version_with_hashes():
    pins = lock_pins()
    assert all(hashes and all(h.startswith("sha256:") for h in hashes) for _, hashes in pins.values())
    for dep in pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"k8s/requirements.lock lacks {req.name} (run `make lock`)"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), (
            f"k8s/requirements.lock pins {req.name}=={version}, outside pyproject's {req} (run `make lock`)"
        )
    # The Ray the image's base brings, the lock and pyproject agree.
    assert pins["ray"][0] == ray_pin()


def test_lock_layer_copies_only_the_lock():
    ops = instructions()
    first = next(i for i, words in pip_installs() if "-r" in words)
    copied = [a.split() for op, a in ops[:first] if op == "COPY"]
    assert [s for args in copied for s in args[:-1] if not s.startswith("--")] == ["k8s/requirements.lock"]


def test_image_runs_as_a_non_root_user():
    users = [a for op, a in instructions() if op == "USER"]
    assert users and users[-1] not in ("root", "0"), f"the image's last USER is {users[-1:] or 'unset'}"


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
