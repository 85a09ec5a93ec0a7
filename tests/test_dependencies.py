"""Every module the code imports comes from a distribution its part declares in pyproject.toml,
the lock files pin what the venv runs, and the cloud loads none of the media stack."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.servers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCAL = {"protocol", "peer", "cloud", "relay", "device_sim"}
# Each part and the extras whose distributions it may import (the base always).
PARTS = {
    "protocol": (),
    "peer": ("relay", "camera"),  # shared by relay nodes and the camera agent: both list it
    "cloud": ("cloud",),
    "relay": ("relay", "onnx"),
    "device_sim": ("camera",),
}
# Which local packages each part may import: what its image copies (deploy/Dockerfile.*).
LOCAL_IMPORTS = {
    "protocol": {"protocol"},
    "peer": {"protocol", "peer"},
    "cloud": {"protocol", "cloud"},
    "relay": {"protocol", "peer", "relay"},
    "device_sim": {"protocol", "peer", "device_sim"},
}
# Never in the cloud's process: the media stack, detection and the GPL-2.0 database.
NOT_IN_THE_CLOUD = {
    "aiortc", "aioice", "av", "cv2", "numpy", "torch", "ultralytics", "onnxruntime",
    "secantus", "wiredtiger", "peer", "relay", "device_sim",
}  # fmt: skip


def imports(part: str) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in ``part`` (absolute imports), with the files."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / part).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def declared(*extras: str) -> set[str]:
    """Canonical names of the distributions the base and ``extras`` declare."""
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(r).name) for r in requirements}


@cache
def distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def test_every_imported_package_is_declared_by_its_part() -> None:
    undeclared = []
    for part, extras in PARTS.items():
        allowed = declared(*extras)
        for module, files in imports(part).items():
            if module in sys.stdlib_module_names or module in LOCAL:
                continue
            # Not installed here (an optional runtime): its distribution is named after it.
            owners = distributions().get(module, [module])
            if not {canonicalize_name(owner) for owner in owners} & allowed:
                undeclared.append(f"{part}: {module} ({owners}; {sorted(files)[0]})")
    assert not undeclared, "imported but not declared for that part:\n" + "\n".join(undeclared)


def test_a_part_imports_only_the_local_packages_its_image_holds() -> None:
    for part, allowed in LOCAL_IMPORTS.items():
        local = {m: files for m, files in imports(part).items() if m in LOCAL}
        assert set(local) <= allowed, {m: local[m] for m in set(local) - allowed}


def test_the_check_sees_an_undeclared_import(tmp_path: Path) -> None:
    """The walk finds imports in nested scopes, and the cloud's extra lacks aiortc."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "x.py").write_text("def f():\n    from aiortc import RTCPeerConnection\n")
    tree = ast.parse((tmp_path / "probe" / "x.py").read_text())
    found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert found == {"aiortc"}
    assert "aiortc" not in declared("cloud")
    assert "aiortc" in declared("relay")


def test_the_private_internals_libraries_are_pinned_exactly() -> None:
    project = PYPROJECT["project"]
    every = list(project["dependencies"])
    for requirements in project["optional-dependencies"].values():
        every += requirements
    pins: dict[str, set[str]] = {}
    for line in every:
        requirement = Requirement(line)
        pins.setdefault(canonicalize_name(requirement.name), set()).add(str(requirement.specifier))
    for name in ("uvicorn", "websockets", "aiortc", "aioice"):
        (specifier,) = pins[name]  # one and the same wherever it is listed
        assert re.fullmatch(r"==\d+(\.\d+)+", specifier), (name, specifier)
        assert specifier == f"=={importlib.metadata.version(name)}", name  # what runs here


def test_the_cloud_process_loads_no_media_stack_and_no_secantus() -> None:
    """Import everything the cloud serves with, then every module of cloud/, in a fresh
    interpreter: none of the media stack, detection or SecantusDB comes in."""
    program = """
import importlib, pkgutil, sys
import cloud, cloud.__main__, cloud.app
for module in pkgutil.walk_packages(cloud.__path__, "cloud."):
    importlib.import_module(module.name)
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(done.stdout.split())
    assert {"cloud", "starlette", "uvicorn", "beanie"} <= loaded
    assert not loaded & NOT_IN_THE_CLOUD, loaded & NOT_IN_THE_CLOUD


def lock(name: str) -> dict[str, str]:
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n\s+--hash=sha256:[0-9a-f]{64}$", text, re.M)
    entries = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert len(pins) == len(entries), name  # every entry pinned and hashed
    return {canonicalize_name(n): v for n, v in pins}


def test_the_lock_files_pin_what_the_extras_need_at_the_versions_tested_here() -> None:
    for name, extras in (
        ("cloud", ("cloud",)),
        ("relay", ("relay",)),
        ("relay-onnx", ("relay", "onnx")),
    ):
        locked = lock(name)
        project = PYPROJECT["project"]
        requirements = list(project["dependencies"])
        for extra in extras:
            requirements += project["optional-dependencies"][extra]
        for line in requirements:
            requirement = Requirement(line)
            key = canonicalize_name(requirement.name)
            assert key in locked, (name, key)
            assert requirement.specifier.contains(locked[key], prereleases=True), (name, line)
        for key, version in locked.items():
            # The suite runs on the locked versions (scripts/lock writes them from this venv).
            assert importlib.metadata.version(key) == version, (name, key)
    cloud, relay = lock("cloud"), lock("relay")
    assert not set(cloud) & {"aiortc", "aioice", "av", "opencv-python-headless", "numpy",
                              "torch", "ultralytics", "secantusdb", "onnxruntime"}  # fmt: skip
    assert not set(relay) & {"starlette", "uvicorn", "beanie", "secantusdb", "torch"}
    assert "torch" not in lock("relay-onnx")
