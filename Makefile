# Tideline. `make` lists the targets.
#
# demo and test install the system packages they need first (scripts/ensure-packages.sh), so a
# fresh Debian machine with Go needs nothing else.

# The Go tarball's usual home, for machines where it is installed but not yet in PATH.
export PATH := $(PATH):/usr/local/go/bin

MODULE  := github.com/tideline-cdc/tideline
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X $(MODULE)/pkg/daemon.Version=$(VERSION)

# Extra flags for the demo and the benchmark, e.g. make demo DEMO_FLAGS='-kafka 127.0.0.1:19092'.
DEMO_FLAGS  ?=
BENCH_FLAGS ?=
# The demo's source database: empty (or postgres) for PostgreSQL, mysql for MariaDB.
SOURCE ?=

.DEFAULT_GOAL := help
.PHONY: help demo test bench build vet fmt lint clean

help: ## list the targets
	@echo 'Tideline targets:'
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## (.*)/  make \1\t\2/' | expand -t 16

# The programs are built and run, not `go run`: Ctrl-C then reaches the program itself, which
# stops its servers and removes its temp dirs.
demo: ## run a throwaway PostgreSQL (SOURCE=mysql: MariaDB) with a shop workload, streamed into an embedded Kafka (Ctrl-C stops)
	@bash scripts/ensure-packages.sh demo$(if $(SOURCE),-$(SOURCE))
	go build -ldflags '$(LDFLAGS)' -o bin/tideline ./cmd/tideline
	go build -ldflags '$(LDFLAGS)' -o bin/tideline-demo ./cmd/tideline-demo
	./bin/tideline-demo $(if $(SOURCE),-source $(SOURCE)) $(DEMO_FLAGS)

# One go test invocation, last, so its summary lines end the output.
test: ## install missing test packages (postgresql, mariadb-server, kcat, gcc), then go test -race ./...
	@bash scripts/ensure-packages.sh test
	go test -race -count=1 -timeout 25m ./...

bench: ## run the benchmarks (cmd/tideline-bench)
	@bash scripts/ensure-packages.sh bench
	go build -ldflags '$(LDFLAGS)' -o bin/tideline-bench ./cmd/tideline-bench
	./bin/tideline-bench $(BENCH_FLAGS)

build: ## build bin/tideline, stamped with the git version
	go build -ldflags '$(LDFLAGS)' -o bin/tideline ./cmd/tideline

vet: ## go vet ./...
	go vet ./...

fmt: ## gofmt every Go file in place
	gofmt -s -w $$(find . -name '*.go' -not -path './.git/*')

lint: ## check formatting, go vet, and the shell scripts' syntax
	@out=$$(gofmt -s -l $$(find . -name '*.go' -not -path './.git/*')); \
	if [ -n "$$out" ]; then echo "not gofmt -s formatted (make fmt):"; echo "$$out"; exit 1; fi
	go vet ./...
	bash -n scripts/*.sh .ci/run

clean: ## remove bin/
	rm -rf bin
