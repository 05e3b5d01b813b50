package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

// WriterResult is pgbench throughput on the same table under each way of
// auditing it.
type WriterResult struct {
	Clients  int
	For      time.Duration
	Rows     int
	Variants []string // in run order within a round
	Rounds   []map[string]WriterRun
}

// WriterRun is one pgbench run.
type WriterRun struct {
	TPS    float64
	Txns   int
	Failed int
	// Delivered counts what the auditing side received during the run:
	// events (pgaudit-cdc) or notifications (trigger).
	Delivered int64
	// CatchUp is how long the agent needed after pgbench ended to confirm
	// everything (pgaudit-cdc only).
	CatchUp time.Duration
	// CPU time spent by the auditing side outside the writing backends,
	// from pgbench's start until everything was delivered: the walsender
	// and the agent (b), the LISTEN client (c).
	WalsenderCPU, ConsumerCPU time.Duration
}

// Writer variants.
const (
	varNone    = "a"
	varWALOnly = "b0"
	varDecode  = "b1"
	varCDC     = "b"
	varCDC1P   = "b2"
	varTrigger = "c"
)

var variantNames = map[string]string{
	varNone:    "no auditing",
	varWALOnly: "REPLICA IDENTITY FULL + publication, no slot consumer: the writers' own extra cost (WAL)",
	varDecode:  "as (b), but the slot is drained by pg_recvlogical to /dev/null instead of the agent: the server-side cost of logical decoding (the walsender), which any consumer causes wherever it runs",
	varCDC:     "pgaudit-cdc (REPLICA IDENTITY FULL + publication + agent draining), the agent with the default GOMAXPROCS (= the 2 cores)",
	varCDC1P:   "as (b), but the agent runs with GOMAXPROCS=1",
	varTrigger: "predecessor: row trigger building JSON + pg_notify, LISTEN client",
}

// pgbenchScript is one transaction of three row changes: an UPDATE of a
// random row, and a DELETE of another that is inserted again.
const pgbenchScript = `\set a random(1, :n)
\set b random(1, :n)
BEGIN;
UPDATE orders SET status = 'paid', amount = amount + 1.25, paid = true, details = jsonb_set(details, '{qty}', to_jsonb(:a % 7 + 1)) WHERE id = :a;
DELETE FROM orders WHERE id = :b;
INSERT INTO orders VALUES (:b, :b % 5000 + 1, 'new', round((:b % 100000) / 7.0, 2), false, 'order ' || :b || ' re-created by pgbench', now(), jsonb_build_object('sku', 'SKU-' || (:b % 997), 'qty', 1)) ON CONFLICT (id) DO NOTHING;
END;
`

// triggerSQL is the predecessor's design: every row change builds its
// envelope in the writing transaction and queues it with pg_notify; NOTIFY
// payloads stop at 8000 bytes, so larger ones were replaced by a marker.
const triggerSQL = `
CREATE FUNCTION audit_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	body text;
BEGIN
	body := json_build_object(
		'kind', TG_ARGV[0], 'source', TG_ARGV[1], 'timestamp', now(),
		'payload', json_build_object(
			'table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
			'operation', TG_OP,
			'new', row_to_json(NEW),
			'old', row_to_json(OLD)))::text;
	IF octet_length(body) > 7999 THEN
		body := json_build_object(
			'kind', TG_ARGV[0], 'source', TG_ARGV[1], 'timestamp', now(),
			'payload', json_build_object(
				'table', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
				'operation', TG_OP, 'truncated', true))::text;
	END IF;
	PERFORM pg_notify('audit_stream', body);
	RETURN NULL;
END
$$;
CREATE TRIGGER audit_notify AFTER INSERT OR UPDATE OR DELETE ON orders
	FOR EACH ROW EXECUTE FUNCTION audit_notify('other', 'pgaudit-cdc-bench');
`

