#!/bin/sh
# Validates deploy/k8s (base, gpu, monitoring) three ways, each tool installed on first use from
# a registry into .tools (git-ignored):
#   1. tests/deploy/k8s-validate (Go: kustomize + strict decode into k8s.io/api types + checks
#      of what moonring relies on: probes, ports, PDB, NetworkPolicy, pinned tag, limits)
#   2. kubernetes-validate --strict (PyPI; the Kubernetes OpenAPI JSON schemas, unknown fields
#      rejected) on the rendered kustomizations
#   3. kube-score (Go proxy): no CRITICAL finding. Ignored, with reason:
#      container-image-pull-policy: the tag is pinned (moonring:0.1.0), and Always would break
#      images loaded into kind/minikube without a registry.
# Exit 0: all clean; 1: a finding; 3: a tool could not be installed (no Go / no PyPI).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"
K8S_VALIDATE_VERSION=1.37.0
KUBE_SCORE_VERSION=v1.20.0
K8S_VERSION=1.35.0
log() { echo "[k8s-lint] $*" >&2; }

command -v go >/dev/null 2>&1 || { log "no Go toolchain"; exit 3; }
( cd "$root/tests/deploy/k8s-validate" && go build -o "$tools/bin/k8s-validate" . ) || { log "building k8s-validate failed"; exit 3; }
if [ ! -x "$tools/bin/kube-score" ] || ! "$tools/bin/kube-score" version 2>/dev/null | grep -q "${KUBE_SCORE_VERSION#v}"; then
  log "installing kube-score $KUBE_SCORE_VERSION (Go proxy)"
  GOBIN="$tools/bin" go install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" || exit 3
fi
venv="$tools/k8s-venv"
if [ "$(cat "$venv/.version" 2>/dev/null)" != "$K8S_VALIDATE_VERSION" ]; then
  log "installing kubernetes-validate==$K8S_VALIDATE_VERSION (PyPI) into $venv"
  python3 -m venv "$venv" >&2 || exit 3
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION" >&2 || exit 3
  echo "$K8S_VALIDATE_VERSION" > "$venv/.version"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
echo "== k8s-validate (typed strict decode + moonring checks)"
( cd "$root" && "$tools/bin/k8s-validate" deploy/k8s/base deploy/k8s/gpu ) || status=1
for v in base gpu monitoring; do
  "$tools/bin/k8s-validate" render "$root/deploy/k8s/$v" > "$out/$v.yaml" || status=1
done
echo "== kubernetes-validate --strict (Kubernetes $K8S_VERSION schemas)"
"$venv/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$out/base.yaml" "$out/gpu.yaml" "$out/monitoring.yaml" || status=1
echo "== kube-score (no CRITICAL)"
for v in base gpu; do
  report=$("$tools/bin/kube-score" score "$out/$v.yaml" "$out/monitoring.yaml" --output-format ci --ignore-test container-image-pull-policy) || true
  echo "$report" | grep -v '^\[OK\]' | sed "s/^/  $v: /"
  if echo "$report" | grep -q '^\[CRITICAL\]'; then status=1; fi
done
[ $status = 0 ] && echo "k8s-lint: clean" || echo "k8s-lint: FAILED"
exit $status
