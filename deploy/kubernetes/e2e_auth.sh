# Service-account auth from pods; sourced by e2e.sh (its k, fail, NS, WORK,
# CA and check). Pods of the ferry image, each as its own account with a
# token projected for the audience ferry, call the cluster through the
# client Service:
#
#   e2e-client    granted publish on k8s-auth: its message is stored
#   e2e-intruder  no rule: PERMISSION_DENIED
#   e2e-anonymous no token: UNAUTHENTICATED
#   e2e-wrongaud  e2e-client's account, but the token Kubernetes mounts for
#                 the API server (another audience): UNAUTHENTICATED
#   e2e-peer      granted, but dialing the node-to-node port, which asks a
#                 node certificate: refused
#
# then reads k8s-auth back: the granted pod's message only.

# auth_pod NAME ACCOUNT FERRY_ARGS...: starts a pod that runs /ferry
# FERRY_ARGS once. It mounts the CA at /etc/ferry-ca, a token of ACCOUNT
# with the audience ferry at /var/run/secrets/ferry/token, and the
# account's ordinary token (audience: the API server) where Kubernetes
# puts it.
auth_pod() {
	local name=$1 account=$2 args="" a
	shift 2
	for a in "$@"; do args+="\"$a\", "; done
	cat >"$WORK/$name.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  labels: {app.kubernetes.io/name: e2e-auth}
spec:
  serviceAccountName: $account
  automountServiceAccountToken: true
  restartPolicy: Never
  enableServiceLinks: false
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: ferry
      image: localhost/ferry:dev
      imagePullPolicy: Never
      command: [/ferry, ${args%, }]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts:
        - {name: ca, mountPath: /etc/ferry-ca, readOnly: true}
        - {name: token, mountPath: /var/run/secrets/ferry, readOnly: true}
  volumes:
    - name: ca
      configMap: {name: ferry-ca}
    - name: token
      projected:
        sources: [{serviceAccountToken: {audience: ferry, expirationSeconds: 3600, path: token}}]
EOF
	k apply -f "$WORK/$name.yaml" >/dev/null
}

# pod_result NAME: waits until the pod has run (up to 3 min) and prints
# Succeeded or Failed; its output goes to $WORK/NAME.log.
pod_result() {
	local phase=""
	for _ in $(seq 180); do
		phase=$(k get pod "$1" -o jsonpath='{.status.phase}' 2>/dev/null || true)
		case $phase in Succeeded | Failed) break ;; esac
		sleep 1
	done
	k logs "$1" >"$WORK/$1.log" 2>&1 || true
	echo "$phase"
}

# expect_refused NAME PATTERN WHAT: the pod failed, saying PATTERN.
expect_refused() {
	local r
	r=$(pod_result "$1")
	[ "$r" = Failed ] || { cat "$WORK/$1.log"; fail "$1: $r, want Failed ($3)"; }
	grep -q -- "$2" "$WORK/$1.log" || { cat "$WORK/$1.log"; fail "$1 failed, but not with $2 ($3)"; }
	echo "ok: $1 refused: $(grep -m1 -o -- "$2.*" "$WORK/$1.log" | cut -c1-160)"
}

k exec ferry-0 -- /ferry topic create k8s-auth --partitions 1 >/dev/null || fail "kubectl exec ferry-0 -- /ferry topic create k8s-auth"
TLS=(--tls-ca /etc/ferry-ca/ca.crt)
SVC=ferry.$NS.svc:7420
FERRY_TOKEN_ARG=(--token-file /var/run/secrets/ferry/token)
auth_pod e2e-client e2e-client pub k8s-auth from-e2e-client --server "$SVC" "${TLS[@]}" "${FERRY_TOKEN_ARG[@]}"
auth_pod e2e-intruder e2e-intruder pub k8s-auth from-e2e-intruder --server "$SVC" "${TLS[@]}" "${FERRY_TOKEN_ARG[@]}"
auth_pod e2e-anonymous e2e-intruder pub k8s-auth from-e2e-anonymous --server "$SVC" "${TLS[@]}"
auth_pod e2e-wrongaud e2e-client pub k8s-auth from-e2e-wrongaud --server "$SVC" "${TLS[@]}" \
	--token-file /var/run/secrets/kubernetes.io/serviceaccount/token
auth_pod e2e-peer e2e-client topic list --server "ferry-0.ferry-headless.$NS.svc:7422" "${TLS[@]}" "${FERRY_TOKEN_ARG[@]}"

r=$(pod_result e2e-client)
[ "$r" = Succeeded ] || { cat "$WORK/e2e-client.log"; fail "e2e-client, granted publish on k8s-auth: $r, want Succeeded"; }
echo "ok: e2e-client (granted publish on k8s-auth) published with its projected token"
expect_refused e2e-intruder PermissionDenied "an account the policy does not name"
expect_refused e2e-anonymous Unauthenticated "no token"
expect_refused e2e-wrongaud Unauthenticated "a token for another audience"
r=$(pod_result e2e-peer)
[ "$r" = Failed ] || { cat "$WORK/e2e-peer.log"; fail "e2e-peer: the node-to-node port answered a client without a node certificate"; }
echo "ok: e2e-peer refused on the node-to-node port: $(head -c 160 "$WORK/e2e-peer.log")"

k exec ferry-0 -- /ferry read k8s-auth >"$WORK/k8s-auth.read" || fail "kubectl exec ferry-0 -- /ferry read k8s-auth"
grep -q from-e2e-client "$WORK/k8s-auth.read" || { cat "$WORK/k8s-auth.read"; fail "k8s-auth lacks e2e-client's message"; }
if grep -q 'from-e2e-\(intruder\|anonymous\|wrongaud\)' "$WORK/k8s-auth.read"; then
	cat "$WORK/k8s-auth.read"
	fail "a refused pod's message is on k8s-auth"
fi
echo "ok: k8s-auth holds e2e-client's message and no refused pod's"
k delete pods -l app.kubernetes.io/name=e2e-auth --wait=false >/dev/null
