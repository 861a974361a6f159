"""kopf as the operator configures it."""

from __future__ import annotations

import importlib

import kopf

from tts_operator.manager import NoDiffBase, configure_kopf


def test_change_detection_is_off_and_nothing_needs_it() -> None:
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body(
        {"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"big": list(range(100))}}
    )
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    # only event handlers: a change handler or a daemon would need the diff base kopf no longer builds
    for module in ("voicemodel", "trainingrun"):
        importlib.import_module(f"tts_operator.reconcile.{module}")
    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers()
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
