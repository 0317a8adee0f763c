#!/usr/bin/env bash
# The certificates deploy/kubernetes needs, made with openssl and stored as
# the Secrets and the ConfigMap the StatefulSet mounts:
#
#   Secret ferry-<i>-tls (type kubernetes.io/tls: tls.crt, tls.key, ca.crt),
#     one per pod ferry-<i>: its certificate names node <i+1>
#     (URI ferry://node/<i+1>, checked on the node-to-node port), the names
#     clients dial (ferry, ferry.NS.svc…, ferry-<i>.ferry-headless.NS.svc…,
#     localhost, 127.0.0.1) and both serverAuth and clientAuth. The layout is
#     cert-manager's: a Certificate per pod writes the same Secret
#     (components/cert-manager).
#   ConfigMap ferry-ca (ca.crt): the CA, for clients (--tls-ca).
#
#   deploy/kubernetes/certs.sh [-n NAMESPACE] [-r REPLICAS] [-d DAYS] [-o DIR]
#
# Applied with kubectl to the current context; an existing Secret is
# replaced, so running it again rotates every certificate (ferry reloads
# them when the mounted files change, within a minute or two of the apply,
# without a restart). The CA's key stays in DIR (default: a temp dir,
# removed on exit); keep it (-o) only if you sign more certificates later.
set -euo pipefail
NS=ferry
REPLICAS=3
DAYS=90
OUT=
while getopts "n:r:d:o:" opt; do
	case $opt in
	n) NS=$OPTARG ;;
	r) REPLICAS=$OPTARG ;;
	d) DAYS=$OPTARG ;;
	o) OUT=$OPTARG ;;
	*) echo "usage: $0 [-n NAMESPACE] [-r REPLICAS] [-d DAYS] [-o DIR]" >&2; exit 2 ;;
	esac
done
case $REPLICAS in '' | *[!0-9]*) echo "-r: a number of replicas, not $REPLICAS" >&2; exit 2 ;; esac
if [ -z "$OUT" ]; then
	OUT=$(mktemp -d)
	trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
cd "$OUT"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
	-subj "/CN=ferry-ca.$NS" -keyout ca.key -out ca.crt 2>/dev/null
kubectl -n "$NS" create configmap ferry-ca --from-file=ca.crt --dry-run=client -o yaml | kubectl apply -f -

svc="DNS:ferry,DNS:ferry.$NS,DNS:ferry.$NS.svc,DNS:ferry.$NS.svc.cluster.local"
for ((i = 0; i < REPLICAS; i++)); do
	pod=ferry-$i
	host=$pod.ferry-headless
	printf 'subjectAltName = URI:ferry://node/%d, %s, DNS:%s, DNS:%s.%s, DNS:%s.%s.svc, DNS:%s.%s.svc.cluster.local, DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth, clientAuth\nkeyUsage = digitalSignature\n' \
		$((i + 1)) "$svc" "$host" "$host" "$NS" "$host" "$NS" "$host" "$NS" >"$pod.ext"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$pod.$NS" \
		-keyout "$pod.key" -out "$pod.csr" 2>/dev/null
	openssl x509 -req -in "$pod.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$DAYS" \
		-extfile "$pod.ext" -out "$pod.crt" 2>/dev/null
	kubectl -n "$NS" create secret generic "$pod-tls" --type=kubernetes.io/tls \
		--from-file=tls.crt="$pod.crt" --from-file=tls.key="$pod.key" --from-file=ca.crt=ca.crt \
		--dry-run=client -o yaml | kubectl apply -f -
done
