"""``tts-runtime verify DIR``: check a version directory against its manifest.

Every file the manifest lists must exist with its recorded size and sha256; serving pods run the same
check before loading (``tts_runtime.models.load_model``). Files not in the manifest are reported too:
a version directory is immutable, so an extra file means someone wrote into it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tts_contract.contract import MANIFEST_NAME, ExitCode, ModelManifest, verify_manifest


def unlisted_files(version_dir: Path, manifest: ModelManifest) -> list[str]:
    listed = {f.path for f in manifest.files} | {MANIFEST_NAME}
    return sorted(
        rel
        for p in version_dir.rglob("*")
        if p.is_file() and (rel := p.relative_to(version_dir).as_posix()) not in listed
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="version directory holding manifest.json")
    parser.add_argument("--json", action="store_true", help="print {ok, problems, version, digest} as JSON")


def run(args: argparse.Namespace) -> int:
    version_dir: Path = args.dir
    problems = verify_manifest(version_dir)
    manifest = None
    if not problems:
        manifest = ModelManifest.load(version_dir)
        problems = [f"{rel}: not in the manifest" for rel in unlisted_files(version_dir, manifest)]
    ok = not problems
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "problems": problems,
                    "version": manifest.version if manifest else None,
                    "digest": manifest.digest if manifest else None,
                }
            )
        )
    elif ok and manifest is not None:
        print(f"ok: {version_dir} ({manifest.engine.value} {manifest.version}, {len(manifest.files)} files)")
        print(f"digest {manifest.digest}")
    else:
        print(f"FAILED: {version_dir}")
        for problem in problems:
            print(f"  {problem}")
    return ExitCode.SUCCESS if ok else ExitCode.BAD_INPUT
