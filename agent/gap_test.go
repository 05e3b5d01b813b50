package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
)

// gapEvents returns the spine's GAP events.
func (h *harness) gapEvents() []spinetest.Event {
	var out []spinetest.Event
	for _, e := range h.spine.Events() {
		if op, _ := e.Payload["operation"].(string); op == envelope.OpGap {
			out = append(out, e)
		}
	}
	return out
}

// insertRange inserts rows lo..hi into t1, one transaction.
// tenRowsOnT1 starts an agent watching t1, observed, and delivers rows 1 to
// 10 (one transaction): where the gap tests begin.
func tenRowsOnT1(t *testing.T) (*harness, *observer) {
	t.Helper()
	h := newHarness(t)
	obs := h.observe()
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()
	h.insertRange(1, 10)
	h.waitEvents(10, 30*time.Second)
	return h, obs
}

func (h *harness) insertRange(lo, hi int) {
	h.t.Helper()
	h.exec(fmt.Sprintf(`INSERT INTO t1 SELECT g, 'row ' || g FROM generate_series(%d, %d) g`, lo, hi))
}

// dropSlot ends the agent's walsender and drops the slot, retrying while the
// agent reconnects.
func (h *harness) dropSlot() {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := h.conn.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
			WHERE slot_name = $1 AND active_pid IS NOT NULL`, testSlot)
		if err == nil {
			_, err = h.conn.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, testSlot)
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("dropping the slot: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSlotInactive waits until no walsender holds the slot.
func (h *harness) waitSlotInactive() {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var active bool
		if err := h.conn.QueryRow(context.Background(), `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&active); err != nil {
			h.t.Fatal(err)
		}
		if !active {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the slot is still active after 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// expectGapStop waits for the agent to stop with a gap and checks the
// pending gap's reason.
func (h *harness) expectGapStop(reason string) int64 {
	h.t.Helper()
	err := h.waitExit(30 * time.Second)
	var gapErr *capture.GapError
	if !errors.As(err, &gapErr) {
		h.t.Fatalf("agent.Run returned %v, want a *capture.GapError", err)
	}
	if gapErr.Gap.Reason != reason {
		h.t.Fatalf("gap reason %q, want %q (%s)", gapErr.Gap.Reason, reason, gapErr.Gap.Detail)
	}
	if len(gapErr.Gap.Tables) != 1 || gapErr.Gap.Tables[0] != "public.t1" {
		h.t.Fatalf("gap tables %v, want [public.t1]", gapErr.Gap.Tables)
	}
	return gapErr.Gap.ID
}

// expectGapMetrics checks what Prometheus sees while a gap is pending:
// pgaudit_cdc_gap_pending 1, and pgaudit_cdc_gaps_detected_total{reason}
// at detected (the gaps this process's agents detected first; a gap
// already recorded, by `watch` or an earlier run, is pending but not
// detected again).
func (h *harness) expectGapMetrics(reason string, detected float64) {
	h.t.Helper()
	h.obs.expectMetric(h.t, 1, "pgaudit_cdc_gap_pending")
	h.obs.expectMetric(h.t, detected, "pgaudit_cdc_gaps_detected_total", "reason", reason)
	// And it is logged at ERROR, with the fix.
	h.obs.expectLog(h.t, -1, "level=ERROR", "capture gap", "reason="+reason, "--accept-gap=")
}

// values returns the ids of the data events' new rows, in chain order.
func ids(t *testing.T, evs []spinetest.Event) []int {
	t.Helper()
	var out []int
	for _, e := range evs {
		if v := field(t, e, "new", "id"); v != nil {
			var n int
			fmt.Sscan(fmt.Sprint(v), &n)
			out = append(out, n)
		}
	}
	return out
}

func wantRange(t *testing.T, got []int, ranges ...[2]int) {
	t.Helper()
	var want []int
	for _, r := range ranges {
		for i := r[0]; i <= r[1]; i++ {
			want = append(want, i)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered ids %v, want %v", got, want)
	}
}

// acceptAndCheck restarts the agent with consent, then checks that exactly
// one GAP event is in the chain, where it is, and that capture continues.
func (h *harness) acceptAndCheck(gapID int64, reason string, lastID int) {
	h.t.Helper()
	h.acceptAndCheckLast(gapID, reason, lastID, true)
}

// acceptAndCheckLast is acceptAndCheck; checkLast says whether the GAP event
// must name the last event before the gap (it cannot when the recorded
// system identifier is not the one the events carry).
func (h *harness) acceptAndCheckLast(gapID int64, reason string, lastID int, checkLast bool) {
	h.t.Helper()
	t := h.t
	h.startAgentWith(func(c *agent.Config) { c.AcceptGap = fmt.Sprint(gapID); c.AcceptedBy = "test" })
	h.waitOp(envelope.OpGap, 1)
	if h.obs != nil {
		// Accepted: no longer pending, and not counted again.
		h.obs.waitMetric(t, 10*time.Second, 0, "pgaudit_cdc_gap_pending")
		detected, _ := h.obs.metric(t, "pgaudit_cdc_gaps_detected_total", "reason", reason)
		defer func() {
			h.obs.expectMetric(t, 0, "pgaudit_cdc_gap_pending")
			h.obs.expectMetric(t, detected, "pgaudit_cdc_gaps_detected_total", "reason", reason)
		}()
	}
	h.insertRange(21, 30)
	evs := h.waitEvents(lastID+10, 30*time.Second)
	h.stopAgent()
	// A restart without consent continues: the gap is accepted.
	h.startAgent()
	h.insertRange(31, 31)
	evs = h.expectExactly(len(evs)+1, 300*time.Millisecond)
	h.stopAgent()

	gaps := h.gapEvents()
	if len(gaps) != 1 {
		t.Fatalf("%d GAP events, want exactly 1", len(gaps))
	}
	g := gaps[0]
	if got := field(t, g, "gap", "reason"); got != reason {
		t.Fatalf("GAP reason %v, want %s", got, reason)
	}
	if got := field(t, g, "gap", "id"); fmt.Sprint(got) != fmt.Sprint(gapID) {
		t.Fatalf("GAP id %v, want %d", got, gapID)
	}
	last := evs[lastID-1]
	if got, want := field(t, g, "gap", "last_delivered", "commit_lsn"), field(t, last, "metadata", "commit_lsn"); checkLast && got != want {
		t.Fatalf("GAP last_delivered.commit_lsn %v, want %v (the last event before the gap)", got, want)
	}
	if field(t, g, "gap", "resume_lsn") == nil || field(t, g, "gap", "rebaseline") == nil {
		t.Fatalf("GAP event lacks resume_lsn or the re-baseline advice: %s", jsonOf(t, g.Payload))
	}
	// The GAP event sits between the last event before the gap and the
	// first after it.
	all := h.spine.Events()
	pos := map[int64]int{}
	for i, e := range all {
		pos[e.EventID] = i
	}
	if !(pos[last.EventID] < pos[g.EventID] && pos[g.EventID] < pos[evs[lastID].EventID]) {
		t.Fatalf("the GAP event (#%d) is not between #%d and #%d", g.EventID, last.EventID, evs[lastID].EventID)
	}
	if ok, at, why := h.spine.Verify(); !ok {
		t.Fatalf("chain invalid at %d: %s", at, why)
	}
}

func TestGapSlotDroppedWhileRunning(t *testing.T) {
	h, obs := tenRowsOnT1(t)
	obs.expectMetric(t, 0, "pgaudit_cdc_gap_pending")
	obs.expectMetric(t, 0, "pgaudit_cdc_gaps_detected_total", "reason", capture.ReasonSlotMissing)

	h.dropSlot()
	h.insertRange(11, 20)
	id := h.expectGapStop(capture.ReasonSlotMissing)
	h.expectGapMetrics(capture.ReasonSlotMissing, 1)
	if n := len(h.dataEvents()); n != 10 {
		t.Fatalf("%d events after the gap, want the 10 from before it", n)
	}
	// Without consent it stops again, and records nothing new.
	h.startAgent()
	if again := h.expectGapStop(capture.ReasonSlotMissing); again != id {
		t.Fatalf("a second gap #%d was recorded for the same hole #%d", again, id)
	}
	if len(h.gapEvents()) != 0 {
		t.Fatalf("a GAP event was recorded without consent")
	}
	h.expectGapMetrics(capture.ReasonSlotMissing, 1) // the same gap, still pending
	h.acceptAndCheck(id, capture.ReasonSlotMissing, 10)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}

func TestGapSlotDroppedWhileStopped(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.stopAgent()

	h.dropSlot()
	h.insertRange(11, 20)
	// `watch` refuses to start capture over the hole, and re-creates nothing.
	_, err := newRegistry(h).Watch(context.Background(), mustName(t, "t1"), "other", "s")
	var gapErr *capture.GapError
	if !errors.As(err, &gapErr) {
		t.Fatalf("watch over a dropped slot returned %v, want a *capture.GapError", err)
	}
	var exists bool
	if err := h.conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, testSlot).Scan(&exists); err != nil || exists {
		t.Fatalf("the slot was re-created without consent (exists %t, err %v)", exists, err)
	}
	h.startAgent()
	id := h.expectGapStop(capture.ReasonSlotMissing)
	// `watch` recorded the gap: the agent finds it pending, and does not
	// count it as detected a second time.
	h.expectGapMetrics(capture.ReasonSlotMissing, 0)
	h.acceptAndCheck(id, capture.ReasonSlotMissing, 10)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}

func TestGapSlotAdvanced(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.stopAgent()

	h.insertRange(11, 20)
	h.waitSlotInactive()
	// Someone with REPLICATION moves the slot past changes never delivered.
	// (The test cluster runs with synchronous_commit off: wait until the
	// inserts are flushed, the furthest a slot can be advanced.)
	var target string
	if err := h.conn.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	for flushed := false; !flushed; time.Sleep(20 * time.Millisecond) {
		if err := h.conn.QueryRow(context.Background(), `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn`, target).Scan(&flushed); err != nil {
			t.Fatal(err)
		}
	}
	h.exec(`SELECT pg_replication_slot_advance($1, $2::pg_lsn)`, testSlot, target)
	h.startAgent()
	id := h.expectGapStop(capture.ReasonSlotAdvanced)
	h.expectGapMetrics(capture.ReasonSlotAdvanced, 1)
	h.acceptAndCheck(id, capture.ReasonSlotAdvanced, 10)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}

func TestGapSlotInvalidated(t *testing.T) {
	h := newHarness(t)
	h.observe()
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.exec(`CREATE TABLE filler (v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()
	h.insertRange(1, 10)
	h.waitEvents(10, 30*time.Second)
	h.stopAgent()

	h.exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`)
	h.exec(`SELECT pg_reload_conf()`)
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = h.conn.Exec(ctx, `ALTER SYSTEM RESET max_slot_wal_keep_size`)
		_, _ = h.conn.Exec(ctx, `SELECT pg_reload_conf()`)
	})
	h.insertRange(11, 20)
	for i := 0; ; i++ {
		var status *string
		if err := h.conn.QueryRow(context.Background(), `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status != nil && *status == "lost" {
			break
		}
		if i == 40 {
			t.Fatalf("the slot was not invalidated (wal_status %v)", status)
		}
		h.exec(`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 2000)`)
		h.exec(`SELECT pg_switch_wal()`)
		h.exec(`CHECKPOINT`)
	}
	h.exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`)
	h.exec(`SELECT pg_reload_conf()`)
	h.startAgent()
	id := h.expectGapStop(capture.ReasonSlotInvalidated)
	h.expectGapMetrics(capture.ReasonSlotInvalidated, 1)
	h.acceptAndCheck(id, capture.ReasonSlotInvalidated, 10)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}