func (e *env) writer(ctx context.Context) (*WriterResult, error) {
	pgbench, err := e.tool("pgbench")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgaudit-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "mixed.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		return nil, err
	}
	res := &WriterResult{Clients: e.opts.WriterClients, For: e.opts.WriterFor, Rows: e.opts.WriterRows,
		Variants: []string{varNone, varWALOnly, varDecode, varCDC, varCDC1P, varTrigger}}
	// Slot names are per cluster: one per variant.
	const pub = "bench_writer"
	slotOf := func(v string) string { return "writer_" + v }
	urls := map[string]string{}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	for _, v := range res.Variants {
		url, err := e.createDB(ctx, "bench_writer_"+v)
		if err != nil {
			return nil, err
		}
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return nil, err
		}
		urls[v], conns[v] = url, conn
		if err := exec1(ctx, conn, ordersDDL); err != nil {
			return nil, err
		}
		if err := exec1(ctx, conn, ordersInsert, 1, e.opts.WriterRows); err != nil {
			return nil, err
		}
		// Vacuumed by the harness after each run instead, so that no
		// autovacuum of one variant's table runs during the next one's run.
		if err := exec1(ctx, conn, "ALTER TABLE orders SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"); err != nil {
			return nil, err
		}
		if err := exec1(ctx, conn, "VACUUM ANALYZE orders"); err != nil {
			return nil, err
		}
		switch v {
		case varWALOnly:
			if err := exec1(ctx, conn, "ALTER TABLE orders REPLICA IDENTITY FULL"); err != nil {
				return nil, err
			}
			if err := exec1(ctx, conn, "CREATE PUBLICATION "+pub+" FOR TABLE orders"); err != nil {
				return nil, err
			}
		case varCDC, varCDC1P:
			if err := watch(ctx, conn, pub, slotOf(v), "orders"); err != nil {
				return nil, err
			}
		case varDecode:
			if err := watchThenSlots(ctx, conn, pub, "orders"); err != nil {
				return nil, err
			}
		case varTrigger:
			if err := exec1(ctx, conn, triggerSQL); err != nil {
				return nil, err
			}
		}
	}

	for k := 1; k <= e.opts.Rounds; k++ {
		round := map[string]WriterRun{}
		for _, v := range res.Variants {
			profile := ""
			if k == 1 && v == varCDC && e.opts.CPUProfile != "" {
				profile = e.opts.CPUProfile + "-writer.pprof"
			}
			run, err := e.writerRun(ctx, pgbench, script, v, urls[v], conns[v], pub, slotOf(v), profile)
			if err != nil {
				return nil, fmt.Errorf("variant %s: %w", v, err)
			}
			round[v] = run
			e.logf("round %d %-2s: %8.1f tps (%d txns, %d failed, %d delivered, catch-up %s, CPU walsender %s consumer %s)",
				k, v, run.TPS, run.Txns, run.Failed, run.Delivered, run.CatchUp.Round(time.Millisecond), run.WalsenderCPU, run.ConsumerCPU.Round(time.Millisecond))
		}
		res.Rounds = append(res.Rounds, round)
	}
	return res, nil
}

var (
	reTPS    = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	reTxns   = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	reFailed = regexp.MustCompile(`number of failed transactions: ([0-9]+)`)
)

