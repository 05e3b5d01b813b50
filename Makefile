# pgaudit-cdc — see README.md.
GO      ?= go
BIN     ?= bin/pgaudit-cdc
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/pgaudit-cdc/pgaudit-cdc/internal/version.Version=$(VERSION)

.PHONY: all build test test-short test-faults fuzz bench demo vet lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# The whole test suite: unit tests, fuzz seed corpora, integration tests
# against a throwaway PostgreSQL the tests start themselves.
test: vet
	$(GO) test -count=1 -timeout 20m ./...

vet:
	$(GO) vet ./...

# The full fault-injection suite (kill -9 cycles, spine faults, server
# restarts); CI runs a reduced form as part of `make test`.
test-faults:
	PGAUDIT_FAULT_CYCLES=25 PGAUDIT_FAULT_ROWS=5000 $(GO) test -count=1 -timeout 60m -run 'Fault|Kill|Standby|DeadLetter' -v ./faults/...

fuzz:
	$(GO) test ./decode -run '^$$' -fuzz FuzzParse -fuzztime 60s
	$(GO) test ./decode -run '^$$' -fuzz FuzzStream -fuzztime 60s
	$(GO) test ./decode -run '^$$' -fuzz FuzzAppendValue -fuzztime 60s

# Benchmarks, see BENCHMARKS.md. `bench` runs everything (a throwaway
# PostgreSQL, 10-20 minutes, the Go micro-benchmarks included) and rewrites
# the results section of BENCHMARKS.md; `bench-smoke` is the seconds-long
# version with tiny sizes (CI runs it as TestSmoke in ./bench).
bench:
	$(GO) run ./bench -out BENCHMARKS.md

.PHONY: bench-smoke
bench-smoke:
	$(GO) run ./bench -quick

# Runs the main job on the embedded default: a throwaway PostgreSQL, a
# sample table, a few changes, the envelopes on stdout.
demo:
	$(GO) run . demo

clean:
	rm -rf bin
