"""``tts-runtime publish --from DIR --to s3://bucket/prefix/version``: a model version into object storage
(``--check`` instead of ``--from``: only step 2, uploading nothing).

A published version is immutable, and its ``manifest.json`` is its seal:

1. DIR is checked first (``verify_manifest``: every listed file there with its size and sha256);
2. if ``<dest>/manifest.json`` already exists, nothing is uploaded: VERSION_EXISTS;
3. every file the manifest lists is uploaded, in parallel (s3transfer: multipart for big files), with
   its sha256 as object metadata (``x-amz-meta-sha256``);
4. ``manifest.json`` last, as a conditional put (``If-None-Match: *``): a reader that finds it finds
   every file, and of two publishers racing for one version the second is refused (412 ->
   VERSION_EXISTS) on servers that honour the condition. On a server that ignores it, step 2 is the
   guard (a race between steps 2 and 4 would then go unnoticed).

A failed publish leaves files without a manifest: an incomplete version nobody fetches (fetch
``--manifest`` refuses it) that the next publish of the same version overwrites.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tts_contract.contract import MANIFEST_NAME, ExitCode, ModelManifest, verify_manifest
from tts_contract.uris import ArtifactUri, parse

from .fetch import CONCURRENCY, IO_CHUNK, PART_SIZE, add_transfer_arguments, run_transfer, safe_relpath
from .report import Progress
from .store import (
    DEFAULT_RETRY_TOTAL_S,
    ArtifactError,
    classify,
    log,
    retrying,
    s3_client,
    transfers,
)


@dataclass
class PublishResult:
    uri: str
    #: files uploaded, manifest.json last
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    version: str = ""
    digest: str = ""
    #: whether manifest.json was written with ``If-None-Match: *`` (False: the server does not
    #: implement conditional puts, and the check before the upload was the only guard)
    conditional_put: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _exists(client: Any, bucket: str, key: str, uri: ArtifactUri) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        err = classify(e, uri)
        if err.code == ExitCode.ARTIFACT_NOT_FOUND:
            return False
        raise err from e


def publish(
    src_dir: str | Path,
    dest_uri: str | ArtifactUri,
    *,
    progress: Callable[[Progress], None] | None = None,
    retry_s: float = DEFAULT_RETRY_TOTAL_S,
    env: Mapping[str, str] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> PublishResult:
    """Upload the version directory ``src_dir`` to the s3 prefix ``dest_uri``; see the module's
    docstring. Raises ``ArtifactError``: BAD_INPUT (not s3, DIR fails its manifest), VERSION_EXISTS,
    ACCESS_DENIED, ARTIFACT_NOT_FOUND (no bucket), STORAGE_UNREACHABLE (after ``retry_s`` seconds of
    retries without progress)."""
    uri = _destination(dest_uri)
    src = Path(src_dir)
    problems = verify_manifest(src)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ArtifactError(ExitCode.BAD_INPUT, src.as_posix(), "; ".join(problems[:3]) + more)
    manifest = ModelManifest.load(src)
    body = (src / MANIFEST_NAME).read_bytes()
    for f in manifest.files:
        safe_relpath(f.path, uri, "manifest entry")
    started = time.monotonic()
    counter = Progress()
    counter.listen(progress)
    counter.plan(len(manifest.files) + 1, sum(f.size for f in manifest.files) + len(body))
    client = s3_client(env, max_pool_connections=CONCURRENCY + 4)
    manifest_key = uri.key(MANIFEST_NAME)
    _refuse_existing(client, uri, retry_s, on_retry)
    done: set[str] = set()

    def upload_files() -> None:
        _upload(client, uri, src, [f for f in manifest.files if f.path not in done], done, counter)

    retrying(
        upload_files,
        uri,
        total_s=retry_s,
        what="upload",
        on_retry=on_retry,
        progress=lambda: counter.transferred,
    )
    conditional = [True]

    def put_manifest() -> None:
        conditional[0] = _put_manifest(client, uri, manifest_key, body)

    retrying(put_manifest, uri, total_s=retry_s, what="write the manifest", on_retry=on_retry)
    counter.add(len(body))
    counter.file_done()
    return PublishResult(
        str(uri),
        [f.path for f in manifest.files] + [MANIFEST_NAME],
        sum(f.size for f in manifest.files) + len(body),
        round(time.monotonic() - started, 3),
        manifest.version,
        manifest.digest,
        conditional[0],
    )


@dataclass
class CheckResult:
    uri: str
    #: the version is not published yet: publishing it would not be refused as VERSION_EXISTS
    free: bool = True
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_free(
    dest_uri: str | ArtifactUri,
    *,
    retry_s: float = DEFAULT_RETRY_TOTAL_S,
    env: Mapping[str, str] | None = None,
    on_retry: Callable[[str], None] | None = None,
) -> CheckResult:
    """Step 2 of a publish alone, uploading nothing: ``ArtifactError`` VERSION_EXISTS when
    ``dest_uri`` holds a published version (its manifest.json), ACCESS_DENIED when the credentials
    are refused, STORAGE_UNREACHABLE after ``retry_s``; a ``CheckResult`` when the version is free.
    A training pod runs it before it trains, so a run whose version exists fails in seconds, not
    after its training; the export's own check (and its conditional manifest put) still guards a
    version published meanwhile."""
    uri = _destination(dest_uri)
    started = time.monotonic()
    _refuse_existing(s3_client(env), uri, retry_s, on_retry)
    return CheckResult(str(uri), True, round(time.monotonic() - started, 3))


def _destination(dest_uri: str | ArtifactUri) -> ArtifactUri:
    """``dest_uri`` parsed, or BAD_INPUT: an s3:// prefix for one version."""
    text = str(dest_uri)
    try:
        uri = dest_uri if isinstance(dest_uri, ArtifactUri) else parse(text)
    except ValueError as e:
        raise ArtifactError(ExitCode.BAD_INPUT, text, str(e).removeprefix(f"{text}: ")) from e
    if uri.scheme != "s3":
        raise ArtifactError(ExitCode.BAD_INPUT, uri, "publish writes to s3:// locations only")
    if not uri.path:
        raise ArtifactError(ExitCode.BAD_INPUT, uri, "name a prefix for the version, not a whole bucket")
    return uri


