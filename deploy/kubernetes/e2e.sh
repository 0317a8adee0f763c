#!/usr/bin/env bash
# End-to-end test of deploy/kubernetes on a real single-node Kubernetes
# (../shared/k8s: built from source on first use, 13 to 20 min on 2 cores;
# then up in ~20 s). Needs root; installs the cluster's Debian prerequisites if
# missing. Tears the cluster down on exit (KEEP_CLUSTER=1 leaves it up).
#
#   1. builds ferry (CGO_ENABLED=0, version stamped) and loads it as the
#      image localhost/ferry:dev, user 65532
#   2. kubectl apply -k --dry-run=server: the base and every overlay; the
#      ServiceMonitor component is rendered (its CRD is not installed here)
#   3. makes the certificates (certs.sh) and applies overlays/local with
#      accounts and policy rules for the test: 3/3 Ready, the Raft cluster
#      formed, metrics served over HTTPS where the annotations say, and
#      plaintext refused
#   4. service-account auth from pods: a pod whose account the policy
#      grants publishes; a pod of another account is refused
#      PERMISSION_DENIED, one without a token UNAUTHENTICATED, and one
#      dialing the node-to-node port without a node certificate is refused;
#      the topic holds the granted pod's message only
#   5. publishes with acks while kubectl rollout restart runs, with an
#      effectively-once pipeline consuming: nothing acknowledged lost, no
#      publish slower than the failover bound, one output per input
#   6. the same while ferry-0 is force-deleted: it comes back on its volume
#      and catches up
#   7. kubectl drain of the node: the PodDisruptionBudget stops it after
#      one pod
# The host reaches the pods over the pod bridge and resolves their names
# through the cluster's DNS (10.88.0.1), so a pod that comes back with a new
# address is found again. Everything runs as the base sets it up: TLS on
# every port, mutual between nodes, and service-account tokens checked
# against a policy; the host's checks use a token of the account e2e-load.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
# The cluster scripts: K8S_DIR, else ../shared/k8s beside this checkout,
# else beside the repository it was cloned from (CI runs in a fresh clone).
find_k8s() {
	[ -n "${K8S_DIR:-}" ] && { echo "$K8S_DIR"; return; }
	local d origin
	for d in "$REPO/../shared/k8s" \
		"$(origin=$(git -C "$REPO" config --get remote.origin.url 2>/dev/null || true); [ -d "$origin" ] && echo "$origin/../shared/k8s")"; do
		[ -n "$d" ] && [ -x "$d/up.sh" ] && { (cd "$d" && pwd); return; }
	done
}
K8S=$(find_k8s)
if [ -z "$K8S" ]; then
	echo "SKIP: no ../shared/k8s (the local Kubernetes scripts) beside this checkout or its origin; set K8S_DIR to run the deploy test"
	exit 0
