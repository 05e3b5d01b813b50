package agent_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/capture"
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
)

// post appends body to the spine as another producer would.
func (h *harness) post(body string) int64 {
	h.t.Helper()
	resp, err := http.Post(h.spine.URL()+"/events", "application/json", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var stored struct {
		EventID int64 `json:"event_id"`
	}
	if resp.StatusCode != http.StatusCreated || json.NewDecoder(resp.Body).Decode(&stored) != nil {
		h.t.Fatalf("posting a forged event: HTTP %d", resp.StatusCode)
	}
	return stored.EventID
}

// authFailures returns the authenticity failures of a verify report.
func authFailures(rep verify.Report) []verify.Result {
	var out []verify.Result
	for _, f := range rep.Failures {
		if f.Check == verify.CheckAuthenticity {
			out = append(out, f)
		}
	}
	return out
}

// sealedWorkload runs the agent over 5 two-row transactions on t1, waits
// until they are sealed, and stops it. tune adjusts the agent.
func sealedWorkload(t *testing.T, tune ...func(*agent.Config)) *harness {
	t.Helper()
	h := newHarness(t)
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, owner text, balance int)`)
	h.watch("t1", "other", "books")
	h.startAgentWith(func(c *agent.Config) {
		for _, f := range tune {
			f(c)
		}
	})
	for i := 1; i <= 5; i++ {
		h.exec(`INSERT INTO t1 VALUES ($1, 'alice', 10), ($2, 'bob', 20)`, 2*i-1, 2*i)
	}
	h.waitEvents(10, 30*time.Second)
	h.stopAgent() // a clean stop seals what is pending
	return h
}

func TestSignedTrailVerifies(t *testing.T) {
	h := sealedWorkload(t)
	rep := verifyEvents(h.spine.Events())
	if !rep.OK() {
		t.Fatalf("got failures %+v, want none", rep.Failures)
	}
	if a := rep.Authenticity; a.Authenticated < 10 || a.Seals < 1 || len(a.Keys) != 1 || a.Keys[0] != h.key.Fingerprint() {
		t.Fatalf("got %d events authenticated by %d seals of %v, want at least 10, 1, [%s]", a.Authenticated, a.Seals, a.Keys, h.key.Fingerprint())
	}
}

// Attack 1: events posted by another producer, dressed as the agent's.
func TestForgedEventsFailVerify(t *testing.T) {
	h := sealedWorkload(t)
	evs := h.dataEvents()
	real := evs[3]
	commit, _ := field(t, real, "metadata", "commit_lsn").(string)
	lsn, err := pgoutput.ParseLSN(commit)
	if err != nil {
		t.Fatal(err)
	}
	sys := strings.Split(field(t, real, "metadata", "idempotency_key").(string), ":")[1]
	late := envelope.Envelope{Kind: "other", Source: "books", Timestamp: real.Timestamp, Table: "public.t1", Operation: envelope.OpDelete,
		Old: []byte(`{"balance":20,"id":4,"owner":"bob"}`), CommitLSN: lsn, LSN: lsn, Late: true,
		Key: envelope.Key(sys, testSlot, envelope.Position{CommitLSN: lsn, Seq: 9}), Linked: true, TxIndex: 3}
	lateID := h.post(string(late.Encode()))
	other := envelope.Envelope{Kind: "other", Source: "books", Timestamp: real.Timestamp, Table: "public.t1", Operation: envelope.OpUpdate,
		Old: []byte(`{"balance":10,"id":9,"owner":"alice"}`), New: []byte(`{"balance":1000000,"id":9,"owner":"mallory"}`),
		CommitLSN: 0x99000000, LSN: 0x99000000, Key: envelope.Key("6666", testSlot, envelope.Position{CommitLSN: 0x99000000, Seq: 1}),
		Linked: true, TxIndex: 1, TxEvents: 1}
	otherID := h.post(string(other.Encode()))

	failed := authFailures(verifyEvents(h.spine.Events()))
	found := map[int64]bool{}
	for _, f := range failed {
		found[f.EventID] = true
	}
	if !found[lateID] || !found[otherID] {
		t.Fatalf("got authenticity failures %+v, want events %d and %d named", failed, lateID, otherID)
	}
}

// Attack 2: the spine's host drops a whole transaction, re-links the next
// event to the one before the hole and re-forges every hash.
func TestDroppedTransactionFailsVerify(t *testing.T) {
	h := sealedWorkload(t)
	all := h.spine.Events()
	var kept []spinetest.Event
	var dropped []string
	var before any
	for _, e := range all {
		if e.Source == "books" && field(t, e, "new", "id") != nil {
			id := fmt.Sprint(field(t, e, "new", "id"))
			if id == "5" || id == "6" {
				dropped = append(dropped, id)
				continue
			}
			if id == "4" {
				before = field(t, e, "metadata", "idempotency_key")
			}
			if id == "7" {
				_, _, pos, _ := envelope.ParseKey(fmt.Sprint(before))
				e.Payload["metadata"].(map[string]any)["prev"] = pos.String()
			}
		}
		kept = append(kept, e)
	}
	if len(dropped) != 2 {
		t.Fatalf("dropped %v, want rows 5 and 6", dropped)
	}
	rep := verifyEvents(rehash(kept))
	failed := authFailures(rep)
	var missing, altered bool
	for _, f := range failed {
		missing = missing || strings.Contains(f.Detail, "not in the trail")
		altered = altered || strings.Contains(f.Detail, "forged or altered")
	}
	if !missing || !altered {
		t.Fatalf("got authenticity failures %+v, want the dropped events named missing and the re-linked one altered", failed)
	}
}

// beginLSN returns the commit position of the transaction that changed
// t1's row id, from the slot (the agent is stopped): what anyone can work
// out with pg_current_wal_insert_lsn().
func (h *harness) commitOf(table string) pgoutput.LSN {
	h.t.Helper()
	// The commit may take a moment to be readable (flushed) by a peek.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lsn := h.peekDelete(); lsn != 0 || time.Now().After(deadline) {
			if lsn == 0 {
				h.t.Fatalf("no DELETE of %s found in the slot", table)
			}
			return lsn
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// peekDelete returns the commit position of the last transaction with a
// DELETE the slot holds (0: none).
func (h *harness) peekDelete() pgoutput.LSN {
	h.t.Helper()
	rows, err := h.conn.Query(context.Background(), `SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', $2)`, testSlot, testPub)
	if err != nil {
		h.t.Fatal(err)
	}
	defer rows.Close()
	var last pgoutput.LSN
	var begin pgoutput.LSN
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			h.t.Fatal(err)
		}
		m, err := pgoutput.Parse(data)
		if err != nil {
			continue
		}
		switch m := m.(type) {
		case *pgoutput.BeginMessage:
			begin = m.FinalLSN
		case *pgoutput.DeleteMessage:
			last = begin
		}
	}
	return last
}

