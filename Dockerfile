# syntax=docker/dockerfile:1
#
# Tideline as a container: one binary on a distroless glibc base, running as a non-root user.
#
#   docker build -t tideline .
#   docker build --build-arg VERSION=$(git describe --tags --always) -t tideline .
#   docker run --rm -v "$PWD/tideline.yaml:/etc/tideline/tideline.yaml:ro" -p 8080:8080 tideline
#
# The config must set http.listen to 0.0.0.0:8080 for /metrics and /readyz to be reachable from
# outside the container. docker-compose.yml runs it next to PostgreSQL, MySQL, Kafka, Prometheus
# and Grafana.
#
# The binary needs cgo: the DuckDB sink links DuckDB's C++ library (github.com/duckdb/duckdb-go),
# so it is linked dynamically against glibc and the GCC runtime. `ldd tideline` on a bookworm build:
#   libstdc++.so.6, libm.so.6, libgcc_s.so.1, libc.so.6, /lib64/ld-linux-x86-64.so.2
# (symbol versions up to GLIBC_2.34, GLIBCXX_3.4.30, CXXABI_1.3.13). gcr.io/distroless/cc-debian12
# has all of them (its cc layer adds libstdc++6, libgcc-s1 and libgomp1 to glibc, CA certificates
# and tzdata). The builder is pinned to bookworm (Debian 12) like the runtime: a binary linked on a
# newer Debian can ask for symbol versions that bookworm's glibc and libstdc++ lack.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# The caches keep DuckDB's compiled cgo package between builds (a cold build takes minutes).
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X github.com/tideline-cdc/tideline/pkg/daemon.Version=${VERSION}" \
      -o /out/tideline ./cmd/tideline

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tideline /usr/local/bin/tideline
# The nonroot user's home, which it may write: the embedded broker (kafka.brokers: [embedded]) and
# a DuckDB sink's relative path keep their data under the working directory, so mount a volume at
# /home/nonroot/tideline-data to keep it across containers.
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 8080
# SIGTERM (docker stop) drains and confirms before exiting; give it time (stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tideline"]
CMD ["run", "--config", "/etc/tideline/tideline.yaml"]
