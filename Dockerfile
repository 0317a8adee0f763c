# The ferry image: one static binary on distroless/static, running as
# 65532 (nonroot), nothing written outside the data volume.
#
#   docker build -t ferry:dev --build-arg VERSION=$(git describe --tags --always) \
#     --build-arg COMMIT=$(git rev-parse HEAD) --build-arg BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#   docker run --rm --read-only -p 7420:7420 -p 7421:7421 -v ferry-data:/var/lib/ferry ferry:dev
#
# deploy/kubernetes/e2e.sh builds the same binary (CGO_ENABLED=0, the same
# ldflags) and wraps it into an image without Docker.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev COMMIT=unknown BUILD_DATE=unknown
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT} -X main.buildDate=${BUILD_DATE}" \
      -o /out/ferry ./cmd/ferry \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ferry /ferry
# An empty data directory owned by the runtime user: a named volume mounted
# here starts with this ownership, so the broker can write to it.
COPY --from=build --chown=65532:65532 /out/data /var/lib/ferry
USER 65532:65532
# gRPC (clients), HTTP (/healthz, /readyz, /metrics), node-to-node (cluster).
EXPOSE 7420 7421 7422
VOLUME /var/lib/ferry
ENTRYPOINT ["/ferry"]
# ferry serve listens on loopback unless told otherwise; in a container
# that is the container's own, so the image listens on every interface
# (and ferry serve logs a WARN for each port without TLS or auth).
CMD ["serve", "--data-dir", "/var/lib/ferry", "--grpc-addr", ":7420", "--http-addr", ":7421", "--peer-addr", ":7422"]
