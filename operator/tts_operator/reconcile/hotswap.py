"""HotSwap reloads, run off the reconcile workers: a state the VoiceModel reconcile comes back to.

A reload loads and warms a model in a serving pod (seconds for a tiny model, minutes for a big
XTTS), one pod after the other. A reconcile that waited for them would hold a worker that long;
instead it asks ``HotSwaps.start`` and reports ``HotSwapping``; the reloads run on a small pool of
their own, annotate each pod with the version it now serves, and queue the VoiceModel again when
they are done. A reload that fails is remembered until the next reconcile takes it (``failure``)
and falls back to a rolling update.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tts_operator import runtime_client
from tts_operator.builders import serving as builders
from tts_operator.kube.client import Kube
from tts_operator.reconcile import voicemodel_plan as planner

log = logging.getLogger(__name__)

#: VoiceModels whose pods reload at once (each reloads its pods one at a time)
SWAP_WORKERS = 4

Key = tuple[str, str]
Reload = Callable[[dict[str, Any]], dict[str, Any]]
Done = Callable[[], None]


@dataclass
class _Swaps:
    running: str | None = None  # the version being loaded now
    failed: tuple[str, str] | None = None  # (version, why) until a reconcile takes it
    #: pod uid -> the annotations its reload wrote (the watch cache may not show them yet)
    loaded: dict[str, dict[str, str]] = field(default_factory=dict)


def loaded_annotations(pod: dict[str, Any], version: str) -> dict[str, str]:
    """What the operator notes on a pod that serves ``version`` (valid until its container restarts)."""
    return {
        builders.LOADED_VERSION_ANNOTATION: version,
        builders.LOADED_RESTARTS_ANNOTATION: str(planner.restarts(pod)),
    }


class HotSwaps:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=SWAP_WORKERS, thread_name_prefix="hotswap")
        self._state: dict[Key, _Swaps] = {}
        self._guard = threading.Lock()

    def _of(self, key: Key) -> _Swaps:
        return self._state.setdefault(key, _Swaps())

    def overlay(self, key: Key, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``pods`` (all the VoiceModel's) with what this process's reloads noted on them, in case
        the list predates the notes; notes of pods not listed any more are dropped."""
        listed = {pod["metadata"].get("uid", "") for pod in pods}
        with self._guard:
            swaps = self._of(key)
            swaps.loaded = loaded = {uid: ann for uid, ann in swaps.loaded.items() if uid in listed}
        for pod in pods:
            noted = loaded.get(pod["metadata"].get("uid", ""))
            if noted is not None and noted[builders.LOADED_RESTARTS_ANNOTATION] == str(planner.restarts(pod)):
                pod["metadata"].setdefault("annotations", {}).update(noted)
        return pods

    def failure(self, key: Key, version: str) -> str | None:
        """Why the reload of ``version`` failed, once (the caller falls back to a rolling update)."""
        with self._guard:
            swaps = self._of(key)
            failed, swaps.failed = swaps.failed, None
        return failed[1] if failed is not None and failed[0] == version else None

    def start(
        self,
        key: Key,
        version: str,
        pods: list[dict[str, Any]],
        reload: Reload,
        done: Done,
    ) -> bool:
        """Reload ``pods`` to ``version`` one by one in the background (``reload(pod)`` answers the
        runtime's reply, raises ``RuntimeCallError``), then call ``done``. Nothing when a swap of
        this VoiceModel is already running. True when one was started."""
        with self._guard:
            swaps = self._of(key)
            if swaps.running is not None or not pods:
                return False
            swaps.running = version
        self._pool.submit(
            self._swap, key, version, sorted(pods, key=lambda p: p["metadata"]["name"]), reload, done
        )
        return True

    def _swap(self, key: Key, version: str, pods: list[dict[str, Any]], reload: Reload, done: Done) -> None:
        failed = None
        try:
            for pod in pods:
                try:
                    reload(pod)
                except runtime_client.RuntimeCallError as e:
                    failed = f"pod {pod['metadata']['name']} could not reload {version}: {e}"
                    break
                with self._guard:
                    self._of(key).loaded[pod["metadata"].get("uid", "")] = loaded_annotations(pod, version)
        except Exception as e:  # an API error annotating a pod: the next reconcile starts again
            log.warning("hot swap of %s/%s to %s stopped: %s", *key, version, e)
        finally:
            with self._guard:
                swaps = self._of(key)
                swaps.running = None
                if failed is not None:
                    swaps.failed = (version, failed)
            done()

    def forget(self, key: Key) -> None:
        with self._guard:
            self._state.pop(key, None)


def reload_pod(
    kube: Kube, body: dict[str, Any], port: int, token: str | None, version: str
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The reload of one pod as ``HotSwaps.start`` wants it: ask the pod, note the version it now
    serves on it, post ``Reloaded``."""

    def reload(pod: dict[str, Any]) -> dict[str, Any]:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]  # only pods with an IP are swapped
        answer = runtime_client.reload(runtime_client.Pod(ip, port, token), version)
        kube.annotate_pod(body["metadata"]["namespace"], name, loaded_annotations(pod, version))
        kube.post_event(
            body,
            "Normal",
            "Reloaded",
            f"pod {name} reloaded {answer.get('previous')} -> {version} in {answer.get('seconds')} s",
        )
        return answer

    return reload