func (e *env) writerRun(ctx context.Context, pgbench, script, variant, url string, conn *pgx.Conn, pub, slot, profile string) (WriterRun, error) {
	var run WriterRun
	// The same starting point for every run: the table was vacuumed after
	// the previous run, no dirty buffers.
	if err := exec1(ctx, conn, "CHECKPOINT"); err != nil {
		return run, err
	}
	defer func() {
		// Clean up after the run, before the next variant's run starts.
		_ = exec1(context.WithoutCancel(ctx), conn, "VACUUM ANALYZE orders")
	}()

	var stopAudit func() error
	switch variant {
	case varCDC, varCDC1P:
		if variant == varCDC1P {
			// The agent is the only thing this process runs meanwhile.
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
		}
		sink := newCountSink(nil, -1)
		ra, err := e.startAgent(ctx, url, slot, pub, sink, nil, 200*time.Millisecond)
		if err != nil {
			return run, err
		}
		// The slot was idle during the other variants' runs: let the agent
		// read past their WAL before the clock starts.
		now, err := currentLSN(ctx, conn)
		if err == nil {
			err = waitConfirmed(ctx, conn, slot, now, 5*time.Minute, nil)
		}
		if err != nil {
			_ = ra.stop()
			return run, err
		}
		base := sink.n.Load()
		pid, err := activePID(ctx, conn, slot)
		if err != nil {
			_ = ra.stop()
			return run, err
		}
		ws0, err := procCPU(pid)
		if err != nil {
			_ = ra.stop()
			return run, err
		}
		stopProfile, err := startProfile(profile)
		if err != nil {
			_ = ra.stop()
			return run, err
		}
		defer stopProfile()
		self0 := selfCPU()
		stopAudit = func() error {
			end, err := currentLSN(ctx, conn)
			if err != nil {
				return err
			}
			t0 := time.Now()
			if err := waitConfirmed(ctx, conn, slot, end, 10*time.Minute, nil); err != nil {
				return err
			}
			run.CatchUp = time.Since(t0)
			run.ConsumerCPU = selfCPU() - self0
			if ws1, err := procCPU(int(pid)); err == nil {
				run.WalsenderCPU = ws1 - ws0
			}
			run.Delivered = sink.n.Load() - base
			return ra.stop()
		}
	case varDecode:
		r, err := e.startRecvlogical(ctx, url, conn, pub, &run, pluginPgoutput)
		if err != nil {
			return run, err
		}
		stopAudit = r.stop
	case varTrigger:
		lconn, err := pgx.Connect(ctx, url)
		if err != nil {
			return run, err
		}
		if err := exec1(ctx, lconn, "LISTEN audit_stream"); err != nil {
			lconn.Close(ctx)
			return run, err
		}
		var got atomic.Int64
		self0 := selfCPU()
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := lconn.WaitForNotification(lctx); err != nil {
					return
				}
				got.Add(1)
			}
		}()
		stopAudit = func() error {
			// Done when no notification arrived for half a second.
			last := int64(-1)
			for got.Load() != last {
				last = got.Load()
				time.Sleep(500 * time.Millisecond)
			}
			cancel()
			<-done
			run.ConsumerCPU = selfCPU() - self0
			run.Delivered = got.Load()
			return lconn.Close(context.WithoutCancel(ctx))
		}
	}

	var out, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pgbench, "-n", "-c", strconv.Itoa(e.opts.WriterClients),
		"-j", strconv.Itoa(min(e.opts.WriterClients, 2)), "-T", strconv.Itoa(int(e.opts.WriterFor.Seconds())),
		"-f", script, "-D", "n="+strconv.Itoa(e.opts.WriterRows), "--max-tries=10", url)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var auditErr error
	if stopAudit != nil {
		auditErr = stopAudit()
	}
	if err != nil {
		return run, fmt.Errorf("pgbench: %v: %s%s", err, out.String(), stderr.String())
	}
	if auditErr != nil {
		return run, auditErr
	}
	run.TPS, run.Txns, run.Failed, err = parsePgbench(out.String())
	return run, err
}

// parsePgbench reads tps, processed and failed transactions from pgbench's
// report.
func parsePgbench(text string) (tps float64, txns, failed int, err error) {
	m := reTPS.FindStringSubmatch(text)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("pgbench printed no tps: %s", strings.TrimSpace(text))
	}
	tps, _ = strconv.ParseFloat(m[1], 64)
	if m := reTxns.FindStringSubmatch(text); m != nil {
		txns, _ = strconv.Atoi(m[1])
	}
	if m := reFailed.FindStringSubmatch(text); m != nil {
		failed, _ = strconv.Atoi(m[1])
	}
	return tps, txns, failed, nil
}

// activePID is the pid of the walsender holding slot.
func activePID(ctx context.Context, conn *pgx.Conn, slot string) (int, error) {
	var pid int32
	if err := conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid); err != nil {
		return 0, fmt.Errorf("reading the walsender of slot %s: %w", slot, err)
	}
	return int(pid), nil
}

