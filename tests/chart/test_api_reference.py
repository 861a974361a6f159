"""docs/api-reference.md is generated from crds/ and must not be stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "docs" / "tools" / "gen_api_reference.py"


def test_api_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(GEN), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_api_reference_covers_every_spec_field() -> None:
    import yaml

    text = (ROOT / "docs" / "api-reference.md").read_text()
    for crd_path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(crd_path.read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        for field in spec["properties"]:
            assert f"| `{field}` |" in text, (crd["spec"]["names"]["kind"], field)