// TestGapSystemIdentifierChanged: the database is restored into another
// cluster (its pgaudit_cdc tables come along, its slot does not). The
// restore is played by giving the recorded capture state another system
// identifier, exactly what the agent sees after a pg_dump/pg_restore or a
// file-level copy into a new cluster, and dropping the slot.
func TestGapSystemIdentifierChanged(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.stopAgent()
	h.waitSlotInactive()
	h.exec(`UPDATE pgaudit_cdc.capture_state SET system_identifier = '1' || system_identifier`)
	h.exec(`SELECT pg_drop_replication_slot($1)`, testSlot)
	h.insertRange(11, 20)
	h.startAgent()
	id := h.expectGapStop(capture.ReasonSystemChanged)
	h.expectGapMetrics(capture.ReasonSystemChanged, 1)
	// The events carry the real identifier, the record a changed one: the
	// read-back finds no event of the recorded cluster to name.
	h.acceptAndCheckLast(id, capture.ReasonSystemChanged, 10, false)
	wantRange(t, ids(t, h.dataEvents()), [2]int{1, 10}, [2]int{21, 31})
}

// TestAcceptAnyGapIsNarrow: --accept-gap without an ID, given while no gap
// was pending and PostgreSQL could not be reached, does not cover a gap that
// opens before the agent first reaches it: the agent stops on that gap.
func TestAcceptAnyGapIsNarrow(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.stopAgent()

	// PostgreSQL "down": the agent's address closes every connection at
	// once, until it is "up" and relays them to the server. One listener
	// all along: no other process can take its port in between.
	u, err := url.Parse(h.dsn)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var up atomic.Bool
	go forward(ln, u.Host, &up)
	u.Host = ln.Addr().String()
	h.startAgentWith(func(c *agent.Config) {
		c.DatabaseURL = u.String()
		c.AcceptGap = capture.AcceptAny
		c.AcceptedBy = "test"
	})
	time.Sleep(time.Second) // a few failed connection attempts

	h.dropSlot()
	h.insertRange(11, 20)
	up.Store(true)
	h.expectGapStop(capture.ReasonSlotMissing)
	if n := len(h.gapEvents()); n != 0 {
		t.Fatalf("%d GAP events: the consent given before the gap opened accepted it", n)
	}
}

// forward relays every connection ln accepts to target while up, and
// closes it at once otherwise.
func forward(ln net.Listener, target string, up *atomic.Bool) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if !up.Load() {
			c.Close()
			continue
		}
		go func() {
			defer c.Close()
			d, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer d.Close()
			go io.Copy(d, c) //nolint:errcheck // a relay: either side closing ends it
			io.Copy(c, d)    //nolint:errcheck
		}()
	}
}
