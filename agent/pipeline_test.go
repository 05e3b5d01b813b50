package agent_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

func TestEnvelopesForPlainSQL(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE decisions (id text PRIMARY KEY, status text, vendor text, amount numeric(12,2),
		approved boolean, score int8, details jsonb, decided_at timestamptz)`)
	if got := h.watch("decisions", "decision_card_status_changed", "procurement-api"); got != "public.decisions" {
		t.Fatalf("watch printed %q, want public.decisions", got)
	}
	h.startAgent()
	h.exec(`INSERT INTO decisions VALUES ('DEC-001', 'pending', 'acme', 12.50, null, 9007199254740993,
		'{"risk": {"level": "low"}, "tags": ["a", "b"]}', '2026-11-22 10:00:00.123456+00')`)
	h.exec(`UPDATE decisions SET status = 'approved', approved = true WHERE id = 'DEC-001'`)
	h.exec(`DELETE FROM decisions WHERE id = 'DEC-001'`)

	evs := h.expectExactly(3, 300*time.Millisecond)
	newRow := `{"amount":"12.50","approved":null,"decided_at":"2026-11-22T10:00:00.123456+00:00","details":{"risk":{"level":"low"},"tags":["a","b"]},"id":"DEC-001","score":9007199254740993,"status":"pending","vendor":"acme"}`
	updated := strings.Replace(strings.Replace(newRow, `"approved":null`, `"approved":true`, 1), `"pending"`, `"approved"`, 1)
	tests := []struct {
		op       string
		old, new string // "" when the key must be absent
	}{
		{"INSERT", "", newRow},
		{"UPDATE", newRow, updated},
		{"DELETE", updated, ""},
	}
	var lastPos envelope.Position
	for i, tt := range tests {
		e := evs[i]
		t.Run(tt.op, func(t *testing.T) {
			if e.Kind != "decision_card_status_changed" || e.Source != "procurement-api" {
				t.Errorf("got kind %q source %q, want decision_card_status_changed procurement-api", e.Kind, e.Source)
			}
			if got := field(t, e, "table"); got != "public.decisions" {
				t.Errorf("got table %v, want public.decisions", got)
			}
			if got := field(t, e, "operation"); got != tt.op {
				t.Errorf("got operation %v, want %s", got, tt.op)
			}
			for _, k := range []struct{ name, want string }{{"old", tt.old}, {"new", tt.new}} {
				_, present := e.Payload[k.name]
				if k.want == "" {
					if present {
						t.Errorf("payload has %q, want it absent", k.name)
					}
					continue
				}
				if got := jsonOf(t, e.Payload[k.name]); got != k.want {
					t.Errorf("%s:\ngot  %s\nwant %s", k.name, got, k.want)
				}
			}
			meta, _ := e.Payload["metadata"].(map[string]any)
			for _, k := range []string{"commit_lsn", "lsn", "xid", "commit_timestamp", "idempotency_key"} {
				if _, ok := meta[k]; !ok {
					t.Errorf("metadata lacks %q: %v", k, meta)
				}
			}
			if meta["commit_timestamp"] != e.Timestamp {
				t.Errorf("got timestamp %q, want the commit time %v", e.Timestamp, meta["commit_timestamp"])
			}
			_, slot, pos, ok := envelope.ParseKey(meta["idempotency_key"].(string))
			if !ok || slot != testSlot {
				t.Fatalf("idempotency key %v does not parse or names another slot", meta["idempotency_key"])
			}
			if !lastPos.Less(pos) {
				t.Errorf("position %v is not after %v: events out of commit order", pos, lastPos)
			}
			lastPos = pos
		})
	}
}

func TestChangesBeforeRunAreDelivered(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE t (id int PRIMARY KEY, v text)`)
	h.watch("t", "other", "early")
	// The agent has never run: watch created the slot, so these are kept.
	h.exec(`INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	h.startAgent()
	evs := h.expectExactly(50, 300*time.Millisecond)
	for i, e := range evs {
		if got := field(t, e, "new", "id"); jsonOf(t, got) != jsonOf(t, i+1) {
			t.Fatalf("event %d: got id %v, want %d (commit order)", i, got, i+1)
		}
	}
}

func TestWatchChangesApplyWhileRunning(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE w (id int PRIMARY KEY)`)
	h.exec(`CREATE TABLE other_table (id int PRIMARY KEY)`)
	h.watch("w", "other", "first")
	h.startAgent()
	h.exec(`INSERT INTO w VALUES (1)`)
	h.waitEvents(1, 30*time.Second)
	h.watch("w", "watch_drifted", "second") // re-watch: kind and source change in place
	h.exec(`INSERT INTO w VALUES (2)`)
	h.exec(`INSERT INTO other_table VALUES (1)`) // never watched
	h.waitEvents(2, 30*time.Second)
	if removed := h.unwatch("w"); !removed {
		t.Fatalf("unwatch reported nothing removed")
	}
	if removed := h.unwatch("w"); removed {
		t.Fatalf("second unwatch reported a removal, want idempotent false")
	}
	h.exec(`INSERT INTO w VALUES (3)`) // after unwatch: not audited
	h.watch("w", "other", "third")
	h.exec(`INSERT INTO w VALUES (4)`)
	evs := h.expectExactly(3, 500*time.Millisecond)
	want := []struct {
		kind, source string
		id           string
	}{{"other", "first", "1"}, {"watch_drifted", "second", "2"}, {"other", "third", "4"}}
	for i, w := range want {
		e := evs[i]
		if e.Kind != w.kind || e.Source != w.source || jsonOf(t, field(t, e, "new", "id")) != w.id {
			t.Errorf("event %d: got %s/%s id %v, want %s/%s id %s", i, e.Kind, e.Source, field(t, e, "new", "id"), w.kind, w.source, w.id)
		}
	}
}

