# pgaudit-cdc — see README.md.
GO      ?= go
BIN     ?= bin/pgaudit-cdc
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/pgaudit-cdc/pgaudit-cdc/internal/version.Version=$(VERSION)

.PHONY: all build test test-unit test-full test-matrix test-version pg-versions test-faults fuzz bench demo vet lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

# PostgreSQL versions (docs/postgres-versions.md). The whole suite runs
# on PGAUDIT_PG_FULL; the matrix subset on every other version listed in
# PGAUDIT_PG_VERSIONS. embedded takes the server of the version
# PGAUDIT_PG_VERSION names (Debian's /usr/lib/postgresql/N/bin, or the npm
# package `make pg-versions` installs) and fails when it is missing.
# `make test PGAUDIT_PG_VERSIONS=` runs the whole suite only.
PGAUDIT_PG_FULL     ?= 15
PGAUDIT_PG_VERSIONS ?= 14,15,16,17,18

# The matrix subset, as -run patterns: the core pipeline, the type tests,
# TOAST, partitions and the other fidelity tests, backfill, gaps, the
# capture features (schema-wide watches included), the reduced kill -9
# cycles, the idle slot, the failover tests, doctor. The tests of features
# PostgreSQL 14 lacks (row filters, column lists) are left out of the runs
# on 14 by pattern, not skipped.
MATRIX_RUN := ^Test(EnvelopesForPlainSQL|ChangesBeforeRunAreDelivered|WatchChangesApplyWhileRunning|UnwatchAfterDrop|HostileTableNames|SpineOutageLosesNothing|RestartResumesWithoutLossOrDuplicates|LargeRowArrivesWhole|ConfirmedLSNNeverAheadOfSpine|ReconnectsAfterTerminateBackend|RealCaptureDecodes|FidelityTypes|FidelityTypeTable|FidelitySchemaChanges|FidelityTruncate|FidelityPartitions|FidelityNewPartitionBeforeHousekeeping|FidelityTableShapes|FidelityUnwatchedInSameTransaction|Backfill.*|Gap.*|Annotations|SkipMarker|OnColumns|TableLifecycle|PublicationAndSlotByVersion|WatchRefusesVirtualGeneratedColumns|SchemaWatch.*|FailoverWithSyncedSlot|KillNineCycles(Streamed)?|KillNineCyclesHugeRows|IdleSlotDoesNotPinWAL|Doctor.*|GapIsLoudEverywhere|Checkpoint.*|SchemaWideWatch|SignedTrailVerifies|SpineHistoryLostIsAGap|ForgedKeyDoesNotPreemptAChange|DetachChangeAttach|TableSwap|UnloggedPartitionStaysLogged|PartitionTruncate|TableRewriteIsDeclared|InheritanceChildrenAreWatched|LargeRowInStreamedTransaction|AcceptAnyGapIsNarrow|Streamed.*|FullSpill.*|StatusShowsStreamed.*
MATRIX_RUN_14 := |FidelityUnchangedToastFullIdentity
MATRIX_RUN_15 := |FidelityUnchangedToast|RowFilterAndColumnControl
MATRIX_PKGS := ./agent ./faults ./cli
# Run whole on every version.
MATRIX_WHOLE := ./watches ./backfill ./catalog ./internal/pgtest ./embedded ./replication ./preflight

# The whole test suite: vet and the linter, the fast loop (every test that
# needs no PostgreSQL, with the race detector), then every package on
# PostgreSQL $(PGAUDIT_PG_FULL) (integration tests against a throwaway
# PostgreSQL the tests start themselves; the agent, whose goroutines share
# the confirm path, under the race detector), then the matrix subset on the
# other versions.
test: vet lint test-unit test-full test-matrix

# The fast loop: every test that needs no PostgreSQL (pure cores, the
# spine double, the publisher against it, a real JetStream cluster), in
# every package, with -race. -short leaves out the tests that need
# PostgreSQL (internal/pgtest.Needed marks them;
# TestFastLoopStartsNoPostgres checks that every test starting one is).
test-unit:
	$(GO) test -race -short -count=1 -timeout 5m ./...

# The whole suite on one version, then every Go benchmark twice (none
# needs PostgreSQL): one that no longer runs fails here, not in the middle
# of `make bench`.
test-full:
	PGAUDIT_PG_VERSION=$(PGAUDIT_PG_FULL) $(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v '/agent$$')
	$(GO) test -short -count=1 -run '^$$' -bench . -benchtime 2x -skip NetworkDelivery ./...
	PGAUDIT_PG_VERSION=$(PGAUDIT_PG_FULL) $(GO) test -race -count=1 -timeout 25m ./agent

test-matrix:
	@set -e; for v in $$(echo '$(PGAUDIT_PG_VERSIONS)' | tr ',' ' '); do \
		[ "$$v" = '$(PGAUDIT_PG_FULL)' ] && continue; \
		$(MAKE) --no-print-directory test-version V=$$v; \
	done

# The matrix subset on one version: make test-version V=16.
test-version:
	@test -n '$(V)' || { echo 'usage: make test-version V=16'; exit 2; }
	@echo '== PostgreSQL $(V): matrix subset'
	@start=$$(date +%s); \
	PGAUDIT_PG_VERSION=$(V) $(GO) test -count=1 -timeout 10m -run '$(MATRIX_RUN)$(if $(filter 14,$(V)),$(MATRIX_RUN_14),$(MATRIX_RUN_15)))$$' $(MATRIX_PKGS) && \
	PGAUDIT_PG_VERSION=$(V) $(GO) test -count=1 -timeout 10m $(MATRIX_WHOLE) && \
	echo "== PostgreSQL $(V): matrix subset passed in $$(( $$(date +%s) - start ))s"

# Installs the pinned npm packages of PostgreSQL 14, 16, 17 and 18 into the
# cache outside the repository (see .ci/pg-versions).
pg-versions:
	bash .ci/pg-versions

vet:
	$(GO) vet ./...

# staticcheck, pinned; the Go module proxy serves it (no install step).
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l .); if [ -n "$$unformatted" ]; then echo "not gofmt'ed (run gofmt -w on them): $$unformatted"; exit 1; fi
	$(GO) run $(STATICCHECK) ./...

