"""`cluster up` / `down` on a second, throwaway cluster: warm start, reuse, and nothing left behind."""

from __future__ import annotations

import json

import yaml

from support.waiting import wait_for
from tts_devcluster.cluster import DevCluster, Ports
from tts_devcluster.procs import _start_time


def test_up_reuse_down_leaves_no_process(tmp_path):
    cluster = DevCluster(state_dir=tmp_path / "c2",
                         ports=Ports(etcd=24790, etcd_peer=24800, apiserver=17443, controller_manager=11357,
                                     scheduler=11359))  # fmt: skip
    messages: list[str] = []
    try:
        cluster.up(progress=messages.append, build=False)
        pids = {p.name: p.pid for p in cluster.procs.all()}
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                             "pod-runner", "seaweedfs"}  # fmt: skip

        # a second `up` reuses the healthy cluster instead of starting another
        cluster.up(progress=messages.append, build=False)
        assert any("reusing" in m for m in messages)
        assert {p.name: p.pid for p in cluster.procs.all()} == pids

        # a long-running local pod, so `down` must also stop a pod process
        container = {"name": "main", "image": "tts-runtime:dev", "command": ["sleep", "600"]}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "sleeper", "namespace": "default"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": "cpu-local-0"},
                "terminationGracePeriodSeconds": 2,
                "containers": [container],
            },
        }
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))

        def running_pid() -> int | None:
            st = json.loads(cluster.kubectl("-n", "default", "get", "pod", "sleeper", "-o", "json").stdout)[
                "status"
            ]
            cs = st.get("containerStatuses") or [{}]
            cid = cs[0].get("containerID", "")
            return int(cid.removeprefix("local://")) if cid.startswith("local://") else None

        pod_pid = wait_for(running_pid, 30, "the pod process")
        all_pids = {**pids, "pod": pod_pid}
        assert all(_start_time(pid) is not None for pid in all_pids.values())
    finally:
        stopped = cluster.down(progress=messages.append)
    assert {p.name for p in stopped} >= set(pids)
    left = {name: pid for name, pid in all_pids.items() if _start_time(pid) is not None}
    assert left == {}, f"still running after down: {left}"
    assert not cluster.healthy()
