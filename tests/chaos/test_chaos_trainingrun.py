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
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from support.convergence import PLURAL, Api, Want, run_body, wait_converged
from support.operator_process import OperatorProcess
from support.waiting import retrying as retried
from support.waiting import wait_for
from tts_operator import api

pytestmark = pytest.mark.chaos

G, V = api.API_GROUP, api.API_VERSION


def _transient(e: BaseException) -> bool:
    """Connection errors and 5xx (and 429) while the API server restarts; not a refusal."""
    return not (isinstance(e, ApiException) and e.status and e.status < 500 and e.status != 429)


def retrying(op: Callable[[], Any], timeout: float = 120) -> Any:
    """An API call that outlives an API server restart: retried on connection errors and 5xx."""
    return retried(op, timeout, "an API call through the restart", retry_on=_transient, interval=0.5)


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
        wait_for(lambda: driver.ops["update"] + driver.ops["delete"] > 10, 60, "operations")
        chaos_cluster.restart("kube-apiserver")
        ops_after = sum(driver.ops.values())
        wait_for(lambda: sum(driver.ops.values()) > ops_after + 10, 90, "operations after")
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
