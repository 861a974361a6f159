"""Issue 15: ``tts-runtime fetch`` of a multi-file model from object storage, against boto3's own
``download_file`` of the same objects one by one, and a resumed half download.

A local SeaweedFS (``tts_devcluster.s3``) holds a model of ``FILES`` objects, 1 GiB in all
(``BENCH_QUICK=1``: 64 MiB). Runs alternate in one process, each into an empty folder that is
removed afterwards:

- ours: ``fetch("s3://tts/model", dir)`` (one transfer manager for every file: parallel across files
  and across the ranged parts of each, journalled ``.part`` files);
- plain: ``client.download_file(bucket, key, path)`` for each object in turn (boto3's default
  transfer config: each file's parts in parallel, one file at a time);
- ours with ``manifest=True``: the same, plus the sha256 of every file checked against the manifest.

Then a resumed half download: a fetch interrupted once half the bytes have arrived, then fetched
again; the figure is the bytes the second fetch downloaded, as a share of the whole.

Last, the cold start of a serving replica (a tiny random VITS version, ~200 MB), both ways a pod
gets its model, alternating, ``COLD_PAIRS`` times each: from a volume (``tts-runtime serve`` on the
version folder, until ``/readyz`` answers 200) and from S3 (what the serving pod's ``fetch-model``
init container does first: ``fetch --manifest`` into an empty folder; then the same serve). Both
are reported; the ratio is the price of S3 over a volume already attached.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from .common import Report, Row, bench_main, median, progress, quick

FILES = 8
FULL_BYTES = 1 << 30
QUICK_BYTES = 64 << 20
#: ours should not be slower than boto3's download_file of the same objects
SPEED_GOAL = 1.0
#: a resumed half download transfers at most this share of the whole
RESUME_GOAL = 0.6
MIB = 1 << 20
#: cold starts of a serving replica, per source
COLD_PAIRS = 3


class _Interrupt(Exception):
    pass


def _sizes(total: int) -> list[int]:
    """``FILES`` sizes adding up to ``total``: one big file (as model.pth is), the rest smaller."""
    big = total // 2
    rest = total - big
    small = [rest // (FILES - 1)] * (FILES - 1)
    small[-1] += rest - sum(small)
    return [big, *small]


def _upload(client: Any, bucket: str, prefix: str, workdir: Path, sizes: list[int]) -> dict[str, Any]:
    """Write the model's files (pseudo-random, 8 MiB blocks salted per file) and upload them with a
    manifest; the manifest as a dict."""
    from boto3.s3.transfer import TransferConfig

    from tts_contract.contract import MANIFEST_NAME, Engine, ManifestFile, ModelManifest

    src = workdir / "src"
    src.mkdir()
    block = bytearray(hashlib.sha512(b"seed").digest() * (8 * MIB // 64))
    entries = []
    for i, size in enumerate(sizes):
        name = "model.pth" if i == 0 else f"part-{i}.bin"
        h = hashlib.sha256()
        with open(src / name, "wb") as f:
            left = size
            n = 0
            while left > 0:
                block[:16] = hashlib.md5(f"{i}:{n}".encode()).digest()
                chunk = bytes(block[: min(left, len(block))])
                f.write(chunk)
                h.update(chunk)
                left -= len(chunk)
                n += 1
        entries.append(ManifestFile(path=name, sha256=h.hexdigest(), size=size))
    manifest = ModelManifest(version="bench", engine=Engine.XTTS, files=entries)
    (src / MANIFEST_NAME).write_text(manifest.dumps())
    config = TransferConfig(multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB, max_concurrency=8)
    for p in sorted(src.iterdir()):
        client.upload_file(str(p), bucket, f"{prefix}/{p.name}", Config=config)
    shutil.rmtree(src)
    return manifest.model_dump(by_alias=True, mode="json")


def _ours(uri: str, dest: Path, env: dict[str, str], manifest: bool = False) -> dict[str, Any]:
    from tts_runtime.artifacts.fetch import fetch

    started = time.perf_counter()
    result = fetch(uri, dest, env=env, manifest=manifest)
    wall = time.perf_counter() - started
    return {"wall": wall, "bytes": result.bytes, "transferred": result.transferred}


def _plain(client: Any, bucket: str, prefix: str, names: list[str], dest: Path) -> dict[str, Any]:
    dest.mkdir(parents=True)
    started = time.perf_counter()
    for name in names:
        client.download_file(bucket, f"{prefix}/{name}", str(dest / name))
    wall = time.perf_counter() - started
    return {"wall": wall, "bytes": sum((dest / n).stat().st_size for n in names)}


def _resume(uri: str, dest: Path, env: dict[str, str], total: int) -> dict[str, Any]:
    from tts_runtime.artifacts.fetch import fetch
    from tts_runtime.artifacts.report import Progress
    from tts_runtime.artifacts.store import ArtifactError

    def die_half_way(p: Progress) -> None:
        if p.transferred >= total // 2:
            raise _Interrupt

    started = time.perf_counter()
    try:
        fetch(uri, dest, env=env, progress=die_half_way, retry_s=0)
        raise RuntimeError("the first fetch was not interrupted")
    except ArtifactError as e:  # the interruption, as fetch reports an unforeseen error
        if not isinstance(e.__cause__, _Interrupt):
            raise
    first_wall = time.perf_counter() - started
    first = _downloaded(dest)
    started = time.perf_counter()
    result = fetch(uri, dest, env=env)
    return {
        "firstWall": first_wall,
        "onDiskAfterInterrupt": first,
        "secondWall": time.perf_counter() - started,
        "secondTransferred": result.transferred,
        "total": total,
    }


def _cold_start(model_dir: Path, workdir: Path, source: tuple[str, dict[str, str]] | None) -> dict[str, Any]:
    """Seconds until a new server on the version answers ``/readyz``: from ``model_dir`` (a volume),
    or with ``source=(uri, env)`` first fetched into an empty folder as the init container does."""
    from tts_runtime.artifacts.fetch import fetch

    from .servers import ours

    started = time.perf_counter()
    fetched = None
    if source is not None:
        uri, env = source
        model_dir = workdir / "fetched"
        fetched = fetch(uri, model_dir, env=env, manifest=True)
    fetch_s = time.perf_counter() - started
    server = ours(model_dir, workdir).start()
    wall = time.perf_counter() - started
    server.stop()
    if source is not None:
        shutil.rmtree(model_dir)
    return {"wall": wall, "fetch": fetch_s, "bytes": fetched.bytes if fetched else 0}


def _cold_starts(client: Any, endpoint: Any, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    from tts_devcluster.s3 import copy
    from tts_runtime.demo_model import make_demo_model

    model_dir = make_demo_model(workdir / "cold" / "vits", "vits", seed=0)
    uri = f"s3://{endpoint.bucket}/bench-cold/vits"
    copy(client, str(model_dir), uri)
    source = (uri, endpoint.env("reader"))
    runs: dict[str, list[dict[str, Any]]] = {"volume": [], "s3": []}
    _cold_start(model_dir, workdir / "cold", None)  # warm the page cache and the imports
    for i in range(COLD_PAIRS):
        for side in ("volume", "s3") if i % 2 == 0 else ("s3", "volume"):
            progress(f"fetch: serving cold start {i + 1}/{COLD_PAIRS}, from {side}")
            runs[side].append(_cold_start(model_dir, workdir / "cold", source if side == "s3" else None))
    return runs


def _downloaded(dest: Path) -> int:
    """Bytes an interrupted fetch left: its finished files and what the journals of its ``.part``
    files cover (a part file's size says nothing: parts are written at their offsets)."""
    from tts_runtime.artifacts.fetch import JOURNAL_SUFFIX, PART_SUFFIX

    total = 0
    for p in dest.rglob("*"):
        if not p.is_file() or p.name.endswith(PART_SUFFIX):
            continue
        if p.name.endswith(JOURNAL_SUFFIX):
            lines = p.read_text().splitlines()[1:]
            total += sum(int(x.split()[1]) for x in lines if len(x.split()) == 2)
        else:
            total += p.stat().st_size
    return total


def run(report: Report, workdir: Path) -> None:
    from tts_devcluster.s3 import boto3_client, start_server, stop_server, weed_binary

    total = QUICK_BYTES if quick() else FULL_BYTES
    sizes = _sizes(total)
    # the 1 GiB run is long and needs 2 GiB of disk at a time: one pair; the quick one is cheap
    pairs = 3 if quick() else 1
    report.config = {
        "files": FILES,
        "totalMiB": total // MIB,
        "sizesMiB": [round(s / MIB, 1) for s in sizes],
        "pairs": pairs,
        "storage": "SeaweedFS on 127.0.0.1 (weed mini)",
        "baseline": "boto3 client.download_file per object, one after the other (default TransferConfig)",
    }
    try:
        weed = weed_binary()
    except RuntimeError as e:
        report.skipped = str(e)
        return
    progress(f"fetch: starting SeaweedFS, uploading {FILES} files, {total // MIB} MiB")
    proc, endpoint = start_server(workdir / "s3", weed=weed)
    try:
        client = boto3_client(endpoint, "admin")
        prefix = "bench-model"
        manifest = _upload(client, endpoint.bucket, prefix, workdir, sizes)
        names = [f["path"] for f in manifest["files"]]
        uri = f"s3://{endpoint.bucket}/{prefix}"
        env = endpoint.env("reader")
        reader = boto3_client(endpoint, "reader")
        # warm both sides up (imports, the first connections) on a small object
        client.put_object(Bucket=endpoint.bucket, Key="warm/up.bin", Body=b"w" * MIB)
        _ours(f"s3://{endpoint.bucket}/warm", workdir / "warm-ours", env)
        _plain(reader, endpoint.bucket, "warm", ["up.bin"], workdir / "warm-plain")
        ours: list[dict[str, Any]] = []
        plain: list[dict[str, Any]] = []
        for i in range(pairs):
            for side in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
                progress(f"fetch: pair {i + 1}/{pairs}, {side}")
                dest = workdir / f"{side}-{i}"
                if side == "ours":
                    ours.append(_ours(uri, dest, env))
                else:
                    plain.append(_plain(reader, endpoint.bucket, prefix, names, dest))
                shutil.rmtree(dest)
        progress("fetch: ours with --manifest (sha256 of every file checked)")
        checked = _ours(uri, workdir / "manifest", env, manifest=True)
        shutil.rmtree(workdir / "manifest")
        progress("fetch: a download interrupted half way, then resumed")
        resumed = _resume(uri, workdir / "resume", env, total)
        shutil.rmtree(workdir / "resume")
        cold = _cold_starts(client, endpoint, workdir)
    finally:
        stop_server(proc)

    ours_s = median([r["wall"] for r in ours])
    plain_s = median([r["wall"] for r in plain])
    row = report.add(
        Row(
            f"fetch {FILES} files, {total // MIB} MiB (median)",
            ours_s,
            "s",
            baseline=plain_s,
            goal=f"<= {SPEED_GOAL}x download_file one by one",
            note=f"ours {total / MIB / ours_s:.0f} MiB/s, download_file {total / MIB / plain_s:.0f} MiB/s",
        )
    )
    row.met = (row.ratio or 99) <= SPEED_GOAL
    report.add(
        Row(
            "fetch --manifest (every sha256 checked)",
            checked["wall"],
            "s",
            baseline=plain_s,
            goal="vs download_file one by one (which checks nothing)",
        )
    )
    share = resumed["secondTransferred"] / total
    row = report.add(
        Row(
            "resumed half download: bytes of the 2nd fetch",
            share * 100,
            "%",
            goal=f"<= {RESUME_GOAL * 100:.0f}% of the whole",
            note=(
                f"{resumed['secondTransferred'] / MIB:.0f} of {total / MIB:.0f} MiB downloaded again "
                f"in {resumed['secondWall']:.1f}s; {resumed['onDiskAfterInterrupt'] / MIB:.0f} MiB "
                "had been downloaded when it was interrupted"
            ),
        )
    )
    row.met = share <= RESUME_GOAL
    volume_s = median([r["wall"] for r in cold["volume"]])
    s3_s = median([r["wall"] for r in cold["s3"]])
    report.add(
        Row("serving cold start, model on a volume (median)", volume_s, "s", note="serve until /readyz")
    )
    report.add(
        Row(
            "serving cold start, model from S3 (median)",
            s3_s,
            "s",
            baseline=volume_s,
            goal="reported: the price of S3 over an attached volume",
            note=(
                f"fetch --manifest {median([r['fetch'] for r in cold['s3']]):.1f} s of it, "
                f"{cold['s3'][0]['bytes'] / MIB:.0f} MiB"
            ),
        )
    )
    report.raw = {"ours": ours, "plain": plain, "manifest": checked, "resume": resumed, "coldStart": cold}


def main(argv: list[str] | None = None) -> int:
    return bench_main(
        "fetch", "fetch", "issue 15: tts-runtime fetch from S3 (SeaweedFS, loopback)", run, __doc__, argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
