# ImageClassifier — common tasks. `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

export CARGO_BUILD_JOBS ?= 2
export CARGO_TARGET_DIR ?= $(CURDIR)/target
PYTHON ?= python3
MODELS ?= models
IMAGES := inference dispatcher metrics-adapter loadgen
# A docker CLI that can build with BuildKit: `docker` when it has buildx, else Debian's 20.10 CLI
# (builds with BuildKit by itself) if installed.
DOCKER ?= $(shell docker buildx version >/dev/null 2>&1 && echo docker || { [ -x /usr/bin/docker ] && echo /usr/bin/docker || echo docker; })
# e.g. --network=host where containers' bridge network has no route to crates.io
DOCKER_BUILD_FLAGS ?=
MINIKUBE_CPUS ?= 4
MINIKUBE_MEMORY ?= 8g
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Caches that outlive a clone: Go's module and build caches, the Kubernetes schemas.
CACHE ?= $(shell [ -w /var/cache ] && echo /var/cache/imageclassifier || echo $$HOME/.cache/imageclassifier)
export GOMODCACHE ?= $(CACHE)/go-mod
export GOCACHE ?= $(CACHE)/go-build
export K8S_SCHEMAS ?= $(CACHE)/k8s-schemas
RELEASE_BIN := $(CARGO_TARGET_DIR)/release
# The one release build every target uses: binaries and examples of the whole workspace with one
# feature set, so no target rebuilds burn and friends with a different one (`-p` builds would).
RELEASE_BUILD := cargo build --release --workspace --bins --examples

# $(call need,TOOL,where to get it): stop with a clear message when a prerequisite is missing.
need = @command -v $(1) >/dev/null || { echo "make $@: needs $(1) ($(2))" >&2; exit 1; }
CARGO_URL := https://rustup.rs
KUBECTL_URL := https://kubernetes.io/docs/tasks/tools/

# Real photos a trained ImageNet classifier recognises; `make model` refuses a download that does not.
VERIFY_PHOTOS := inference/photos

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: deps
deps: schemas ## install what the tests need (Python reference packages, Prometheus, shellcheck, Kubernetes schemas; checks kubectl)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r inference/scripts/requirements.txt
	@command -v prometheus >/dev/null || { \
	  echo "installing prometheus (Debian package) for the adapter's tests"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
	    || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }; }
	@command -v shellcheck >/dev/null || { \
	  echo "installing shellcheck (Debian package) for the e2e scripts"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck \
	    || { $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends shellcheck; }; }
	@command -v kubectl >/dev/null || { \
	  echo "kubectl is needed by the adapter's tests: https://kubernetes.io/docs/tasks/tools/" >&2; exit 1; }

