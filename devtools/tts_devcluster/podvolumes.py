"""A pod's volumes for the local pod runner: folders and files to bind-mount, per container."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tts_devcluster import podspec
from tts_devcluster.kubeapi import KubeApi
from tts_devcluster.podattach import ClaimVolume
from tts_devcluster.podstate import Container, PodConfigError, PodWaiting, with_pod_ip

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class PodVolumes:
    """Makes the volumes of one pod: emptyDir folders, hostPath and PVC folders, and the files of
    ConfigMap, Secret, downward API and projected volumes (the SA token through TokenRequest)."""

    def __init__(self, api: KubeApi, pod: dict, ip: str) -> None:
        self.api = api
        self.pod = pod
        self.ip = ip
        self.ns = pod["metadata"]["namespace"]

    def prepare(
        self,
        vdir: Path,
        containers: list[Container],
        attach: Callable[[ClaimVolume], None] | None = None,
    ) -> dict[str, list[dict]]:
        """Write the volumes under ``vdir``; each container's mounts (source, mountPath, readOnly).
        ``attach`` is called with each claim's volume before anything touches it (it raises
        ``PodWaiting`` while the volume is attached to another node).

        ``PodWaiting`` when something they need is not there yet, ``PodConfigError`` when they cannot
        be made as specified."""
        vols: dict[str, tuple[Path, bool]] = {}
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            target = vdir / name
            if "emptyDir" in v:
                target.mkdir(parents=True, exist_ok=True)
                vols[name] = (target, False)
            elif "hostPath" in v:
                vols[name] = (Path(v["hostPath"]["path"]), False)
            elif "persistentVolumeClaim" in v:
                ref = v["persistentVolumeClaim"]
                claim = self.api.pvc_volume(self.ns, ref["claimName"])
                if attach is not None:
                    attach(claim)
                vols[name] = (claim.path, bool(ref.get("readOnly")))
            elif "configMap" in v or "secret" in v:
                kind = "configMap" if "configMap" in v else "secret"
                self._write_keys(target, kind, v[kind], v[kind].get("name") or v[kind].get("secretName"))
                vols[name] = (target, True)
            elif "projected" in v:
                self._write_projected(target, v["projected"])
                vols[name] = (target, True)
            elif "downwardAPI" in v:
                self._write_downward(target, v["downwardAPI"].get("items") or [])
                vols[name] = (target, True)
            else:
                raise PodConfigError(f"volume {name!r}: type not supported by the local pod runner")
        mounts_of: dict[str, list[dict]] = {}
        for c in containers:
            mounts = []
            for m in c.spec.get("volumeMounts") or []:
                if m["name"] not in vols:
                    raise PodConfigError(f"container {c.name}: volumeMount {m['name']!r} has no volume")
                src, ro = vols[m["name"]]
                sub = m.get("subPath") or ""
                if sub and not podspec.safe_subpath(sub):
                    raise PodConfigError(
                        f"container {c.name}: subPath {sub!r} must be relative and stay inside the volume"
                    )
                path = src / sub if sub else src
                if sub and not path.exists():
                    path.mkdir(parents=True, exist_ok=True)
                mounts.append(
                    {
                        "source": str(path),
                        "mountPath": m["mountPath"],
                        "readOnly": ro or bool(m.get("readOnly")),
                    }
                )
            mounts_of[c.name] = mounts
        return mounts_of

    def _write_keys(self, target: Path, kind: str, spec: dict, obj_name: str) -> None:
        data = self.api.lookup_for(self.ns)(kind, obj_name, bool(spec.get("optional")))
        if data is None:
            raise PodWaiting(f"{kind} {obj_name!r} not found")
        target.mkdir(parents=True, exist_ok=True)
        items = spec.get("items") or [{"key": k, "path": k} for k in data]
        for it in items:
            if it["key"] not in data:
                raise PodConfigError(f"{kind} {obj_name!r} has no key {it['key']!r}")
            self._write_file(target, it["path"], data[it["key"]])

    def _write_file(self, target: Path, rel: str, content: str | bytes) -> None:
        if not podspec.safe_subpath(rel):
            raise PodConfigError(f"volume file path {rel!r} must be relative and stay inside the volume")
        p = target / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())

    def _write_downward(self, target: Path, items: list[dict]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        pod = with_pod_ip(self.pod, self.ip)
        for it in items:
            if "fieldRef" in it:
                self._write_file(target, it["path"], podspec.field_ref(pod, it["fieldRef"]["fieldPath"]))

    def _write_projected(self, target: Path, spec: dict) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for src in spec.get("sources") or []:
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                token = self.api.request_token(self.pod, t.get("audience"), t.get("expirationSeconds", 3600))
                self._write_file(target, t["path"], token)
            elif "configMap" in src or "secret" in src:
                kind = "configMap" if "configMap" in src else "secret"
                self._write_keys(target, kind, src[kind], src[kind]["name"])
            elif "downwardAPI" in src:
                self._write_downward(target, src["downwardAPI"].get("items") or [])
