#!/usr/bin/env bash
# `make demo`: the whole product on this machine in a few minutes, after `make setup`.
#
#   local cluster up -> CRDs -> the operator -> a dataset spoken by espeak-ng and a tiny XTTS base
#   model, copied into the cluster's S3 (SeaweedFS) -> a TrainingRun that fetches them, trains on the
#   CPU (live `kubectl get trun -w`) and publishes the version to S3 -> a VoiceModel whose pod fetches
#   it -> a synthesis request whose wav is written to disk -> what to try next.
#
# Everything the demo stores lives under s3://tts/$DEMO_NAMESPACE/ (dataset, base model, the published
# versions) and in the namespace's `checkpoints` volume; each run removes both first.
#
# Environment:
#   DEMO_NAMESPACE  namespace to use (default tts-demo; recreated on every run)
#   DEMO_OUT        folder for the wav and logs (default ./demo-output)
#   DEMO_EPOCHS     training epochs (default 2)
#   DEMO_KEEP=1     leave the operator and namespace running at the end (default: stop the operator)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
NS="${DEMO_NAMESPACE:-tts-demo}"
OUT="$(mkdir -p "${DEMO_OUT:-$ROOT/demo-output}" && cd "${DEMO_OUT:-$ROOT/demo-output}" && pwd)"
EPOCHS="${DEMO_EPOCHS:-2}"
RUN=narrator-demo
VM=narrator
BUCKET=tts                      # the bucket `cluster up` creates
S3="s3://$BUCKET/$NS"           # the demo's prefix: datasets/, base-models/, models/
T0=$(date +%s)

step() { printf '\n\033[1m==> [%3ss] %s\033[0m\n' "$(($(date +%s) - T0))" "$*"; }
die() { echo "demo: error: $*" >&2; exit 1; }

[[ -x "$PY" ]] || die "no .venv: run \`make setup\` first"
for tool in espeak-ng sox; do
  command -v "$tool" >/dev/null || die "$tool is not installed: run \`make setup\` (Debian package $tool)"
