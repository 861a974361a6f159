"""TrainingRuns under faults: the operator killed with SIGKILL at random points of 200 create/update/
delete operations, and etcd and kube-apiserver restarted mid-flight. Afterwards everything converges:
every run has exactly its children (owned by it, by uid), no child outlives its run, no run has two
training Jobs, and every status matches the spec and the Jobs.

Runs ask for 9 GPUs (no node has that many: they stay Pending, with their Job, for as long as the test
likes) or 1 GPU on a kwok node (the pod "succeeds" at once, nothing is exported, so the run ends Failed
with ExportReportMissing): both a steady and a terminal state are checked.
"""

# kubernetes models type every field Optional; the tests check presence by using them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from operator_process import OperatorProcess

from support.waiting import wait_until
from tts_operator import api
from tts_operator.builders import training as builders
from tts_operator.settings import MANAGED_SELECTOR

pytestmark = pytest.mark.chaos

H100 = "NVIDIA-H100-80GB-HBM3"
G, V, PLURAL = api.API_GROUP, api.API_VERSION, "trainingruns"


@dataclass
class Want:
    """What the test last asked of one run."""

    gpus: int
    epochs: int = 3
    suspend: bool = False


def run_body(name: str, want: Want) -> dict[str, Any]:
    return {
        "apiVersion": api.API_GROUP_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "engine": "vits",
            "dataset": {"volume": {"claimName": "data"}},
            "training": {"epochs": want.epochs},
            "checkpoints": {"volume": {"claimName": "ckpt"}},
            "export": {"volume": {"claimName": "models"}},
            "resources": {"gpus": want.gpus, "gpuProduct": H100},
            "suspend": want.suspend,
        },
    }


class Api:
    def __init__(self, kubeconfig: str, ns: str) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.client = client.ApiClient(cfg)
        self.ns = ns
        self.custom = client.CustomObjectsApi(self.client)
        self.core = client.CoreV1Api(self.client)
        self.batch = client.BatchV1Api(self.client)
        self.rbac = client.RbacAuthorizationV1Api(self.client)

    def runs(self) -> dict[str, dict[str, Any]]:
        listed: Any = self.custom.list_namespaced_custom_object(G, V, self.ns, PLURAL)
        items: list[dict[str, Any]] = listed["items"]
        return {r["metadata"]["name"]: r for r in items}

    def children(self) -> dict[str, list[Any]]:
        sel = MANAGED_SELECTOR
        return {
            "Job": self.batch.list_namespaced_job(self.ns, label_selector=sel).items,
            "ConfigMap": self.core.list_namespaced_config_map(self.ns, label_selector=sel).items,
            "ServiceAccount": self.core.list_namespaced_service_account(self.ns, label_selector=sel).items,
            "Role": self.rbac.list_namespaced_role(self.ns, label_selector=sel).items,
            "RoleBinding": self.rbac.list_namespaced_role_binding(self.ns, label_selector=sel).items,
        }