fi
export K8S_ROOT=${K8S_ROOT:-/tmp/k8s}
export KUBECONFIG=$K8S_ROOT/admin.kubeconfig
NS=ferry
CLUSTER_DNS=10.88.0.1:53
WORK=$(mktemp -d /tmp/ferry-e2e.XXXXXX)
T0=$(date +%s)
step() { printf '\n== [e2e +%ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
k() { kubectl -n "$NS" "$@"; }

# ---- prerequisites
missing=0
for c in etcd containerd runc ctr iptables ip openssl curl; do command -v "$c" >/dev/null || missing=1; done
[ -x /usr/lib/cni/bridge ] || missing=1
if [ "$missing" = 1 ]; then
	step "installing the cluster's prerequisites (apt)"
	[ "$(id -u)" -eq 0 ] || fail "the local cluster needs root (and apt-get for its prerequisites)"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server containerd runc \
		containernetworking-plugins iptables iproute2 openssl curl >/dev/null
fi

cleanup() {
	rc=$?
	set +e
	if [ "$rc" -ne 0 ] && [ -f "$KUBECONFIG" ]; then
		echo "--- e2e failed (exit $rc); the cluster as it was:"
		kubectl get nodes -o wide
		k get pods,pvc -o wide
		k describe statefulset ferry | tail -20
		for p in $(k get pods -o name 2>/dev/null); do
			echo "--- $p"
			k logs "$p" --tail=40
			k logs "$p" --previous --tail=20 2>/dev/null
		done
	fi
	if [ "${KEEP_CLUSTER:-0}" = 1 ]; then
		echo "KEEP_CLUSTER=1: the cluster stays up; tear it down with $K8S/down.sh"
	else
		step "tearing the cluster down"
		"$K8S/down.sh" >"$WORK/down.log" 2>&1 || tail -20 "$WORK/down.log"
	fi
	rm -rf "$WORK"
	echo "e2e finished in $(( $(date +%s) - T0 ))s (exit $rc)"
	exit "$rc"
}
trap cleanup EXIT

# ---- the cluster: binaries built at low priority (the machine is shared),
# the cluster itself at normal priority
step "building the cluster's binaries (the first time 13 to 20 min)"
nice -n 19 "$K8S/build.sh" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "building the cluster"; }
if ! command -v kubectl >/dev/null; then
	step "building kubectl"
	(cd "$K8S_ROOT/build/k8smod" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -o "$K8S_ROOT/bin/kubectl" k8s.io/kubernetes/cmd/kubectl)
	export PATH=$K8S_ROOT/bin:$PATH
fi
step "bringing the cluster up"
"$K8S/down.sh" >/dev/null 2>&1 || true # what an earlier run left
SKIP_BUILD=1 "$K8S/up.sh"

# ---- the image
step "building ferry and loading it as localhost/ferry:dev"
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT=$(git rev-parse HEAD)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CGO_ENABLED=0 nice -n 19 go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$VERSION -X main.commit=$COMMIT -X main.buildDate=$DATE" \
	-o "$WORK/ferry" ./cmd/ferry
nice -n 19 go build -o "$WORK/clustercheck" ./deploy/kubernetes/clustercheck
"$WORK/ferry" version | tee "$WORK/version"
grep -q "^commit: $COMMIT\$" "$WORK/version" || fail "ferry version does not print the commit set with -ldflags"
"$K8S/load-image.sh" "$WORK/ferry" localhost/ferry:dev 65532 >/dev/null

