"""TrainingRuns converged after faults: what the chaos tests asked of each run, and the check that the
cluster matches it (every run has exactly its children, owned by it by uid; no child outlives its run;
no run has two training Jobs; every status matches the spec and the Jobs)."""

# kubernetes models type every field Optional; the checks use them
# mypy: disable-error-code="union-attr"
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from tts_operator.builders import training as builders
from tts_operator.settings import MANAGED_SELECTOR

from .manifests import trainingrun_manifest
from .objects import CustomObjects
from .waiting import Pending, wait_for

PLURAL = "trainingruns"


@dataclass
class Want:
    """What the test last asked of one run."""

    gpus: int
    epochs: int = 3
    suspend: bool = False


def run_body(name: str, want: Want) -> dict[str, Any]:
    return trainingrun_manifest(
        name, training={"epochs": want.epochs}, resources={"gpus": want.gpus}, suspend=want.suspend
    )


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
        self.trainingruns = CustomObjects(self.client, ns, PLURAL)

    def runs(self) -> dict[str, dict[str, Any]]:
        return self.trainingruns.list()

    def children(self) -> dict[str, list[Any]]:
        sel = MANAGED_SELECTOR
        return {
            "Job": self.batch.list_namespaced_job(self.ns, label_selector=sel).items,
            "ConfigMap": self.core.list_namespaced_config_map(self.ns, label_selector=sel).items,
            "ServiceAccount": self.core.list_namespaced_service_account(self.ns, label_selector=sel).items,
            "Role": self.rbac.list_namespaced_role(self.ns, label_selector=sel).items,
            "RoleBinding": self.rbac.list_namespaced_role_binding(self.ns, label_selector=sel).items,
        }


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
    def ok() -> bool | Pending:
        problems = converged(kube, want)
        return Pending("not converged:\n  " + "\n  ".join(problems[:30])) if problems else True

    wait_for(ok, timeout, "convergence", interval=1)
