# Tideline as a container: one static binary on a distroless base, running as a non-root user.
#
#   docker build -t tideline .
#   docker run --rm -v "$PWD/tideline.yaml:/etc/tideline/tideline.yaml:ro" -p 8080:8080 tideline
#
# The config must set http.listen to 0.0.0.0:8080 for /metrics and /readyz to be reachable from
# outside the container. docker-compose.yml runs it next to PostgreSQL and Kafka.

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/tideline-cdc/tideline/pkg/daemon.Version=${VERSION}" \
      -o /out/tideline ./cmd/tideline

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tideline /usr/local/bin/tideline
# The nonroot user's home, which it may write: the embedded broker (kafka.brokers: [embedded])
# keeps its data under the working directory unless kafka.embedded.data_dir says otherwise, so
# mount a volume at /home/nonroot/tideline-data to keep it across containers.
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 8080
# SIGTERM (docker stop) drains and confirms before exiting; give it time (stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tideline"]
CMD ["run", "--config", "/etc/tideline/tideline.yaml"]