// Attack 3: while the agent is down, another producer posts a harmless
// event under the key the next real change will get.
func TestForgedKeyDoesNotPreemptAChange(t *testing.T) {
	h := sealedWorkload(t)
	obs := h.observe()
	sys := strings.Split(field(t, h.dataEvents()[0], "metadata", "idempotency_key").(string), ":")[1]
	// Flushed at commit, so that the slot can be read at once.
	h.exec(`BEGIN; SET LOCAL synchronous_commit = on; DELETE FROM t1 WHERE id = 7; COMMIT`)
	commit := h.commitOf("t1")
	key := envelope.Key(sys, testSlot, envelope.Position{CommitLSN: commit, Seq: 1})
	decoy := envelope.Envelope{Kind: "other", Source: "books", Timestamp: "2026-12-01T10:00:00+00:00", Table: "public.t1",
		Operation: envelope.OpUpdate, Old: []byte(`{"balance":10,"id":7,"owner":"alice"}`), New: []byte(`{"balance":11,"id":7,"owner":"alice"}`),
		CommitLSN: commit, LSN: commit, Key: key, Linked: true, TxIndex: 1, TxEvents: 1}
	forgedID := h.post(string(decoy.Encode()))

	h.startAgent()
	h.waitOp(envelope.OpDelete, 1)
	h.stopAgent()
	var deletes []spinetest.Event
	for _, e := range h.spine.Events() {
		if field(t, e, "operation") == envelope.OpDelete {
			deletes = append(deletes, e)
		}
	}
	if len(deletes) != 1 || field(t, deletes[0], "metadata", "idempotency_key") != key ||
		fmt.Sprint(field(t, deletes[0], "metadata", "supersedes_event_id")) != fmt.Sprint(forgedID) {
		t.Fatalf("got DELETE events %s, want one under %s naming the forgery %d", dump(deletes), key, forgedID)
	}
	obs.expectMetric(t, 1, "pgaudit_cdc_forgeries_detected_total")
	obs.expectMetric(t, 0, "pgaudit_cdc_events_skipped_duplicate_total")
	obs.expectLog(t, 1, "level=ERROR", "forged event", fmt.Sprintf("forged_event_id=%d", forgedID))
	failed := authFailures(verifyEvents(h.spine.Events()))
	if len(failed) != 1 || failed[0].EventID != forgedID {
		t.Fatalf("got authenticity failures %+v, want only the forgery %d", failed, forgedID)
	}
}