# The full fault-injection suite (kill -9 cycles, spine faults, server
# restarts); CI runs a reduced form as part of `make test`.
test-faults:
	PGAUDIT_FAULT_CYCLES=25 PGAUDIT_FAULT_ROWS=5000 $(GO) test -count=1 -timeout 60m -run 'Fault|Kill|Standby|DeadLetter' -v ./faults/... && $(GO) test -count=1 -timeout 10m -run '^TestGapSlot(DroppedWhileRunning|DroppedWhileStopped|Invalidated)$$' -v ./agent

fuzz:
	$(GO) test ./pgoutput -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 60s
	$(GO) test ./pgoutput -run '^$$' -fuzz '^FuzzParseStreamed$$' -fuzztime 60s
	$(GO) test ./decode -run '^$$' -fuzz '^FuzzStream$$' -fuzztime 60s
	$(GO) test ./pgjson -run '^$$' -fuzz '^FuzzAppendValue$$' -fuzztime 60s
	$(GO) test ./pgjson -run '^$$' -fuzz '^FuzzCanonicalJSON$$' -fuzztime 60s

# Benchmarks, see BENCHMARKS.md. `bench` runs everything (a throwaway
# PostgreSQL, about 40 minutes, the Go micro-benchmarks included) and rewrites
# the results section of BENCHMARKS.md; `bench-smoke` is the seconds-long
# version with tiny sizes (CI runs it as TestSmoke in ./cmd/bench).
bench:
	$(GO) run ./cmd/bench -out BENCHMARKS.md

# JetStream delivery beside natscli's nats bench, servers out of process
# (BENCHMARKS.md, "JetStream"); needs nats-server and nats (NATS_BIN).
bench-jetstream:
	bash cmd/bench/jetstream.sh

.PHONY: bench-smoke
bench-smoke:
	$(GO) run ./cmd/bench -quick

# Runs the main job on the embedded default: a throwaway PostgreSQL, a
# sample table, a few changes, the envelopes on stdout.
demo:
	$(GO) run . demo

clean:
	rm -rf bin
