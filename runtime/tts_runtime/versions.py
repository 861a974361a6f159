"""Model version directories: write into a staging folder, checksum, verify, rename into place.

A version directory is immutable once it exists: servers load it by name and a rollout compares
versions, so it is either complete and verified or absent. It is built in a hidden staging folder
beside its final place (same filesystem, so the rename is atomic), every file is fsynced, the
manifest is written last, the whole folder is verified against the manifest, and only then renamed.
An existing version is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from tts_contract.contract import (
    MANIFEST_NAME,
    Engine,
    ManifestFile,
    ManifestSource,
    ModelManifest,
    sha256_file,
    verify_manifest,
)

from .errors import BadInputError, RuntimeCommandError

#: a version name is one path segment that is also safe in Kubernetes labels and URLs
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class VersionExistsError(BadInputError):
    """The version directory is already there: versions are immutable."""


def check_version_name(version: str) -> str:
    if not VERSION_RE.match(version):
        raise BadInputError(
            f"invalid version name {version!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return version


def runtime_versions() -> dict[str, str]:
    """Versions of the stack that wrote a model, recorded in its manifest."""
    found = {}
    for dist in ("tts-operator", "torch", "coqui-tts", "coqui-tts-trainer"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


def build_manifest(
    version_dir: Path,
    version: str,
    engine: Engine,
    source: ManifestSource | None = None,
    metrics: dict[str, float] | None = None,
    dataset_fingerprint: str | None = None,
) -> ModelManifest:
    """A manifest listing every regular file under ``version_dir`` (except the manifest) with its sha256."""
    files = []
    for path in sorted(version_dir.rglob("*")):
        rel = path.relative_to(version_dir).as_posix()
        if path.is_symlink():
            raise BadInputError(f"{path}: symbolic links are not allowed in a version directory")
        if path.is_file() and rel != MANIFEST_NAME:
            files.append(ManifestFile(path=rel, sha256=sha256_file(path), size=path.stat().st_size))
    return ModelManifest(
        version=version,
        engine=engine,
        files=files,
        metrics=metrics or {},
        source=source or ManifestSource(),
        dataset_fingerprint=dataset_fingerprint,
        runtime=runtime_versions(),
    )


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        if path.is_file() or path.is_dir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def staged_version(dest: Path) -> Iterator[Path]:
    """A staging folder that becomes ``dest`` when the block ends without error; removed otherwise.

    The block fills the folder and writes its manifest (``write_manifest``); on exit the folder is
    verified against the manifest and renamed to ``dest``.
    """
    if dest.exists():
        raise VersionExistsError(
            f"{dest} already exists: versions are immutable; choose another version name"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        yield staging
        problems = verify_manifest(staging)
        if problems:
            raise RuntimeCommandError(f"{dest}: verification after writing failed: " + "; ".join(problems))
        _fsync_tree(staging)
        staging.chmod(0o755)  # mkdtemp makes it 0700; readers (the serving pods) may be another user
        try:
            # rename refuses a non-empty target, so a version made meanwhile by someone else survives
            os.rename(staging, dest)
        except OSError as e:
            if dest.exists():
                raise VersionExistsError(f"{dest} appeared while exporting: left it untouched") from e
            raise
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself is durable only once the parent directory is synced
        finally:
            os.close(fd)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_manifest(version_dir: Path, manifest: ModelManifest) -> None:
    (version_dir / MANIFEST_NAME).write_text(manifest.dumps())