// Attack 4: the in-memory spine restarts while the agent runs, or while it
// is stopped: its history is gone. Either is a gap, and the GAP event names
// what was lost.
func TestSpineHistoryLostIsAGap(t *testing.T) {
	for _, running := range []bool{true, false} {
		t.Run(fmt.Sprintf("running=%v", running), func(t *testing.T) {
			h, _ := tenRowsOnT1(t)
			// The WATCH event may be sealed alone before the rows come:
			// wait for the seal of the tenth row.
			h.waitSealed(":10")
			if running {
				h.spine.Reset()
				h.insertRange(11, 11)
			} else {
				h.stopAgent()
				h.spine.Reset()
				h.startAgent()
			}
			gapID := h.expectGapStop(capture.ReasonSpineHistoryLost)
			h.expectGapMetrics(capture.ReasonSpineHistoryLost, 1)

			h.startAgentWith(func(c *agent.Config) { c.AcceptGap = fmt.Sprint(gapID); c.AcceptedBy = "test" })
			h.waitOp(envelope.OpGap, 1)
			// Row 11 may still come after the GAP (its commit lies beyond
			// the resume position when the gap was found before it was
			// delivered): wait for rows 21 and 22 themselves.
			h.insertRange(21, 22)
			deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
			for !strings.Contains(fmt.Sprint(ids(t, h.dataEvents())), "21 22") && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			h.stopAgent()
			gaps := h.gapEvents()
			if len(gaps) != 1 {
				t.Fatalf("got %d GAP events, want 1", len(gaps))
			}
			lost, _ := field(t, gaps[0], "gap", "lost").(map[string]any)
			// The 10 changes and the WATCH event were sealed.
			// insertRange writes one transaction: its tenth row is the last.
			if fmt.Sprint(lost["count"]) != "11" || !strings.HasSuffix(fmt.Sprint(lost["last_key"]), ":10") || lost["first_key"] == nil {
				t.Fatalf("got lost range %v, want the 11 sealed events, first and last key", lost)
			}
			if after := ids(t, h.dataEvents()); !strings.Contains(fmt.Sprint(after), "21 22") {
				t.Fatalf("after the gap: got ids %v, want 21 and 22 delivered", after)
			}
		})
	}
}

// TestSpineLossHiddenByOtherProducers: the spine restarts empty while the
// agent runs, and other producers append more events than the agent had
// seen before its next append, so that append's event_id does not show the
// loss. The seal reads the last delivered events back by event_id first
// (here at every seal): the loss is a spine_history_lost gap.
func TestSpineLossHiddenByOtherProducers(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgentWith(func(c *agent.Config) { c.HeldCheckInterval = time.Nanosecond }) // at every seal
	h.insertRange(1, 10)
	h.waitEvents(10, 30*time.Second)
	h.waitSealed(":10")
	n := len(h.spine.Events())
	h.spine.Reset()
	for i := 0; i < n+20; i++ {
		h.post(fmt.Sprintf(`{"kind":"other","source":"x","payload":{"n":%d}}`, i))
	}
	h.insertRange(11, 12)
	h.expectGapStop(capture.ReasonSpineHistoryLost)
}

// TestForgedLastEventDoesNotHideSpineLoss: after the spine lost its
// history, another producer posts an event under the key of the last event
// the anchored seal covers (the key was in the trail for all to see). The
// agent must not take it for the trail still holding that event: it is a
// spine_history_lost gap all the same.
func TestForgedLastEventDoesNotHideSpineLoss(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.waitSealed(":10")
	h.stopAgent()
	var lastKey string
	for _, e := range h.spine.Events() {
		if fmt.Sprint(field(t, e, "new", "id")) == "10" {
			lastKey = fmt.Sprint(field(t, e, "metadata", "idempotency_key"))
		}
	}
	if lastKey == "" {
		t.Fatal("row 10 is not in the spine")
	}
	h.spine.Reset()
	h.post(fmt.Sprintf(`{"kind":"other","source":"s","payload":{"operation":"INSERT","new":{"id":10},"metadata":{"idempotency_key":%q}}}`, lastKey))
	h.startAgent()
	h.expectGapStop(capture.ReasonSpineHistoryLost)
}

