"""SeaweedFS as the dev cluster's S3 server: ``cluster up`` starts one, test fixtures can start their own.

One ``weed mini`` process (master, volume server, filer and S3 gateway in one) with every port bound
to 127.0.0.1, its data under ``<state>/s3/data``, and two identities whose keys are made afresh at
each start: ``admin`` (every action) and ``reader`` (Read and List only: its writes get 403
AccessDenied). The bucket ``tts`` exists from the start. Pods of the local nodes are processes on
this machine, so ``http://127.0.0.1:<port>`` reaches the server from them too.

Layout under a state folder (the dev cluster's, or any folder for ``start_server``)::

    s3/identities.json   the identities SeaweedFS loads (-s3.config), mode 0600
    s3/endpoint.json     the endpoint and the keys, for ``endpoint()`` and the CLI, mode 0600
    s3/data/             SeaweedFS's data (volumes, filer metadata)
    pids/seaweedfs.json  the process (ProcessTable); logs/seaweedfs.log its output
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import socket
import string
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tts_contract.contract import StorageEnv
from tts_devcluster.procs import ProcessTable, TrackedProcess

#: the bucket every start creates
BUCKET = "tts"
REGION = "us-east-1"
#: the identities every start makes: admin may do anything, reader may Read and List only
IDENTITIES = ("admin", "reader")
ACTIONS = {"admin": ["Admin", "Read", "List", "Tagging", "Write"], "reader": ["Read", "List"]}
#: the Secret ``cluster up`` writes (admin's keys) into namespace ``default``
SECRET_NAME = "tts-s3"
SECRET_NAMESPACE = "default"
#: the process name in the ProcessTable (PID file ``pids/seaweedfs.json``)
PROCESS = "seaweedfs"
#: the dev cluster's S3 port is its API server port + this (16443 -> 18333); the other SeaweedFS
#: ports follow every ``PORT_STRIDE`` (a stride of 10, so that the clusters of other checkouts
#: (TTS_CLUSTER_PORT_OFFSET, multiples of 1000) and of the tests (offsets of 1, 5) never share one)
PORT_FROM_APISERVER = 1890
PORT_STRIDE = 10
READY_TIMEOUT = 60.0


class S3NotRunning(RuntimeError):
    """The S3 server is not running: the message says which state folder and what to do."""


@dataclass(frozen=True)
class S3Ports:
    """Every port SeaweedFS listens on (all on 127.0.0.1)."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    #: mini's admin server (its UI is off; it still listens for maintenance workers)
    admin: int
    admin_grpc: int

    @classmethod
    def from_base(cls, base: int, stride: int = PORT_STRIDE) -> S3Ports:
        """``s3`` at ``base``, the others every ``stride`` ports above it."""
        return cls(*(base + i * stride for i in range(len(fields(cls)))))

    @classmethod
    def free(cls) -> S3Ports:
        """Ports that are free on 127.0.0.1 now (the kernel's picks; for fixtures)."""
        socks = []
        try:
            for _ in fields(cls):
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()

    def all(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


@dataclass(frozen=True)
class S3Endpoint:
    """Where the S3 server is and the keys of its two identities."""

    url: str
    bucket: str
    admin: S3Credentials
    reader: S3Credentials
    region: str = REGION

    def credentials(self, identity: str = "admin") -> S3Credentials:
        if identity not in IDENTITIES:
            raise ValueError(f"unknown S3 identity {identity!r}: one of {', '.join(IDENTITIES)}")
        creds: S3Credentials = getattr(self, identity)
        return creds

    def env(self, identity: str = "admin") -> dict[str, str]:
        """The ``StorageEnv`` variables for ``identity``: what a location's Secret holds, and what
        boto3, the AWS CLI and the runtime read."""
        c = self.credentials(identity)
        return {
            StorageEnv.ACCESS_KEY_ID: c.access_key_id,
            StorageEnv.SECRET_ACCESS_KEY: c.secret_access_key,
            StorageEnv.ENDPOINT_URL: self.url,
            StorageEnv.REGION: self.region,
            StorageEnv.ADDRESSING_STYLE: "path",
        }

    def secret_manifest(self, namespace: str, name: str = SECRET_NAME, identity: str = "admin") -> dict:
        return secret_manifest(self, namespace, name, identity)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> S3Endpoint:
        d = json.loads(text)
        return cls(
            url=d["url"],
            bucket=d["bucket"],
            admin=S3Credentials(**d["admin"]),
            reader=S3Credentials(**d["reader"]),
            region=d.get("region", REGION),
        )


def secret_manifest(
    endpoint: S3Endpoint, namespace: str, name: str = SECRET_NAME, identity: str = "admin"
) -> dict:
    """A Secret whose keys are exactly the ``StorageEnv`` names of an S3 location (a location's
    ``secretRef`` names it)."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in endpoint.env(identity).items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "tts-operator-dev",
                "tts-operator.dev/s3-identity": identity,
            },
        },
        "type": "Opaque",
        "data": data,
    }


def s3_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "s3"


def endpoint(state_dir: Path) -> S3Endpoint:
    """The endpoint the server under ``state_dir`` was started with; ``S3NotRunning`` (one line:
    what is wrong, what to do) when it is not running."""
    state_dir = Path(state_dir)
    tp = ProcessTable(state_dir / "pids").get(PROCESS)
    ep_file = s3_dir(state_dir) / "endpoint.json"
    if tp is None or not ep_file.exists():
        raise S3NotRunning(
            f"the dev cluster's S3 server is not running (state in {state_dir}): `make cluster-up` starts it"
        )
    if not tp.alive():
        raise S3NotRunning(
            f"the dev cluster's S3 server (SeaweedFS, pid {tp.pid}) is not running: its log is {tp.log}; "
            "`make cluster-up` starts a fresh cluster"
        )
    return S3Endpoint.from_json(ep_file.read_text())


def weed_binary(build: bool = False) -> Path:
    """SeaweedFS's ``weed`` in its version-keyed cache (``hack/build-control-plane.sh``); built
    first when ``build`` is set and it is missing."""
    from tts_devcluster.cluster import repo_root

    script = repo_root() / "hack" / "build-control-plane.sh"
    if build:
        built = subprocess.run(["bash", str(script), "seaweedfs"], check=False, stdout=subprocess.DEVNULL)
        if built.returncode != 0:
            raise RuntimeError(
                f"`bash hack/build-control-plane.sh seaweedfs` failed (exit {built.returncode}): its own "
                "lines above say why; `make setup` installs what the build needs"
            )
    out = subprocess.run(
        ["bash", str(script), "print-seaweedfs"], check=False, stdout=subprocess.PIPE, text=True
    )
    path = Path(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else None
    if path is None or not path.exists():
        raise RuntimeError(
            f"SeaweedFS's weed is not built ({path}): `bash hack/build-control-plane.sh seaweedfs` "
            "(or `make setup`) builds it"
        )
    return path


def _key(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def new_credentials() -> dict[str, S3Credentials]:
    """Fresh random keys for each identity (AWS-shaped: a 20-character id, a 40-character secret)."""
    return {
        name: S3Credentials(
            access_key_id="TTS" + _key(17, string.ascii_uppercase + string.digits),
            secret_access_key=_key(40, string.ascii_letters + string.digits + "+/"),
        )
        for name in IDENTITIES
    }


def _socket_path(folder: Path, name: str, port: int) -> str:
    """Where a SeaweedFS unix socket goes: in ``folder`` unless that path is too long for a socket
    (its default, /tmp/seaweedfs-<name>-<port>.sock, is shared by every server on that port)."""
    path = str(folder / f"{name}.sock")
    return path if len(path) < 100 else f"/tmp/tts-seaweedfs-{name}-{port}-{os.getpid()}.sock"


def launch(
    state_dir: Path,
    ports: S3Ports | int,
    *,
    weed: Path | None = None,
    procs: ProcessTable | None = None,
    bucket: str = BUCKET,
) -> tuple[TrackedProcess, S3Endpoint]:
    """Start SeaweedFS under ``state_dir`` (see the module's docstring) without waiting for it;
    ``wait_ready`` waits. ``ports``: an ``S3Ports``, or the S3 port with the others every 10 above."""
    state_dir = Path(state_dir)
    ports = ports if isinstance(ports, S3Ports) else S3Ports.from_base(ports)
    weed = weed or weed_binary()
    procs = procs or ProcessTable(state_dir / "pids")
    folder = s3_dir(state_dir)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    creds = new_credentials()
    config = {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": c.access_key_id, "secretKey": c.secret_access_key}],
                "actions": ACTIONS[name],
            }
            for name, c in creds.items()
        ]
    }
    _write_private(folder / "identities.json", json.dumps(config, indent=2))
    ep = S3Endpoint(
        url=f"http://127.0.0.1:{ports.s3}", bucket=bucket, admin=creds["admin"], reader=creds["reader"]
    )
    _write_private(folder / "endpoint.json", ep.to_json())
    p = ports
    argv = [
        str(weed),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",  # no calls home (this machine has no internet anyway)
        f"-master.port={p.master}",
        f"-master.port.grpc={p.master_grpc}",
        f"-volume.port={p.volume}",
        f"-volume.port.grpc={p.volume_grpc}",
        f"-filer.port={p.filer}",
        f"-filer.port.grpc={p.filer_grpc}",
        f"-filer.localSocket={_socket_path(folder, 'filer', p.filer)}",
        f"-s3.port={p.s3}",
        f"-s3.port.grpc={p.s3_grpc}",
        f"-s3.localSocket={_socket_path(folder, 's3', p.s3)}",
        f"-s3.config={folder / 'identities.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        f"-admin.port={p.admin}",
        f"-admin.port.grpc={p.admin_grpc}",
        "-admin.port.legacy=0",
        "-webdav=false",
        "-volume.preStopSeconds=0",  # a dev server: no grace for clients to move away
        f"-bucket={bucket}",
    ]
    tp = procs.start(PROCESS, argv, state_dir / "logs" / f"{PROCESS}.log")
    return tp, ep


def wait_ready(tp: TrackedProcess, ep: S3Endpoint, timeout: float = READY_TIMEOUT) -> None:
    """Poll until admin's HEAD of the bucket answers 200 (the identities are loaded and the bucket
    exists); RuntimeError with the log's tail if the process exits, TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if not tp.alive():
            raise RuntimeError(f"SeaweedFS (pid {tp.pid}) exited while starting:\n{_tail(Path(tp.log))}")
        if signed_status("HEAD", f"{ep.url}/{ep.bucket}", ep.admin, ep.region) == 200:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"SeaweedFS (pid {tp.pid}) does not serve bucket {ep.bucket} at {ep.url} after "
                f"{timeout:.0f}s; its log: {tp.log}"
            )
        time.sleep(0.1)