done
BIN="$(bash hack/build-control-plane.sh print-bin)"
K8S_VERSION="$(. hack/versions.env && echo "${K8S_VERSION#v}")"  # offline, helm assumes an old one
[[ -x "$BIN/kubectl" ]] || die "no control plane binaries in $BIN: run \`make setup\` first"

OPERATOR_PID="" WATCH_PID="" DATA_PID="" CP_PID=""
cleanup() {
  [[ -n "$WATCH_PID" ]] && kill "$WATCH_PID" 2>/dev/null || true
  for pid in $DATA_PID $CP_PID; do wait "$pid" 2>/dev/null || true; done  # seconds; never left behind
  [[ -n "$OPERATOR_PID" ]] || return 0
  if [[ "${DEMO_KEEP:-}" != 1 ]]; then
    kill "$OPERATOR_PID" 2>/dev/null && wait "$OPERATOR_PID" 2>/dev/null || true
  else
    echo "DEMO_KEEP=1: the operator keeps running as PID $OPERATOR_PID (kill $OPERATOR_PID to stop it)"
  fi
}
trap cleanup EXIT

# step 4's dataset and base model are made in the background meanwhile (the cluster, the CRDs, an
# earlier demo's namespace going away, the operator starting: mostly waiting); step 4 shows their log
DATA="$OUT/work"
rm -rf "$DATA" && mkdir -p "$DATA"
{
  PYTHONPATH="$ROOT/tests" "$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path

from support.datasets import make_ljspeech_dataset

dest = make_ljspeech_dataset(Path(sys.argv[1]) / "dataset", n_clips=6)
print(f"6 clips + a reference voice in {dest}")
EOF
  "$ROOT/.venv/bin/tts-runtime" demo-model "$DATA/xtts-base" --engine xtts
} >"$DATA/make.log" 2>&1 &
DATA_PID=$!

step "1/8 the local cluster (reused when already running)"
KUBECONFIG="$("$ROOT/.venv/bin/tts-operator" dev cluster up --no-build)"
export KUBECONFIG
kubectl() { "$BIN/kubectl" "$@"; }
kubectl get nodes -L nvidia.com/gpu.product

step "2/8 the CRDs (TrainingRun, VoiceModel)"
kubectl apply --server-side --force-conflicts --field-manager=tts-demo -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/trainingruns.tts-operator.dev crd/voicemodels.tts-operator.dev

if kubectl get namespace "$NS" >/dev/null 2>&1; then
  echo "namespace $NS exists from an earlier demo: deleting it first"
  # the VoiceModels and TrainingRuns first, waiting for their pods: the namespace controller looks
  # again only after a running pod's grace period (the serving pod's: 140 s), however soon it stops
  kubectl -n "$NS" delete voicemodels,trainingruns --all --cascade=foreground --wait=true --timeout=120s
  kubectl delete namespace "$NS" --wait=true --timeout=120s
fi
# its volumes outlive it (PersistentVolumes are cluster-scoped, kept on release) and so do its
# objects in S3: an earlier run's checkpoints must not leak into this one, and a published version
# is never overwritten (the export would fail with VersionExists)
"$ROOT/.venv/bin/tts-operator" dev volume delete --all -n "$NS"
"$ROOT/.venv/bin/tts-operator" dev s3 rm "$S3" --recursive
kubectl create namespace "$NS"

step "3/8 the operator (a local process watching namespace $NS; log: $OUT/operator.log)"
"$ROOT/.venv/bin/tts-operator" run --namespace "$NS" --kubeconfig "$KUBECONFIG" --metrics-port 0 \
  --log-format text >"$OUT/operator.log" 2>&1 &
OPERATOR_PID=$!
sleep_until() {  # sleep_until SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@"; do
    kill -0 "$OPERATOR_PID" 2>/dev/null || { tail -30 "$OUT/operator.log"; die "the operator exited"; }
    (($(date +%s) < deadline)) || die "timed out waiting for $what"
    sleep 1
  done
}
grep_log() { grep -q "$1" "$OUT/operator.log"; }
sleep_until 60 "the operator to start" grep_log "tts-operator starting"
echo "operator PID $OPERATOR_PID"

step "4/8 a dataset spoken by espeak-ng and a tiny random XTTS base model, into S3 ($S3/)"
data_ok=0
wait "$DATA_PID" || data_ok=$?
DATA_PID=""
cat "$DATA/make.log"
((data_ok == 0)) || die "making the dataset or the base model failed (exit $data_ok; log above)"
# the base model (330 MB) goes up in the background while the rest is set up
"$ROOT/.venv/bin/tts-operator" dev s3 cp "$DATA/xtts-base" "$S3/base-models/xtts-v2" &
CP_PID=$!
"$ROOT/.venv/bin/tts-operator" dev s3 cp "$DATA/dataset" "$S3/datasets/narrator"
# the keys for the locations' secretRef (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...), and a volume for
# the checkpoints (a run resumes from them, so they stay a volume)
"$ROOT/.venv/bin/tts-operator" dev s3 secret -n "$NS"
echo "volume checkpoints: $("$ROOT/.venv/bin/tts-operator" dev volume create checkpoints -n "$NS")"
cp_ok=0
wait "$CP_PID" || cp_ok=$?
CP_PID=""
((cp_ok == 0)) || die "copying the base model into S3 failed (exit $cp_ok)"

step "5/8 a VoiceModel waiting for the run's model, and the TrainingRun ($EPOCHS epochs on the CPU)"
kubectl -n "$NS" apply -f - <<EOF
apiVersion: tts-operator.dev/v1alpha1
kind: VoiceModel
metadata:
  name: $VM
spec:
  engine: xtts
  model: {trainingRun: $RUN}
  replicas: 1
  devicePolicy: PreferGPU
  resources: {gpus: 1, gpuProduct: NVIDIA-GeForce-RTX-3090}
  rollout: {progressDeadlineSeconds: 300}
---
apiVersion: tts-operator.dev/v1alpha1
kind: TrainingRun
metadata:
  name: $RUN
spec:
  engine: xtts
  baseModel: {uri: "$S3/base-models/xtts-v2", secretRef: {name: tts-s3}}
  dataset: {uri: "$S3/datasets/narrator", secretRef: {name: tts-s3}, language: en, evalSplit: 0.2}
  training: {epochs: $EPOCHS, batchSize: 2, learningRate: 1.0e-4}
  samples: {text: "This is the narrator after one more epoch.", speakerWav: speaker_ref.wav}
  checkpoints: {volume: {claimName: checkpoints}}
  export: {uri: "$S3/models/narrator", secretRef: {name: tts-s3}}
  resources: {gpus: 1, gpuProduct: NVIDIA-GeForce-RTX-3090}
  devicePolicy: PreferGPU
EOF
echo
echo "\$ kubectl get trun -w     (live: phase, epoch/epochs, loss as the trainer reports them)"
"$BIN/kubectl" -n "$NS" get trun "$RUN" -w &  # the binary itself: $! must be its PID
WATCH_PID=$!
phase() { kubectl -n "$NS" get trun "$RUN" -o jsonpath='{.status.phase}'; }
run_finished() {
  local p
  p="$(phase)"
  [[ "$p" == Failed ]] && {
    kubectl -n "$NS" get trun "$RUN" -o jsonpath='{.status.failure}'
    echo
    die "the TrainingRun failed"
  }
  [[ "$p" == Succeeded ]]
}
sleep_until 480 "the TrainingRun to succeed" run_finished
kill "$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
WATCH_PID=""

step "6/8 the version published to S3 (immutable, manifest.json with the sha256 of every file, written last)"
kubectl -n "$NS" get trun "$RUN"
VERSION="$(kubectl -n "$NS" get trun "$RUN" -o jsonpath='{.status.output.version}')"
PUBLISHED="$(kubectl -n "$NS" get trun "$RUN" -o jsonpath='{.status.output.path}')"
kubectl -n "$NS" get trun "$RUN" -o jsonpath='{.status.output}' && echo
echo "\$ tts-operator dev s3 ls $PUBLISHED"
"$ROOT/.venv/bin/tts-operator" dev s3 ls "$PUBLISHED"

step "7/8 the VoiceModel rolls out version $VERSION (its pod fetches it from S3, checking every sha256)"
kubectl -n "$NS" wait --for=condition=Ready "voicemodel/$VM" --timeout=300s
kubectl -n "$NS" get voicemodel "$VM"
kubectl -n "$NS" get pods -l "tts-operator.dev/voicemodel=$VM" --field-selector=status.phase=Running \
  -o custom-columns='POD:.metadata.name,INIT CONTAINER:.status.initContainerStatuses[*].name,EXIT:.status.initContainerStatuses[*].state.terminated.exitCode,FROM:.spec.initContainers[*].command[3]'

step "8/8 a synthesis request (OpenAI speech API) in the voice the version carries -> $OUT/narrator.wav"
POD_IP="$(kubectl -n "$NS" get pods -l "tts-operator.dev/voicemodel=$VM" \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].status.podIP}')"
[[ -n "$POD_IP" ]] || die "no running serving pod"
"$PY" - "http://$POD_IP:8005" "$RUN" "$OUT/narrator.wav" <<'EOF'
import sys
from pathlib import Path

import httpx
import soundfile

base, voice, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with httpx.Client(base_url=base, timeout=300) as http:
    # XTTS clones voices from a reference clip: the version carries the run's own (named after the
    # run, and its default voice), so the pod speaks it with nothing uploaded
    r = http.get("/v1/audio/voices")
    r.raise_for_status()
    voices = {v["name"]: v for v in r.json()["data"]}
    print(f"GET {base}/v1/audio/voices: " + ", ".join(
        f"{n} ({v['source']}{', default' if v.get('default') else ''})" for n, v in sorted(voices.items())))
    if voice not in voices:
        sys.exit(f"the version does not carry the voice {voice}")
    body = {"model": "tts-1", "input": "Hello! This voice was trained and served by tts-operator.",
            "voice": voice, "response_format": "wav"}
    print(f"POST {base}/v1/audio/speech {body}")
    r = http.post("/v1/audio/speech", json=body)
    if r.status_code != 200:
        sys.exit(f"synthesis failed: {r.status_code} {r.text}")
dest.write_bytes(r.content)
info = soundfile.info(str(dest))
print(f"wrote {dest}: {info.duration:.2f} s at {info.samplerate} Hz (a tiny random model: it sounds like noise)")
EOF

step "done in $(($(date +%s) - T0)) s"
cat <<EOF

What to try next (in this shell, from $ROOT; the first line puts kubectl, helm and tts-operator on
PATH and KUBECONFIG on the local cluster):
  eval "\$(make -s env)"
  kubectl -n $NS describe trun $RUN                  # conditions and the Events of every transition
  kubectl -n $NS get trun $RUN -o yaml               # progress, checkpoints, samples, output, best
  kubectl -n $NS get voicemodel $VM -o yaml          # desiredVersion, servingVersion, device, endpoint
  curl http://$POD_IP:8005/info                      # the server: version, device, preflight verdict
  curl http://$POD_IP:8005/v1/audio/voices           # the voices it speaks ($RUN, from the version)
  tts-operator dev s3 ls $S3                       # what the demo keeps in S3: dataset, base model, versions
  tts-operator dev s3 cp $PUBLISHED $OUT/$VERSION   # fetch the published version into a folder
  # in a browser: http://$POD_IP:8005/ types text and plays it back (the pod runs until cluster-down)
  tts-operator promote $RUN -n $NS --voicemodel examples/voicemodel.yaml --dry-run   # the GitOps step
  helm template tts charts/tts-operator --kube-version $K8S_VERSION   # the chart that installs all this
Docs: docs/concepts.md, docs/gpu-scheduling.md, docs/gitops.md, docs/troubleshooting.md
Clean up: make cluster-down (keeping the cluster: kubectl delete namespace $NS && tts-operator dev volume delete --all -n $NS
  && tts-operator dev s3 rm $S3 --recursive)
EOF
