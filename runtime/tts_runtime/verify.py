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

from .errors import BadInputError


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


def unreadable(version_dir: Path) -> str | None:
    """Why ``version_dir`` cannot be checked at all (missing, a file, no manifest, no permission),
    in one line with what to pass instead; None when its manifest can be read."""
    what = "pass a version directory holding manifest.json (what `tts-runtime export` writes)"
    if not version_dir.exists():
        return f"{version_dir}: no such directory; {what}"
    if not version_dir.is_dir():
        return f"{version_dir}: a file, not a directory; {what}"
    try:
        with open(version_dir / MANIFEST_NAME, "rb"):
            pass
    except FileNotFoundError:
        return f"{version_dir}: no {MANIFEST_NAME}; {what}"
    except PermissionError:
        return f"{version_dir}: permission denied reading it; run as a user who can read it"
    except OSError as e:
        return f"{version_dir}: cannot read {MANIFEST_NAME}: {e.strerror}"
    return None


def run(args: argparse.Namespace) -> int:
    version_dir: Path = args.dir
    problem = unreadable(version_dir)
    if problem is not None and not args.json:
        raise BadInputError(problem)  # one line, not a report of one problem
    problems = [problem] if problem is not None else verify_manifest(version_dir)
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
