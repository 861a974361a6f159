"""The dev cluster's S3 server (SeaweedFS): it answers on 127.0.0.1 only, admin may write and reader
may not, the Secret carries exactly the StorageEnv keys and works from a pod, `tts-operator dev s3`
copies folders both ways and removes objects and prefixes, and `down` stops it by its PID."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from botocore.exceptions import ClientError

from support.s3 import boto3_client, unique_prefix
from support.waiting import wait_for
from tts_contract.contract import StorageEnv
from tts_devcluster import s3
from tts_devcluster.cluster import DevCluster, Ports
from tts_devcluster.procs import _start_time

ROOT = Path(__file__).resolve().parents[2]
STORAGE_KEYS = {
    StorageEnv.ACCESS_KEY_ID,
    StorageEnv.SECRET_ACCESS_KEY,
    StorageEnv.ENDPOINT_URL,
    StorageEnv.REGION,
    StorageEnv.ADDRESSING_STYLE,
}


def cli(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TTS_CLUSTER_DIR": str(cluster.state)}
    return subprocess.run(
        [sys.executable, "-m", "tts_operator.cli", "dev", "s3", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}:\n{out.stderr}{out.stdout}"
    return out.stdout


def one_error_line(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode == 1, f"exit {out.returncode}:\n{out.stderr}{out.stdout}"
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr, port = f[1].rsplit(":", 1)
                if len(addr) == 8:  # IPv4, little-endian hex
                    ip = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    ip = "::1" if addr == "0" * 24 + "01000000" else addr
                found.add((ip, int(port, 16)))
    return found


def test_the_s3_server_runs_on_loopback_ports_of_its_own(dev_cluster: DevCluster) -> None:
    status = dev_cluster.status()
    proc = status["processes"][s3.PROCESS]
    assert proc is not None and proc["alive"], status
    ep = dev_cluster.s3_endpoint()
    assert ep.url == f"http://127.0.0.1:{dev_cluster.ports.s3_ports.s3}" == status["s3"]["url"]
    assert (ep.bucket, ep.region) == (s3.BUCKET, "us-east-1")

    listening = listening_addresses(proc["pid"])
    assert listening, "SeaweedFS listens on nothing?"
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    assert {port for _, port in listening} <= set(dev_cluster.ports.s3_ports.all()), listening

    # the bucket is there, anonymous requests are refused
    assert s3.signed_status("HEAD", f"{ep.url}/{ep.bucket}", ep.admin) == 200
    assert s3.signed_status("HEAD", f"{ep.url}/{ep.bucket}", s3.S3Credentials("nobody", "x" * 40)) == 403


def test_admin_writes_and_reads_reader_reads_and_is_denied_writes(dev_cluster: DevCluster) -> None:
    ep = dev_cluster.s3_endpoint()
    admin, reader = boto3_client(ep, "admin"), boto3_client(ep, "reader")
    key = f"{unique_prefix('acl')}/hello.txt"

    admin.put_object(Bucket=ep.bucket, Key=key, Body=b"hello")
    assert admin.get_object(Bucket=ep.bucket, Key=key)["Body"].read() == b"hello"
    assert reader.get_object(Bucket=ep.bucket, Key=key)["Body"].read() == b"hello"
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=ep.bucket, Prefix=key)["Contents"]] == [key]

    for attempt in (
        lambda: reader.put_object(Bucket=ep.bucket, Key=f"{key}.2", Body=b"no"),
        lambda: reader.delete_object(Bucket=ep.bucket, Key=key),
        lambda: reader.create_bucket(Bucket="reader-may-not"),
    ):
        with pytest.raises(ClientError) as denied:
            attempt()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert admin.get_object(Bucket=ep.bucket, Key=key)["Body"].read() == b"hello"


def _secret_data(kubectl, namespace: str, name: str) -> tuple[dict[str, str], dict]:
    obj = json.loads(kubectl("-n", namespace, "get", "secret", name, "-o", "json").stdout)
    return {k: base64.b64decode(v).decode() for k, v in obj["data"].items()}, obj


def test_the_secrets_hold_exactly_the_storage_env_keys(
    dev_cluster: DevCluster, namespace: str, kubectl
) -> None:
    ep = dev_cluster.s3_endpoint()
    # `cluster up` wrote admin's keys into default/tts-s3
    data, _ = _secret_data(kubectl, "default", s3.SECRET_NAME)
    assert set(data) == STORAGE_KEYS
    assert data == ep.env("admin")
    assert data[StorageEnv.ADDRESSING_STYLE] == "path" and data[StorageEnv.ENDPOINT_URL] == ep.url

    assert f"Secret {namespace}/tts-s3: admin's keys" in ok(cli(dev_cluster, "secret", "-n", namespace))
    data, obj = _secret_data(kubectl, namespace, "tts-s3")
    assert data == ep.env("admin")
    # applied server-side: no last-applied annotation carrying the keys a second time
    assert "kubectl.kubernetes.io/last-applied-configuration" not in obj["metadata"].get("annotations", {})

    ok(cli(dev_cluster, "secret", "-n", namespace, "--name", "s3-ro", "--reader"))
    data, _ = _secret_data(kubectl, namespace, "s3-ro")
    assert set(data) == STORAGE_KEYS
    assert data[StorageEnv.ACCESS_KEY_ID] == ep.reader.access_key_id
    ok(cli(dev_cluster, "secret", "-n", namespace, "--name", "s3-ro", "--reader"))  # again: no change

    one_error_line(
        cli(dev_cluster, "secret", "-n", "no-such-ns-s3"), "namespace no-such-ns-s3 does not exist"
    )


def test_a_pod_with_the_secret_as_envfrom_writes_to_the_bucket(
    dev_cluster: DevCluster, namespace: str, kubectl
) -> None:
    ep = dev_cluster.s3_endpoint()
    ok(cli(dev_cluster, "secret", "-n", namespace))
    key = f"{unique_prefix('pod')}/written-by-pod"
    script = (
        "import os, sys\n"
        "from tts_devcluster.s3 import S3Credentials, signed_status\n"
        "creds = S3Credentials(os.environ['AWS_ACCESS_KEY_ID'], os.environ['AWS_SECRET_ACCESS_KEY'])\n"
        f"status = signed_status('PUT', os.environ['AWS_ENDPOINT_URL'] + '/{ep.bucket}/{key}', creds)\n"
        "print('PUT', status)\n"
        "sys.exit(0 if status == 200 else 1)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "s3-writer", "namespace": namespace},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "cpu-local-0"},
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "tts-runtime:dev",
                    "command": ["python", "-c", script],
                    "envFrom": [{"secretRef": {"name": "tts-s3"}}],
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))

    def finished() -> str | None:
        phase = kubectl("-n", namespace, "get", "pod", "s3-writer", "-o", "jsonpath={.status.phase}").stdout
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_for(finished, 90, "the pod to finish") == "Succeeded"
    head = boto3_client(ep, "reader").head_object(Bucket=ep.bucket, Key=key)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_dev_s3_cp_round_trips_a_folder(dev_cluster: DevCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "wavs" / "deep").mkdir(parents=True)
    files = {
        "metadata.csv": b"a|hello\nb|world\n",
        "wavs/a.wav": bytes(range(256)) * 40,
        "wavs/deep/b.wav": os.urandom(300_000),
        "name with space.txt": b"spaces are fine in keys",
    }
    for rel, content in files.items():
        (src / rel).write_bytes(content)
    prefix = f"s3://{s3.BUCKET}/{unique_prefix('cp')}/dataset"

    out = ok(cli(dev_cluster, "cp", str(src), prefix))
    assert f"copied {len(files)} file(s)" in out
    listing = ok(cli(dev_cluster, "ls", prefix, "--reader"))
    assert sorted(line.split("  s3://", 1)[1] for line in listing.splitlines()) == sorted(
        f"{prefix[len('s3://') :]}/{rel}" for rel in files
    )

    back = tmp_path / "back"
    assert f"copied {len(files)} file(s)" in ok(cli(dev_cluster, "cp", prefix, str(back), "--reader"))
    assert {p.relative_to(back).as_posix(): p.read_bytes() for p in back.rglob("*") if p.is_file()} == files

    # one object to a file, one file to a key
    ok(cli(dev_cluster, "cp", f"{prefix}/metadata.csv", str(tmp_path / "one.csv")))
    assert (tmp_path / "one.csv").read_bytes() == files["metadata.csv"]
    ok(cli(dev_cluster, "cp", str(tmp_path / "one.csv"), f"{prefix}/copy/"))
    assert f"{prefix}/copy/one.csv" in ok(cli(dev_cluster, "ls", f"{prefix}/copy"))


def test_dev_s3_rm_an_object_a_prefix_and_its_errors(dev_cluster: DevCluster, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "wavs").mkdir(parents=True)
    for rel in ("metadata.csv", "wavs/a.wav", "wavs/b.wav"):
        (src / rel).write_text(rel)
    top = f"s3://{s3.BUCKET}/{unique_prefix('rm')}"
    prefix, beside = f"{top}/dataset", f"{top}/dataset-2"  # a prefix that begins like it: kept
    ok(cli(dev_cluster, "cp", str(src), prefix))
    ok(cli(dev_cluster, "cp", str(src / "metadata.csv"), beside))

    def keys(where: str) -> set[str]:
        return {line.split("  s3://", 1)[1] for line in ok(cli(dev_cluster, "ls", where)).splitlines()}

    # one object; without --recursive a prefix, a missing key and a bare bucket are errors
    assert f"removed {prefix}/wavs/a.wav" in ok(cli(dev_cluster, "rm", f"{prefix}/wavs/a.wav"))
    one_error_line(cli(dev_cluster, "rm", f"{prefix}/wavs"), "a prefix, which --recursive removes")
    one_error_line(cli(dev_cluster, "rm", f"{prefix}/wavs/a.wav"), "no such object")
    one_error_line(cli(dev_cluster, "rm", f"s3://{s3.BUCKET}"), "a bucket", "--recursive")
    # reader may not delete: nothing goes
    one_error_line(cli(dev_cluster, "rm", prefix, "--recursive", "--reader"), "AccessDenied", prefix)
    one_error_line(cli(dev_cluster, "rm", f"{prefix}/metadata.csv", "--reader"), "AccessDenied")
    one_error_line(cli(dev_cluster, "rm", "s3://no-such-bucket-here/x", "--recursive"), "NoSuchBucket")
    assert keys(top) == {f"{prefix[5:]}/metadata.csv", f"{prefix[5:]}/wavs/b.wav", beside[5:]}

    # a whole prefix (as a folder); again, with nothing there, is no error (the demo's cleanup)
    out = ok(cli(dev_cluster, "rm", prefix, "--recursive"))
    assert f"removed 2 object(s), {len('metadata.csv') + len('wavs/b.wav')} bytes, under {prefix}" in out
    assert keys(top) == {beside[5:]}
    again = ok(cli(dev_cluster, "rm", prefix, "--recursive"))
    assert f"removed 0 object(s), 0 bytes, under {prefix}" in again
    # --recursive on one object's key removes that object
    assert "removed 1 object(s)" in ok(cli(dev_cluster, "rm", beside, "--recursive"))
    assert keys(top) == set()


def test_dev_s3_mb_env_and_its_errors(dev_cluster: DevCluster, tmp_path: Path) -> None:
    bucket = unique_prefix("mb")
    assert f"made s3://{bucket}" in ok(cli(dev_cluster, "mb", f"s3://{bucket}"))
    assert "exists already" in ok(cli(dev_cluster, "mb", f"s3://{bucket}"))
    assert f"s3://{bucket}" in ok(cli(dev_cluster, "ls"))

    env = dict(
        line.removeprefix("export ").split("=", 1) for line in ok(cli(dev_cluster, "env")).splitlines()
    )
    assert set(env) >= STORAGE_KEYS
    assert env[StorageEnv.ENDPOINT_URL] == dev_cluster.s3_endpoint().url

    (tmp_path / "f").write_text("x")
    one_error_line(
        cli(dev_cluster, "cp", str(tmp_path / "f"), f"s3://{s3.BUCKET}/ro/", "--reader"), "AccessDenied"
    )
    one_error_line(cli(dev_cluster, "mb", "s3://reader-bucket", "--reader"), "AccessDenied")
    one_error_line(cli(dev_cluster, "ls", "s3://no-such-bucket-here"), "NoSuchBucket")
    one_error_line(
        cli(dev_cluster, "cp", f"s3://{s3.BUCKET}/nothing/here", str(tmp_path / "x")), "no such object"
    )
    one_error_line(cli(dev_cluster, "cp", str(tmp_path / "f"), str(tmp_path / "g")), "one side must be local")
    one_error_line(cli(dev_cluster, "ls", "s3://Bad_Bucket"), "not a valid bucket name")


def test_down_stops_seaweedfs_by_pid_and_the_cli_says_it_is_not_running(tmp_path: Path) -> None:
    """Cheap: only SeaweedFS runs in this cluster's state folder (tests/cluster/test_lifecycle.py
    runs a whole second cluster through up and down)."""
    cluster = DevCluster(state_dir=tmp_path / "c", ports=Ports())
    proc, ep = s3.launch(cluster.state, s3.S3Ports.free(), procs=cluster.procs)
    try:
        s3.wait_ready(proc, ep)
        assert cluster.s3_endpoint() == ep
        assert cluster.processes()[s3.PROCESS] == proc
    finally:
        stopped = cluster.down(progress=lambda m: None)
    assert [p.pid for p in stopped if p.name == s3.PROCESS] == [proc.pid]
    assert _start_time(proc.pid) is None, f"SeaweedFS (pid {proc.pid}) still runs after down"
    with pytest.raises(s3.S3NotRunning, match="not running"):
        cluster.s3_endpoint()
    one_error_line(
        cli(cluster, "ls"), "the dev cluster is not running", str(cluster.state), "make cluster-up"
    )
    one_error_line(cli(cluster, "env"), "the dev cluster is not running")


def test_the_standalone_s3_server_fixture(s3_server: s3.S3Endpoint) -> None:
    """``s3_server`` (tests/support/s3.py): a SeaweedFS of the session's own, no cluster needed."""
    assert s3_server.url.startswith("http://127.0.0.1:") and s3_server.bucket == s3.BUCKET
    key = f"{unique_prefix('fixture')}/x"
    boto3_client(s3_server).put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
    reader = boto3_client(s3_server, "reader")
    assert reader.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"x"
    with pytest.raises(ClientError, match="AccessDenied"):
        reader.put_object(Bucket=s3_server.bucket, Key=key, Body=b"y")