// A spine that loses its history a second time, after the first loss was
// accepted, lost only what was sealed since: the second GAP names those
// events, not the first loss again.
func TestSecondSpineLossNamesOnlyItsEvents(t *testing.T) {
	h, _ := tenRowsOnT1(t)
	h.waitSealed(":10")
	h.stopAgent()
	h.spine.Reset()
	h.startAgent()
	first := h.expectGapStop(capture.ReasonSpineHistoryLost)
	h.startAgentWith(func(c *agent.Config) { c.AcceptGap = fmt.Sprint(first); c.AcceptedBy = "test" })
	h.waitOp(envelope.OpGap, 1)
	h.insertRange(21, 22)
	deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
	var last string
	for last == "" && time.Now().Before(deadline) {
		for _, e := range h.spine.Events() {
			if fmt.Sprint(field(t, e, "new", "id")) == "22" {
				last = fmt.Sprint(field(t, e, "metadata", "idempotency_key"))
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if last == "" {
		t.Fatalf("row 22 was not delivered after the first gap")
	}
	h.waitSealed(strings.TrimPrefix(last, "pgaudit-cdc"))
	h.stopAgent()
	// Rows 21 and 22, sealed (a GAP event is never sealed: verify reports
	// it in any case).
	var held []spinetest.Event
	for _, e := range withoutTrail(h.spine.Events()) {
		if field(t, e, "operation") != envelope.OpGap {
			held = append(held, e)
		}
	}

	h.spine.Reset()
	h.startAgent()
	second := h.expectGapStop(capture.ReasonSpineHistoryLost)
	h.startAgentWith(func(c *agent.Config) { c.AcceptGap = fmt.Sprint(second); c.AcceptedBy = "test" })
	h.waitOp(envelope.OpGap, 1)
	h.stopAgent()
	lost, _ := field(t, h.gapEvents()[0], "gap", "lost").(map[string]any)
	wantFirst := field(t, held[0], "metadata", "idempotency_key")
	if fmt.Sprint(lost["count"]) != fmt.Sprint(len(held)) || lost["first_key"] != wantFirst || lost["last_key"] != last {
		t.Fatalf("second loss: got lost range %v, want the %d events held since the first (%v to %s)\n%s", lost, len(held), wantFirst, last, dump(held))
	}
}

// The host cuts the newest events, their seal included: nothing after them
// names them, but the anchors (in the database and in --anchor-file) do.
func TestCutTailFailsAgainstAnchors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "anchors.jsonl")
	h := sealedWorkload(t, func(c *agent.Config) { c.SealEvents = 4; c.AnchorFile = file })
	all := h.spine.Events()
	var cut []spinetest.Event
	for _, e := range all {
		if id := fmt.Sprint(field(t, e, "new", "id")); id == "9" || id == "10" || field(t, e, "operation") == "SEAL" && e.EventID == all[len(all)-1].EventID {
			continue
		}
		cut = append(cut, e)
	}
	fromFile, ok, err := trail.LastAnchor(file)
	if err != nil || !ok {
		t.Fatalf("anchor file: %v %v", ok, err)
	}
	fromDB, ok, err := capture.LoadAnchor(context.Background(), h.conn, testSlot)
	if err != nil || !ok || fromDB.Seq != fromFile.Seq || fromDB.Hash != fromFile.Hash {
		t.Fatalf("database anchor %+v (%v, %v), want the file's seal %d", fromDB.Anchor, ok, err, fromFile.Seq)
	}
	if rep := verifyEvents(all); !rep.OK() {
		t.Fatalf("the whole trail: got failures %+v, want none", rep.Failures)
	}
	v := verify.New(verify.Options{Slot: testSlot, Trail: trail.VerifyOptions{Anchor: &fromFile, Trusted: []ed25519.PublicKey{h.key.Public()}}})
	for _, e := range rehash(cut) {
		v.Add(chain.Event{EventID: e.EventID, Timestamp: e.Timestamp, Kind: e.Kind, Source: e.Source, Payload: e.Payload, PrevHash: e.PrevHash, Hash: e.Hash})
	}
	failed := authFailures(v.Finish())
	if len(failed) == 0 || !strings.Contains(failed[len(failed)-1].Detail, "cut from the end") {
		t.Fatalf("got authenticity failures %+v, want the cut tail named", failed)
	}
}
