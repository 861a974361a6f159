#!/usr/bin/env bash
# Two-level venv: the heavy third-party stack (torch, coqui-tts, ~6 GB) lives once per machine in
# ~/.cache/tts-operator/venv/deps-<hash of the heavy pins>; each checkout gets a light .venv that
# sees it through a .pth file and holds only the project itself (editable). A second run is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CACHE_ROOT=${TTS_CACHE:-$HOME/.cache/tts-operator}
reqs=$("$PY" - <<'PYEOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(p["dependencies"])
for extra in ("operator", "runtime", "dev"):
    deps += p["optional-dependencies"][extra]
print("\n".join(sorted(set(deps))))
PYEOF
)
# The venv is keyed on the Python version and the heavy pins (torch, torchaudio, coqui): changing any
# other dependency installs just the difference into the same venv instead of 6 GB again.
heavy=$(echo "$reqs" | grep -E '^(torch|torchaudio|coqui-tts|coqui-tts-trainer)[=<>~ ]' || true)
key=$( { "$PY" --version; echo "$heavy"; } | sha256sum | cut -c1-16)
want=$(echo "$reqs" | sha256sum | cut -c1-16)
DEPS=$CACHE_ROOT/venv/deps-$key
[ -e "$DEPS" ] && DEPS=$(realpath "$DEPS")
if [ ! -f "$DEPS/.complete" ]; then
  echo "[setup] installing the Python stack into $DEPS (first time on this machine: a few minutes, ~6 GB)" >&2
  rm -rf "$DEPS"; "$PY" -m venv "$DEPS"
  "$DEPS/bin/pip" install --quiet --upgrade pip
fi
# The operator's kubernetes client (37) requires python-dateutil>=3; botocore (the runtime's S3
# client) declares <3. The two images never meet (Dockerfile.runtime installs no kubernetes client,
# Dockerfile.operator no boto3), but this one dev venv holds both, and pip would backtrack through
# every botocore release looking for a release without the pin. So boto3's family is installed here
# without its declared dependencies (the rest of them come with the main set); the S3 tests
# (tests/runtime/test_artifacts.py, tests/cluster/test_s3_devcluster.py) run it on the dateutil the
# venv has.
NODEPS='^(boto3|botocore|s3transfer|jmespath)([=<>~ ]|$)'
if [ "$(cat "$DEPS/.complete" 2>/dev/null)" != "$want" ]; then
  echo "$reqs" | grep -Ev "$NODEPS" > "$DEPS/requirements.txt"
  "$DEPS/bin/pip" install --progress-bar on -r "$DEPS/requirements.txt"
  boto=$(echo "$reqs" | grep -E "$NODEPS")
  # boto3 and botocore are released in lockstep: the newest of each match
  # shellcheck disable=SC2086
  "$DEPS/bin/pip" install --quiet --no-deps $boto "botocore<2" "s3transfer<1" "jmespath<2"
  "$DEPS/bin/python" -c 'import boto3, botocore.session; botocore.session.get_session().create_client("s3", region_name="us-east-1")'
  echo "$want" > "$DEPS/.complete"
else
  echo "[setup] Python stack cached: $DEPS" >&2
fi
site_of() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.deps 2>/dev/null)" != "$DEPS" ]; then
  rm -rf .venv; "$PY" -m venv --without-pip .venv
  site_of "$DEPS" > "$(site_of .venv)/_tts_operator_deps.pth"
  echo "$DEPS" > .venv/.deps
fi
if ! .venv/bin/python -c 'import tts_operator, tts_runtime, tts_contract, tts_devcluster' 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  touch .venv/.installed
fi
echo "[setup] .venv ready" >&2
