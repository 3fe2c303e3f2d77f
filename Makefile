# chainwarden: `make help` lists the targets.
SHELL := /bin/bash
CACHE ?= $(or $(CHAINWARDEN_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/chainwarden)
export PATH := $(CACHE)/bin:/usr/local/go/bin:$(PATH)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_TEST_FLAGS ?=

.PHONY: help deps build test test-unit image-test fuzz bench bench-proxy bench-fleet demo ami fmt vet clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## install everything tests and the demo need (apt packages, pinned Go-built components), idempotent
	@bash scripts/deps.sh

build: ## build bin/chainwarden
	go build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/chainwarden ./cmd/chainwarden

test: deps ## every test, integration included (real Consul, Nomad, geth, CometBFT, nginx, HAProxy), race detector on
	go vet ./...
	go test -race -count=1 -timeout 60m $(GO_TEST_FLAGS) ./...

test-unit: ## the unit tier: no real component started (-short), race detector on; well under a minute warm
	go vet ./...
	go test -race -short -count=1 $(GO_TEST_FLAGS) ./...

image-test: deps ## boot the node image in qemu (built by packer/'s provisioning, cached outside the clone) and check it joins a cluster
	go test -race -count=1 -timeout 60m -v -run 'TestImageBoot' $(GO_TEST_FLAGS) ./packer/

fuzz: ## run every fuzz target for FUZZTIME (default 30s) each; a crasher lands in testdata/fuzz as a seed
	bash scripts/fuzz.sh

bench: deps build ## the agent benchmark (1,000 nodes, 1 s interval: push at 12 s and 1 s blocks, polling); docs/BENCHMARKS.md
	bash scripts/bench-agent.sh

bench-proxy: deps ## RPC proxy benchmarks (failover time, failed reads, overhead); figures for docs/BENCHMARKS.md
	bash scripts/bench-proxy.sh all

bench-fleet: deps ## head sharing at fleet scale: 3 Consul servers, 100/300/1,000 simulated hosts, before/after; docs/BENCHMARKS.md
	bash scripts/bench-fleet.sh

demo: deps build ## the demo stack: Consul, geth and CometBFT networks, Nomad jobs, the agent, the nginx proxy
	go build -trimpath -o bin/chainwarden-dev ./cmd/chainwarden-dev && ./bin/chainwarden-dev -with-nomad -proxy-port 8545

fleet-demo: deps build ## a fleet in network namespaces (3 Consul and Nomad servers, 4 chain hosts, a proxy host) until Ctrl-C; root; docs/PRODUCTION.md
	go build -trimpath -o bin/chainwarden-fleet ./cmd/chainwarden-fleet && ./bin/chainwarden-fleet

ami: build ## build the node AMI on AWS (credentials from the SDK chain; Packer >= 1.10 after packer init)
	packer init packer/ && packer build -var chainwarden_version=$(VERSION) -var chainwarden_binary=$(CURDIR)/bin/chainwarden packer/

fmt: ## gofmt every Go file
	gofmt -w $$(git ls-files '*.go')

vet: ## go vet
	go vet ./...

clean: ## remove build outputs
	rm -rf bin
