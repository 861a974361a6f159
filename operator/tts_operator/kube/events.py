"""The Events the operator posts: a core/v1 Event on one of its objects, stamped now (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

EVENT_SOURCE = "tts-operator"


def event_for(obj: dict[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """What ``kubectl describe`` and ``kubectl events`` show about ``obj``."""
    meta = obj["metadata"]
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": EVENT_SOURCE},
        "reportingComponent": EVENT_SOURCE,
        "reportingInstance": EVENT_SOURCE,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
