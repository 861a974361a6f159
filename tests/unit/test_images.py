"""What each image installs: the packages a wheel built from exactly what its Dockerfile copies
holds (no Docker engine here: the same `pip install .` step, run on the same files). The operator
image carries the operator and the contract, never the dev cluster or the runtime; the runtime
image the runtime and the contract, never the operator (kopf) or the dev cluster."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _copied(dockerfile: str) -> list[str]:
    """The sources the build stage copies (``COPY a b ./`` and ``COPY src ./src``), not --from copies."""
    found: list[str] = []
    for line in (ROOT / dockerfile).read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if m:
            found += m.group(1).split()
    return found


def _packages_of_image(dockerfile: str, tmp_path: Path) -> set[str]:
    tree = tmp_path / "src"
    tree.mkdir()
    for item in _copied(dockerfile):
        source = ROOT / item
        if source.is_dir():
            shutil.copytree(source, tree / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(source, tree / item)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "."],
        cwd=tree,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tree / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    return {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}


@pytest.mark.parametrize(
    ("dockerfile", "packages"),
    [
        ("Dockerfile.operator", {"tts_operator", "tts_contract"}),
        ("Dockerfile.runtime", {"tts_runtime", "tts_contract"}),
    ],
)
def test_each_image_installs_only_its_own_packages(
    dockerfile: str, packages: set[str], tmp_path: Path
) -> None:
    assert _copied(dockerfile)[:2] == ["pyproject.toml", "README.md"]
    assert _packages_of_image(dockerfile, tmp_path) == packages


def _imports(folder: str, top_level: bool = False) -> set[str]:
    """The top-level package names ``folder``'s modules import (``top_level``: at module level only)."""
    pattern = r"^(?:from|import)\s+(\w+)" if top_level else r"^\s*(?:from|import)\s+(\w+)"
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        found |= set(re.findall(pattern, path.read_text(), re.MULTILINE))
    return found


def test_operator_and_runtime_meet_only_in_the_contract() -> None:
    """Neither side imports the other; the contract imports neither (nor anything heavy); the
    operator imports the dev tooling only inside the `dev` commands (lazily, so the image needs none)."""
    assert not _imports("runtime") & {"tts_operator", "tts_devcluster", "kopf"}
    assert not _imports("operator") & {"tts_runtime", "torch", "TTS"}
    assert "tts_devcluster" not in _imports("operator", top_level=True)
    # the operator never touches object storage or the hub (the pods fetch; `dev s3` imports boto3 lazily)
    assert not _imports("operator", top_level=True) & {"boto3", "botocore", "huggingface_hub"}
    allowed = {"__future__", "dataclasses", "enum", "hashlib", "json", "datetime", "pathlib", "re", "typing"}
    allowed.add("pydantic")
    assert _imports("contract") <= allowed
