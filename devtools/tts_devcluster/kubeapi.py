"""The local pod runner's API client: raw JSON calls, ConfigMap/Secret data, PVC folders, SA tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tts_devcluster.podattach import ClaimVolume
from tts_devcluster.podstate import PodConfigError, PodWaiting


class KubeApi:
    """The API clients of the runner, and the lookups its pod workers make through them."""

    def __init__(self, kubeconfig: str) -> None:
        config.load_kube_config(kubeconfig)
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)

    def lookup_for(self, ns: str) -> Callable[[str, str, bool], dict[str, str] | None]:
        """A reader of ConfigMap/Secret data in ``ns`` (see podspec.resolve_env)."""

        def data_of(kind: str, name: str, optional: bool) -> dict[str, str] | None:
            try:
                if kind == "configMap":
                    return (
                        self.get_json("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}").get("data") or {}
                    )
                raw = self.get_json("GET", f"/api/v1/namespaces/{ns}/secrets/{name}").get("data") or {}
                return {k: base64.b64decode(v).decode() for k, v in raw.items()}
            except ApiException as e:
                if e.status == 404:
                    if optional:
                        return None
                    raise PodWaiting(f"{kind} {ns}/{name} not found") from None
                raise

        return data_of

    def get_json(
        self, method: str, path: str, body: dict | None = None, content_type: str = "application/json"
    ) -> dict:
        """A raw API call returning the decoded JSON (no typed models); ApiException on errors.
        ``content_type``: ``application/merge-patch+json`` for a PATCH."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        args = self.api.param_serialize(
            method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = self.api.call_api(*args)
        data = resp.read()
        if resp.status >= 400:
            raise ApiException(http_resp=resp)
        return json.loads(data)

    def pvc_path(self, ns: str, claim: str) -> Path:
        return self.pvc_volume(ns, claim).path

    def pvc_volume(self, ns: str, claim: str) -> ClaimVolume:
        """The folder, name and access modes of the PersistentVolume bound to ``ns/claim``;
        ``PodWaiting`` while there is none."""
        try:
            pvc = self.get_json("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        except ApiException as e:
            if e.status == 404:
                raise PodWaiting(f"persistentvolumeclaim {claim!r} not found") from None
            raise
        volume = pvc["spec"].get("volumeName")
        if pvc.get("status", {}).get("phase") != "Bound" or not volume:
            raise PodWaiting(f"persistentvolumeclaim {claim!r} is not bound yet")
        pv = self.get_json("GET", f"/api/v1/persistentvolumes/{volume}")["spec"]
        src = (pv.get("hostPath") or pv.get("local") or {}).get("path")
        if not src:
            raise PodConfigError(f"persistentvolume {volume}: only hostPath/local volumes run locally")
        return ClaimVolume(claim, Path(src), volume, tuple(pv.get("accessModes") or ()))

    def request_token(self, pod: dict, audience: str | None, expiration: int) -> str:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(600, int(expiration)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        return self.get_json("POST", path, body)["status"]["token"]
