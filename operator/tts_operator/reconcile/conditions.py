"""Status in the Kubernetes shape: conditions merged so lastTransitionTime moves only on a real
change, and the merge patch that writes only what changed (both kinds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool | None  # None = Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge_conditions(
    old: list[dict[str, Any]], new: list[Cond], now: str, generation: int | None
) -> list[dict[str, Any]]:
    """The new conditions, keeping each one's lastTransitionTime when its status did not change.

    Conditions of types not in ``new`` are kept as they were (another writer may own them).
    """
    by_type = {c.get("type"): c for c in old}
    out: list[dict[str, Any]] = []
    for c in new:
        prev = by_type.pop(c.type, None)
        changed = prev is None or prev.get("status") != c.status_text
        entry: dict[str, Any] = {
            "type": c.type,
            "status": c.status_text,
            "reason": c.reason,
            "message": c.message[:32768],
            "lastTransitionTime": now if changed or not prev else prev.get("lastTransitionTime", now),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    out.extend(by_type.values())
    return out


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch turning ``current`` into ``desired`` for the keys in ``desired`` only."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if current.get(key) != value:
            if value is None and key not in current:
                continue
            patch[key] = value
    return patch
