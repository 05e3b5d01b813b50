package agent_test

// Failover with a synced failover slot (issue 12, part 3): on PostgreSQL 17+
// with the whole failover set-up (synchronized_standby_slots on the primary;
// sync_replication_slots, hot_standby_feedback, primary_slot_name and a
// primary_conninfo with a dbname on the standby), an agent reached through a
// multi-host DATABASE_URL follows the promotion of the standby: every change
// the standby received is in the chain exactly once, every change on the new
// primary too, in commit order, with a valid chain and no GAP.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgaudit-cdc/pgaudit-cdc/embedded"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/replication"
)

// multiHostURL is dsn (a URL naming one of the clusters) with both servers
// as hosts and target_session_attrs=read-write: whichever is the primary.
func multiHostURL(t *testing.T, dsn string, ports ...int) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	host := ""
	for i, p := range ports {
		if i > 0 {
			host += ","
		}
		host += fmt.Sprintf("127.0.0.1:%d", p)
	}
	u.Host = host
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	q.Set("connect_timeout", "5")
	u.RawQuery = q.Encode()
	return u.String()
}

// workload inserts one row per transaction into t1, with increasing ids from
// first, until stopped or the server fails.
type workload struct {
	mu        sync.Mutex
	committed []int // ids whose COMMIT was acknowledged
	lastErr   error
	stop      chan struct{}
	done      chan struct{}
}

func startWorkload(t *testing.T, dsn string, first int) *workload {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	w := &workload{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close(context.Background())
		for id := first; ; id++ {
			select {
			case <-w.stop:
				return
			default:
			}
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := conn.Exec(qctx, `INSERT INTO t1 VALUES ($1, $2)`, id, fmt.Sprint("row ", id))
			cancel()
			w.mu.Lock()
			if err != nil {
				w.lastErr = err
				w.mu.Unlock()
				return
			}
			w.committed = append(w.committed, id)
			w.mu.Unlock()
			time.Sleep(3 * time.Millisecond)
		}
	}()
	return w
}

func (w *workload) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *workload) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.committed)
}

func lsnOf(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s *string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if s == nil {
		return ""
	}
	return *s
}

func lsnLE(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := pgoutput.ParseLSN(a)
	if err != nil {
		t.Fatalf("parsing %q: %v", a, err)
	}
	y, err := pgoutput.ParseLSN(b)
	if err != nil {
		t.Fatalf("parsing %q: %v", b, err)
	}
	return x <= y
}

// failoverPair is how the failover tests (PostgreSQL 17+) begin: rows 1-10
// of t1 delivered through the failover slot by an agent that then stopped,
// and a streaming standby of the primary (physical slot standby1,
// hot_standby_feedback, slot synchronisation on through ALTER SYSTEM, so
// that a reload can turn it off later) that has replayed all of it.
type failoverPair struct {
	primary, standby *embedded.Cluster
	dsn, standbyDSN  string
	h                *harness
	sconn            *pgx.Conn // to the standby
}

// startFailoverPair skips below 17 (no failover slots; what names the
// test's subject). synchronized sets synchronized_standby_slots on the
// primary, the whole set-up doctor asks for.
func startFailoverPair(t *testing.T, what string, synchronized bool) *failoverPair {
	t.Helper()
	ctx := context.Background()
	primary, dsn := ownCluster(t)
	if v, major := primary.Version(); major < 17 {
		t.Skipf("PostgreSQL %s (%d) has no failover slots; %s needs 17 or later", v, major, what)
	}
	h := newHarnessOn(t, dsn)
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()
	h.insertRange(1, 10)
	h.waitEvents(10, 30*time.Second)
	h.stopAgent()
	h.waitSlotInactive()
	if info, err := replication.LookupSlot(ctx, h.conn, testSlot); err != nil || !info.Failover {
		t.Fatalf("slot: %+v, %v; want a failover slot", info, err)
	}

	h.exec(`SELECT pg_create_physical_replication_slot('standby1')`)
	standby, err := primary.StartStandby(ctx, "primary_slot_name=standby1", "hot_standby_feedback=on")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(standby.Shutdown)
	h.reconnect(dsn) // the primary was restarted to copy it
	if synchronized {
		h.exec(`ALTER SYSTEM SET synchronized_standby_slots = 'standby1'`)
		h.exec(`SELECT pg_reload_conf()`)
	}
	standbyDSN := standby.DatabaseURL("audited")
	sconn, err := pgx.Connect(ctx, standbyDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sconn.Close(context.Background()) })
	setSlotSync(t, sconn, true)
	waitReplayed(t, h.conn, sconn)
	return &failoverPair{primary: primary, standby: standby, dsn: dsn, standbyDSN: standbyDSN, h: h, sconn: sconn}
}

