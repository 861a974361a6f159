"""`tts-operator`: run the operator, promote a trained model, and drive the local dev cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _dev_cluster() -> Any:
    """The dev tooling's ``DevCluster`` class: a checkout's tool (``devtools/``), not in the
    operator image, so imported only when a ``dev`` command runs."""
    try:
        from tts_devcluster.cluster import DevCluster
    except ImportError as e:
        raise RuntimeError(
            "`tts-operator dev` needs the dev tooling (devtools/tts_devcluster), which a checkout "
            f"installs with `make setup` and the operator image does not carry ({e})"
        ) from e
    return DevCluster


def _cluster_up(args: argparse.Namespace) -> int:
    DevCluster = _dev_cluster()
    kubeconfig = DevCluster().up(progress=lambda m: print(m, file=sys.stderr), build=not args.no_build)
    print(kubeconfig)
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    DevCluster = _dev_cluster()
    stopped = DevCluster().down(progress=lambda m: print(m, file=sys.stderr))
    print(f"stopped {len(stopped)} process(es); nothing left running")
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    DevCluster = _dev_cluster()
    st = DevCluster().status()
    print(json.dumps(st, indent=2))
    if st["problem"]:
        print(f"error: {st['problem']}", file=sys.stderr)
        return 1
    return 0


def _dev_env(args: argparse.Namespace) -> int:
    """Shell lines that put the project's kubectl, helm and CLIs first on PATH and point KUBECONFIG
    at the local cluster: ``eval "$(tts-operator dev env)"``."""
    import shlex

    cluster = _dev_cluster()()
    from tts_devcluster.cluster import control_plane_bin

    tools = control_plane_bin(build=False)
    if not (tools / "kubectl").exists():
        print(f"error: no kubectl in {tools}: run `make setup` first", file=sys.stderr)
        return 1
    venv_bin = Path(sys.prefix) / "bin"
    print(f'export PATH={shlex.quote(str(tools))}:{shlex.quote(str(venv_bin))}:"$PATH"')
    print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}")
    problem = cluster.problem()
    if problem:  # the lines are still right: they point at where the cluster will be
        print(f"# {problem}", file=sys.stderr)
    return 0


def _volume_create(args: argparse.Namespace) -> int:
    cluster = _dev_cluster()()
    from tts_devcluster.volumes import create_volume

    cluster.require_running()  # a PVC never binds without the controller-manager
    path = create_volume(
        cluster,
        args.name,
        args.namespace,
        Path(args.from_dir) if args.from_dir else None,
        args.size,
        progress=lambda m: print(m, file=sys.stderr),
        mode=args.access_mode,
    )
    print(path)
    return 0


def _volume_delete(args: argparse.Namespace) -> int:
    cluster = _dev_cluster()()
    from tts_devcluster.volumes import delete_volume, delete_volumes

    if not args.names and not args.all:
        print("error: name the volumes to delete, or pass --all", file=sys.stderr)
        return 2
    cluster.require_running()
    if args.all:
        n = delete_volumes(cluster, args.namespace, wait=True)
        print(f"deleted {n} dev volume(s) of namespace {args.namespace} and their data")
    for name in args.names:
        delete_volume(cluster, name, args.namespace)
        print(f"deleted volume {args.namespace}/{name} and its data")
    return 0


def _s3(cluster: Any) -> Any:
    """The dev cluster's S3 endpoint (``tts_devcluster.s3.S3Endpoint``); when it is not running,
    the cluster's own one-line problem (what is down, what to do)."""
    from tts_devcluster.cluster import ClusterNotRunning
    from tts_devcluster.s3 import S3NotRunning

    try:
        return cluster.s3_endpoint()
    except S3NotRunning as e:
        raise ClusterNotRunning(cluster.problem() or str(e)) from None


