# syntax=docker/dockerfile:1
# The service and the tester, as static binaries in a minimal image that runs as a
# non-root user. No HEALTHCHECK: orchestrators probe /healthz (alive) and /readyz
# (callbacks can be made durable). The migrations are embedded in the binary.
#
#   docker build -t callback .                      # the service (ENTRYPOINT)
#   docker run --entrypoint /usr/local/bin/tester callback ...   # the tester
#   docker build --build-arg VERSION=v1.2.3 --build-arg REVISION=$(git rev-parse HEAD) .
#
# .git stays out of the build context, so the build cannot stamp its commit itself:
# VERSION and REVISION, if given, label callback_build_info and `callback -version`.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Static binaries: the runtime image has no C library.
ENV CGO_ENABLED=0 GOFLAGS=-trimpath
COPY . .
ARG VERSION=""
ARG REVISION=""
# Only the modules these two programs import are downloaded: the development tools
# (sqlc, dbmate, promtool) are in tools/go.mod, which .dockerignore leaves out.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -ldflags "-s -w -X github.com/objwatch/callback/internal/metrics.version=${VERSION} -X github.com/objwatch/callback/internal/metrics.revision=${REVISION}" \
        -o /out/callback ./cmd/callback && \
    go build -ldflags "-s -w" -o /out/tester ./cmd/tester && \
    mkdir -p /out/spool

# distroless static: CA certificates, tzdata and /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/callback /out/tester /usr/local/bin/
# The spool must be on a local disk and writable by the service: mount a volume here.
COPY --from=build --chown=65532:65532 /out/spool /var/lib/callback/spool
ENV LISTEN_ADDR=:9090 SPOOL_DIR=/var/lib/callback/spool
VOLUME ["/var/lib/callback/spool"]
# 9090: the service (API, /metrics, probes). 9010: the tester's object service.
EXPOSE 9090 9010
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/callback"]
