"""Model versions for the serving tests: a model directory copied as a named version (hard links, no
copies of hundreds of MB), with its manifest rewritten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def add_version(source: Path, models_root: Path, version: str, break_checksum: bool = False) -> Path:
    """``source`` as version ``version`` under ``models_root``: weights hard-linked (no 200 MB copies),
    the manifest rewritten (a real copy). ``break_checksum`` records a wrong sha256 for config.json,
    which the server's verification refuses (exit 65), like a corrupted upload would."""
    from tts_contract.contract import MANIFEST_NAME, ModelManifest

    dest = models_root / version
    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.name == MANIFEST_NAME or not item.is_file():
            continue
        try:
            os.link(item, dest / item.name)
        except OSError:
            shutil.copy2(item, dest / item.name)
    manifest = json.loads((source / MANIFEST_NAME).read_text())
    manifest["version"] = version
    if break_checksum:
        for entry in manifest["files"]:
            if entry["path"] == "config.json":
                entry["sha256"] = "0" * 64
    (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    ModelManifest.load(dest)  # still valid
    return dest
