"""A real local Kubernetes control plane for tests and the demo (no Docker needed).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from the Go module proxy
(``hack/build-control-plane.sh``), kwok for simulated GPU nodes, and a local pod runner that runs
the pods bound to the ``*-local-*`` nodes as processes. See ``docs/local-cluster.md``.
"""