def start_server(
    state_dir: Path,
    ports: S3Ports | int | None = None,
    *,
    weed: Path | None = None,
    bucket: str = BUCKET,
    timeout: float = READY_TIMEOUT,
) -> tuple[TrackedProcess, S3Endpoint]:
    """Start SeaweedFS under ``state_dir`` (free ports unless given) and return once it serves the
    bucket. Stop it with ``stop_server`` (by PID). For test fixtures; the dev cluster starts its own."""
    tp, ep = launch(state_dir, ports or S3Ports.free(), weed=weed, bucket=bucket)
    try:
        wait_ready(tp, ep, timeout)
    except BaseException:
        stop_server(tp)
        raise
    return tp, ep


def stop_server(tp: TrackedProcess, grace: float = 10.0) -> None:
    """SIGTERM to its process group (SIGKILL after ``grace``), by PID."""
    tp.stop(grace=grace)


def signed_status(method: str, url: str, creds: S3Credentials, region: str = REGION) -> int | None:
    """The HTTP status of an empty-bodied request signed with AWS Signature V4 (for readiness
    checks, without importing boto3); None when nothing answers."""
    parsed = urllib.parse.urlsplit(url)
    now = dt.datetime.now(dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": parsed.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parsed.path or "/"),
            parsed.query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_access_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = (
        f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}"
    )
    req = urllib.request.Request(url, method=method)
    for k, v in headers.items():
        if k != "host":
            req.add_header(k, v)
    req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def boto3_client(ep: S3Endpoint, identity: str = "admin") -> Any:
    """A boto3 S3 client for ``identity`` (path-style addressing; boto3 imported here only)."""
    import boto3
    from botocore.config import Config

    c = ep.credentials(identity)
    return boto3.client(
        "s3",
        endpoint_url=ep.url,
        region_name=ep.region,
        aws_access_key_id=c.access_key_id,
        aws_secret_access_key=c.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
    )


