package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// TestGapAfterFailoverFork: a failover slot synced to a standby, but the
// primary lacks synchronized_standby_slots, so its walsender sends the agent
// changes the standby never receives. Rows 1-20 reach the standby and the
// spine; the standby is cut off; rows 41-60 are committed one by one and
// delivered from the old primary only; the primary crashes and the standby
// is promoted. The spine then holds events beyond the point where the new
// primary's history begins: a fork. The agent must not take the synced slot
// as a clean continuation (the new primary's first commits reuse positions
// the chain already has, and would be skipped or collide): one gap, loud,
// no silent continuation, exactly one GAP event on consent, and every change
// of the new primary delivered after it.
func TestGapAfterFailoverFork(t *testing.T) {
	ctx := context.Background()
	// A standby that syncs the slot; the primary is NOT told to wait for it
	// (no synchronized_standby_slots): the gap in the set-up doctor warns of.
	fp := startFailoverPair(t, "the forked history of a synced slot", false)
	primary, standby, standbyDSN, h, sconn := fp.primary, fp.standby, fp.standbyDSN, fp.h, fp.sconn

	h.startAgent()
	for id := 11; id <= 20; id++ {
		h.insertRange(id, id)
	}
	h.waitEvents(20, 30*time.Second)
	delivered := lsnOf(t, h.conn, `SELECT pg_current_wal_lsn()::text`)
	// Keep the WAL moving (the slot syncs only once the primary's slot is
	// past what the standby replayed) until the copy is synced past rows
	// 1-20.
	deadline := time.Now().Add(90 * time.Second)
	for {
		h.exec(`SELECT pg_logical_emit_message(false, 'test', 'tick')`)
		pgtest.WakeSlotSync(t, h.conn, sconn)
		var synced bool
		var confirmed *string
		err := sconn.QueryRow(ctx, `SELECT synced, confirmed_flush_lsn::text FROM pg_replication_slots
			WHERE slot_name = $1 AND NOT temporary`, testSlot).Scan(&synced, &confirmed)
		if err != nil && err != pgx.ErrNoRows {
			t.Fatal(err)
		}
		if err == nil && synced && confirmed != nil && lsnLE(t, delivered, *confirmed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby's copy of the slot is not synced past %s within 90s", delivered)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Cut the standby off: its walsender ends and its physical slot goes,
	// so it receives nothing more.
	setSlotSync(t, sconn, false)
	deadline = time.Now().Add(30 * time.Second)
	for {
		_, err := h.conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE slot_name = 'standby1' AND active_pid IS NOT NULL`)
		if err == nil {
			_, err = h.conn.Exec(ctx, `SELECT pg_drop_replication_slot('standby1')`)
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dropping the standby's slot: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Rows 41-60, one transaction each, reach the spine from the old
	// primary only.
	for id := 41; id <= 60; id++ {
		h.insertRange(id, id)
	}
	h.waitEvents(40, 30*time.Second)
	h.stopAgent()
	if err := primary.StopImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	replayed := lsnOf(t, sconn, `SELECT pg_last_wal_replay_lsn()::text`)
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	sconn.Close(ctx)
	evs := h.dataEvents()
	t.Logf("standby replayed up to %s; the last event delivered from the old primary committed at %v", replayed, field(t, evs[len(evs)-1], "metadata", "commit_lsn"))

	h.reconnect(standbyDSN)
	var persistent bool
	if err := h.conn.QueryRow(ctx, `SELECT failover AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&persistent); err != nil || !persistent {
		t.Fatalf("the promoted standby has no persistent failover copy of the slot (%v, %v)", persistent, err)
	}
	// What watch does first (capture.Ensure without a spine to compare
	// with) must leave the timeline move unsettled for run.
	sys, timeline, err := replication.Identify(ctx, h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := capture.Ensure(ctx, h.conn, capture.Options{Slot: testSlot, SystemID: sys, Timeline: timeline}); err != nil {
		t.Fatalf("Ensure as watch calls it: %v", err)
	}
	if st, err := capture.LoadState(ctx, h.conn, testSlot); err != nil || st.Timeline == timeline {
		t.Fatalf("capture state after Ensure without a spine: %+v, %v; want the old timeline kept", st, err)
	}
	h.startAgent()
	id := h.expectGapStop(capture.ReasonTimelineForked)
	if n := len(h.dataEvents()); n != 40 {
		t.Fatalf("%d events after the failover, want the 40 from before it", n)
	}
	// Without consent it stops again and records nothing new.
	h.startAgent()
	if again := h.expectGapStop(capture.ReasonTimelineForked); again != id {
		t.Fatalf("a second gap #%d was recorded for the same fork #%d", again, id)
	}
	if len(h.gapEvents()) != 0 {
		t.Fatalf("a GAP event was recorded without consent")
	}
	// With consent: one GAP event after row 60, then the new primary's own
	// rows 21-31, none skipped although their positions repeat the old
	// primary's.
	h.acceptAndCheck(id, capture.ReasonTimelineForked, 40)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 20}, [2]int{41, 60}, [2]int{21, 31})
}
