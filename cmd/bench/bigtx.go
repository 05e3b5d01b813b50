package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// BigTxResult is one large transaction (BigTxRows rows in one INSERT),
// consumed by pg_recvlogical with protocol 2 streaming, by the agent with
// in-progress streaming (its default) and by the agent with whole
// transactions (protocol 1), interleaved, each from a fresh slot position.
type BigTxResult struct {
	Rows   int
	Rounds [][]BigTxCase // per round, one per consumer, in run order
}

// BigTxCase is one consumer taking the transaction.
type BigTxCase struct {
	Name string
	// ServerSpill is what the walsender wrote to the database server's
	// disk for it (pg_stat_replication_slots.spill_bytes), Streamed what
	// it streamed in progress (stream_bytes).
	ServerSpill, Streamed int64
	// Sent is COMMIT → the walsender sent everything
	// (pg_stat_replication.sent_lsn reached the transaction's end), Done
	// COMMIT → the consumer finished (pg_recvlogical reached --endpos; the
	// agent confirmed the transaction, every event delivered).
	Sent, Done time.Duration
	// PeakRSS is the consumer's peak resident set (VmHWM, read before it
	// stops; see peakRSS).
	PeakRSS int64
	// AgentSpill is what the agent wrote to its spill directory.
	AgentSpill int64
}

const (
	bigRecv      = "pg_recvlogical, protocol 2, streaming on"
	bigStreaming = "agent, streaming in progress (default)"
	bigWhole     = "agent, whole transactions (protocol 1)"
)