def _refuse_existing(
    client: Any, uri: ArtifactUri, retry_s: float, on_retry: Callable[[str], None] | None
) -> None:
    """VERSION_EXISTS when ``<uri>/manifest.json`` is there (retrying while the store is down)."""

    def check() -> None:
        if _exists(client, uri.bucket, uri.key(MANIFEST_NAME), uri):
            raise ArtifactError(
                ExitCode.VERSION_EXISTS,
                uri,
                f"{MANIFEST_NAME} is already there: a published version is never overwritten; "
                "publish under a new version name",
            )

    retrying(check, uri, total_s=retry_s, what="check the version", on_retry=on_retry)


def _put_manifest(client: Any, uri: ArtifactUri, key: str, body: bytes) -> bool:
    """Put the manifest unless one exists; VERSION_EXISTS when the server says it does (412). Whether
    the put was conditional."""
    try:
        client.put_object(
            Bucket=uri.bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
        )
    except Exception as e:
        err = classify(e, uri)
        if err.code == ExitCode.VERSION_EXISTS:
            raise ArtifactError(
                ExitCode.VERSION_EXISTS,
                uri,
                f"another publisher wrote {MANIFEST_NAME} first: a published version is never overwritten",
            ) from e
        if getattr(e, "response", {}).get("Error", {}).get("Code") in ("NotImplemented", "501"):
            log.warning(
                "%s: the storage does not support conditional puts; writing the manifest plainly", uri
            )
            client.put_object(Bucket=uri.bucket, Key=key, Body=body, ContentType="application/json")
            return False
        raise err from e
    return True


def _upload(
    client: Any, uri: ArtifactUri, src: Path, files: list[Any], done: set[str], progress: Progress
) -> None:
    from boto3.s3.transfer import TransferConfig
    from s3transfer.subscribers import BaseSubscriber

    class _Count(BaseSubscriber):
        def __init__(self, path: str, size: int):
            self.path = path
            self.size = size
            self.sent = 0

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(self.size)

        def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
            # s3transfer reports negative progress when it rewinds a retried part
            self.sent += bytes_transferred
            progress.add(bytes_transferred)

        def on_done(self, future: Any, **kwargs: Any) -> None:
            try:
                future.result()
            except BaseException:
                progress.add(-self.sent)
                return
            done.add(self.path)
            progress.file_done()

    config = TransferConfig(
        multipart_threshold=PART_SIZE,
        multipart_chunksize=PART_SIZE,
        max_concurrency=CONCURRENCY,
        io_chunksize=IO_CHUNK,
    )
    futures = []
    with transfers(client, config) as manager:
        for f in files:
            futures.append(
                manager.upload(
                    os.fspath(src / f.path),
                    uri.bucket,
                    uri.key(f.path),
                    extra_args={"Metadata": {"sha256": f.sha256}},
                    subscribers=[_Count(f.path, f.size)],
                )
            )
        for fut in futures:
            fut.result()


# --- the command ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "credentials and the endpoint come from the environment (a location's secretRef):\n"
        "  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL,\n"
        "  AWS_REGION (default us-east-1), AWS_S3_ADDRESSING_STYLE (path|virtual)\n"
        "\n"
        "exit codes: 0 published, 65 DIR fails its manifest (or not an s3:// URI), 66 no such bucket,\n"
        "68 storage unreachable after retries, 73 the version already exists, 77 access denied.\n"
        "On failure one line '<Reason>: <uri>: <what>' goes to stderr and to /dev/termination-log.\n"
        "\n"
        "examples:\n"
        "  tts-runtime publish --from /scratch/export/narrator-ft-1 --to s3://models/narrator/narrator-ft-1\n"
        "  tts-runtime publish --check --to s3://models/narrator/narrator-ft-1   # free? (exit 0 or 73)"
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DIR",
        help="a version directory with manifest.json",
    )
    what.add_argument(
        "--check",
        action="store_true",
        help="upload nothing: only check that the version is not published yet and that the store "
        "answers these credentials (exit 0, or 73 when it exists); a training pod runs this first",
    )
    parser.add_argument(
        "--to", dest="dest", required=True, metavar="URI", help="s3://bucket/prefix/<version>"
    )
    add_transfer_arguments(parser, "write what was published (JSON) here")


def run(args: argparse.Namespace) -> int:
    if args.check:
        return run_transfer(
            args,
            args.dest,
            "checked",
            lambda progress, on_retry: check_free(args.dest, retry_s=args.retry_for, on_retry=on_retry),
            lambda result: f"{result.uri} is free: no version published there yet ({result.seconds:.1f}s)",
        )
    return run_transfer(
        args,
        args.dest,
        "uploaded",
        lambda progress, on_retry: publish(
            args.source, args.dest, progress=progress, retry_s=args.retry_for, on_retry=on_retry
        ),
        lambda result: (
            f"published {result.version} to {result.uri}: {len(result.files)} files, "
            f"{result.bytes / (1 << 20):.1f} MiB, {result.seconds:.1f}s, digest {result.digest}"
        ),
    )
