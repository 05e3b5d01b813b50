package agent_test

// Failover without a synced slot (issue 12, part 4): a standby promoted
// without a copy of the slot — any standby on PostgreSQL 16 and earlier, and
// on 17+ a standby whose copy of the failover slot was not synced yet — is a
// hole in the capture. It must give exactly one GAP event, on consent, and
// never a silent continuation.

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// ownCluster starts a throwaway cluster for one test (a failover test stops
// and promotes servers, which the shared cluster cannot afford) and
// returns it with the URL of a new database in it.
func ownCluster(t *testing.T, settings ...string) (*embedded.Cluster, string) {
	t.Helper()
	pgtest.Needed(t)
	if embedded.ExternalOverride() {
		t.Fatalf("needs throwaway clusters (it promotes a standby): unset PGAUDIT_TEST_DATABASE_URL")
	}
	ctx := context.Background()
	c, err := embedded.StartLocalWith(ctx, settings...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	createAudited(t, c)
	return c, c.DatabaseURL("audited")
}

// newHarnessOn is newHarness on a database of the test's own cluster.
func newHarnessOn(t *testing.T, dsn string) *harness {
	t.Helper()
	h := &harness{t: t, spine: spinetest.Start(t)}
	h.reconnect(dsn)
	t.Cleanup(h.stopAgent)
	return h
}

// reconnect points the harness (its connection and the agents it starts)
// at dsn.
func (h *harness) reconnect(dsn string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		h.t.Fatalf("connecting to %s: %v", dsn, err)
	}
	h.t.Cleanup(func() { conn.Close(context.Background()) })
	h.dsn, h.conn = dsn, conn
}

// waitReplayed waits until standby has replayed all of primary's WAL.
func waitReplayed(t *testing.T, primary, standby *pgx.Conn) {
	t.Helper()
	ctx := context.Background()
	var target string
	if err := primary.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&target); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var done bool
		if err := standby.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", target).Scan(&done); err != nil {
			t.Fatal(err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby has not replayed up to %s within 30s", target)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGapAfterFailoverWithoutSyncedSlot: changes 1-10 are delivered, the
// agent stops, a standby is made (on 17+ with the whole failover set-up, but
// the primary's slot does not advance again, so the standby's copy is never
// synced), 11-20 are committed and replicated, the primary crashes and the
// standby is promoted. The agent, pointed at the new primary, finds no slot
// on a new timeline: one gap, recorded and loud, no silent continuation,
// exactly one GAP event on consent, and capture goes on from there.
func TestGapAfterFailoverWithoutSyncedSlot(t *testing.T) {
	ctx := context.Background()
	primary, dsn := ownCluster(t)
	h := newHarnessOn(t, dsn)
	version := 0
	if err := h.conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()
	h.insertRange(1, 10)
	h.waitEvents(10, 30*time.Second)
	h.stopAgent()
	h.waitSlotInactive()
	if info, err := replication.LookupSlot(ctx, h.conn, testSlot); err != nil || info.Failover != (version >= 170000) {
		t.Fatalf("slot on %d: %+v, %v; want failover = %v", version, info, err, version >= 170000)
	}

	h.exec(`SELECT pg_create_physical_replication_slot('standby1')`)
	standbySettings := []string{"primary_slot_name=standby1", "hot_standby_feedback=on"}
	if version >= 170000 {
		standbySettings = append(standbySettings, "sync_replication_slots=on")
	}
	standby, err := primary.StartStandby(ctx, standbySettings...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Shutdown)
	h.reconnect(dsn) // the primary was restarted to copy it
	if version >= 170000 {
		h.exec(`ALTER SYSTEM SET synchronized_standby_slots = 'standby1'`)
		h.exec(`SELECT pg_reload_conf()`)
	}
	standbyDSN := standby.DatabaseURL("audited")
	sconn, err := pgx.Connect(ctx, standbyDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close(ctx)

	h.insertRange(11, 20)
	waitReplayed(t, h.conn, sconn)
	if version >= 170000 {
		// At most a temporary copy, waiting for the primary's slot to move.
		var persistent int
		if err := sconn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND NOT temporary`, testSlot).Scan(&persistent); err != nil {
			t.Fatal(err)
		}
		if persistent != 0 {
			t.Fatalf("the standby holds a synced copy of the slot; this test needs it unsynced")
		}
	}
	if err := primary.StopImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	sconn.Close(ctx)

	h.reconnect(standbyDSN)
	h.startAgent()
	id := h.expectGapStop(capture.ReasonTimelineChanged)
	if n := len(h.dataEvents()); n != 10 {
		t.Fatalf("%d events after the failover, want the 10 from before it", n)
	}
	// Without consent it stops again, records nothing new, makes no slot.
	h.startAgent()
	if again := h.expectGapStop(capture.ReasonTimelineChanged); again != id {
		t.Fatalf("a second gap #%d was recorded for the same hole #%d", again, id)
	}
	if len(h.gapEvents()) != 0 {
		t.Fatalf("a GAP event was recorded without consent")
	}
	if info, err := replication.LookupSlot(ctx, h.conn, testSlot); err != nil || info.Exists {
		t.Fatalf("slot on the new primary before consent: %+v, %v; want none", info, err)
	}
	h.acceptAndCheck(id, capture.ReasonTimelineChanged, 10)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}