def _s3_client_call(args: argparse.Namespace, call: Any) -> int:
    """Run ``call(client, endpoint)`` with a boto3 client of the chosen identity; S3's refusals and
    unreachable servers as one ``error:`` line."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    from tts_devcluster.s3 import boto3_client

    ep = _s3(_dev_cluster()())
    try:
        return int(call(boto3_client(ep, "reader" if args.reader else "admin"), ep))
    except ClientError as e:
        err = e.response.get("Error", {})
        print(f"error: {err.get('Code', '?')}: {err.get('Message') or e}", file=sys.stderr)
    except (Boto3Error, BotoCoreError, ValueError) as e:  # an upload's Boto3Error names the file
        print(f"error: {e}", file=sys.stderr)
    return 1


def _s3_secret(args: argparse.Namespace) -> int:
    import yaml

    from tts_devcluster.s3 import secret_manifest

    cluster = _dev_cluster()()
    ep = _s3(cluster)
    cluster.require_running()
    identity = "reader" if args.reader else "admin"
    manifest = secret_manifest(ep, args.namespace, args.name, identity)
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tts-operator-dev",
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
        check=False,
    )
    if out.returncode != 0:
        if f'namespaces "{args.namespace}" not found' in out.stderr:
            print(
                f"error: namespace {args.namespace} does not exist: create it first "
                f"(kubectl create namespace {args.namespace})",
                file=sys.stderr,
            )
        else:
            lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"kubectl exit {out.returncode}"
            print(f"error: applying Secret {args.namespace}/{args.name}: {why}", file=sys.stderr)
        return 1
    print(f"Secret {args.namespace}/{args.name}: {identity}'s keys for {ep.url}")
    return 0


def _s3_cp(args: argparse.Namespace) -> int:
    from tts_devcluster.s3 import copy

    def call(client: Any, ep: Any) -> int:
        done = copy(client, args.src, args.dst)
        print(f"copied {done.files} file(s), {done.bytes} bytes, to {args.dst}")
        return 0

    return _s3_client_call(args, call)


def _s3_ls(args: argparse.Namespace) -> int:
    from tts_devcluster.s3 import list_objects

    def call(client: Any, ep: Any) -> int:
        if args.uri is None:
            for b in client.list_buckets().get("Buckets", []):
                print(f"{b['CreationDate']:%Y-%m-%d %H:%M:%S}  s3://{b['Name']}")
            return 0
        bucket = args.uri[len("s3://") :].split("/", 1)[0]
        for obj in list_objects(client, args.uri):
            print(f"{obj['LastModified']:%Y-%m-%d %H:%M:%S} {obj['Size']:>12}  s3://{bucket}/{obj['Key']}")
        return 0

    return _s3_client_call(args, call)


def _s3_rm(args: argparse.Namespace) -> int:
    from tts_devcluster.s3 import remove

    def call(client: Any, ep: Any) -> int:
        done = remove(client, args.uri, recursive=args.recursive)
        if args.recursive:
            print(f"removed {done.files} object(s), {done.bytes} bytes, under {args.uri}")
        else:
            print(f"removed {args.uri}")
        return 0

    return _s3_client_call(args, call)


def _s3_mb(args: argparse.Namespace) -> int:
    from tts_devcluster.s3 import make_bucket

    def call(client: Any, ep: Any) -> int:
        made = make_bucket(client, args.uri)
        print(f"{'made' if made else 'exists already:'} {args.uri}")
        return 0

    return _s3_client_call(args, call)


def _s3_env(args: argparse.Namespace) -> int:
    """Export lines for the AWS_* variables of the dev S3 server: ``eval "$(tts-operator dev s3 env)"``."""
    import shlex

    ep = _s3(_dev_cluster()())
    env = ep.env("reader" if args.reader else "admin")
    env["AWS_DEFAULT_REGION"] = ep.region  # what the AWS CLI reads
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


def _run_operator(args: argparse.Namespace) -> int:
    from tts_operator import manager, settings

    try:
        cfg = settings.from_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return manager.run(cfg)


def _api_message(e: Any) -> str:
    """The message of the API server's Status in an ApiException's body (else its raw body)."""
    try:
        return str(json.loads(e.body).get("message") or e.body)
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "").strip()


def _run_not_found(kube: Any, namespace: str, name: str) -> str:
    """Why TrainingRun ``namespace/name`` was not found: the namespace itself may not exist."""
    from kubernetes.client.rest import ApiException

    try:
        kube.core.read_namespace(namespace, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return f"namespace {namespace} does not exist (`kubectl get namespaces` lists them)"
    return f"TrainingRun {namespace}/{name} not found (`kubectl -n {namespace} get trainingruns` lists them)"


def _promote(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    from tts_operator import api, promote
    from tts_operator.kube.client import Kube, check_reachable, load_client

    path = Path(args.voicemodel)
    try:
        text = path.read_text()
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 1
    api_client = load_client(args.kubeconfig)
    check_reachable(api_client.configuration, args.kubeconfig)
    kube = Kube(api_client)
    try:
        body = kube.get_object(api.TRAININGRUN, args.namespace, args.run)
        if body is None:
            print(f"error: {_run_not_found(kube, args.namespace, args.run)}", file=sys.stderr)
            return 1
    except ApiException as e:
        print(
            f"error: reading TrainingRun {args.namespace}/{args.run}: {e.status} {e.reason}: "
            f"{_api_message(e)}",
            file=sys.stderr,
        )
        return 1
    run = api.TrainingRun.model_validate(body)
    output = run.status.output
    if output is None:
        phase = run.status.phase.value if run.status.phase else "not started"
        print(
            f"error: TrainingRun {args.run} has not exported a version yet (phase: {phase})", file=sys.stderr
        )
        return 1
    target = run.spec.promote.voice_model if run.spec.promote else None
    try:
        new_text, name = promote.rewrite_manifest(
            text, run.metadata.name, output.version, run.spec.export, target
        )
    except promote.PromoteError as e:
        print(f"error: {path}: {e}", file=sys.stderr)
        return 1
    if new_text == text:
        print(f"{path}: VoiceModel {name} already serves version {output.version}")
        return 0
    if args.dry_run:
        import difflib

        sys.stdout.writelines(
            difflib.unified_diff(text.splitlines(True), new_text.splitlines(True), str(path), str(path))
        )
        return 0
    path.write_text(new_text)
    print(f"{path}: VoiceModel {name} now serves version {output.version} of TrainingRun {run.metadata.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tts-operator",
        description="Train and serve text-to-speech models on Kubernetes GPUs.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from tts_operator import settings

    run = sub.add_parser(
        "run",
        help="run the operator (TrainingRun and VoiceModel controllers) against the current cluster",
        description="Run the operator: watch TrainingRuns and their Jobs/Pods, create training and "
        "export Jobs, keep status up to date. Flags fall back to TTS_OPERATOR_* environment variables.",
    )
    settings.add_arguments(run)
    run.set_defaults(func=_run_operator)

    pr = sub.add_parser(
        "promote",
        help="point a VoiceModel manifest file at a TrainingRun's exported version (for GitOps)",
        description="Rewrite the VoiceModel in FILE to serve the version TrainingRun RUN exported: "
        "spec.version and the model source change, comments and formatting stay. A CI bot commits the "
        "result and opens the pull request.",
    )
    pr.add_argument("run", metavar="RUN", help="the TrainingRun's name")
    pr.add_argument("-n", "--namespace", default="default", help="the TrainingRun's namespace")
    pr.add_argument("--voicemodel", required=True, metavar="FILE", help="the VoiceModel manifest to rewrite")
    pr.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    pr.add_argument("--dry-run", action="store_true", help="print the change as a diff; leave the file")
    pr.set_defaults(func=_promote)

    dev = sub.add_parser("dev", help="the local development cluster (tests and demo)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="WHAT")

    cl = dev_sub.add_parser("cluster", help="start, stop or inspect the local control plane")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = cl_sub.add_parser(
        "up",
        help="start etcd, kube-apiserver, controller-manager, scheduler, kwok and the pod runner "
        "(reuses a healthy running cluster); prints the kubeconfig path",
    )
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    up.set_defaults(func=_cluster_up)
    cl_sub.add_parser("down", help="stop every process `up` started, by PID").set_defaults(func=_cluster_down)
    cl_sub.add_parser(
        "status", help="processes and API health as JSON (exit 1, and what is wrong, unless healthy)"
    ).set_defaults(func=_cluster_status)

    dev_sub.add_parser(
        "env",
        help="print the export lines that put the project's kubectl, helm and CLIs on PATH and "
        'KUBECONFIG on the local cluster: eval "$(tts-operator dev env)"',
    ).set_defaults(func=_dev_env)
    vol = dev_sub.add_parser("volume", help="volumes backed by local folders")
    vol_sub = vol.add_subparsers(dest="volume_command", required=True, metavar="ACTION")
    vc = vol_sub.add_parser("create", help="create a PV (a folder under .cluster/volumes/) and a bound PVC")
    vc.add_argument("name", help="PVC name")
    vc.add_argument("-n", "--namespace", default="default")
    vc.add_argument("--from", dest="from_dir", metavar="DIR", help="pre-fill the volume with DIR's contents")
    vc.add_argument("--size", default="10Gi", help="requested size (not enforced locally)")
    vc.add_argument(
        "--access-mode",
        default="ReadWriteMany",
        metavar="MODE",
        help="ReadWriteMany (RWX, the default: any pod on any node), ReadWriteOnce (RWO: one node at a "
        "time; a pod on another node waits with a Multi-Attach error), ReadOnlyMany (ROX) or "
        "ReadWriteOncePod (RWOP: one pod)",
    )
    vc.set_defaults(func=_volume_create)
    vd = vol_sub.add_parser("delete", help="delete volumes `create` made: the PVC, the PV and the folder")
    vd.add_argument("names", nargs="*", metavar="NAME", help="PVC names")
    vd.add_argument("-n", "--namespace", default="default")
    vd.add_argument("--all", action="store_true", help="every dev volume made for the namespace")
    vd.set_defaults(func=_volume_delete)

    s3 = dev_sub.add_parser(
        "s3",
        help="the cluster's S3 server (SeaweedFS on 127.0.0.1, bucket tts): Secrets, cp, ls, rm, mb, env",
    )
    s3_sub = s3.add_subparsers(dest="s3_command", required=True, metavar="ACTION")
    reader_help = "as the read-only identity `reader` (Read and List; writes get AccessDenied)"
    ss = s3_sub.add_parser(
        "secret",
        help="apply a Secret with the S3 location's keys (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...) "
        "into a namespace, for a location's secretRef",
    )
    ss.add_argument("-n", "--namespace", default="default")
    ss.add_argument("--name", default="tts-s3", help="the Secret's name (default: tts-s3)")
    ss.add_argument("--reader", action="store_true", help="reader's keys instead of admin's")
    ss.set_defaults(func=_s3_secret)
    sc = s3_sub.add_parser(
        "cp",
        help="copy a local file or folder (recursively) to s3://bucket/prefix, or s3://… to a local path",
    )
    sc.add_argument("src", metavar="SRC")
    sc.add_argument("dst", metavar="DST")
    sc.add_argument("--reader", action="store_true", help=reader_help)
    sc.set_defaults(func=_s3_cp)
    sl = s3_sub.add_parser("ls", help="list the objects under s3://bucket/prefix (no URI: the buckets)")
    sl.add_argument("uri", nargs="?", metavar="s3://BUCKET[/PREFIX]")
    sl.add_argument("--reader", action="store_true", help=reader_help)
    sl.set_defaults(func=_s3_ls)
    sr = s3_sub.add_parser(
        "rm", help="delete an object, or with --recursive every object under s3://bucket/prefix"
    )
    sr.add_argument("uri", metavar="s3://BUCKET/KEY")
    sr.add_argument(
        "--recursive",
        action="store_true",
        help="every object under the prefix (as a folder: PREFIX/...); none there is no error",
    )
    sr.add_argument("--reader", action="store_true", help=reader_help)
    sr.set_defaults(func=_s3_rm)
    sm = s3_sub.add_parser("mb", help="make a bucket (exit 0 if it exists already)")
    sm.add_argument("uri", metavar="s3://BUCKET")
    sm.add_argument("--reader", action="store_true", help=reader_help)
    sm.set_defaults(func=_s3_mb)
    se = s3_sub.add_parser(
        "env",
        help='print export lines for the AWS_* variables of the S3 server: eval "$(tts-operator dev s3 env)"',
    )
    se.add_argument("--reader", action="store_true", help="reader's keys instead of admin's")
    se.set_defaults(func=_s3_env)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
