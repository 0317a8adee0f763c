#!/usr/bin/env bash
# Regenerates the Go code for proto/ferry/v1 (the API) and proto/ferry/cluster/v1
# (node to node) with pinned generator versions.
# Needs only Go: buf and the two protoc plugins are built from the module proxy.
#
#   proto/generate.sh          regenerate in place
#   proto/generate.sh --check  fail if the committed code differs from a fresh generation
set -euo pipefail

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

cd "$(dirname "$0")"
bin="$(go env GOPATH)/ferry-tools/bin"
mkdir -p "$bin"
GOBIN="$bin" go install "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}"
GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"
export PATH="$bin:$PATH"

buf lint
if [[ "${1:-}" == "--check" ]]; then
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	buf generate --output "$tmp"
	if ! diff -r -q "$tmp/ferry" ferry --exclude='*.proto' >/dev/null; then
		diff -r "$tmp/ferry" ferry --exclude='*.proto' || true
		echo "proto: generated code is stale; run proto/generate.sh and commit the result" >&2
		exit 1
	fi
	echo "proto: generated code is up to date"
else
	buf generate
fi
