"""URI locations (s3://, hf://, https://) in the builders and planners: pure, spec in, manifests out.

Who gets the credentials (only the containers that fetch or upload), what the fetchers are asked to
verify, how a fetcher's exit code reaches status, and that a VoiceModel asking for a version its
TrainingRun never exported touches no pod. Admission of the same fields is in admission_cases.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.support.admission_cases import uri_training_run, uri_voice_model

from tts_contract import uris
from tts_contract.contract import ARTIFACT_REASONS, PERMANENT_EXIT_CODES, ExitCode, Paths
from tts_operator import api, promote
from tts_operator.builders import serving, training
from tts_operator.reconcile import trainingrun_plan, voicemodel_plan
from tts_operator.settings import Settings

SETTINGS = Settings(runtime_image="runtime:1")


def _run(**changes: Any) -> api.TrainingRun:
    body = uri_training_run()
    body["metadata"] |= {"namespace": "ml", "uid": "uid-1"}
    body["spec"] |= changes
    return api.TrainingRun.model_validate(body)


def _vm(**changes: Any) -> api.VoiceModel:
    body = uri_voice_model()
    body["metadata"] |= {"namespace": "ml", "uid": "uid-2", "generation": 1}
    body["spec"] |= changes
    return api.VoiceModel.model_validate(body)


def _env_from(container: dict[str, Any]) -> list[str]:
    return [e["secretRef"]["name"] for e in container.get("envFrom") or []]


# --- the parser both sides use -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "scheme", "authority", "path", "revision"),
    [
        ("s3://models/narrator", "s3", "models", "narrator", None),
        ("s3://models/a/b/", "s3", "models", "a/b", None),
        ("s3://models", "s3", "models", "", None),
        ("hf://coqui/XTTS-v2", "hf", "coqui/XTTS-v2", "", "main"),
        ("hf://coqui/XTTS-v2@v2.0.3", "hf", "coqui/XTTS-v2", "", "v2.0.3"),
        ("https://data.example.com/ljs.tar.gz", "https", "data.example.com", "ljs.tar.gz", None),
    ],
)
def test_uris_parse(uri: str, scheme: str, authority: str, path: str, revision: str | None) -> None:
    parsed = uris.parse(uri)
    assert (parsed.scheme, parsed.authority, parsed.path, parsed.revision) == (
        scheme,
        authority,
        path,
        revision,
    )


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3://models/a/../b", "'..'"),
        ("s3://models/./b", "'..'"),
        ("s3://models//abs", "relative"),
        ("s3://No_Such/x", "bucket"),
        ("s3://models/a b", "whitespace"),
        ("hf://coqui", "hf://org/repo"),
        ("hf://coqui/XTTS-v2@../x", "'..'"),
        ("ftp://host/x", "unsupported scheme"),
        ("https://host/a/../b", "'..'"),
    ],
)
def test_uris_refuse_what_would_escape_or_cannot_work(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        uris.parse(uri)


def test_child_keys_stay_under_the_prefix() -> None:
    assert str(uris.parse("s3://models/narrator").child("v2")) == "s3://models/narrator/v2"
    assert uris.parse("s3://models").key("v2/manifest.json") == "v2/manifest.json"
    with pytest.raises(ValueError):
        uris.parse("s3://models/narrator").child("..")
    with pytest.raises(ValueError):
        uris.parse("hf://coqui/XTTS-v2").child("x")


# --- serving -------------------------------------------------------------------------------------


def test_uri_source_fetches_and_verifies_the_version_before_the_server_starts() -> None:
    vm = _vm()
    source = voicemodel_plan.resolve_source(vm, None)
    assert source.location is not None and source.available.status is True
    assert "s3://models/narrator/narrator-ft" in source.available.message
    pod = serving.deployment(vm, "narrator-ft", source.location, SETTINGS)["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == serving.FETCH_CONTAINER
    assert fetch["command"] == [
        "tts-runtime",
        "fetch",
        "--from",
        "s3://models/narrator/narrator-ft",
        "--to",
        f"{Paths.MODEL}/narrator-ft",
        "--manifest",
    ]
    (server,) = pod["containers"]
    # the credentials reach the fetcher and the server (hot swaps, shared voices), nothing else
    assert _env_from(fetch) == _env_from(server) == ["s3-models"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models == {"name": "models", "emptyDir": {}}
    # the secret's value never appears in the manifest: only its name
    assert "AWS_SECRET_ACCESS_KEY" not in str(pod)


def test_serve_spec_names_the_prefix_and_the_shared_voice_store() -> None:
    vm = _vm()
    location = voicemodel_plan.resolve_source(vm, None).location
    spec = serving.serve_spec(vm, "narrator-ft", location)
    assert spec.model_uri == "s3://models/narrator"
    assert spec.voices_uri == "s3://models/narrator/_voices/ml/narrator"


def test_lineage_names_the_uri_or_the_claim_and_folder() -> None:
    assert api.Dataset.model_validate({"volume": {"claimName": "data"}}).lineage() == "pvc://data"
    on_volume = api.Dataset.model_validate({"volume": {"claimName": "data", "subPath": "ljspeech/v2"}})
    assert on_volume.lineage() == "pvc://data/ljspeech/v2"
    base = api.BaseModelSource.model_validate({"uri": "hf://coqui/XTTS-v2@main"})
    assert base.lineage() == "hf://coqui/XTTS-v2@main"
    assert base.lineage("hf://coqui/XTTS-v2@0123abc") == "hf://coqui/XTTS-v2@0123abc"


def test_volume_source_has_no_fetcher_and_no_credentials() -> None:
    vm = api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "ml"},
            "spec": {"engine": "vits", "model": {"volume": {"claimName": "models"}}, "version": "v1"},
        }
    )
    location = voicemodel_plan.resolve_source(vm, None).location
    assert location is not None
    pod = serving.deployment(vm, "v1", location, SETTINGS)["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert all("envFrom" not in c for c in pod["containers"])
    spec = serving.serve_spec(vm, "v1", location)
    assert spec.model_uri is None and spec.voices_uri is None


@pytest.mark.parametrize(
    ("replicas", "modes", "warned"),
    [
        (2, ["ReadWriteOnce"], True),
        (2, ["ReadWriteOncePod"], True),
        (2, ["ReadWriteMany"], False),
        (2, ["ReadWriteOnce", "ReadOnlyMany"], False),
        (2, None, False),  # no such claim: the scheduler names that (VolumeNotFound)
        (1, ["ReadWriteOnce"], False),  # one replica: one node
    ],
)
def test_a_single_node_claim_for_several_replicas_is_named(
    replicas: int, modes: list[str] | None, warned: bool
) -> None:
    vm = api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "ml"},
            "spec": {
                "engine": "vits",
                "model": {"volume": {"claimName": "models"}},
                "version": "v1",
                "replicas": replicas,
            },
        }
    )
    source = voicemodel_plan.resolve_source(vm, None)
    claim = voicemodel_plan.single_node_claim(vm, source)
    if replicas == 1:
        assert claim is None
        return
    assert claim == "models"
    checked = voicemodel_plan.with_access_modes(source, claim, modes)
    assert (checked.available.reason == "SingleNodeVolume") is warned
    assert checked.available.status is True and checked.location == source.location
    if warned:
        assert "PersistentVolumeClaim models" in checked.available.message
    # a uri source has no claim to look up
    assert (
        voicemodel_plan.single_node_claim(
            _vm(replicas=2), voicemodel_plan.resolve_source(_vm(replicas=2), None)
        )
        is None
    )


def _exported_run(uri: str | None, version: str = "narrator-ft") -> dict[str, Any]:
    export: dict[str, Any] = (
        {"uri": uri, "secretRef": {"name": "s3-models"}}
        if uri
        else {"volume": {"claimName": "models", "subPath": "v"}}
    )
    path = f"{uri}/{version}" if uri else f"v/{version}"
    return {
        "spec": {"export": export},
        "status": {"phase": "Succeeded", "output": {"version": version, "path": path}},
    }


def test_training_run_source_exported_to_s3_is_read_from_its_bucket() -> None:
    vm = api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "ml"},
            "spec": {"engine": "xtts", "model": {"trainingRun": "r"}},
        }
    )
    source = voicemodel_plan.resolve_source(vm, _exported_run("s3://models/narrator"))
    assert source.location == serving.ModelLocation(uri="s3://models/narrator", secret_name="s3-models")
    assert source.version == "narrator-ft" and source.available.reason == "TrainingRunExported"


@pytest.mark.parametrize("uri", [None, "s3://models/narrator"])
def test_a_version_the_run_never_exported_touches_no_pod(uri: str | None) -> None:
    """Setting spec.version to a name its TrainingRun never exported used to roll a pod that
    exited 65 while ModelAvailable said True; now nothing rolls and the condition says why."""
    vm = api.VoiceModel.model_validate(
        {
            "metadata": {"name": "narrator", "namespace": "ml"},
            "spec": {"engine": "xtts", "model": {"trainingRun": "r"}, "version": "no-such-version"},
        }
    )
    source = voicemodel_plan.resolve_source(vm, _exported_run(uri))
    assert source.location is None  # the reconcile leaves the Deployment as it is
    assert source.available.status is False and source.available.reason == "ArtifactNotFound"
    assert "no-such-version" in source.available.message and "narrator-ft" in source.available.message


def _pod_with_fetcher(code: int, restarting: bool = False) -> dict[str, Any]:
    term = {
        "exitCode": code,
        "message": f"{ARTIFACT_REASONS.get(code, 'Error')}: s3://models/narrator/v2: boom",
    }
    fetcher: dict[str, Any] = {"name": serving.FETCH_CONTAINER}
    if restarting:
        fetcher |= {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": term}}
    else:
        fetcher |= {"state": {"terminated": term}}
    return {
        "metadata": {"name": "narrator-abc", "annotations": {serving.VERSION_LABEL: "v2"}},
        "status": {
            "initContainerStatuses": [fetcher],
            "containerStatuses": [
                {"name": serving.SERVER_CONTAINER, "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }


@pytest.mark.parametrize("code", sorted(c for c in ARTIFACT_REASONS if c in PERMANENT_EXIT_CODES))
def test_a_version_missing_corrupt_or_denied_fails_the_rollout_at_once(code: int) -> None:
    found = voicemodel_plan.pod_failure(_pod_with_fetcher(code, restarting=True))
    assert found is not None
    reason, message = found
    assert reason == ARTIFACT_REASONS[code]
    assert "s3://models/narrator/v2" in message


def test_storage_unreachable_is_waited_out_not_a_failed_rollout() -> None:
    pod = _pod_with_fetcher(int(ExitCode.STORAGE_UNREACHABLE), restarting=True)
    assert voicemodel_plan.pod_failure(pod) is None


# --- training ------------------------------------------------------------------------------------


def test_training_pod_fetches_each_uri_with_its_own_secret() -> None:
    run = _run()
    pod = training.training_job(run, SETTINGS)["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    # the export's version is checked first: a run whose version exists fails before it fetches
    assert list(inits) == [training.CHECK_EXPORT, "fetch-dataset", "fetch-base-model"]
    check = inits[training.CHECK_EXPORT]
    assert check["command"] == [
        "tts-runtime", "publish", "--check", "--to", "s3://models/narrator/narrator-ft"
    ]  # fmt: skip
    assert _env_from(check) == ["s3-models"]  # the export's credentials, there only
    dataset = inits["fetch-dataset"]
    assert dataset["command"][2:] == [
        "--from",
        "https://data.example.com/narrator.tar.gz",
        "--to",
        Paths.DATASET,
        "--sha256",
        "a" * 64,
    ]
    assert _env_from(dataset) == []  # no secretRef on the dataset: no credentials at all
    assert _env_from(inits["fetch-base-model"]) == ["hf-token"]
    (trainer,) = pod["containers"]
    assert "envFrom" not in trainer  # the trainer fetches nothing itself
    # a volume export: nothing to check before training (the export pod mounts the claim)
    volume_run = _run(export={"volume": {"claimName": "models"}})
    volume_pod = training.training_job(volume_run, SETTINGS)["spec"]["template"]["spec"]
    assert training.CHECK_EXPORT not in [c["name"] for c in volume_pod["initContainers"]]
    mounts = {m["mountPath"]: m for m in trainer["volumeMounts"]}
    assert mounts[Paths.DATASET]["readOnly"] is True and mounts[Paths.BASE_MODEL]["readOnly"] is True


def test_export_to_s3_uploads_after_exporting_and_reports_only_after_the_upload() -> None:
    run = _run()
    job = training.export_job(run, SETTINGS)
    pod = job["spec"]["template"]["spec"]
    (export,) = pod["containers"]
    assert _env_from(export) == ["s3-models"]
    script = export["command"][2]
    assert script.index("tts-runtime export") < script.index("tts-runtime publish")
    assert script.index("tts-runtime publish") < script.index(training.TERMINATION_LOG)
    assert "--to s3://models/narrator/narrator-ft" in script
    assert training.export_path(run) == "s3://models/narrator/narrator-ft"
    assert {"name": "export", "emptyDir": {}} in pod["volumes"]
    # the base model is fetched again for the export (it copies the tokenizer files)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-base-model"]
    (fail_job, _) = job["spec"]["podFailurePolicy"]["rules"]
    assert int(ExitCode.VERSION_EXISTS) in fail_job["onExitCodes"]["values"]


def test_an_export_refused_by_the_store_is_named_in_status() -> None:
    pod = {
        "metadata": {"name": "r-export-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "containerStatuses": [
                {
                    "name": training.EXPORT_CONTAINER,
                    "state": {
                        "terminated": {
                            "exitCode": int(ExitCode.VERSION_EXISTS),
                            "message": "VersionExists: s3://models/narrator/narrator-ft: already published",
                        }
                    },
                }
            ]
        },
    }
    found = trainingrun_plan.failed_pod([pod], training.EXPORT_CONTAINER)
    assert found is not None
    assert trainingrun_plan.EXIT_REASONS[int(ExitCode.VERSION_EXISTS)] == "VersionExists"


def test_a_failed_fetcher_is_the_pods_failure() -> None:
    pod = {
        "metadata": {"name": "r-train-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-dataset",
                    "state": {"terminated": {"exitCode": 77, "message": "AccessDenied: s3://d"}},
                }
            ],
            "containerStatuses": [
                {"name": training.TRAINER_CONTAINER, "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }
    found = trainingrun_plan.failed_pod([pod], training.TRAINER_CONTAINER)
    assert found is not None
    assert found[1]["exitCode"] == 77 and found[1]["container"] == "fetch-dataset"


def test_a_version_that_exists_fails_the_run_before_it_trains() -> None:
    message = "VersionExists: s3://models/narrator/narrator-ft: manifest.json is already there"
    pod = {
        "metadata": {"name": "r-train-x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": training.CHECK_EXPORT,
                    "state": {"terminated": {"exitCode": int(ExitCode.VERSION_EXISTS), "message": message}},
                }
            ],
            "containerStatuses": [
                {"name": training.TRAINER_CONTAINER, "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    }
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    failure = trainingrun_plan.training_failure(job, [pod])
    assert failure["reason"] == "VersionExists" and failure["exitCode"] == int(ExitCode.VERSION_EXISTS)
    assert message in failure["message"]


def test_checkpoints_in_s3_are_a_pod_local_folder_the_trainer_mirrors() -> None:
    run = _run(checkpoints={"uri": "s3://ckpt/runs", "secretRef": {"name": "ckpt-keys"}})
    assert training.run_spec(run).checkpoints_uri == "s3://ckpt/runs/ml/narrator-ft"
    pod = training.training_job(run, SETTINGS)["spec"]["template"]["spec"]
    assert {"name": "checkpoints", "emptyDir": {}} in pod["volumes"]
    (trainer,) = pod["containers"]
    assert _env_from(trainer) == ["ckpt-keys"]  # it restores and uploads its folder itself
    # the export fetches only the best model, with the checkpoints' Secret, before exporting
    export = training.export_job(run, SETTINGS)["spec"]["template"]["spec"]
    fetch = export["initContainers"][0]
    assert fetch["name"] == "fetch-checkpoints" and _env_from(fetch) == ["ckpt-keys"]
    assert fetch["command"][2:6] == [
        "--from",
        "s3://ckpt/runs/ml/narrator-ft/model",
        "--to",
        f"{Paths.CHECKPOINTS}/model",
    ]
    (exporter,) = export["containers"]
    assert "ckpt-keys" not in _env_from(exporter)


def test_checkpoints_on_a_volume_need_no_credentials() -> None:
    run = _run(checkpoints={"volume": {"claimName": "ckpt"}})
    assert training.run_spec(run).checkpoints_uri is None
    (trainer,) = training.training_job(run, SETTINGS)["spec"]["template"]["spec"]["containers"]
    assert "envFrom" not in trainer


def test_a_hub_revision_is_resolved_once_recorded_and_pinned_for_the_export() -> None:
    run = _run()
    train = training.training_job(run, SETTINGS)["spec"]["template"]["spec"]
    fetch = next(c for c in train["initContainers"] if c["name"] == training.FETCH_BASE_MODEL)
    assert fetch["command"][-2:] == ["--result-file", training.TERMINATION_LOG]
    commit = "0123456789abcdef0123456789abcdef01234567"
    resolved = f"hf://coqui/XTTS-v2@{commit}"
    pod = {
        "metadata": {"name": "r-train-a", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": training.FETCH_BASE_MODEL,
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "message": json.dumps({"resolved": resolved, "commit": commit}),
                        }
                    },
                }
            ]
        },
    }
    assert trainingrun_plan.resolved_base_model([pod]) == resolved
    # the export fetches that commit, not whatever main is by then
    body = uri_training_run()
    body["metadata"] |= {"namespace": "ml", "uid": "uid-1"}
    body["status"] = {"resolvedBaseModel": resolved}
    export = training.export_job(api.TrainingRun.model_validate(body), SETTINGS)["spec"]["template"]["spec"]
    base = next(c for c in export["initContainers"] if c["name"] == training.FETCH_BASE_MODEL)
    assert base["command"][2:4] == ["--from", resolved]
    # and the version's manifest records it as the lineage, with the dataset's uri
    script = export["containers"][0]["command"][2]
    assert f"--base-model-source {resolved}" in script
    assert f"--dataset-source {body['spec']['dataset']['uri']}" in script


# --- promotion -----------------------------------------------------------------------------------


def test_promotion_to_a_uri_source_changes_the_uri_and_keeps_the_secret() -> None:
    export = api.Export.model_validate({"uri": "s3://models/narrator", "secretRef": {"name": "dev-keys"}})
    current = {"model": {"uri": "s3://models/old", "secretRef": {"name": "prod-keys"}}}
    assert promote.spec_change("r", "v2", export, current) == {
        "spec": {"model": {"uri": "s3://models/narrator", "volume": None}, "version": "v2"}
    }
    volume_export = api.Export.model_validate({"volume": {"claimName": "models"}})
    change = promote.spec_change("r", "v2", volume_export, current)
    assert change["spec"]["model"]["secretRef"] is None and change["spec"]["model"]["uri"] is None