// recvlogical is a running pg_recvlogical.
type recvlogical struct {
	walsender int // its walsender's pid
	// stop waits until the walsender has sent everything written so far,
	// records the CPU used by the walsender and pg_recvlogical, and stops it.
	stop func() error
}

// startRecvlogical drains a new slot of conn's database with pg_recvlogical
// to /dev/null, from the current position.
// The output plugins pg_recvlogical is run with.
const (
	pluginPgoutput = "pgoutput"
	pluginWal2json = "wal2json"
)

func (e *env) startRecvlogical(ctx context.Context, url string, conn *pgx.Conn, pub string, run *WriterRun, plugin string) (*recvlogical, error) {
	slot := "writer_b1"
	bin, err := e.tool("pg_recvlogical")
	if err != nil {
		return nil, err
	}
	args := []string{"-o", "proto_version=1", "-o", "publication_names=" + pub}
	if plugin == pluginWal2json {
		// JSON with the old row in full (REPLICA IDENTITY FULL), as the
		// agent sends: wal2json's format 2, one object per change, and
		// its default transaction boundaries (BEGIN and COMMIT objects),
		// which the agent needs too: each event names its transaction
		// and its place in it. Without them (include-transaction=false)
		// wal2json sends a third of the messages and is no longer doing
		// the agent's work.
		slot, args = "writer_w2j", []string{"-o", "format-version=2"}
	}
	// A new slot per run starts at the current position: nothing to catch up.
	if err := exec1(ctx, conn, "SELECT pg_create_logical_replication_slot($1, $2)", slot, plugin); err != nil {
		if plugin == pluginWal2json {
			return nil, fmt.Errorf("creating a wal2json slot (install the output plugin for this server; on Debian: apt-get install postgresql-MAJOR-wal2json): %w", err)
		}
		return nil, err
	}
	rl, err := startChild("pg_recvlogical", exec.Command(bin, append([]string{"-d", url, "-S", slot, "--start", "-P", plugin}, append(args,
		"-F", "0", "-s", "1", "-f", "/dev/null", "--no-loop")...)...))
	if err != nil {
		return nil, err
	}
	cmd, alive := rl.cmd, rl.alive
	fail := func(err error) (*recvlogical, error) {
		rl.stop(os.Kill)
		_ = dropSlot(ctx, conn, slot)
		return nil, err
	}
	if err := waitActive(ctx, conn, slot, time.Minute, alive); err != nil {
		return fail(err)
	}
	pid, err := activePID(ctx, conn, slot)
	if err != nil {
		return fail(err)
	}
	ws0, err1 := procCPU(pid)
	rc0, err2 := procCPU(cmd.Process.Pid)
	if err1 != nil || err2 != nil {
		return fail(fmt.Errorf("reading CPU times: %v, %v", err1, err2))
	}
	return &recvlogical{walsender: int(pid), stop: func() error {
		defer func() { _ = dropSlot(context.WithoutCancel(ctx), conn, slot) }()
		end, err := currentLSN(ctx, conn)
		if err == nil {
			err = waitSent(ctx, conn, int(pid), end, 10*time.Minute, alive)
		}
		if err == nil {
			ws1, err1 := procCPU(int(pid))
			rc1, err2 := procCPU(cmd.Process.Pid)
			if err1 != nil || err2 != nil {
				err = fmt.Errorf("reading CPU times: %v, %v", err1, err2)
			}
			run.WalsenderCPU, run.ConsumerCPU = ws1-ws0, rc1-rc0
		}
		rl.stop(syscall.SIGTERM)
		return err
	}}, nil
}

// waitSent polls until the walsender pid has sent WAL up to lsn.
func waitSent(ctx context.Context, conn *pgx.Conn, pid int, lsn pgoutput.LSN, timeout time.Duration, alive func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := walsenderSent(ctx, conn, pid)
		if err != nil {
			return err
		}
		if got >= lsn {
			return nil
		}
		if err := alive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("walsender sent %s, not %s, after %s", got, lsn, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