func (e *env) bigTx(ctx context.Context) (*BigTxResult, error) {
	bin, cleanup, err := e.agentBinary(ctx)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	url, conn, err := e.openDB(ctx, "bench_bigtx")
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := exec1(ctx, conn, ordersDDL); err != nil {
		return nil, err
	}
	if e.opts.Quick {
		// A smoke run's transaction is small: let the server stream it
		// anyway (new walsenders take the setting).
		if err := exec1(ctx, conn, "ALTER DATABASE bench_bigtx SET logical_decoding_work_mem = '64kB'"); err != nil {
			return nil, err
		}
	}
	const pub, slot = "bench_bigtx", "bigtx"
	if err := watch(ctx, conn, pub, slot, "orders"); err != nil {
		return nil, err
	}
	// pg_recvlogical reads a database of its own: the agent's slot, which
	// waits while the other consumers run, would otherwise decode their
	// transactions too before its own.
	recvURL, recvConn, err := e.openDB(ctx, "bench_bigtx_recv")
	if err != nil {
		return nil, err
	}
	defer recvConn.Close(context.WithoutCancel(ctx))
	for _, sql := range []string{ordersDDL, "CREATE PUBLICATION " + pub + " FOR TABLE orders"} {
		if err := exec1(ctx, recvConn, sql); err != nil {
			return nil, err
		}
	}
	if e.opts.Quick {
		if err := exec1(ctx, recvConn, "ALTER DATABASE bench_bigtx_recv SET logical_decoding_work_mem = '64kB'"); err != nil {
			return nil, err
		}
	}
	spill, err := os.MkdirTemp("", "pgaudit-cdc-bench-spill-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(spill)
	res := &BigTxResult{Rows: e.opts.BigTxRows}
	rounds := min(e.opts.Rounds, 3)
	next := int64(0)
	for r := 0; r < rounds; r++ {
		var round []BigTxCase
		order := []string{bigRecv, bigStreaming, bigWhole}
		// Rotate the order per round: the cache and the WAL's age even out.
		order = append(order[r%3:], order[:r%3]...)
		for _, name := range order {
			lo, hi := next+1, next+int64(e.opts.BigTxRows)
			next = hi
			var c BigTxCase
			var err error
			switch name {
			case bigRecv:
				c, err = e.bigTxRecv(ctx, recvConn, recvURL, pub, fmt.Sprintf("bigtx_recv_%d", r), lo, hi)
			case bigStreaming:
				c, err = e.bigTxAgent(ctx, conn, bin, url, pub, slot, lo, hi, "--spill-dir", spill)
			case bigWhole:
				c, err = e.bigTxAgent(ctx, conn, bin, url, pub, slot, lo, hi, "--stream-in-progress=false")
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			c.Name = name
			e.logf("bigtx round %d: %s: server spill %s, streamed %s, COMMIT → sent %s, → done %s, peak RSS %s, agent spill %s",
				r+1, name, mb(c.ServerSpill), mb(c.Streamed), secs(c.Sent), secs(c.Done), mb(c.PeakRSS), mb(c.AgentSpill))
			round = append(round, c)
		}
		res.Rounds = append(res.Rounds, round)
	}
	return res, nil
}

// slotDecoding reads a slot's spill_bytes and stream_bytes (0 before it
// decoded anything).
func slotDecoding(ctx context.Context, conn *pgx.Conn, slot string) (spill, stream int64, err error) {
	st, _, err := replication.LookupDecodingStats(ctx, conn, slot)
	return st.SpillBytes, st.StreamBytes, err
}

// settledDecoding waits until a slot's statistics stop moving (its
// walsender flushes them when it exits) and returns them.
func settledDecoding(ctx context.Context, conn *pgx.Conn, slot string) (spill, stream int64, err error) {
	var lastSpill, lastStream int64 = -1, -1
	for i := 0; i < 100; i++ {
		if spill, stream, err = slotDecoding(ctx, conn, slot); err != nil {
			return 0, 0, err
		}
		if spill == lastSpill && stream == lastStream {
			return spill, stream, nil
		}
		lastSpill, lastStream = spill, stream
		time.Sleep(200 * time.Millisecond)
	}
	return spill, stream, nil
}

// commitBig inserts ids lo..hi in one transaction and returns when it
// committed, with the transaction's end position. The commit waits for its
// WAL flush (synchronous_commit on), so the walsender can reach that
// position at once.
func commitBig(ctx context.Context, conn *pgx.Conn, lo, hi int64) (time.Time, pgoutput.LSN, error) {
	if err := exec1(ctx, conn, "SET synchronous_commit = on"); err != nil {
		return time.Time{}, 0, err
	}
	if err := exec1(ctx, conn, ordersInsert, lo, hi); err != nil {
		return time.Time{}, 0, err
	}
	at := time.Now()
	var end string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&end); err != nil {
		return time.Time{}, 0, err
	}
	l, err := pgoutput.ParseLSN(end)
	return at, l, err
}

// waitSlotSent waits until the walsender streaming slot sent up to end.
func waitSlotSent(ctx context.Context, conn *pgx.Conn, slot string, end pgoutput.LSN, alive func() error) error {
	var pid int
	if err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&pid); err != nil {
		return fmt.Errorf("finding the walsender of %s: %w", slot, err)
	}
	return waitSent(ctx, conn, pid, end, 30*time.Minute, alive)
}

func (e *env) bigTxAgent(ctx context.Context, conn *pgx.Conn, bin, url, pub, slot string, lo, hi int64, extra ...string) (BigTxCase, error) {
	var c BigTxCase
	addr, err := freeAddr()
	if err != nil {
		return c, err
	}
	p, err := startAgentProcess(ctx, bin, url, slot, pub, 200*time.Millisecond, append(extra, "--metrics-addr", addr)...)
	if err != nil {
		return c, err
	}
	defer p.stop()
	now, err := currentLSN(ctx, conn)
	if err != nil {
		return c, err
	}
	if err := waitActive(ctx, conn, slot, time.Minute, p.alive); err != nil {
		return c, err
	}
	if err := waitConfirmed(ctx, conn, slot, now, 5*time.Minute, p.alive); err != nil {
		return c, err
	}
	// Taken once caught up: a new walsender decodes again from the slot's
	// restart_lsn, which may lie before the transactions of the cases
	// before (the server spills what it decodes before the confirmed
	// position, streaming or not). Since PostgreSQL 15 a walsender updates
	// these figures as it goes.
	spill0, stream0, err := slotDecoding(ctx, conn, slot)
	if err != nil {
		return c, err
	}
	agentSpill0, err := scrape(ctx, addr, "pgaudit_cdc_spilled_bytes_total")
	if err != nil {
		return c, err
	}
	at, end, err := commitBig(ctx, conn, lo, hi)
	if err != nil {
		return c, err
	}
	if err := waitSlotSent(ctx, conn, slot, end, p.alive); err != nil {
		return c, err
	}
	c.Sent = time.Since(at)
	if err := waitConfirmed(ctx, conn, slot, end, 30*time.Minute, p.alive); err != nil {
		return c, err
	}
	c.Done = time.Since(at)
	if c.AgentSpill, err = scrape(ctx, addr, "pgaudit_cdc_spilled_bytes_total"); err != nil {
		return c, err
	}
	c.AgentSpill -= agentSpill0
	if c.PeakRSS, err = peakRSS(p.cmd); err != nil {
		return c, err
	}
	p.stop()
	spill, stream, err := settledDecoding(ctx, conn, slot)
	if err != nil {
		return c, err
	}
	c.ServerSpill, c.Streamed = spill-spill0, stream-stream0
	return c, nil
}

