package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// PerTxResult compares the whole agent process with pg_recvlogical on
// single-row transactions from pgbench: CPU per transaction, how far each
// is behind the WAL when pgbench ends, and what the writers keep (issue 11,
// part 3).
type PerTxResult struct {
	Clients int
	For     time.Duration
	Rows    int
	Rate    int                   // pgbench --rate; 0: as fast as it goes
	Rounds  []map[string]PerTxRun // by variant
}

// PerTxRun is one pgbench run with one consumer.
type PerTxRun struct {
	TPS  float64
	Txns int
	// WAL written during the run, and how much of it the consumer had not
	// yet taken when pgbench ended: not confirmed (the agent; it confirms
	// only what it delivered) or not yet sent by the walsender
	// (pg_recvlogical, which writes to /dev/null and confirms once a
	// second). CatchUp is the time from pgbench's end until nothing was.
	WALBytes, BehindBytes int64
	CatchUp               time.Duration
	// CPU of the consumer process and of its walsender, from pgbench's
	// start until it caught up.
	ConsumerCPU, WalsenderCPU time.Duration
}

// Per-transaction variants.
const (
	ptNone  = "none"
	ptRecv  = "pg_recvlogical"
	ptW2J   = "wal2json" // pg_recvlogical with wal2json: JSON, old and new rows
	ptAgent = "agent"
	// ptCompare starts the name of another build's consumer
	// (Options.CompareBins).
	ptCompare = "agent:"
)

// Single-row transactions, weighted 8:1:1 with pgbench's -f file@weight.
var perTxScripts = map[string]string{
	"update.sql": `\set id random(1, :n)
UPDATE orders SET status = 'paid', amount = amount + 1.25, paid = true WHERE id = :id;
`,
	"insert.sql": `\set id random(1, :n)
INSERT INTO orders VALUES (:id, :id % 5000 + 1, 'new', round((:id % 100000) / 7.0, 2), false, 'order ' || :id || ' re-created by pgbench', now(), jsonb_build_object('sku', 'SKU-' || (:id % 997), 'qty', 1)) ON CONFLICT (id) DO NOTHING;
`,
	"delete.sql": `\set id random(1, :n)
DELETE FROM orders WHERE id = :id;
`,
}

var perTxWeights = map[string]int{"update.sql": 8, "insert.sql": 1, "delete.sql": 1}