def retrying(op: Callable[[], Any], timeout: float = 120) -> Any:
    """An API call that outlives an API server restart: retried on connection errors and 5xx."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return op()
        except ApiException as e:
            if e.status and e.status < 500 and e.status != 429:
                raise
            if time.monotonic() > deadline:
                raise
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


class Driver:
    """Random create/update/delete operations on a pool of run names; remembers what it asked for."""

    def __init__(self, kube: Api, seed: int, names: int = 24) -> None:
        self.kube, self.rng = kube, random.Random(seed)
        self.names = [f"run-{i:02d}" for i in range(names)]
        self.want: dict[str, Want] = {}
        self.ops: dict[str, int] = {"create": 0, "update": 0, "delete": 0}

    def step(self) -> None:
        name = self.rng.choice(self.names)
        if name not in self.want:
            want = Want(gpus=self.rng.choice([9, 9, 9, 1]), epochs=self.rng.randint(1, 9))
            try:
                body = run_body(name, want)
                retrying(
                    lambda: self.kube.custom.create_namespaced_custom_object(G, V, self.kube.ns, PLURAL, body)
                )
            except ApiException as e:
                if e.status != 409:  # the previous run of this name is still being deleted
                    raise
                return
            self.want[name] = want
            self.ops["create"] += 1
        elif self.rng.random() < 0.6:
            want = self.want[name]
            # training settings are immutable (CEL); the retry budget is not
            patch: dict[str, Any] = {"backoffLimit": self.rng.randint(0, 6)}
            if want.gpus == 9 and self.rng.random() < 0.5:  # suspending a finished run means nothing
                patch["suspend"] = not want.suspend
            retrying(lambda: self.kube.custom.patch_namespaced_custom_object(G, V, self.kube.ns, PLURAL, name,
                                                                             {"spec": patch}))  # fmt: skip
            want.suspend = patch.get("suspend", want.suspend)
            self.ops["update"] += 1
        else:
            retrying(
                lambda: self.kube.custom.delete_namespaced_custom_object(G, V, self.kube.ns, PLURAL, name)
            )
            del self.want[name]
            self.ops["delete"] += 1


def converged(kube: Api, want: dict[str, Want]) -> list[str]:
    """Every difference between what was asked and what is there (empty: converged)."""
    problems: list[str] = []
    runs = kube.runs()
    if set(runs) != set(want):
        problems.append(f"runs {sorted(runs)} != asked {sorted(want)}")
    uids = {r["metadata"]["uid"]: n for n, r in runs.items()}
    children = kube.children()
    owned: dict[tuple[str, str], list[str]] = {}
    for kind, objs in children.items():
        for obj in objs:
            owners = [o.uid for o in obj.metadata.owner_references or [] if o.controller]
            if len(owners) != 1 or owners[0] not in uids:
                problems.append(f"orphan {kind} {obj.metadata.name} (owners {owners})")
                continue
            owned.setdefault((uids[owners[0]], kind), []).append(obj.metadata.name)
    for name, w in want.items():
        run = runs.get(name)
        if run is None:
            continue
        expected = {
            "Job": sorted(
                [builders.job_name(name)] + ([builders.export_job_name(name)] if w.gpus == 1 else [])
            ),
            "ConfigMap": [],  # the run spec rides on the Job's pod template
            "ServiceAccount": [builders.trainer_account_name(name)],
            "Role": [builders.trainer_account_name(name)],
            "RoleBinding": [builders.trainer_account_name(name)],
        }
        suspended_before_start = w.suspend and not owned.get((name, "Job"))
        for kind, names in expected.items():
            got = sorted(owned.get((name, kind), []))
            # a run suspended before its Job was made gets no Job (by design: "suspended before it
            # started"); an operator killed while making the children may leave some of the rest,
            # owned by the run, completed on resume
            if suspended_before_start and set(got) <= set(names) and kind != "Job":
                continue
            if suspended_before_start and kind == "Job":
                continue
            if got != names:
                problems.append(f"{name}: {kind} {got} != {names}")
        st = run.get("status") or {}
        phase = st.get("phase")
        expected_phase = "Failed" if w.gpus == 1 else ("Suspended" if w.suspend else "Pending")
        if phase != expected_phase:
            problems.append(f"{name}: phase {phase} != {expected_phase}")
        if (
            w.gpus == 1
            and phase == "Failed"
            and (st.get("failure") or {}).get("reason") != "ExportReportMissing"
        ):
            problems.append(f"{name}: failure {st.get('failure')}")
        if st.get("observedGeneration") != run["metadata"]["generation"]:
            problems.append(f"{name}: observedGeneration {st.get('observedGeneration')} != generation "
                            f"{run['metadata']['generation']}")  # fmt: skip
        job = next((j for j in children["Job"] if j.metadata.name == builders.job_name(name)), None)
        if w.gpus == 9 and job is not None and bool(job.spec.suspend) != w.suspend:
            problems.append(f"{name}: Job suspend {job.spec.suspend} != {w.suspend}")
    return problems


def wait_converged(kube: Api, want: dict[str, Want], timeout: float) -> None:
    last: list[str] = []

    def ok() -> bool:
        nonlocal last
        last = converged(kube, want)
        return not last

    try:
        wait_until(ok, timeout=timeout, interval=1, message="convergence")
    except AssertionError:
        raise AssertionError("not converged:\n  " + "\n  ".join(last[:30])) from None


@pytest.fixture
def chaos_ns(chaos_cluster: Any, request: pytest.FixtureRequest) -> str:
    from tts_operator.devcluster.volumes import create_volume

    ns = request.node.name.replace("_", "-")[:50].strip("-")
    chaos_cluster.kubectl("create", "namespace", ns)
    for claim in ("data", "ckpt", "models"):
        create_volume(chaos_cluster, claim, ns)
    return ns


def start_operator(chaos_cluster: Any, ns: str, tmp_path: Path) -> OperatorProcess:
    return OperatorProcess(str(chaos_cluster.kubeconfig), ns, tmp_path / "operator.log").start()


def test_kill_9_during_200_operations_converges(chaos_cluster: Any, chaos_ns: str, tmp_path: Path) -> None:
    kube = Api(str(chaos_cluster.kubeconfig), chaos_ns)
    driver = Driver(kube, seed=8)
    op = start_operator(chaos_cluster, chaos_ns, tmp_path)
    kills = 0
    try:
        rng = random.Random(9)
        next_kill = time.monotonic() + rng.uniform(0.5, 3.0)
        for _ in range(200):
            driver.step()
            time.sleep(rng.uniform(0, 0.05))
            if time.monotonic() >= next_kill:
                assert op.proc is not None
                op.proc.kill()  # SIGKILL: no cleanup, no finalizer handling, mid-reconcile
                op.proc.wait()
                kills += 1
                op.start()
                next_kill = time.monotonic() + rng.uniform(0.5, 3.0)
        print(f"operations {driver.ops}, {kills} kill -9s, {len(driver.want)} runs left")
        assert kills >= 3 and min(driver.ops.values()) > 10
        wait_converged(kube, driver.want, timeout=150)
    finally:
        op.stop()
        print(f"--- operator log (tail) ---\n{op.log()[-4000:]}")


def test_etcd_and_apiserver_restart_mid_flight_converges(
    chaos_cluster: Any, chaos_ns: str, tmp_path: Path
) -> None:
    kube = Api(str(chaos_cluster.kubeconfig), chaos_ns)
    driver = Driver(kube, seed=11, names=16)
    op = start_operator(chaos_cluster, chaos_ns, tmp_path)
    stop = threading.Event()
    errors: list[BaseException] = []

    def operate() -> None:
        try:
            while not stop.is_set():
                driver.step()
                time.sleep(0.05)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=operate, daemon=True)
    try:
        for _ in range(15):
            driver.step()
        worker.start()
        chaos_cluster.restart("etcd")
        wait_until(lambda: driver.ops["update"] + driver.ops["delete"] > 10, timeout=60, message="operations")
        chaos_cluster.restart("kube-apiserver")
        ops_after = sum(driver.ops.values())
        wait_until(lambda: sum(driver.ops.values()) > ops_after + 10, timeout=90, message="operations after")
        stop.set()
        worker.join(timeout=150)
        assert not errors, errors
        assert op.proc is not None and op.proc.poll() is None, "the operator exited when the API went away"
        print(f"operations {driver.ops}, {len(driver.want)} runs left")
        wait_converged(kube, driver.want, timeout=150)
    finally:
        stop.set()
        op.stop()
        print(f"--- operator log (tail) ---\n{op.log()[-4000:]}")