// TestFailoverWithSyncedSlot: rows 1-10 are delivered, a standby is made
// with the failover set-up, the agent runs with a multi-host URL while a
// workload inserts one row per transaction; once the standby's copy of the
// slot is synced past a point the agent delivered, the primary crashes (-m
// immediate), the standby is promoted and rows are inserted there. The spine
// must hold exactly the rows of the new primary's table, once each, in
// commit order, with a valid chain and no GAP.
func TestFailoverWithSyncedSlot(t *testing.T) {
	ctx := context.Background()
	fp := startFailoverPair(t, "a failover with a synced slot", true)
	primary, standby, dsn, standbyDSN, h, sconn := fp.primary, fp.standby, fp.dsn, fp.standbyDSN, fp.h, fp.sconn

	// The agent reaches whichever server is the primary.
	multi := multiHostURL(t, dsn, primary.Port(), standby.Port())
	h.dsn = multi
	h.startAgent()
	w := startWorkload(t, dsn, 11)
	defer w.halt()

	// Wait for a delivered point, then for the standby's copy of the slot to
	// be synced past it.
	h.waitEvents(60, 60*time.Second)
	delivered := lsnOf(t, h.conn, `SELECT pg_current_wal_lsn()::text`)
	h.waitEvents(len(h.dataEvents())+20, 60*time.Second)
	deadline := time.Now().Add(90 * time.Second)
	var syncedAt string
	for {
		pgtest.WakeSlotSync(t, h.conn, sconn)
		var synced bool
		var confirmed *string
		err := sconn.QueryRow(ctx, `SELECT synced, confirmed_flush_lsn::text FROM pg_replication_slots
			WHERE slot_name = $1 AND NOT temporary`, testSlot).Scan(&synced, &confirmed)
		if err != nil && err != pgx.ErrNoRows {
			t.Fatal(err)
		}
		if err == nil && synced && confirmed != nil && lsnLE(t, delivered, *confirmed) {
			syncedAt = *confirmed
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby's copy of the slot is not synced past %s within 90s (synced=%v, confirmed=%v)", delivered, synced, confirmed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// More changes after the synced point, with slot synchronisation turned
	// off: the copy lags the primary's slot, as a copy may at any failover,
	// and the replay of what was already delivered must be absorbed by the
	// read-back, never duplicated. (Terminating the sync worker is not
	// enough: the postmaster restarts it at once when it ran for over 10 s.)
	setSlotSync(t, sconn, false)
	frozen := lsnOf(t, sconn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot)
	deadline = time.Now().Add(10 * time.Second)
	for lsnLE(t, lsnOf(t, h.conn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot), frozen) {
		if time.Now().After(deadline) {
			t.Fatalf("the primary's slot did not move past %s within 10s", frozen)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.waitEvents(len(h.dataEvents())+40, 60*time.Second)
	primaryConfirmed := lsnOf(t, h.conn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot)
	beforeCrash := w.count()

	if err := primary.StopImmediate(ctx); err != nil {
		t.Fatal(err)
	}
	w.halt()
	// The standby has received all it ever will: replay it all, then note
	// where the old timeline ends for it.
	received := lsnOf(t, sconn, `SELECT pg_last_wal_receive_lsn()::text`)
	// The last record received may be incomplete (the primary crashed while
	// sending it): wait until replay stops moving rather than for received.
	replayed := ""
	stableSince := time.Now()
	deadline = time.Now().Add(30 * time.Second)
	for time.Since(stableSince) < time.Second {
		if now := lsnOf(t, sconn, `SELECT pg_last_wal_replay_lsn()::text`); now != replayed {
			replayed, stableSince = now, time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby's replay did not settle within 30s (at %s, received %s)", replayed, received)
		}
		time.Sleep(20 * time.Millisecond)
	}
	syncedBefore := lsnOf(t, sconn, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot)
	promotedAt := replayed
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	sconn.Close(ctx)
	t.Logf("delivered point %s; copy synced at %s, frozen at %s, at promotion %s; old primary's slot confirmed ≥ %s; standby received %s, replayed %s; %d rows committed on the old primary before the crash",
		delivered, syncedAt, frozen, syncedBefore, primaryConfirmed, received, replayed, beforeCrash)
	// Confirming keepalive positions must never put the synced copy past
	// what the standby had: a position beyond the promotion point would
	// skip the new primary's first changes.
	if !lsnLE(t, syncedBefore, replayed) {
		t.Fatalf("the synced slot's confirmed_flush_lsn %s is past the promotion point %s", syncedBefore, replayed)
	}
	// With synchronized_standby_slots the walsender decodes, and so reports
	// in keepalives, only WAL the standby has flushed: what the agent
	// confirmed on the old primary is never beyond what the standby got.
	if !lsnLE(t, primaryConfirmed, received) {
		t.Fatalf("the old primary's slot was confirmed up to %s, beyond what the standby received (%s)", primaryConfirmed, received)
	}
	if lsnLE(t, primaryConfirmed, syncedBefore) {
		t.Fatalf("the synced copy (%s) does not lag the old primary's slot (%s): no replay is tested", syncedBefore, primaryConfirmed)
	}

	// Writes on the new primary.
	h.reconnect(standbyDSN)
	for id := 100001; id <= 100020; id++ {
		h.exec(`INSERT INTO t1 VALUES ($1, $2)`, id, fmt.Sprint("new primary ", id))
	}
	h.insertRange(100021, 100030)
	var want []int
	rows, err := h.conn.Query(ctx, `SELECT id FROM t1 ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	// The standby is asynchronous: the last commits the old primary
	// acknowledged may not have reached it. They were never decoded either
	// (synchronized_standby_slots holds the walsender back), so the new
	// primary's table is the expected set.
	t.Logf("%d rows on the new primary; %d acknowledged by the old one", len(want), w.count()+10)

	deadline = time.Now().Add(90 * time.Second)
	for {
		got := ids(t, h.dataEvents())
		if len(got) >= len(want) && len(got) > 0 && got[len(got)-1] == 100030 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90s the spine holds %d data events (last id %v), want %d ending with 100030", len(got), lastOf(got), len(want))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	h.stopAgent()

	evs := h.dataEvents()
	got := ids(t, evs)
	seen := map[int]int{}
	dups := 0
	for _, id := range got {
		seen[id]++
		if seen[id] == 2 {
			dups++
		}
	}
	var missing, extra []int
	for _, id := range want {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	wantSet := map[int]bool{}
	for _, id := range want {
		wantSet[id] = true
	}
	for id := range seen {
		if !wantSet[id] {
			extra = append(extra, id)
		}
	}
	sort.Ints(extra)
	gaps := len(h.gapEvents())
	replays := 0
	for _, e := range evs {
		if c, ok := field(t, e, "metadata", "commit_lsn").(string); ok && !lsnLE(t, c, syncedBefore) && lsnLE(t, c, promotedAt) {
			replays++
		}
	}
	t.Logf("%d changes between the promoted copy of the slot and the promotion point (commit LSN in (%s, %s]) were decoded again after the failover", replays, syncedBefore, promotedAt)
	t.Logf("figures: %d changes on the new primary, %d data events, %d duplicated, %d missing, %d not on the new primary, %d GAP events",
		len(want), len(evs), dups, len(missing), len(extra), gaps)
	if dups != 0 || len(missing) != 0 || len(extra) != 0 {
		t.Fatalf("duplicated %d, missing %v, not on the new primary %v", dups, missing, extra)
	}
	if !sort.IntsAreSorted(got) {
		t.Fatalf("events out of commit order: %v", got)
	}
	if gaps != 0 {
		t.Fatalf("%d GAP events after a failover with a synced slot", gaps)
	}
	if ok, at, why := h.spine.Verify(); !ok {
		t.Fatalf("chain invalid at %d: %s", at, why)
	}
	if rep := verifyEvents(h.spine.Events()); !rep.OK() {
		js, _ := json.MarshalIndent(rep.Failures, "", "  ")
		t.Fatalf("verify: %s", js)
	}
}

func lastOf(s []int) any {
	if len(s) == 0 {
		return nil
	}
	return s[len(s)-1]
}

// setSlotSync turns the standby's slot synchronisation on or off (ALTER
// SYSTEM and a reload) and waits until the slot sync worker runs, or is gone.
func setSlotSync(t *testing.T, standby *pgx.Conn, on bool) {
	t.Helper()
	ctx := context.Background()
	if _, err := standby.Exec(ctx, fmt.Sprintf(`ALTER SYSTEM SET sync_replication_slots = %t`, on)); err != nil {
		t.Fatal(err)
	}
	if _, err := standby.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := standby.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'slotsync worker'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if (n > 0) == on {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot sync worker is still %s 30s after sync_replication_slots = %t", map[bool]string{true: "absent", false: "running"}[on], on)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
