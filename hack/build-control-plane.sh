#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok and helm from the Go
# module proxy into a versioned cache under ~/.cache/tts-operator/control-plane/<versions>/bin, and
# SeaweedFS's weed (the dev cluster's S3 server) into its own ~/.cache/tts-operator/seaweedfs-<version>/bin.
# Idempotent: a binary already in the cache is not rebuilt. Prints the control-plane bin directory on
# stdout's last line (`print-seaweedfs`: the path of weed instead). See docs/local-cluster.md for why
# we build instead of download.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"
CACHE_ROOT=${TTS_CACHE:-$HOME/.cache/tts-operator}
BIN=${CONTROL_PLANE_BIN:-$CACHE_ROOT/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin}
# its own key: a new SeaweedFS version rebuilds weed only
WEED=${SEAWEEDFS_BIN:-$CACHE_ROOT/seaweedfs-$SEAWEEDFS_VERSION/bin}/weed
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOPATH=${GOPATH:-$CACHE_ROOT/go}
export GOMODCACHE=${GOMODCACHE:-$CACHE_ROOT/go/pkg/mod}
export GOCACHE=${GOCACHE:-$CACHE_ROOT/go-build}
export GOFLAGS="-mod=mod"
mkdir -p "$BIN"
log() { printf '[control-plane] %s\n' "$*" >&2; }
step_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - step_start ))s"; }

build_kube() {
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=()
  for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && { log "kube binaries cached ($K8S_VERSION)"; return; }
  local staging="v0.${K8S_VERSION#v1.}" minor="${K8S_VERSION#v1.}"; minor=${minor%%.*}
  local work; work=$(mktemp -d)
  log "building ${missing[*]} $K8S_VERSION (cold: tens of minutes on 2 cores; progress below)"
  (
    cd "$work"
    go mod init local/k8sbin >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*#\1#p' "$gomod"); do
      go mod edit -replace="$m=$m@$staging"
    done
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local gd; gd=$(sed -n 's/^godebug default=\(go[0-9.]*\)$/\1/p' "$gomod")
    [ -n "$gd" ] && go mod edit -godebug="default=$gd"
    cat > tools.go <<'EOT'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOT
    log "resolving modules ($(elapsed))"
    go mod tidy
    local ldf="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      ldf+=" -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    for b in "${missing[@]}"; do
      log "compiling $b ($(elapsed))"
      go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags="$ldf" -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
      mv "$BIN/$b.tmp" "$BIN/$b"
    done
  )
  rm -rf "$work"
  "$BIN/kube-apiserver" --version >&2
}

build_etcd() {
  [ -x "$BIN/etcd" ] && { log "etcd cached ($ETCD_VERSION)"; return; }
  local work; work=$(mktemp -d)
  log "building etcd $ETCD_VERSION ($(elapsed))"
  (
    cd "$work"
    go mod init local/etcdbin >/dev/null 2>&1
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go mod tidy
    go build -trimpath -ldflags="-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd.tmp" "$BIN/etcd"
  )
  rm -rf "$work"
  "$BIN/etcd" --version >&2
}

build_kwok() {
  [ -x "$BIN/kwok" ] && [ -f "$BIN/../kwok-stages.yaml" ] && { log "kwok cached ($KWOK_VERSION)"; return; }
  log "building kwok $KWOK_VERSION ($(elapsed))"
  GOBIN="$BIN" go install -trimpath "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  local mod="$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION"
  { for f in kustomize/stage/node/fast/node-initialize.yaml \
             kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             kustomize/stage/pod/fast/pod-ready.yaml \
             kustomize/stage/pod/fast/pod-complete.yaml \
             kustomize/stage/pod/fast/pod-delete.yaml; do echo '---'; cat "$mod/$f"; done; } > "$BIN/../kwok-stages.yaml.tmp"
  mv "$BIN/../kwok-stages.yaml.tmp" "$BIN/../kwok-stages.yaml"
}

build_helm() {
  # helm is not part of the folder's key: a stamp file says which version is there
  [ -x "$BIN/helm" ] && [ "$(cat "$BIN/helm.version" 2>/dev/null)" = "$HELM_VERSION" ] && { log "helm cached ($HELM_VERSION)"; return; }
  log "building helm $HELM_VERSION ($(elapsed))"
  GOBIN="$BIN" go install -trimpath -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION" > "$BIN/helm.version"
}

build_seaweedfs() {
  [ -x "$WEED" ] && { log "seaweedfs cached ($SEAWEEDFS_VERSION)"; return; }
  local work; work=$(mktemp -d)
  log "building seaweedfs $SEAWEEDFS_VERSION (cold: about 11 minutes on 2 cores) ($(elapsed))"
  mkdir -p "$(dirname "$WEED")"
  (
    cd "$work"
    go mod init local/weedbin >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
    # upstream's module replaces (not its local-path ones): a requiring module must repeat them
    local from to ver
    while read -r from to ver; do
      go mod edit -replace="$from=$to@$ver"
    done < <(sed -n 's#^replace[[:space:]]\{1,\}\([^[:space:]]*\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\([^./[:space:]][^[:space:]]*\)[[:space:]]\{1,\}\(v[^[:space:]]*\)[[:space:]]*$#\1 \2 \3#p' "$gomod")
    go mod edit -require="github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/seaweedfs/seaweedfs/weed"\n' > tools.go
    log "resolving modules ($(elapsed))"
    go mod tidy
    log "compiling weed ($(elapsed))"
    local commit=${SEAWEEDFS_VERSION##*-}
    go build -trimpath -ldflags="-s -w -X github.com/seaweedfs/seaweedfs/weed/util/version.COMMIT=${commit:0:8}" \
      -o "$WEED.tmp" github.com/seaweedfs/seaweedfs/weed
    mv "$WEED.tmp" "$WEED"
  )
  rm -rf "$work"
  log "seaweedfs built ($(elapsed)): $("$WEED" version 2>/dev/null | head -1)"
}

case "${1:-all}" in
  all) build_etcd; build_kwok; build_kube; build_helm; build_seaweedfs ;;
  kube) build_kube ;; etcd) build_etcd ;; kwok) build_kwok ;; helm) build_helm ;;
  seaweedfs) build_seaweedfs ;;
  print-bin) ;;
  print-seaweedfs) echo "$WEED"; exit 0 ;;
  *) echo "usage: $0 [all|kube|etcd|kwok|helm|seaweedfs|print-bin|print-seaweedfs]" >&2; exit 2 ;;
esac
echo "$BIN"