# --- copying, listing, removing (``tts-operator dev s3 cp|ls|rm``) ----------------------------------


@dataclass(frozen=True)
class Copied:
    files: int
    bytes: int


def _is_s3(location: str) -> bool:
    return location.startswith("s3://")


def _s3_uri(location: str) -> Any:
    from tts_contract.uris import parse

    uri = parse(location)
    if uri.scheme != "s3":
        raise ValueError(f"{location}: not an s3:// location")
    return uri


def copy(client: Any, src: str, dst: str) -> Copied:
    """Copy a local file or folder (recursively) to ``s3://bucket/prefix``, or an object or every
    object under a prefix to a local path. ``ValueError`` for what cannot be copied (both local,
    both s3, nothing there)."""
    if _is_s3(src) == _is_s3(dst):
        raise ValueError(f"cp {src} {dst}: one side must be local and the other s3://bucket/prefix")
    if _is_s3(dst):
        return _upload(client, Path(src), _s3_uri(dst), dst.endswith("/"))
    return _download(client, _s3_uri(src), Path(dst), dst.endswith("/"))


def _upload(client: Any, src: Path, uri: Any, into: bool) -> Copied:
    if src.is_dir():
        files = sorted(f for f in src.rglob("*") if f.is_file())
        pairs = [(f, uri.key(f.relative_to(src).as_posix())) for f in files]
    elif src.is_file():
        key = uri.path if uri.path and not into else uri.key(src.name)
        pairs = [(src, key)]
    else:
        raise ValueError(f"{src}: no such file or directory")
    total = 0
    for f, key in pairs:
        client.upload_file(str(f), uri.bucket, key)
        total += f.stat().st_size
    return Copied(len(pairs), total)


