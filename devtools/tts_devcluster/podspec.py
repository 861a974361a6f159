"""Pure helpers of the local pod runner: env resolution, `$(VAR)` expansion, probes' ports, images.

Kept free of I/O so they are unit-tested in milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)|\$\$")

DEFAULT_ALLOWED_IMAGES = r"^(.+/)?tts-(runtime|operator)(:[\w.\-]+)?(@sha256:[0-9a-f]{64})?$"


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known variables are replaced, unknown ones kept, `$$` → `$`."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR.sub(sub, value)


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """Value of a downward-API ``fieldRef.fieldPath`` for ``pod`` (a dict as the API returns it)."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": status.get("hostIP", ""),
    }
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return simple[path]


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "m": 1e-3}


def parse_quantity(q: str | int | float) -> float:
    s = str(q)
    for suf, mult in sorted(_SUFFIX.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * mult
    return float(s)


def resource_field_ref(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    kind, _, name = ref["resource"].partition(".")
    value = (container.get("resources", {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor", "1"))
    amount = parse_quantity(value) / divisor
    # the kubelet rounds up (so 500m cpu with divisor 1 is "1")
    return str(int(-(-amount // 1)))


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    base: Mapping[str, str],
    data_of: Callable[[str, str, bool], dict[str, str] | None],
) -> dict[str, str]:
    """The container's environment, in Kubernetes order: envFrom, then env (later wins), with `$(VAR)`
    expansion against what is defined so far. ``data_of(kind, name, optional)`` returns a ConfigMap's or
    Secret's data (kind "configMap" or "secret"), None for a missing optional one."""
    env: dict[str, str] = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind in ("configMap", "secret"):
            ref = src.get(f"{kind}Ref")
            if ref:
                for k, v in (data_of(kind, ref["name"], bool(ref.get("optional"))) or {}).items():
                    env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(item["value"] or "", env)
            continue
        vf = item.get("valueFrom") or {}
        if "fieldRef" in vf:
            env[name] = field_ref(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_field_ref(container, vf["resourceFieldRef"])
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "configMap" if "configMapKeyRef" in vf else "secret"
            ref = vf[f"{kind}KeyRef"]
            optional = bool(ref.get("optional"))
            data = data_of(kind, ref["name"], optional)
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not optional:
                raise ValueError(f"{kind} {ref['name']!r} has no key {ref['key']!r}")
        else:
            env[name] = ""
    return env


def container_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"container {container.get('name')!r} has no port named {port!r}")


def image_allowed(image: str, pattern: str = DEFAULT_ALLOWED_IMAGES) -> bool:
    return re.fullmatch(pattern, image) is not None


def default_entrypoint(image: str) -> list[str]:
    """What the image's ENTRYPOINT would be: our two images run our two console scripts."""
    name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
    return ["tts-operator"] if name == "tts-operator" else ["tts-runtime"]


def safe_subpath(sub: str) -> bool:
    """A volumeMount subPath must stay inside its volume (what the kubelet enforces)."""
    parts = sub.split("/")
    return not sub.startswith("/") and ".." not in parts