func TestUnwatchAfterDrop(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE gone (id int)`)
	h.watch("gone", "other", "s")
	// The DROP itself ends the watch (a DROP event, see TestTableLifecycle):
	// unwatch afterwards works and has nothing left to remove.
	h.exec(`DROP TABLE gone`)
	if h.unwatch("gone") {
		t.Fatalf("unwatch of a dropped table: got removed=true, want false (the drop ended the watch)")
	}
	if h.unwatch("gone") {
		t.Fatalf("second unwatch of a dropped table: got removed=true, want false")
	}
}

func TestWatchMissingTable(t *testing.T) {
	h := newHarness(t)
	tn := "no_such_table"
	_, err := newRegistry(h).Watch(context.Background(), mustName(t, tn), "other", "s")
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("got %v, want a 'does not exist' error", err)
	}
}

func TestHostileTableNames(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE SCHEMA "Mixed Case"`)
	h.exec(`CREATE TABLE "Mixed Case"."odd ""name""" ("Col ""quoted""" text, "select" int)`)
	h.exec(`CREATE TABLE "Robert'); DROP TABLE students;--" (id int)`)
	if got, want := h.watch(`"Mixed Case"."odd ""name"""`, "other", "hostile"), `"Mixed Case"."odd ""name"""`; got != want {
		t.Fatalf("watch printed %s, want %s", got, want)
	}
	h.watch(`"Robert'); DROP TABLE students;--"`, "other", "hostile")
	h.startAgent()
	h.exec(`INSERT INTO "Mixed Case"."odd ""name""" VALUES ('x', 1)`)
	h.exec(`INSERT INTO "Robert'); DROP TABLE students;--" VALUES (7)`)
	evs := h.expectExactly(2, 300*time.Millisecond)
	if got := field(t, evs[0], "table"); got != `"Mixed Case"."odd ""name"""` {
		t.Errorf("got table %v", got)
	}
	if got := jsonOf(t, field(t, evs[0], "new")); got != `{"Col \"quoted\"":"x","select":1}` {
		t.Errorf("got new %s", got)
	}
	if got := field(t, evs[1], "table"); got != `public."Robert'); DROP TABLE students;--"` {
		t.Errorf("got table %v", got)
	}
}

func TestSpineOutageLosesNothing(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE o (id int PRIMARY KEY, v text)`)
	h.watch("o", "other", "outage")
	h.startAgent()
	h.exec(`INSERT INTO o SELECT g, 'a' FROM generate_series(1, 20) g`)
	h.waitEvents(20, 30*time.Second)
	h.spine.SetDown(true)
	for i := 21; i <= 60; i++ {
		h.exec(`INSERT INTO o VALUES ($1, 'b')`, i)
	}
	time.Sleep(3 * time.Second)
	h.spine.SetDown(false)
	evs := h.expectExactly(60, 500*time.Millisecond)
	for i, e := range evs {
		if got := jsonOf(t, field(t, e, "new", "id")); got != jsonOf(t, i+1) {
			t.Fatalf("event %d: got id %s, want %d", i, got, i+1)
		}
	}
}

func TestRestartResumesWithoutLossOrDuplicates(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE r (id int PRIMARY KEY)`)
	h.watch("r", "other", "restart")
	h.startAgent()
	h.exec(`INSERT INTO r SELECT generate_series(1, 10)`)
	h.waitEvents(10, 30*time.Second)
	h.stopAgent()
	h.exec(`INSERT INTO r SELECT generate_series(11, 20)`)
	h.startAgent()
	h.exec(`INSERT INTO r SELECT generate_series(21, 30)`)
	h.expectExactly(30, 500*time.Millisecond)
}

