# Stevedore — build, generate, test, run.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

export GOTOOLCHAIN := local
CACHE ?= $(or $(STEVEDORE_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/stevedore)
export STEVEDORE_CACHE := $(CACHE)
LOCALBIN := $(CURDIR)/bin
TOOLBIN := $(CACHE)/tools

# Pinned tool versions; installed once into $(TOOLBIN), linked into ./bin.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN := $(LOCALBIN)/controller-gen
HELM_VERSION ?= v3.22.0
HELM := $(TOOLBIN)/helm-$(HELM_VERSION)

VERSION ?= 0.1.0
LDFLAGS := -s -w -X github.com/stevedore-dev/stevedore/internal/version.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)'

.PHONY: all
all: build

##@ Build

.PHONY: build
build: ## Build the image's binaries for this machine: bin/manager, bin/registryd, bin/stevedore-credential-provider.
	@for b in $(IMAGE_BINARIES); do echo "build $${b%%=*}"; $(GOBUILD) -o $(LOCALBIN)/$${b%%=*} $${b#*=}; done

IMG ?= ghcr.io/stevedore-dev/stevedore:$(VERSION)
PLATFORMS ?= linux/amd64 linux/arm64
# name=package of every binary the image holds, at /name.
IMAGE_BINARIES ?= manager=. registryd=./registryd stevedore-credential-provider=./cmd/stevedore-credential-provider

.PHONY: build-platforms
build-platforms: ## Build every image binary for each of PLATFORMS into bin/<os>_<arch>/.
	@for p in $(PLATFORMS); do for b in $(IMAGE_BINARIES); do \
	  echo "build $$p $${b%%=*}"; \
	  GOOS=$${p%/*} GOARCH=$${p#*/} $(GOBUILD) -o $(LOCALBIN)/$${p%/*}_$${p#*/}/$${b%%=*} $${b#*=}; \
	done; done

IMAGE_DIR ?= $(LOCALBIN)/image
MKIMAGE = go run ./hack/mkimage -bin-dir $(LOCALBIN) -platforms "$$(echo $(PLATFORMS) | tr ' ' ,)" \
	  -binaries "$$(for b in $(IMAGE_BINARIES); do printf '%s,' "$${b%%=*}"; done | sed 's/,$$//')" \
	  -version $(VERSION) -ref $(IMG) -layout $(IMAGE_DIR)/oci \
	  -tarball $(IMAGE_DIR)/stevedore-$$(go env GOOS)-$$(go env GOARCH).tar -tarball-platform $$(go env GOOS)/$$(go env GOARCH) \
	  $(if $(PUSH),-push)

.PHONY: image
image: build-platforms ## The image (both platforms, one index) with no Docker engine: OCI layout in bin/image/oci, a tarball for `ctr images import`; PUSH=1 pushes to IMG.
	$(MKIMAGE)

.PHONY: image-pack
image-pack: ## The image of the binaries bin/ holds already, built by nothing (IMAGE_DIR: where it goes; VERSION: its tag and version label).
	$(MKIMAGE)

.PHONY: docker-build
docker-build: ## Build the image (needs a Docker engine).
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .

.PHONY: fmt
fmt: ## go fmt every package.
	go fmt ./...

.PHONY: vet
vet: ## go vet every package.
	go vet ./...

##@ Generate

.PHONY: manifests
manifests: controller-gen ## CRDs and RBAC from the kubebuilder markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/...;./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	@$(MAKE) --no-print-directory chart-crds chart-rbac

.PHONY: chart-crds
chart-crds: ## Copy the generated CRDs into the chart (charts/stevedore/crds).
	rm -f charts/stevedore/crds/*.yaml
	cp config/crd/bases/*.yaml charts/stevedore/crds/

.PHONY: chart-rbac
chart-rbac: ## Copy the generated ClusterRole into the chart, whose template takes its rules.
	cp config/rbac/role.yaml charts/stevedore/files/role.yaml

.PHONY: generate
generate: controller-gen ## DeepCopy methods from the kubebuilder markers.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/...;./controllers/..."

##@ Test

.PHONY: envtest
envtest: ## Build (or find cached) kube-apiserver, etcd and kubectl.
	@hack/envtest-assets.sh >/dev/null

# The conformance rows make test runs: every storage on the newest suite
# (dev: 933 checks to v1.1's 823), and v1.1's suite on the storages
# that cover its code paths apart: a file bucket, the kubernetes tag store
# with kubernetes auth, S3. `make conformance` runs all 20 rows. The three
# kube rows are spread out (three at a time run): each starts an API server,
# and three starting at once beside the real node's image builds timed out
# once (ci20).
TEST_CONFORMANCE_ROWS ?= kube-auth/dev file/dev file/1.1 kube/dev mem/dev htpasswd/dev kube-auth/1.1 htpasswd-bearer/dev mirror/dev s3/dev s3/1.1 azure/dev gcs/dev

.PHONY: test
test: controller-gen envtest ## Run every test: unit, envtest, clients, fuzz, conformance, a real node; times each phase.
	CACHE="$(CACHE)" LOCALBIN="$(LOCALBIN)" VERSION="$(VERSION)" HELM="$(HELM)" CONTROLLER_GEN="$(CONTROLLER_GEN)" \
	  TEST_CONFORMANCE_ROWS="$(TEST_CONFORMANCE_ROWS)" hack/test.sh

.PHONY: test-outage
test-outage: envtest ## registryd loses its API server for 60 s while crane pulls and pushes (make test runs 10 s).
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" STEVEDORE_CLIENTS="$$(hack/install-clients.sh)" E2E_API_OUTAGE=60s \
		go test -count=1 -v -run '^TestAPIServerOutage$$' ./registryd/e2e/ | grep -E '^(--- |ok|FAIL)|outage_test.go:[0-9]+: [^c]'

.PHONY: test-many-tags
test-many-tags: build envtest ## 100,000 tags into one repository over HTTP through 3 kube replicas (make test runs 1,000): none lost, 0 API requests to list and resolve them, no object over 64 KiB, registryd's RSS with them cached.
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" MANY_TAGS=$${MANY_TAGS:-100000} MANY_TAGS_REGISTRYD=$(LOCALBIN)/registryd \
		go test -count=1 -v -timeout 60m -run '^TestManyTagsOneRepository$$' ./registryd/hostile/ | grep -E '^(--- |ok|FAIL)|_test.go:[0-9]+: '

.PHONY: test-full-size
test-full-size: build ## registryd (no -race) under the full-size hostile loads: 1 GiB push+pull beside 500 slowloris connections; SIGTERM during a 1 GiB push.
	REGISTRYD=$(LOCALBIN)/registryd E2E_SLOWLORIS_MIN_PERCENT=80 E2E_SLOWLORIS_MIB=1024 E2E_SLOWLORIS_CONNS=500 E2E_DRAIN_MIB=1024 E2E_DRAIN_RATE_MIB=100 \
		go test -count=1 -v -timeout 30m -run '^(TestSlowloris|TestDrainOnSIGTERM)$$' ./registryd/e2e/ | grep -E '^(--- |ok|FAIL)|_test.go:[0-9]+: '

.PHONY: test-gc-torture
test-gc-torture: ## The GC torture test (3 replicas, pushers, deleters, re-pushers) until the collector has run 1,000 cycles, on file:// and versitygw, under -race.
	STEVEDORE_STORAGE_SERVERS="$$(hack/storage-servers.sh install)" GC_TORTURE_RUNS=1000 \
		go test -race -count=1 -v -timeout 60m -run '^TestCollectWhilePushing$$' ./registryd/gc/ | grep -E '^(--- |    --- |ok|FAIL)|race_test.go:[0-9]+: '

.PHONY: fuzz
# Execution counts, not durations: a -fuzztime duration races Go 1.26's fuzz
# coordinator at the deadline and fails with "context deadline exceeded" on a
# loaded machine with no crasher found (golang/go#75804, fixed in Go 1.27).
FUZZ_EXECS ?= 10000x

# NAME@PACKAGE, the slowest first: `make -j2 fuzz` (make test) runs two at
# a time, so one's link overlaps the other's fuzzing.
FUZZ_TARGETS := FuzzHandler@./registryd/server FuzzAuthorization@./registryd/auth \
	FuzzParse@./registryd/manifest FuzzDecode@./registryd/uploads FuzzParsePath@./registryd/server \
	FuzzParseReference@./registryd/reference FuzzValidateName@./registryd/reference

fuzz: $(FUZZ_TARGETS) ## A few seconds of each go test -fuzz target.

.PHONY: $(FUZZ_TARGETS)
$(FUZZ_TARGETS):
	go test -run='^$$' -fuzz='^$(firstword $(subst @, ,$@))$$' -fuzztime=$(FUZZ_EXECS) $(lastword $(subst @, ,$@))

##@ Run

.PHONY: dev
dev: build envtest ## A local API server, the operator, a sample Registry and its registryd.
	hack/dev.sh

NODE_DIR ?= $(CURDIR)/.node

.PHONY: node
node: ## A real single-node Kubernetes on this machine (root; own network namespace) with the image imported; `make node-down` removes it.
	$(MAKE) --no-print-directory image PLATFORMS=linux/$$(go env GOARCH)
	NODE_CREDENTIAL_PROVIDER=$(LOCALBIN)/linux_$$(go env GOARCH)/stevedore-credential-provider \
	NODE_CREDENTIAL_PROVIDER_MATCH=10.200.0.1:30500 NODE_CREDENTIAL_PROVIDER_AUDIENCE=stevedore.dev/registry/demo/registry \
	  hack/node.sh up $(NODE_DIR) $(LOCALBIN)/image/stevedore-linux-$$(go env GOARCH).tar
	@echo "Use it:  source $(NODE_DIR)/env; hack/node.sh exec $(NODE_DIR) \$$KUBECTL get nodes"
	@echo "Then follow the README's Install section inside it (hack/node.sh exec $(NODE_DIR) bash)."

.PHONY: node-down
node-down: ## Stop the node of `make node` and remove everything it made.
	hack/node.sh down $(NODE_DIR)

.PHONY: conformance
conformance: ## The OCI conformance suite (1.1 and dev) against registryd: file bucket, mem://, kubernetes tag store (auth off and on), htpasswd auth (basic and bearer), with a mirror configured, s3, azure, gcs.
	$(GOBUILD) -o $(LOCALBIN)/registryd ./registryd
	REGISTRYD=$(LOCALBIN)/registryd hack/conformance.sh

.PHONY: clients
clients: ## Install crane, oras, regctl, skopeo and distribution (the mirror tests' upstream) for the registryd e2e tests (cached); print their directory.
	@hack/install-clients.sh

.PHONY: test-minio
test-minio: ## The OCI conformance suite on MinIO (slow to build the first time, so not in make test).
	$(GOBUILD) -o $(LOCALBIN)/registryd ./registryd
	CONFORMANCE_STORAGES=minio REGISTRYD=$(LOCALBIN)/registryd hack/conformance.sh

.PHONY: storage-servers
storage-servers: ## Install versitygw, Azurite and fake-gcs-server for the storage tests (cached); print their directory.
	@hack/storage-servers.sh install

.PHONY: bench
bench: build ## Side by side with distribution (installs it, crane, wrk, ab), then bench-storage; writes docs/benchmarks.md; ~17-20 min on 2 cores (GC, mirror and storage workloads included). Not part of test.
	hack/bench.sh

.PHONY: bench-gc
bench-gc: build ## Workload 7 of make bench alone: registryd gc on versitygw (BENCH_GC_BLOBS=10000 unreferenced blobs, BENCH_GC_IMAGES=1000 images) while clients push and pull, next to distribution's offline garbage-collect.
	BENCH_ONLY=gc hack/bench.sh

.PHONY: bench-bytes
bench-bytes: build ## Workload 1 of make bench alone, with the machine's limits: one 1 GiB image pushed and pulled by the Go client, crane and curl, BENCH_BYTES_ROUNDS rounds beside distribution; printed, docs/benchmarks.md left as it is.
	BENCH_ONLY=bytes hack/bench.sh

.PHONY: bench-kube
bench-kube: build envtest ## Workload 6 of make bench alone: make dev's registryd over HTTP (tag pushes, GETs by tag, BENCH_KUBE_NEW_REPOS=1000 new repositories by 8 crane processes, with the API server's CPU).
	BENCH_ONLY=kube hack/bench.sh

.PHONY: bench-s3
bench-s3: build ## Workload 8 of make bench alone: crane push/pull and curl GETs on versitygw, blob redirects off and on, next to distribution's s3 driver.
	BENCH_ONLY=s3 hack/bench.sh

.PHONY: bench-storage
bench-storage: build ## Push/pull MB/s of registryd on each storage backend next to the file backend.
	hack/bench-storage.sh

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)
$(CONTROLLER_GEN): $(TOOLBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
	@mkdir -p $(LOCALBIN) && ln -sf $< $@
$(TOOLBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION):
	hack/go-install-tool.sh $@ sigs.k8s.io/controller-tools/cmd/controller-gen $(CONTROLLER_TOOLS_VERSION)

.PHONY: helm
helm: $(HELM) ## Install helm (cached) for the chart's tests.
$(HELM):
	hack/go-install-tool.sh $@ helm.sh/helm/v3/cmd/helm $(HELM_VERSION)

.PHONY: help
help: ## Show targets.
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
