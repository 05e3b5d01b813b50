package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// DrainBuildsResult compares builds of pgaudit-cdc (the agent and
// Options.CompareBins), each as its built binary with the database set up
// by its own watch command, draining the same backlog from a slot of its
// own: the drain scenario's figures, side by side with an older build.
type DrainBuildsResult struct {
	Rows   int
	Builds []string // ptAgent first, then agent:NAME
	Rounds []map[string]DrainBuildRun
}

// DrainBuildRun is one build's drain: from its start to the slot
// confirming the backlog's end (its status interval is 100 ms), with the
// CPU of its process and of its walsender.
type DrainBuildRun struct {
	Time, CPU, WalsenderCPU time.Duration
}

func (e *env) drainBuilds(ctx context.Context) (*DrainBuildsResult, error) {
	bin, cleanup, err := e.agentBinary(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	builds, bins := e.builds(bin)
	res := &DrainBuildsResult{Rows: e.opts.Rows, Builds: builds}
	const pub = "bench_drainb"
	// Slot names are the cluster's: one per build and round.
	slotOf := func(build int) func(k int) string {
		return func(k int) string { return fmt.Sprintf("drainb_%d_%d", build, k) }
	}
	type db struct {
		url  string
		end  pgoutput.LSN
		slot func(int) string
	}
	dbs := map[string]db{}
	for i, b := range res.Builds {
		url, conn, err := e.openDB(ctx, fmt.Sprintf("bench_drainb_%d", i))
		if err != nil {
			return nil, err
		}
		d, err := prepareDrainBuild(ctx, e, conn, bins[b], url, pub, slotOf(i))
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", b, err)
		}
		dbs[b] = db{url: url, end: d, slot: slotOf(i)}
	}
	for k := 1; k <= e.opts.Rounds; k++ {
		round := map[string]DrainBuildRun{}
		order := append(slices.Clone(res.Builds[k%len(res.Builds):]), res.Builds[:k%len(res.Builds)]...)
		for _, b := range order {
			run, err := e.drainBuild(ctx, bins[b], dbs[b].url, pub, dbs[b].slot(k), dbs[b].end)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", b, err)
			}
			round[b] = run
			e.logf("round %d %-16s drained %d rows in %s (%.0f rows/s), CPU %s (%.2f µs/row), walsender %s",
				k, b, e.opts.Rows, run.Time.Round(time.Millisecond), rate(e.opts.Rows, run.Time), run.CPU.Round(time.Millisecond),
				float64(run.CPU.Microseconds())/float64(e.opts.Rows), run.WalsenderCPU.Round(time.Millisecond))
		}
		res.Rounds = append(res.Rounds, round)
	}
	return res, nil
}

// builds names the agent's build (bin) and then Options.CompareBins' in
// name order, as consumers (ptAgent, agent:NAME), with their binaries.
func (e *env) builds(bin string) ([]string, map[string]string) {
	names := []string{ptAgent}
	bins := map[string]string{ptAgent: bin}
	for _, name := range slices.Sorted(maps.Keys(e.opts.CompareBins)) {
		names = append(names, ptCompare+name)
		bins[ptCompare+name] = e.opts.CompareBins[name]
	}
	return names, bins
}

// prepareDrainBuild sets up one build's database: orders watched by the
// build itself, a slot per round, then the backlog; it returns the
// backlog's end.
func prepareDrainBuild(ctx context.Context, e *env, conn *pgx.Conn, bin, url, pub string, slot func(int) string) (pgoutput.LSN, error) {
	for _, sql := range []string{"SET synchronous_commit = on", ordersDDL} {
		if err := exec1(ctx, conn, sql); err != nil {
			return 0, err
		}
	}
	// The slot the watch may create sees the registry's own event: it
	// goes, and the rounds' slots see the backlog only.
	setup := slot(0)
	if err := watchWith(ctx, bin, url, pub, setup, "orders"); err != nil {
		return 0, err
	}
	if err := exec1(ctx, conn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", setup); err != nil {
		return 0, err
	}
	for k := 1; k <= e.opts.Rounds; k++ {
		if err := createSlot(ctx, conn, slot(k)); err != nil {
			return 0, err
		}
	}
	if _, err := generate(ctx, conn, 0, e.opts.Rows, drainBatch); err != nil {
		return 0, err
	}
	var end string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&end); err != nil {
		return 0, err
	}
	return pgoutput.ParseLSN(end)
}

// drainBuild runs bin on slot until the slot confirmed end.
func (e *env) drainBuild(ctx context.Context, bin, url, pub, slot string, end pgoutput.LSN) (DrainBuildRun, error) {
	var run DrainBuildRun
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return run, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	ws, err := e.sampleWalsender(ctx, slot)
	if err != nil {
		return run, err
	}
	t0 := time.Now()
	p, err := startAgentProcess(ctx, bin, url, slot, pub, 100*time.Millisecond)
	if err != nil {
		ws.stop()
		return run, err
	}
	defer p.stop()
	err = waitConfirmed(ctx, conn, slot, end, 10*time.Minute, p.alive)
	run.Time = time.Since(t0)
	if err == nil {
		run.CPU, err = procCPU(p.pid())
	}
	run.WalsenderCPU = ws.stop()
	return run, err
}
