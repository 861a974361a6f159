"""Promotion of an exported version to a VoiceModel: the change itself (pure), and the rewrite of a
VoiceModel manifest file in a GitOps repository that keeps its formatting and comments.

The change keeps the kind of model source the VoiceModel already uses: one that names the
TrainingRun (``model.trainingRun``) is pointed at this run; one that reads versions from a volume or
a uri (``model.volume``, ``model.uri``) is pointed at this run's export location. Either way
``spec.version`` is the exported version.
"""

from __future__ import annotations

import difflib
import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import ScalarString

from tts_operator import api


class PromoteError(ValueError):
    """The manifest or the run cannot be promoted as asked."""


def _export_source(export: api.Export) -> dict[str, Any]:
    """``model`` pointing at the export's location (merge patch: the other form is removed; a
    uri's secretRef is the VoiceModel's own, kept as it is: another cluster has its own Secret)."""
    if export.uri is not None:
        return {"uri": export.uri, "volume": None}
    assert export.volume is not None
    return {"volume": {"claimName": export.volume.claim_name, "subPath": export.volume.sub_path}, "uri": None}


def spec_change(
    run_name: str, version: str, export: api.Export, current_spec: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON merge patch of a VoiceModel's spec (``{"spec": {...}}``) that makes it serve ``version``.

    ``current_spec`` unknown (Publish: the VoiceModel lives in git) means the trainingRun form.
    """
    model = (current_spec or {}).get("model") or {}
    if ("volume" in model or "uri" in model) and "trainingRun" not in model:
        source = _export_source(export)
        if "secretRef" in model and source.get("volume") is not None:
            source["secretRef"] = None
        return {"spec": {"model": source, "version": version}}
    return {"spec": {"model": {"trainingRun": run_name, "volume": None, "uri": None}, "version": version}}


def _same_style(old: Any, new: str) -> Any:
    """``new`` quoted the way ``old`` was (ruamel keeps a scalar's quotes in its type)."""
    return type(old)(new) if isinstance(old, ScalarString) else new


def _voicemodel_docs(docs: list[Any]) -> list[CommentedMap]:
    return [d for d in docs if isinstance(d, CommentedMap) and d.get("kind") == api.VOICEMODEL.kind]


def _yaml(mapping: int, sequence: int, offset: int) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap long lines
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    return y


#: the two list styles found in Kubernetes manifests: "- " under the key, or indented by two
_STYLES = ((2, 2, 0), (2, 4, 2))


def rewrite_manifest(
    text: str, run_name: str, version: str, export: api.Export, voicemodel: str | None = None
) -> tuple[str, str]:
    """(new text, the VoiceModel's name): ``text`` with the VoiceModel's version and source updated.

    Only the changed values differ: comments, key order, quotes and (one of the two common) list
    indentation styles survive. ``voicemodel`` picks one when the file holds several.
    """
    loader = _yaml(*_STYLES[0])
    try:
        docs = list(loader.load_all(text))
    except Exception as e:  # ruamel raises many types; all mean "not YAML"
        raise PromoteError(f"not valid YAML: {e}") from e
    candidates = _voicemodel_docs(docs)
    if voicemodel:
        candidates = [d for d in candidates if (d.get("metadata") or {}).get("name") == voicemodel]
    if not candidates:
        which = f" named {voicemodel!r}" if voicemodel else ""
        raise PromoteError(f"no VoiceModel{which} in the file")
    if len(candidates) > 1:
        raise PromoteError("the file holds several VoiceModels: name the one to promote")
    doc = candidates[0]
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise PromoteError("the VoiceModel has no spec")
    change = spec_change(run_name, version, export, dict(spec))["spec"]
    model = spec.setdefault("model", CommentedMap())
    for key, value in change["model"].items():
        if value is None:
            model.pop(key, None)
        elif isinstance(value, dict):
            target = model.setdefault(key, CommentedMap())
            for k, v in value.items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = _same_style(target.get(k), v)
        else:
            model[key] = _same_style(model.get(key), value)
    spec["version"] = _same_style(spec.get("version"), version)
    name = str((doc.get("metadata") or {}).get("name", ""))

    best, best_ratio = "", -1.0
    for style in _STYLES:
        out = io.StringIO()
        dumper = _yaml(*style)
        if len(docs) > 1 or text.lstrip().startswith("---"):
            dumper.explicit_start = text.lstrip().startswith("---")
            dumper.dump_all(docs, out)
        else:
            dumper.dump(docs[0], out)
        ratio = difflib.SequenceMatcher(None, text, out.getvalue()).ratio()
        if ratio > best_ratio:
            best, best_ratio = out.getvalue(), ratio
    return best, name
