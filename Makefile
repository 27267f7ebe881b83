# The two commands a newcomer needs: `make run` and `make test`. Both find a Postgres at
# DATABASE_URL or start a throwaway local cluster there (cmd/devpg), so they work the
# same with a server already on 5432 and with only the PostgreSQL binaries installed.

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/callback?sslmode=disable
export DATABASE_URL

# Flags for the tester in `make run`; the defaults serve objects on :9010 and send
# callbacks to the service on :9090 until Ctrl-C. For a bounded run that checks the
# objects table at the end: make run TESTER_FLAGS='-duration 60s -verify'
TESTER_FLAGS ?=

# sqlc, dbmate and promtool are `tool` lines in tools/go.mod, a module of their own:
# their dependencies (every database driver sqlc and dbmate know, every service
# discovery Prometheus knows) stay out of the service's go.mod. The modfile's path is
# absolute, so a recipe may cd first. Without cgo, sqlc and dbmate build in about a
# minute each (sqlc's parser runs as WebAssembly, dbmate drops its sqlite driver),
# promtool in several (some 400 CPU-seconds from an empty build cache); cached after.
TOOL     = CGO_ENABLED=0 go tool -modfile=$(CURDIR)/tools/go.mod
SQLC     = $(TOOL) sqlc
DBMATE   = $(TOOL) dbmate --url "$(DATABASE_URL)" --migrations-dir db/migrations --schema-file db/schema.sql
PROMTOOL = $(TOOL) promtool

# Fails, printing the diff, when `go mod tidy` would change go.mod or go.sum, of the
# service or of the tools. tools/ is a module of its own, so its tidy runs there:
# `go mod tidy -modfile=tools/go.mod` would take the service's packages for the tools'.
TIDY_CHECK = go mod tidy -diff && go -C tools mod tidy -diff

.DEFAULT_GOAL := help

.PHONY: help run test bench generate verify lint build rules db/up db/new db/stop

help: ## list the targets
	@echo 'usage: make TARGET   (DATABASE_URL=$(DATABASE_URL))'
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_\/-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## start Postgres if needed, then the service and the tester together until Ctrl-C
	@go run ./cmd/devpg ensure
	go build -o bin/callback ./cmd/callback
	go build -o bin/tester ./cmd/tester
	@# The service applies its migrations at start. On Ctrl-C (or when the tester
	@# ends) the EXIT trap stops the service with SIGTERM and waits for its
	@# graceful shutdown: a background job of a script ignores SIGINT itself.
	@# No load balancer to drain for here: SHUTDOWN_DRAIN is 0 unless set. Ctrl-C is
	@# the normal way to stop, so it exits 0.
	@SHUTDOWN_DRAIN=$${SHUTDOWN_DRAIN:-0} ./bin/callback & svc=$$!; \
	trap 'kill $$svc 2>/dev/null; wait $$svc 2>/dev/null' EXIT; \
	trap 'exit 0' INT TERM; \
	sleep 1; \
	if ! kill -0 $$svc 2>/dev/null; then echo 'make run: the service exited at start (see above)'; exit 1; fi; \
	./bin/tester $(TESTER_FLAGS)

test: ## start Postgres if needed; go mod tidiness, go vet, sqlc freshness, go test -race, a short fuzz run
	DEVPG_FAST=1 go run ./cmd/devpg ensure
	$(TIDY_CHECK)
	go vet ./...
	$(SQLC) diff
	@# Built here rather than under go test's time limit: deploy's TestPromtool runs it.
	$(PROMTOOL) --version >/dev/null
	go test -race -count=1 ./...
	go test -run='^$$' -fuzz=FuzzParse -fuzztime=10s ./internal/intake

# Flags for cmd/bench, e.g. a short run of some phases:
#   make bench BENCH_FLAGS='-phases ceilings,intake -runs 1'
# docs/benchmarks.md lists the phases and their flags.
BENCH_FLAGS ?=

bench: ## measure the service beside the machine's HTTP and Postgres ceilings (cmd/bench; writes bin/bench.md and charts)
	@go run ./cmd/devpg ensure
	go run ./cmd/bench $(BENCH_FLAGS)

generate: ## regenerate the sqlc code from db/migrations and queries/
	$(SQLC) generate

verify: ## check go.mod files are tidy, generated code is fresh, code is gofmt'ed, go vet is clean
	$(TIDY_CHECK)
	$(SQLC) diff
	@unformatted=$$(gofmt -l cmd internal); \
	if [ -n "$$unformatted" ]; then echo "gofmt -w needed on:"; echo "$$unformatted"; exit 1; fi
	go vet ./...

lint: ## gofmt and go vet
	@unformatted=$$(gofmt -l cmd internal); \
	if [ -n "$$unformatted" ]; then echo "gofmt -w needed on:"; echo "$$unformatted"; exit 1; fi
	go vet ./...

rules: ## check the Prometheus rules and run their unit tests with promtool (make test does too)
	cd deploy/prometheus && $(PROMTOOL) check rules rules.yml && $(PROMTOOL) test rules rules_test.yml

build: ## build bin/callback and bin/tester
	go build -o bin/callback ./cmd/callback
	go build -o bin/tester ./cmd/tester

db/up: ## start Postgres if needed, apply migrations with dbmate, dump db/schema.sql
	go run ./cmd/devpg ensure
	$(DBMATE) up

db/new: ## create a migration: make db/new name=add_something
	@if [ -z "$(name)" ]; then echo 'usage: make db/new name=what_it_does'; exit 2; fi
	$(DBMATE) new $(name)

db/stop: ## stop the throwaway Postgres that make run/test started (if any)
	go run ./cmd/devpg stop