.PHONY: schemas
schemas: ## the OpenAPI schemas of the Kubernetes releases the manifests support (e2e/kubernetes-versions), from the Go module proxy
	$(call need,go,https://go.dev/doc/install)
	e2e/k8s-schemas.sh

.PHONY: build
build: ## release build of every binary (and the benchmark examples)
	$(call need,cargo,$(CARGO_URL))
	$(RELEASE_BUILD)

.PHONY: fmt
fmt: ## format the code
	cargo fmt --all

.PHONY: lint
lint: ## formatting check and clippy with warnings as errors, the wgpu and cuda backends' code included
	cargo fmt --all -- --check
	# One check of every crate with both GPU features on: a second feature set would check burn
	# and its dependencies again (minutes on 2 cores). cubecl-cuda's build script downloads an
	# LLVM bundle; DOCS_RS=1 skips that download, which is enough to type-check (no linking) the
	# CUDA code path on a machine without internet. No other build script here reads DOCS_RS.
	DOCS_RS=1 cargo clippy --workspace --all-targets --features inference/wgpu,inference/cuda -- -D warnings

.PHONY: test
test: deps lint ## everything CI checks: fmt, clippy (GPU backends included), all tests, the local stack, the e2e on the local cluster (root)
	# Release builds, tests included: the e2e's images need release binaries, and one profile
	# compiles burn and the other dependencies once instead of twice (25 min each, cold).
	cargo test --release --workspace --all-targets
	shellcheck e2e/*.sh e2e/cluster/*.sh dispatcher/bench/*.sh loadgen/bench/*.sh inference/scripts/*.sh
	$(MAKE) local-test
	$(MAKE) e2e-local

E2E_MODELS := $(CARGO_TARGET_DIR)/e2e-models

.PHONY: local
local: ## the whole data path as local processes: Prometheus, 3 inference servers, dispatcher, adapter, loadgen (needs make model)
	$(RELEASE_BUILD)
	BIN=$(RELEASE_BIN) MODELS=$(MODELS) e2e/local-stack.sh

.PHONY: local-test
local-test: ## the local stack with the release binaries and a random-weight ResNet50 (part of make test)
	# The binaries `cargo test --release` builds (same features as the tests, so nothing is rebuilt).
	cargo test --release --workspace --all-targets --no-run
	@test -f $(E2E_MODELS)/resnet50.json || { mkdir -p $(E2E_MODELS) \
	  && $(PYTHON) inference/scripts/make_resnet_onnx.py --arch resnet50 --out $(E2E_MODELS)/resnet50.onnx \
	  && $(RELEASE_BIN)/inference import $(E2E_MODELS)/resnet50.onnx --name resnet50 --labels imagenet; }
	BIN=$(RELEASE_BIN) MODELS=$(E2E_MODELS) e2e/local-stack.sh

.PHONY: model
model: ## fetch + import pretrained ResNet50 into $(MODELS)/, checked on real photos (OFFLINE=1: random weights, no internet)
	$(call need,cargo,$(CARGO_URL))
	mkdir -p $(MODELS)
ifeq ($(OFFLINE),1)
	$(call need,$(PYTHON),Python 3.10+ with pip)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check onnx numpy
	$(PYTHON) inference/scripts/make_resnet_onnx.py --arch resnet50 --out $(MODELS)/resnet50.onnx
	$(RELEASE_BUILD)
	$(RELEASE_BIN)/inference import $(MODELS)/resnet50.onnx --name resnet50 --labels imagenet
else
	inference/scripts/fetch-resnet50.sh $(MODELS)/resnet50.onnx
	$(RELEASE_BUILD)
	$(RELEASE_BIN)/inference import $(MODELS)/resnet50.onnx --name resnet50 --labels imagenet --verify-with $(VERIFY_PHOTOS)
endif

.PHONY: serve
serve: ## run the inference server on :8080 with the model from `make model`
	$(RELEASE_BUILD)
	$(RELEASE_BIN)/inference serve --listen 0.0.0.0:8080 --model $(MODELS)

.PHONY: cluster
cluster: ## start minikube with room for 3+ inference pods (idempotent)
	$(call need,minikube,https://minikube.sigs.k8s.io/docs/start/)
	minikube status >/dev/null 2>&1 || minikube start --cpus=$(MINIKUBE_CPUS) --memory=$(MINIKUBE_MEMORY)

.PHONY: images
images: ## build imageclassifier/<component>:dev with the engine DOCKER_HOST points at (minikube: eval $$(minikube docker-env))
	$(call need,$(DOCKER),the docker CLI: https://docs.docker.com/engine/install/)
	@$(DOCKER) info >/dev/null 2>&1 || { echo "no container engine answers (DOCKER_HOST=$${DOCKER_HOST:-unset}); for minikube run: eval \$$(minikube docker-env)" >&2; exit 1; }
	@ls $(MODELS)/*.json >/dev/null 2>&1 || { echo "no model in $(MODELS)/: run make model first (the inference image carries it)" >&2; exit 1; }
	for image in $(IMAGES); do DOCKER_BUILDKIT=1 $(DOCKER) build $(DOCKER_BUILD_FLAGS) --target $$image -t imageclassifier/$$image:dev . || exit 1; done

.PHONY: images-from-host
images-from-host: ## the same runtime images from binaries built here (cargo build --release), without compiling in a container
	@$(DOCKER) info >/dev/null 2>&1 || { echo "no container engine answers (DOCKER_HOST=$${DOCKER_HOST:-unset})" >&2; exit 1; }
	@ls $(MODELS)/*.json >/dev/null 2>&1 || { echo "no model in $(MODELS)/: run make model first" >&2; exit 1; }
	$(RELEASE_BUILD)
	tmp=$$(mktemp -d) && cp $(addprefix $(RELEASE_BIN)/,$(IMAGES)) $$tmp/ \
	  && printf 'FROM debian:bookworm-slim\nCOPY . /out/\n' > $$tmp/Dockerfile \
	  && DOCKER_BUILDKIT=1 $(DOCKER) build -q -t imageclassifier/host-binaries:dev $$tmp; status=$$?; rm -rf $$tmp; exit $$status
	for image in $(IMAGES); do DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg BINARIES=imageclassifier/host-binaries:dev \
	  --target $$image -t imageclassifier/$$image:dev . || exit 1; done

.PHONY: containers
containers: ## container smoke test: the local stack run from the images, host networking, non-root, read-only; makes the model first if there is none (OFFLINE=1: random weights) (e2e/containers.sh)
	DOCKER=$(DOCKER) MODELS=$(abspath $(MODELS)) OFFLINE=$(OFFLINE) e2e/containers.sh

.PHONY: deploy
deploy: ## apply manifests/ to the current kubectl context
	$(call need,kubectl,$(KUBECTL_URL))
	kubectl apply -k manifests/

.PHONY: undeploy
undeploy: ## remove everything manifests/ created
	$(call need,kubectl,$(KUBECTL_URL))
	kubectl delete -k manifests/ --ignore-not-found

.PHONY: e2e
e2e: ## the main job: minikube (E2E_CLUSTER=local: the local cluster), images, deploy, load, the HPA scales up and back down (e2e/e2e.sh)
	e2e/e2e.sh

.PHONY: e2e-local
e2e-local: ## the e2e on a fresh local cluster, then the cluster taken down and the host checked to be as before (part of make test)
	e2e/local-cluster.sh down
	@before=$$(mktemp); after=$$(mktemp); e2e/host-state.sh >$$before || exit 1; \
	E2E_CLUSTER=local e2e/e2e.sh; status=$$?; \
	e2e/local-cluster.sh down || status=1; \
	e2e/host-state.sh >$$after || status=1; \
	diff -u $$before $$after || { echo "make e2e-local: the host differs after local-cluster-down (above)" >&2; status=1; }; \
	rm -f $$before $$after; exit $$status

.PHONY: local-cluster
local-cluster: ## a real single-node Kubernetes here, built from upstream sources (root; e2e/local-cluster.sh)
	e2e/local-cluster.sh up

.PHONY: local-cluster-down
local-cluster-down: ## stop the local cluster and undo its changes to the host
	e2e/local-cluster.sh down

.PHONY: loadtest
loadtest: ## step load through the deployed dispatcher (port-forward), following the inference replicas; report + plot in e2e-out/
	e2e/loadtest.sh

.PHONY: clean
clean: ## remove build outputs and e2e results (keeps models/)
	cargo clean
	rm -rf e2e-out

.PHONY: bench-adapter
bench-adapter: ## adapter overhead over Prometheus for a 100-pod metric, and its memory (docs/PERFORMANCE.md)
	$(RELEASE_BUILD)
	ADAPTER_BIN=$(RELEASE_BIN)/metrics-adapter $(RELEASE_BIN)/examples/bench_overhead

.PHONY: bench-dispatcher
bench-dispatcher: ## dispatcher vs nginx proxy_pass, and the slow-backend experiment (needs nginx, wrk)
	$(RELEASE_BUILD)
	dispatcher/bench/compare.sh

.PHONY: bench-overload
bench-overload: ## overload at 2x and 3x a fixed-capacity pool: retries per request, goodput, p99 (DISPATCHERS="a=bin b=bin" compares builds)
	$(RELEASE_BUILD)
	dispatcher/bench/overload.sh

.PHONY: bench-loadgen
bench-loadgen: ## loadgen vs oha and wrk, and open-loop accuracy (needs nginx, wrk, oha)
	$(RELEASE_BUILD)
	loadgen/bench/compare.sh

.PHONY: bench-families
bench-families: deps ## model-only speed per network family (the coverage table) vs ONNX Runtime, batch 1 and 8
	$(RELEASE_BUILD)
	PYTHON=$(PYTHON) inference/scripts/bench-families.sh $(RELEASE_BIN)

.PHONY: bench
bench: deps ## model-only speed: burn vs ONNX Runtime on the same ONNX file, same machine
	$(RELEASE_BUILD)
	$(RELEASE_BIN)/inference bench --model $(MODELS) --batch-sizes 1,8,32
	$(PYTHON) inference/scripts/bench_ort.py $(MODELS)/resnet50.onnx --batch-sizes 1,8,32
