"""Promotion: the VoiceModel change and the GitOps manifest rewrite that keeps comments and layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_operator import api, cli, promote

EXPORT = api.Export.model_validate({"volume": {"claimName": "models", "subPath": "narrator"}})

MANIFEST = """\
# narrator: served in prod, promoted by CI
apiVersion: tts-operator.dev/v1alpha1
kind: VoiceModel
metadata:
  name: narrator  # keep this name
spec:
  engine: vits
  model:
    trainingRun: narrator-ft-2
  version: "narrator-ft-2"   # the knob GitOps edits
  replicas: 2
  voices:
  - name: narrator
    wav: voices/narrator.wav
"""


def test_rewrite_changes_only_the_version_and_source() -> None:
    text, name = promote.rewrite_manifest(MANIFEST, "narrator-ft-3", "narrator-ft-3", EXPORT)
    assert name == "narrator"
    expected = MANIFEST.replace("trainingRun: narrator-ft-2", "trainingRun: narrator-ft-3").replace(
        '"narrator-ft-2"', '"narrator-ft-3"'
    )
    assert text == expected


def test_rewrite_keeps_a_volume_source_and_points_it_at_the_export_volume() -> None:
    src = (
        MANIFEST.replace("trainingRun: narrator-ft-2", "volume: {claimName: old, subPath: x}")
        .replace("  - name", "    - name")
        .replace("    wav:", "      wav:")
    )
    text, _ = promote.rewrite_manifest(src, "narrator-ft-3", "v3", EXPORT)
    assert "volume: {claimName: models, subPath: narrator}" in text
    (line,) = [ln for ln in text.splitlines() if ln.startswith("  version:")]
    # quotes and the comment stay (ruamel keeps the comment's column)
    assert line.startswith('  version: "v3" ') and line.endswith("# the knob GitOps edits")
    assert "    - name: narrator\n      wav: voices/narrator.wav" in text  # indented list style kept


def test_picks_the_named_voicemodel_among_several_documents() -> None:
    other = MANIFEST.replace("name: narrator  # keep this name", "name: other")
    text, name = promote.rewrite_manifest(f"---\n{MANIFEST}---\n{other}", "r", "v9", EXPORT, "other")
    first, second = text.split("kind: VoiceModel")[1:]
    assert name == "other" and '"narrator-ft-2"' in first and '"v9"' in second
    with pytest.raises(promote.PromoteError, match="several"):
        promote.rewrite_manifest(f"---\n{MANIFEST}---\n{other}", "r", "v9", EXPORT)


@pytest.mark.parametrize(
    ("text", "message"),
    [("kind: ConfigMap\n", "no VoiceModel"), ("a: [", "not valid YAML"), ("kind: VoiceModel\n", "no spec")],
)
def test_clear_errors(text: str, message: str) -> None:
    with pytest.raises(promote.PromoteError, match=message):
        promote.rewrite_manifest(text, "r", "v", EXPORT)


def test_spec_change_for_publish_and_direct() -> None:
    assert promote.spec_change("r", "v", EXPORT, None) == {
        "spec": {"model": {"trainingRun": "r", "volume": None, "uri": None}, "version": "v"}
    }
    assert promote.spec_change("r", "v", EXPORT, {"model": {"volume": {"claimName": "x"}}}) == {
        "spec": {
            "model": {"volume": {"claimName": "models", "subPath": "narrator"}, "uri": None},
            "version": "v",
        }
    }


def test_cli_help_lists_run_and_promote(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli.main(["promote", "--help"])
    out = capsys.readouterr().out
    assert "--voicemodel" in out and "--dry-run" in out