// perTx runs every consumer in interleaved rounds, with pgbench held to
// rate transactions a second (0: as fast as it goes).
func (e *env) perTx(ctx context.Context, rate int) (*PerTxResult, error) {
	pgbench, err := e.tool("pgbench")
	if err != nil {
		return nil, err
	}
	bin, cleanup, err := e.agentBinary(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	dir, err := os.MkdirTemp("", "pgaudit-bench-pertx-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var scriptArgs []string
	for name, body := range perTxScripts {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			return nil, err
		}
		scriptArgs = append(scriptArgs, "-f", path+"@"+strconv.Itoa(perTxWeights[name]))
	}
	res := &PerTxResult{Clients: e.opts.WriterClients, For: e.opts.WriterFor, Rows: e.opts.WriterRows, Rate: rate}
	builds, bins := e.builds(bin)
	variants := append([]string{ptNone, ptRecv, ptW2J}, builds...)
	const pub = "bench_pertx"
	// Each pass has its own databases and slots: a database that holds a
	// slot cannot be dropped, and the slots go when the pass ends.
	prefix := "pertx_"
	if rate > 0 {
		prefix = "pertx_r" + strconv.Itoa(rate) + "_"
	}
	slotOf := func(v string) string {
		return prefix + strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				return r
			}
			return -1
		}, strings.ToLower(v))
	}
	urls := map[string]string{}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
		// Left behind, the agents' slots would hold WAL through the
		// scenarios after this one.
		if _, err := e.admin.Exec(context.WithoutCancel(ctx), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE NOT active AND starts_with(slot_name, $1)`, prefix); err != nil {
			e.logf("dropping the pertx slots: %v", err)
		}
	}()
	for _, v := range variants {
		url, err := e.createDB(ctx, "bench_"+slotOf(v))
		if err != nil {
			return nil, err
		}
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return nil, err
		}
		urls[v], conns[v] = url, conn
		for _, sql := range []string{ordersDDL, "ALTER TABLE orders SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"} {
			if err := exec1(ctx, conn, sql); err != nil {
				return nil, err
			}
		}
		if err := exec1(ctx, conn, ordersInsert, 1, e.opts.WriterRows); err != nil {
			return nil, err
		}
		if err := exec1(ctx, conn, "VACUUM ANALYZE orders"); err != nil {
			return nil, err
		}
		switch {
		case v == ptAgent:
			// The agent's own set-up: registry, publication, replica
			// identity and slot.
			if err := watch(ctx, conn, pub, slotOf(v), "orders"); err != nil {
				return nil, err
			}
		case strings.HasPrefix(v, ptCompare):
			// Another build sets its database up itself, with its own
			// migrations.
			if err := watchWith(ctx, bins[v], url, pub, slotOf(v), "orders"); err != nil {
				return nil, fmt.Errorf("%s: %w", v, err)
			}
		default:
			// The same publication and replica identity; pg_recvlogical
			// makes a new slot per run.
			if err := watchThenSlots(ctx, conn, pub, "orders"); err != nil {
				return nil, err
			}
		}
	}
	for k := 1; k <= e.opts.Rounds; k++ {
		round := map[string]PerTxRun{}
		order := append(variants[k%len(variants):], variants[:k%len(variants)]...)
		for _, v := range order {
			run, err := e.perTxRun(ctx, pgbench, scriptArgs, rate, bins[v], v, urls[v], conns[v], pub, slotOf(v))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v, err)
			}
			round[v] = run
			e.logf("round %d %-14s %7.0f tps, %d txns, WAL %s, behind %s at the end, caught up in %s, CPU %s (%.1f µs/tx), walsender %s",
				k, v, run.TPS, run.Txns, mb(run.WALBytes), mb(run.BehindBytes), run.CatchUp.Round(time.Millisecond),
				run.ConsumerCPU.Round(time.Millisecond), perTx(run.ConsumerCPU, run.Txns), run.WalsenderCPU.Round(time.Millisecond))
		}
		res.Rounds = append(res.Rounds, round)
	}
	return res, nil
}

// perTx is CPU per transaction in µs.
func perTx(cpu time.Duration, txns int) float64 {
	if txns == 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(txns)
}

func (e *env) perTxRun(ctx context.Context, pgbench string, scripts []string, rate int, bin, variant, url string, conn *pgx.Conn, pub, slot string) (PerTxRun, error) {
	var run PerTxRun
	if err := exec1(ctx, conn, "CHECKPOINT"); err != nil {
		return run, err
	}
	defer func() { _ = exec1(context.WithoutCancel(ctx), conn, "VACUUM ANALYZE orders") }()

	// finish is called when pgbench ended: it measures how far behind the
	// consumer is, waits until it caught up and stops it.
	var finish func(end pgoutput.LSN) error
	switch {
	case variant == ptAgent || strings.HasPrefix(variant, ptCompare):
		p, err := startAgentProcess(ctx, bin, url, slot, pub, 100*time.Millisecond)
		if err != nil {
			return run, err
		}
		defer p.stop()
		now, err := currentLSN(ctx, conn)
		if err == nil {
			err = waitActive(ctx, conn, slot, time.Minute, p.alive)
		}
		if err == nil {
			err = waitConfirmed(ctx, conn, slot, now, 5*time.Minute, p.alive)
		}
		var wpid int
		if err == nil {
			wpid, err = activePID(ctx, conn, slot)
		}
		if err != nil {
			return run, err
		}
		ws0, err1 := procCPU(wpid)
		c0, err2 := procCPU(p.pid())
		if err1 != nil || err2 != nil {
			return run, fmt.Errorf("reading CPU times: %v, %v", err1, err2)
		}
		finish = func(end pgoutput.LSN) error {
			// The confirmed position is reported every 100ms: what was not
			// confirmed by then was not delivered.
			confirmed, err := confirmedLSN(ctx, conn, slot)
			if err != nil {
				return err
			}
			if confirmed < end {
				run.BehindBytes = int64(end - confirmed)
			}
			t0 := time.Now()
			if err := waitConfirmed(ctx, conn, slot, end, 10*time.Minute, p.alive); err != nil {
				return err
			}
			run.CatchUp = time.Since(t0)
			ws1, err1 := procCPU(wpid)
			c1, err2 := procCPU(p.pid())
			if err1 != nil || err2 != nil {
				return fmt.Errorf("reading CPU times: %v, %v", err1, err2)
			}
			run.WalsenderCPU, run.ConsumerCPU = ws1-ws0, c1-c0
			return nil
		}
	case variant == ptRecv || variant == ptW2J:
		var wr WriterRun
		plugin := pluginPgoutput
		if variant == ptW2J {
			plugin = pluginWal2json
		}
		r, err := e.startRecvlogical(ctx, url, conn, pub, &wr, plugin)
		if err != nil {
			return run, err
		}
		finish = func(end pgoutput.LSN) error {
			sent, err := walsenderSent(ctx, conn, r.walsender)
			if err != nil {
				return err
			}
			if sent < end {
				run.BehindBytes = int64(end - sent)
			}
			t0 := time.Now()
			err = r.stop()
			run.CatchUp = time.Since(t0)
			run.WalsenderCPU, run.ConsumerCPU = wr.WalsenderCPU, wr.ConsumerCPU
			return err
		}
	}

	start, err := currentLSN(ctx, conn)
	if err != nil {
		return run, err
	}
	args := append([]string{"-n", "-c", strconv.Itoa(e.opts.WriterClients), "-j", strconv.Itoa(min(e.opts.WriterClients, 2)),
		"-T", strconv.Itoa(int(e.opts.WriterFor.Seconds())), "-D", "n=" + strconv.Itoa(e.opts.WriterRows), "--max-tries=10"}, scripts...)
	if rate > 0 {
		args = append(args, "--rate", strconv.Itoa(rate))
	}
	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pgbench, append(args, url)...)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return run, fmt.Errorf("pgbench: %v: %s%s", err, out.String(), stderr.String())
	}
	end, err := currentLSN(ctx, conn)
	if err != nil {
		return run, err
	}
	run.WALBytes = int64(end - start)
	if finish != nil {
		if err := finish(end); err != nil {
			return run, err
		}
	}
	run.TPS, run.Txns, _, err = parsePgbench(out.String())
	return run, err
}

// walsenderSent is how far the walsender pid has sent.
func walsenderSent(ctx context.Context, conn *pgx.Conn, pid int) (pgoutput.LSN, error) {
	var sent string
	if err := conn.QueryRow(ctx, "SELECT sent_lsn::text FROM pg_stat_replication WHERE pid = $1", pid).Scan(&sent); err != nil {
		return 0, fmt.Errorf("reading the walsender's position: %w", err)
	}
	return pgoutput.ParseLSN(sent)
}