# ---- server-side validation
step "kubectl apply -k --dry-run=server: the base and every overlay"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
for dir in deploy/kubernetes deploy/kubernetes/overlays/*/; do
	kubectl apply -k "$dir" --dry-run=server >/dev/null || fail "server dry-run of $dir"
	echo "ok: $dir"
done
mon=$WORK/monitoring
mkdir -p "$mon"
rel=$(realpath --relative-to="$mon" deploy/kubernetes)
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s/base]\ncomponents: [%s/components/servicemonitor]\n' "$rel" "$rel" >"$mon/kustomization.yaml"
# Into a file, not a pipe: grep -q stops reading at the first match, and under
# pipefail the writer's SIGPIPE would fail the step by chance.
kubectl kustomize "$mon" >"$WORK/servicemonitor.yaml"
grep -q '^kind: ServiceMonitor$' "$WORK/servicemonitor.yaml" || fail "the servicemonitor component renders no ServiceMonitor"
echo "ok: components/servicemonitor renders (not applied: no Prometheus Operator CRDs here)"
printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [%s/base]\ncomponents: [%s/components/cert-manager]\n' "$rel" "$rel" >"$mon/kustomization.yaml"
kubectl kustomize "$mon" >"$WORK/cert-manager.yaml"
certs=$(grep -c '^kind: Certificate$' "$WORK/cert-manager.yaml" || true)
[ "$certs" = 4 ] || fail "components/cert-manager renders $certs Certificates, want 4 (the CA and one per pod)"
echo "ok: components/cert-manager renders (not applied: no cert-manager CRDs here)"

# ---- certificates, the test's accounts and policy
step "certificates (certs.sh), the test's accounts and policy"
deploy/kubernetes/certs.sh -n "$NS" -o "$WORK/certs" >/dev/null
CA=$WORK/certs/ca.crt
e2e=$WORK/e2e-overlay
mkdir -p "$e2e"
rel=$(realpath --relative-to="$e2e" deploy/kubernetes)
# The base's rule for ferry's own account, and the test's: e2e-load (the
# host's checks) may do everything, e2e-client may publish to k8s-auth,
# e2e-intruder nothing.
cat >"$e2e/policy.yaml" <<EOF
rules:
  - principals: ["system:serviceaccount:$NS:ferry", "system:serviceaccount:$NS:e2e-load"]
    permissions: [publish, subscribe, read, admin, cluster]
    topics: ["*"]
  - principals: ["system:serviceaccount:$NS:e2e-client"]
    permissions: [publish]
    topics: [k8s-auth]
EOF
cat >"$e2e/accounts.yaml" <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: e2e-load}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: e2e-client}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: e2e-intruder}
EOF
cat >"$e2e/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: $NS
resources: [$rel/overlays/local, accounts.yaml]
configMapGenerator:
  - name: ferry-policy
    behavior: replace
    files: [policy.yaml]
    options: {disableNameSuffixHash: true}
EOF

# ---- the cluster forms
step "applying overlays/local (with the test's accounts and policy); waiting for 3/3 Ready"
kubectl apply -k "$e2e"
k create token e2e-load --audience ferry --duration 1h >"$WORK/load.token"
TOKEN=$WORK/load.token
k rollout status statefulset/ferry --timeout=300s
ready=$(k get statefulset ferry -o jsonpath='{.status.readyReplicas}')
[ "$ready" = 3 ] || fail "$ready of 3 pods ready"
k get pods -o wide
echo "3/3 Ready after $(( $(date +%s) - T0 ))s"

step "the Raft cluster, over TLS with a service-account token"
POD0=ferry-0.ferry-headless.$NS.svc.cluster.local
check() { "$WORK/clustercheck" "$1" -dns "$CLUSTER_DNS" -tls-ca "$CA" -token-file "$TOKEN" "${@:2}"; }
check status -server "$POD0:7420" -nodes 3 -timeout 60s
IP0=$(k get pod ferry-0 -o jsonpath='{.status.podIP}')
curl -sf --cacert "$CA" --resolve "$POD0:7421:$IP0" "https://$POD0:7421/metrics" >"$WORK/metrics" || fail "no /metrics over HTTPS on :7421"
grep -q '^ferry_raft_leader' "$WORK/metrics" || fail "no ferry_raft_leader on :7421/metrics"
echo "ok: /metrics over HTTPS on the annotated port 7421 serves ferry_raft_* metrics"
if curl -sf "http://$IP0:7421/metrics" >/dev/null 2>&1; then fail "plaintext HTTP on :7421 answered"; fi
if "$WORK/ferry" topic list --server "$IP0:7420" >"$WORK/plain.out" 2>&1; then fail "plaintext gRPC on :7420 answered"; fi
echo "ok: plaintext HTTP and gRPC are refused"
k exec ferry-0 -- /ferry version >"$WORK/pod-version" || fail "kubectl exec ferry-0 -- /ferry version"
grep -q "^commit: $COMMIT\$" "$WORK/pod-version" || fail "the pod does not run the image just built"
echo "ok: kubectl exec ferry-0 -- /ferry version: the image just built"
k exec ferry-0 -- /ferry cluster status >"$WORK/exec-status" || fail "kubectl exec ferry-0 -- /ferry cluster status (the README's)"
# Into a file, then shown: "| head" closed the pipe early and the status
# command died of SIGPIPE (exit 141) under pipefail.
head -8 "$WORK/exec-status"
echo "ok: kubectl exec ferry-0 -- /ferry cluster status answers ($(grep -c ' ok ' "$WORK/exec-status") nodes ok)"

step "service-account auth from pods"
. deploy/kubernetes/e2e_auth.sh

SERVERS=ferry-0.ferry-headless.$NS.svc.cluster.local:7420,ferry-1.ferry-headless.$NS.svc.cluster.local:7420,ferry-2.ferry-headless.$NS.svc.cluster.local:7420
load() { check load -servers "$SERVERS" "$@"; }

# ---- rolling restart
step "publishing while kubectl rollout restart statefulset/ferry runs"
load -topic roll -disrupt "kubectl -n $NS rollout restart statefulset/ferry && kubectl -n $NS rollout status statefulset/ferry --timeout=300s"

# ---- ferry-0 force-deleted
step "publishing while ferry-0 is force-deleted"
pvc_uid=$(k get pvc data-ferry-0 -o jsonpath='{.metadata.uid}')
pv=$(k get pvc data-ferry-0 -o jsonpath='{.spec.volumeName}')
pv_dir=$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}')
touch "$pv_dir/.e2e-before-kill" # the host's mark on ferry-0's volume
old_uid=$(k get pod ferry-0 -o jsonpath='{.metadata.uid}')
# wait_replaced POD UID: until POD is a new pod (not UID) and Ready.
wait_replaced() {
	for _ in $(seq 240); do
		uid=$(kubectl -n "$NS" get pod "$1" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
		st=$(kubectl -n "$NS" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
		if [ -n "$uid" ] && [ "$uid" != "$2" ] && [ "$st" = True ]; then
			echo "$1 is back and Ready"
			return 0
		fi
		sleep 1
	done
	echo "$1 did not come back Ready within 240s" >&2
	return 1
}
export -f wait_replaced
export NS
load -topic kill -disrupt "kubectl -n $NS delete pod ferry-0 --grace-period=0 --force && wait_replaced ferry-0 $old_uid"
[ "$(k get pvc data-ferry-0 -o jsonpath='{.metadata.uid}')" = "$pvc_uid" ] || fail "ferry-0's claim was replaced"
[ "$(k get pvc data-ferry-0 -o jsonpath='{.spec.volumeName}')" = "$pv" ] || fail "ferry-0's claim is bound to another volume"
[ -f "$pv_dir/.e2e-before-kill" ] || fail "ferry-0's volume lost the mark made before the kill"
echo "ok: ferry-0 came back on its volume ($pv, $pv_dir) and caught up"

# ---- drain, against the PodDisruptionBudget
step "kubectl drain of the node, limited by the PodDisruptionBudget"
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
if kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout=20s >"$WORK/drain.log" 2>&1; then
	cat "$WORK/drain.log"
	fail "the drain evicted every ferry pod: the PodDisruptionBudget did not hold"
fi
grep -q "disruption budget" "$WORK/drain.log" || { cat "$WORK/drain.log"; fail "the drain failed, but not on the PodDisruptionBudget"; }
grep -m1 "disruption budget" "$WORK/drain.log"
# One pod evicted, its replacement Pending on the cordoned node, two left.
for _ in $(seq 30); do
	running=$(k get pods -l app.kubernetes.io/name=ferry --field-selector=status.phase=Running -o name | wc -l)
	pending=$(k get pods -l app.kubernetes.io/name=ferry --field-selector=status.phase=Pending -o name | wc -l)
	[ "$running" = 2 ] && [ "$pending" = 1 ] && break
	sleep 1
done
k get pods -o wide
[ "$running" = 2 ] && [ "$pending" = 1 ] || fail "$running ferry pods running and $pending pending after the drain, want 2 and 1"
echo "ok: the drain evicted one pod and was refused the others"
kubectl uncordon "$node"
k rollout status statefulset/ferry --timeout=300s
check status -server "$POD0:7420" -nodes 3 -timeout 120s

step "passed"