def list_objects(client: Any, location: str) -> list[dict[str, Any]]:
    """The objects under ``s3://bucket/prefix`` (as a folder: ``prefix/…``), or the one object of
    that key when there are none; each as S3's ``Key``, ``Size``, ``LastModified``."""
    uri = _s3_uri(location)
    prefix = f"{uri.path}/" if uri.path else ""
    found: list[dict[str, Any]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        found += page.get("Contents", [])
    if not found and uri.path:
        from botocore.exceptions import ClientError

        try:
            head = client.head_object(Bucket=uri.bucket, Key=uri.path)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:
            found = [{"Key": uri.path, "Size": head["ContentLength"], "LastModified": head["LastModified"]}]
    return found


def _download(client: Any, uri: Any, dst: Path, into: bool) -> Copied:
    objects = list_objects(client, str(uri))
    if not objects:
        raise ValueError(f"{uri}: no such object or prefix")
    prefix = f"{uri.path}/" if uri.path else ""
    single = len(objects) == 1 and objects[0]["Key"] == uri.path
    root = dst.resolve()
    total = 0
    for obj in objects:
        key = obj["Key"]
        if single:
            target = dst / Path(key).name if into or dst.is_dir() else dst
        else:
            rel = key[len(prefix) :]
            target = dst / rel
            # keys are not paths: one climbing out of the destination is refused
            if not rel or rel.endswith("/") or not target.resolve().is_relative_to(root):
                raise ValueError(f"s3://{uri.bucket}/{key}: refusing a key that is not a file under {dst}")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(uri.bucket, key, str(target))
        total += int(obj["Size"])
    return Copied(len(objects), total)


def remove(client: Any, location: str, recursive: bool = False) -> Copied:
    """Delete the object ``s3://bucket/key``, or with ``recursive`` every object ``list_objects``
    finds there (a whole prefix, as a folder; none is no error, so a cleanup can run twice).
    ``ValueError`` for a key that is not there (saying when ``recursive`` would remove a prefix) or
    for an object S3 refused to delete (its code and the key)."""
    uri = _s3_uri(location)
    if recursive:
        objects = list_objects(client, location)
    else:
        if not uri.path:
            raise ValueError(f"{location}: a bucket; name a key, or pass --recursive to empty it")
        objects = [o for o in list_objects(client, location) if o["Key"] == uri.path]
        if not objects:
            there = bool(list_objects(client, location))
            hint = ": a prefix, which --recursive removes" if there else ": no such object"
            raise ValueError(f"{location}{hint}")
    total = 0
    for start in range(0, len(objects), 1000):  # DeleteObjects takes at most 1000 keys
        batch = objects[start : start + 1000]
        answer = client.delete_objects(
            Bucket=uri.bucket, Delete={"Objects": [{"Key": o["Key"]} for o in batch], "Quiet": True}
        )
        errors = answer.get("Errors") or []
        if errors:
            first = errors[0]
            more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
            why = str(first.get("Message") or "not deleted").rstrip(".")
            raise ValueError(
                f"{first.get('Code', '?')}: {why} (s3://{uri.bucket}/{first.get('Key', '?')}{more})"
            )
        total += sum(int(o["Size"]) for o in batch)
    return Copied(len(objects), total)


def make_bucket(client: Any, location: str) -> bool:
    """Create the bucket of ``s3://bucket``; False when it exists already (it is yours)."""
    from botocore.exceptions import ClientError

    uri = _s3_uri(location)
    if uri.path:
        raise ValueError(f"{location}: a bucket is s3://NAME, without a key")
    try:
        client.create_bucket(Bucket=uri.bucket)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            return False
        raise
    return True


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
