package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// DrainResult compares the agent draining a slot to a discarding sink with
// pg_recvlogical draining the same WAL from a second slot.
type DrainResult struct {
	Rows         int
	Transactions int
	Generate     time.Duration
	WALBytes     int64
	Rounds       []DrainRound
}

// DrainRound is one agent drain and one pg_recvlogical drain.
type DrainRound struct {
	Agent, Recv time.Duration
	// Agent1P is the agent again, from a third slot, with GOMAXPROCS=1.
	Agent1P time.Duration
	// Order is the run order: A agent, G agent with GOMAXPROCS=1, R
	// pg_recvlogical.
	Order string
	// CPU time of the consumer (the agent's process, pg_recvlogical) and
	// of the walsender serving it.
	AgentCPU, Agent1PCPU, RecvCPU                            time.Duration
	AgentWalsenderCPU, Agent1PWalsenderCPU, RecvWalsenderCPU time.Duration
}

const drainBatch = 10_000

func (e *env) drain(ctx context.Context) (*DrainResult, error) {
	url, conn, err := e.openDB(ctx, "bench_drain")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Commits wait for their WAL flush, so pg_current_wal_insert_lsn after
	// the last one is a position the walsender reaches.
	if err := exec1(ctx, conn, "SET synchronous_commit = on"); err != nil {
		return nil, err
	}
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	const pub = "bench_drain"
	agentSlot := func(k int) string { return fmt.Sprintf("drain_agent_%d", k) }
	recvSlot := func(k int) string { return fmt.Sprintf("drain_recv_%d", k) }
	oneSlot := func(k int) string { return fmt.Sprintf("drain_agent1p_%d", k) }
	rounds := e.opts.Rounds
	// Every slot exists before the first change: all see the same WAL.
	var slots []string
	for k := 1; k <= rounds; k++ {
		slots = append(slots, agentSlot(k), oneSlot(k), recvSlot(k))
	}
	if err := watchThenSlots(ctx, conn, pub, "orders", slots...); err != nil {
		return nil, err
	}
	start, err := currentLSN(ctx, conn)
	if err != nil {
		return nil, err
	}
	n := e.opts.Rows
	e.logf("generating %d row changes (batches of %d)", n, drainBatch)
	t0 := time.Now()
	if _, err := generate(ctx, conn, 0, n, drainBatch); err != nil {
		return nil, err
	}
	res := &DrainResult{Rows: n, Generate: time.Since(t0), Transactions: (n + drainBatch - 1) / drainBatch}
	var endS string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&endS); err != nil {
		return nil, err
	}
	end, err := pgoutput.ParseLSN(endS)
	if err != nil {
		return nil, err
	}
	res.WALBytes = int64(end - start)
	e.logf("generated in %s, %d MB of WAL, end LSN %s", res.Generate.Round(time.Millisecond), res.WALBytes>>20, end)

	for k := 1; k <= rounds; k++ {
		r := DrainRound{Order: [...]string{"AGR", "GRA", "RAG"}[(k-1)%3]}
		agentRun := func(slot string, procs int, d, cpu, wsCPU *time.Duration) func() error {
			return func() error {
				profile := ""
				if k == 1 && procs == 0 && e.opts.CPUProfile != "" {
					profile = e.opts.CPUProfile + "-drain.pprof"
				}
				if procs > 0 {
					defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
				}
				ws, err := e.sampleWalsender(ctx, slot)
				if err != nil {
					return err
				}
				cpu0 := selfCPU()
				*d, err = e.drainAgent(ctx, url, slot, pub, n, profile)
				*cpu, *wsCPU = selfCPU()-cpu0, ws.stop()
				return err
			}
		}
		runs := map[byte]func() error{
			'A': agentRun(agentSlot(k), 0, &r.Agent, &r.AgentCPU, &r.AgentWalsenderCPU),
			'G': agentRun(oneSlot(k), 1, &r.Agent1P, &r.Agent1PCPU, &r.Agent1PWalsenderCPU),
			'R': func() error {
				ws, err := e.sampleWalsender(ctx, recvSlot(k))
				if err != nil {
					return err
				}
				d, cpu, err := e.drainRecv(ctx, url, recvSlot(k), pub, end)
				r.Recv, r.RecvCPU, r.RecvWalsenderCPU = d, cpu, ws.stop()
				return err
			},
		}
		for i := 0; i < len(r.Order); i++ {
			if err := runs[r.Order[i]](); err != nil {
				return nil, err
			}
		}
		res.Rounds = append(res.Rounds, r)
		e.logf("round %d: agent %s (%.0f rows/s, CPU %s + walsender %s), agent GOMAXPROCS=1 %s (%.0f rows/s, CPU %s + walsender %s), pg_recvlogical %s (%.0f rows/s, CPU %s + walsender %s), ratio %.3f",
			k, r.Agent.Round(time.Millisecond), rate(n, r.Agent), r.AgentCPU.Round(time.Millisecond), r.AgentWalsenderCPU,
			r.Agent1P.Round(time.Millisecond), rate(n, r.Agent1P), r.Agent1PCPU.Round(time.Millisecond), r.Agent1PWalsenderCPU,
			r.Recv.Round(time.Millisecond), rate(n, r.Recv), r.RecvCPU.Round(time.Millisecond), r.RecvWalsenderCPU,
			rate(n, r.Agent)/rate(n, r.Recv))
		for _, s := range []string{agentSlot(k), oneSlot(k), recvSlot(k)} {
			if err := dropSlot(ctx, conn, s); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// drainAgent times an in-process agent, from its start until the sink has
// accepted n events.
func (e *env) drainAgent(ctx context.Context, url, slot, pub string, n int, profile string) (time.Duration, error) {
	sink := newCountSink(nil, n)
	stopProfile, err := startProfile(profile)
	if err != nil {
		return 0, err
	}
	defer stopProfile()
	start := time.Now()
	ra, err := e.startAgent(ctx, url, slot, pub, sink, nil, time.Second)
	if err != nil {
		return 0, err
	}
	werr := ra.wait(sink.done, 30*time.Minute, func() string { return fmt.Sprintf("%d of %d events", sink.n.Load(), n) })
	serr := ra.stop()
	if werr != nil {
		return 0, fmt.Errorf("agent drain of %s: %w", slot, werr)
	}
	if serr != nil {
		return 0, serr
	}
	if got := sink.n.Load(); got != int64(n) {
		return 0, fmt.Errorf("agent drain of %s: %d events, want %d", slot, got, n)
	}
	return sink.doneAt.Sub(start), nil
}

// drainRecv times pg_recvlogical streaming slot to /dev/null until end, and
// returns the CPU time it used.
func (e *env) drainRecv(ctx context.Context, url, slot, pub string, end pgoutput.LSN) (time.Duration, time.Duration, error) {
	bin, err := e.tool("pg_recvlogical")
	if err != nil {
		return 0, 0, err
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-d", url, "-S", slot, "--start", "-P", "pgoutput",
		"-o", "proto_version=1", "-o", "publication_names="+pub,
		"-F", "0", "-f", "/dev/null", "--endpos", end.String(), "--no-loop")
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("pg_recvlogical: %v: %s", err, stderr.String())
	}
	d := time.Since(start)
	return d, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}