// TestLargeRowArrivesWhole: rows whose messages are over
// replication.DivertOver (set aside in a file as they arrive, their values
// converted in pieces) arrive whole and exact: text with characters of
// every UTF-8 length, which a piece must not cut, and bytea.
func TestLargeRowArrivesWhole(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE big (id int PRIMARY KEY, body text, blob bytea, note text)`)
	h.watch("big", "other", "big")
	h.startAgent()
	const size = 20 << 20
	h.exec(`INSERT INTO big SELECT 1, string_agg(md5(g::text) || 'é€😀', ''), decode(string_agg(md5(g::text), ''), 'hex'), 'n' FROM generate_series(1, $1 / 41) g`, size)
	// An UPDATE that leaves the TOASTed columns alone still carries them.
	h.exec(`UPDATE big SET note = 'changed' WHERE id = 1`)
	evs := h.expectExactly(2, 300*time.Millisecond)
	var body, blob string
	if err := h.conn.QueryRow(context.Background(), `SELECT body, blob::text FROM big WHERE id = 1`).Scan(&body, &blob); err != nil {
		t.Fatal(err)
	}
	if len(body) < size*9/10 || len(blob) < size/2 {
		t.Fatalf("fixture: %d and %d bytes, want about %d", len(body), len(blob), size)
	}
	for i, row := range []string{"new", "new", "old"} {
		e := evs[min(i, 1)]
		if got, _ := field(t, e, row, "body").(string); got != body {
			t.Errorf("event %d %s.body: got %d bytes, want the whole %d-byte value", e.EventID, row, len(got), len(body))
		}
		if got, _ := field(t, e, row, "blob").(string); got != blob {
			t.Errorf("event %d %s.blob: got %d bytes, want the whole %d-byte value", e.EventID, row, len(got), len(blob))
		}
	}
}

func TestConfirmedLSNNeverAheadOfSpine(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE c (id int PRIMARY KEY)`)
	h.watch("c", "other", "confirm")
	h.startAgent()
	h.exec(`INSERT INTO c VALUES (0)`)
	h.waitEvents(1, 30*time.Second)
	h.spine.SetDown(true)
	var before string
	if err := h.conn.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	h.exec(`INSERT INTO c VALUES (1)`)
	// Other traffic moves the server's WAL on; the slot must still wait.
	h.exec(`CREATE TABLE noise AS SELECT generate_series(1, 1000) g`)
	time.Sleep(1500 * time.Millisecond) // many status intervals
	beforeLSN, _ := pgoutput.ParseLSN(before)
	confirmed := slotConfirmed(t, h)
	if confirmed > beforeLSN {
		t.Fatalf("confirmed_flush_lsn %s passed %s while the spine had not accepted the change after it", confirmed, beforeLSN)
	}
	h.spine.SetDown(false)
	h.expectExactly(2, 200*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for slotConfirmed(t, h) <= beforeLSN {
		if time.Now().After(deadline) {
			t.Fatalf("confirmed_flush_lsn stayed at %s after the spine accepted everything", slotConfirmed(t, h))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func slotConfirmed(t *testing.T, h *harness) pgoutput.LSN {
	t.Helper()
	var s string
	if err := h.conn.QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, testSlot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := pgoutput.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestReconnectsAfterTerminateBackend(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE k (id int PRIMARY KEY)`)
	h.watch("k", "other", "terminate")
	h.startAgent()
	h.exec(`INSERT INTO k SELECT generate_series(1, 10)`)
	h.waitEvents(10, 30*time.Second)
	for i := 0; i < 3; i++ {
		h.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active`, testSlot)
		h.exec(`INSERT INTO k VALUES ($1)`, 100+i)
	}
	evs := h.expectExactly(13, time.Second)
	if got := jsonOf(t, field(t, evs[12], "new", "id")); got != "102" {
		t.Fatalf("last event: got id %s, want 102", got)
	}
}