// freeAddr returns a loopback address no one listens on, for the agent's
// metrics.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// scrape reads one unlabelled series from the agent's /metrics at addr.
func scrape(ctx context.Context, addr, name string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int64(f), err
		}
	}
	return 0, fmt.Errorf("the agent's /metrics has no %s", name)
}

func (e *env) bigTxRecv(ctx context.Context, conn *pgx.Conn, url, pub, slot string, lo, hi int64) (BigTxCase, error) {
	var c BigTxCase
	bin, err := e.tool("pg_recvlogical")
	if err != nil {
		return c, err
	}
	if err := exec1(ctx, conn, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot); err != nil {
		return c, err
	}
	defer exec1(context.WithoutCancel(ctx), conn, "SELECT pg_drop_replication_slot($1)", slot) //nolint:errcheck
	// The end position is not known before the commit: pg_recvlogical
	// runs until it is stopped, once it wrote past the end.
	rl, err := startChild("pg_recvlogical", exec.CommandContext(ctx, bin, "-d", url, "-S", slot, "--start", "-P", "pgoutput",
		"-o", "proto_version=2", "-o", "streaming=on", "-o", "publication_names="+pub,
		"-F", "1", "-s", "1", "-f", "/dev/null"))
	if err != nil {
		return c, err
	}
	defer rl.stop(syscall.SIGINT) // a no-op once stopped below
	alive := rl.alive
	if err := waitActive(ctx, conn, slot, time.Minute, alive); err != nil {
		return c, err
	}
	at, end, err := commitBig(ctx, conn, lo, hi)
	if err != nil {
		return c, err
	}
	if err := waitSlotSent(ctx, conn, slot, end, alive); err != nil {
		return c, err
	}
	c.Sent = time.Since(at)
	// Written and flushed to its file: what it confirms (-F 1 flushes
	// every second, -s 1 reports it).
	if err := waitConfirmed(ctx, conn, slot, end, 30*time.Minute, alive); err != nil {
		return c, err
	}
	c.Done = time.Since(at)
	if c.PeakRSS, err = peakRSS(rl.cmd); err != nil {
		return c, err
	}
	rl.stop(syscall.SIGINT)
	c.ServerSpill, c.Streamed, err = settledDecoding(ctx, conn, slot)
	return c, err
}

// peakRSS is a running child's peak resident set, VmHWM, in bytes. The
// ru_maxrss of a finished child is not its own: Linux keeps the largest
// resident set the process had before exec, and Go starts children sharing
// the bench's memory (CLONE_VM), so after a scenario that grew the bench
// process (one huge row) every child would report the bench's peak.
func peakRSS(cmd *exec.Cmd) (int64, error) {
	hwm, _, err := procMem(cmd.Process.Pid)
	if err != nil {
		return 0, fmt.Errorf("reading the peak resident set of %s: %w", cmd.Path, err)
	}
	return hwm, nil
}
