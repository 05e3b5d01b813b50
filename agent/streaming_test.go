package agent_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
	"github.com/pgaudit-cdc/pgaudit-cdc/spool"
)

// watchBig watches a table big(id, v) in a database whose walsenders stream
// every transaction over 64 kB.
func watchBig(h *harness) {
	h.t.Helper()
	pgtest.StreamEveryLargeTransaction(h.t, h.dsn)
	h.exec(`CREATE TABLE big (id int PRIMARY KEY, v text)`)
	h.watch("big", "other", "migration")
}

// waitSlotStats waits up to 10 s for the slot's statistics to satisfy
// want (a walsender reports them as it goes on 15+, through the statistics
// collector, every half second, on 14) and returns them, whether they do
// or not.
func waitSlotStats(h *harness, want func(replication.DecodingStats) bool) replication.DecodingStats {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ds, _, err := replication.LookupDecodingStats(context.Background(), h.conn, testSlot)
		if err != nil {
			h.t.Fatal(err)
		}
		if want(ds) || time.Now().After(deadline) {
			return ds
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bigWorkload commits one transaction large enough to be streamed, with a
// subtransaction rolled back after it was streamed, one released, and a
// small transaction committed by another session while it was open (which
// must come first in the trail); then one as large that rolls back. Row ids
// start after base. It gives 1,012 events.
func bigWorkload(h *harness, base int) {
	h.t.Helper()
	ctx := context.Background()
	other, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		h.t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := h.conn.Begin(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO big SELECT $1::int + g, repeat('x', 200) FROM generate_series(1, 1000) g`,
		`SAVEPOINT s1`,
		`INSERT INTO big SELECT $1::int + g, repeat('r', 200) FROM generate_series(1001, 1500) g`,
		`ROLLBACK TO SAVEPOINT s1`,
		`SAVEPOINT s2`,
		`UPDATE big SET v = 'updated ' || id WHERE id BETWEEN $1::int + 1 AND $1::int + 10`,
		`RELEASE SAVEPOINT s2`,
	} {
		args := []any{base}
		if sql[0] == 'S' || sql[0] == 'R' {
			args = nil
		}
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			h.t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := other.Exec(ctx, `INSERT INTO big VALUES ($1::int + 5000, 'small')`, base); err != nil {
		h.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM big WHERE id = $1::int + 20`, base); err != nil {
		h.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		h.t.Fatal(err)
	}
	tx, err = h.conn.Begin(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO big SELECT $1::int + g, repeat('a', 200) FROM generate_series(2001, 3000) g`, base); err != nil {
		h.t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		h.t.Fatal(err)
	}
}

// shape is what an event says, with row ids made relative to base: two
// runs of bigWorkload give the same shapes.
func shape(t *testing.T, e spinetest.Event, base int) string {
	t.Helper()
	rel := func(row any) string {
		m, ok := row.(map[string]any)
		if !ok {
			return fmt.Sprint(row)
		}
		id, _ := strconv.Atoi(fmt.Sprint(m["id"]))
		v := fmt.Sprint(m["v"])
		if v == fmt.Sprintf("updated %d", id) {
			v = "updated"
		}
		return fmt.Sprintf("%d:%s", id-base, v)
	}
	return fmt.Sprintf("%v %v/%v old=%s new=%s", field(t, e, "operation"), field(t, e, "metadata", "tx_index"),
		field(t, e, "metadata", "tx_events"), rel(field(t, e, "old")), rel(field(t, e, "new")))
}

// TestStreamedTransactionsAreDeliveredAsWholeOnes runs the same workload
// with in-progress streaming, then with whole transactions (protocol 1):
// both give the same events in the same order, the server spills nothing to
// its disk for the first, and the trail verifies. (Streaming goes first: a
// restart has the server decode again from the slot's restart_lsn, and what
// it decodes before the confirmed position it spills, streaming or not.)
func TestStreamedTransactionsAreDeliveredAsWholeOnes(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	watchBig(h)

	h.startAgentWith(func(c *agent.Config) { c.Spill = spool.Config{Dir: t.TempDir(), Memory: 32 << 10} })
	obs.waitLog(t, "streaming", "in_progress_streaming=true")
	bigWorkload(h, 0)
	streamed := h.expectExactly(1012, 300*time.Millisecond)
	obs.expectMetric(t, 1, "pgaudit_cdc_streamed_transactions_total", "outcome", "committed")
	// The rolled-back one is streamed and then aborted, or, when it has
	// aborted by the time the walsender would stream it, dropped by the
	// server unsent (PostgreSQL 18 checks first): at most one abort.
	if v, _ := obs.metric(t, "pgaudit_cdc_streamed_transactions_total", "outcome", "aborted"); v > 1 {
		t.Errorf("%v streamed transactions aborted, want at most the one rolled back", v)
	}
	if v, _ := obs.metric(t, "pgaudit_cdc_spilled_bytes_total"); v == 0 {
		t.Errorf("pgaudit_cdc_spilled_bytes_total 0: the 32 KiB memory bound never spilled")
	}
	// The rolled-back transaction's STREAM ABORT may come after the
	// committed one's events (a loaded machine): then its spill goes.
	obs.waitMetric(t, 10*time.Second, 0, "pgaudit_cdc_spill_disk_bytes")
	obs.waitMetric(t, 10*time.Second, 0, "pgaudit_cdc_streamed_transactions_open")
	h.stopAgent()
	st := waitSlotStats(h, func(st replication.DecodingStats) bool { return st.StreamTxns >= 1 })
	if st.SpillBytes != 0 || st.StreamTxns < 1 || st.StreamTxns > 2 {
		t.Errorf("streaming: server statistics %+v; want no spill and the large transactions streamed", st)
	}
	if got := field(t, streamed[0], "new", "v"); got != "small" {
		t.Errorf("first event's row %v, want the small transaction's, which committed first", got)
	}

	h.startAgentWith(func(c *agent.Config) { c.NoStreaming = true })
	obs.waitLog(t, "streaming", "in_progress_streaming=false")
	bigWorkload(h, 10000)
	whole := h.expectExactly(2024, 300*time.Millisecond)[len(streamed):]
	h.stopAgent()
	if st2 := waitSlotStats(h, func(st2 replication.DecodingStats) bool { return st2.SpillBytes > 0 }); st2.SpillBytes == 0 || st2.StreamTxns != st.StreamTxns {
		t.Errorf("protocol 1: server statistics went from %+v to %+v, want a spill and nothing streamed", st, st2)
	}
	for i := range whole {
		if a, b := shape(t, streamed[i], 0), shape(t, whole[i], 10000); a != b {
			t.Fatalf("event %d: streamed transaction gave %s, whole one %s", i, a, b)
		}
	}
	if rep := verifyEvents(h.spine.Events()); !rep.OK() {
		t.Fatalf("the trail does not verify: %s", jsonOf(t, rep))
	}
}

// TestLargeRowInStreamedTransaction: a row over replication.DivertOver in
// a transaction already being streamed is set aside as it arrives, spooled
// to the spill file in pieces, replayed mapped from it at STREAM COMMIT
// and converted in pieces, and arrives whole and exact, in its place.
func TestLargeRowInStreamedTransaction(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	watchBig(h)
	h.startAgentWith(func(c *agent.Config) { c.Spill = spool.Config{Dir: t.TempDir()} })
	obs.waitLog(t, "streaming", "in_progress_streaming=true")
	ctx := context.Background()
	tx, err := h.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 500) g`,
		`INSERT INTO big SELECT 501, string_agg(md5(g::text) || 'é€😀', '') FROM generate_series(1, 500000) g`,
		`INSERT INTO big VALUES (502, 'after')`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	evs := h.expectExactly(502, 300*time.Millisecond)
	obs.expectMetric(t, 1, "pgaudit_cdc_streamed_transactions_total", "outcome", "committed")
	var want string
	if err := h.conn.QueryRow(ctx, `SELECT v FROM big WHERE id = 501`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if got, _ := field(t, evs[500], "new", "v").(string); got != want || len(want) <= replication.DivertOver {
		t.Fatalf("the large row's value: got %d bytes, want the whole %d", len(got), len(want))
	}
	if got := field(t, evs[501], "new", "v"); got != "after" {
		t.Fatalf("the row after the large one: %v", got)
	}
}

// TestStreamedSchemaChange alters a table inside a streamed transaction:
// its RELATION messages travel in the stream blocks and are applied at its
// commit, so each change is decoded with the definition it was made under,
// in the transaction and after it (a session that waited for the ALTER's
// lock, one that came later).
func TestStreamedSchemaChange(t *testing.T) {
	h := newHarness(t)
	watchBig(h)
	h.startAgentWith(func(c *agent.Config) { c.Spill = spool.Config{Dir: t.TempDir(), Memory: 16 << 10} })
	ctx := context.Background()
	other, err := pgx.Connect(ctx, h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := h.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 500) g`,
		`ALTER TABLE big ADD COLUMN note text DEFAULT 'n'`,
		`INSERT INTO big SELECT g, repeat('y', 200), 'new ' || g FROM generate_series(501, 1000) g`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Another session's INSERT waits for the ALTER's lock.
	done := make(chan error, 1)
	go func() {
		_, err := other.Exec(ctx, `INSERT INTO big VALUES (5000, 'before the alter commits')`)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("the other session's INSERT did not wait for the ALTER's lock: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	h.exec(`INSERT INTO big VALUES (5001, 'after', 'with a note')`)
	evs := h.expectExactly(1002, 300*time.Millisecond)
	for i, e := range evs {
		note, has := field(t, e, "new").(map[string]any)["note"]
		switch {
		case i < 500 && has:
			t.Fatalf("event %d (before the ALTER) has a note %v", i, note)
		case i >= 500 && i < 1000 && note != fmt.Sprintf("new %d", i+1):
			t.Fatalf("event %d (after the ALTER, same transaction) has note %v", i, note)
		case i == 1000 && note != "n":
			t.Fatalf("the waiting session's row has note %v, want the default n", note)
		case i == 1001 && note != "with a note":
			t.Fatalf("the row written after the commit has note %v", note)
		}
	}
}

// TestFullSpillStopsCaptureAndLosesNothing gives the spill less room than a
// streamed transaction needs: capture stops with an error that names the
// fix, counted and logged, nothing of the transaction is delivered, and
// after a restart with room the transaction is delivered whole, once.
func TestFullSpillStopsCaptureAndLosesNothing(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	watchBig(h)
	h.startAgentWith(func(c *agent.Config) { c.Spill = spool.Config{Dir: t.TempDir(), Memory: 16 << 10, MaxDisk: 64 << 10} })
	obs.waitLog(t, "streaming", "in_progress_streaming=true")
	h.exec(`INSERT INTO big VALUES (0, 'before')`)
	h.waitEvents(1, 30*time.Second)
	h.exec(`INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g`)
	expectSpillFull(t, h, obs)
	h.startAgentWith(func(c *agent.Config) { c.Spill = spool.Config{Dir: t.TempDir(), Memory: 16 << 10} })
	evs := h.expectExactly(2001, 300*time.Millisecond)
	seen := map[string]bool{}
	for _, e := range evs {
		id := fmt.Sprint(field(t, e, "new", "id"))
		if seen[id] {
			t.Fatalf("row %s delivered twice", id)
		}
		seen[id] = true
	}
}

// expectSpillFull waits for capture to stop on a full spill directory,
// loudly and counted, with only the one event before it delivered, then
// stops the agent.
func expectSpillFull(t *testing.T, h *harness, obs *observer) {
	t.Helper()
	obs.waitLog(t, "capture stopped", "spill directory full", "--spill-max-bytes")
	if v, _ := obs.metric(t, "pgaudit_cdc_spill_full_total"); v < 1 {
		t.Errorf("pgaudit_cdc_spill_full_total %v, want at least 1", v)
	}
	if n := len(h.dataEvents()); n != 1 {
		t.Fatalf("%d events with the spill full, want the 1 before it", n)
	}
	h.stopAgent()
}

// TestHugeMessageCountsAgainstSpillCap: a message over
// replication.DivertOver is set aside in the spill directory under the
// same --spill-max-bytes as streamed transactions, streaming in progress
// or not: one that does not fit stops capture loudly with nothing of it
// delivered, and with room it arrives whole, once.
func TestHugeMessageCountsAgainstSpillCap(t *testing.T) {
	h := newHarness(t)
	obs := h.observe()
	h.exec(`CREATE TABLE big (id int PRIMARY KEY, body text)`)
	h.watch("big", "other", "big")
	h.startAgentWith(func(c *agent.Config) {
		c.NoStreaming = true
		c.Spill = spool.Config{Dir: t.TempDir(), MaxDisk: 8 << 20}
	})
	h.exec(`INSERT INTO big VALUES (0, 'before')`)
	h.waitEvents(1, 30*time.Second)
	h.exec(`INSERT INTO big SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, $1 / 32) g`, replication.DivertOver+(4<<20))
	expectSpillFull(t, h, obs)
	h.startAgentWith(func(c *agent.Config) { c.NoStreaming = true; c.Spill = spool.Config{Dir: t.TempDir()} })
	evs := h.expectExactly(2, 300*time.Millisecond)
	var body string
	if err := h.conn.QueryRow(context.Background(), `SELECT body FROM big WHERE id = 1`).Scan(&body); err != nil {
		t.Fatal(err)
	}
	if got, _ := field(t, evs[1], "new", "body").(string); got != body {
		t.Fatalf("the huge row's body: got %d bytes, want the whole %d", len(got), len(body))
	}
}
