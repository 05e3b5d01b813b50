package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgaudit-cdc/pgaudit-cdc/agent"
	"github.com/pgaudit-cdc/pgaudit-cdc/backfill"
	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/spinetest"
	"github.com/pgaudit-cdc/pgaudit-cdc/verify"
)

// verifyEvents runs the verifier over events as the spine stores them.
func verifyEvents(evs []spinetest.Event) verify.Report {
	v := verify.New(verify.Options{Slot: testSlot})
	for _, e := range evs {
		v.Add(chain.Event{EventID: e.EventID, Timestamp: e.Timestamp, Kind: e.Kind, Source: e.Source,
			Payload: e.Payload, PrevHash: e.PrevHash, Hash: e.Hash})
	}
	return v.Finish()
}

// rehash re-forges the chain after a change, as a dishonest spine host
// could: every hash valid again.
func rehash(evs []spinetest.Event) []spinetest.Event {
	prev := chain.Genesis
	for i := range evs {
		evs[i].EventID = int64(i + 1)
		evs[i].PrevHash = prev
		evs[i].Hash = spinetest.Hash(evs[i])
		prev = evs[i].Hash
	}
	return evs
}

func (h *harness) checkpoint(table string) {
	h.t.Helper()
	var oid uint32
	if err := h.conn.QueryRow(context.Background(), `SELECT $1::regclass::oid`, table).Scan(&oid); err != nil {
		h.t.Fatal(err)
	}
	if _, err := backfill.Checkpoint(context.Background(), h.conn, oid, backfill.CheckpointOptions{}); err != nil {
		h.t.Fatalf("checkpoint %s: %v", table, err)
	}
}

func (h *harness) waitOp(op string, n int) {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := 0
		for _, e := range h.spine.Events() {
			if e.Payload["operation"] == op {
				c++
			}
		}
		if c >= n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d %s events within 30s, want %d", c, op, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSealed waits for a SEAL event whose last event's key ends in suffix.
func (h *harness) waitSealed(suffix string) {
	h.t.Helper()
	deadline := time.Now().Add(raceSlowdown * 30 * time.Second)
	for {
		for _, e := range h.spine.Events() {
			if e.Payload["operation"] == "SEAL" && strings.HasSuffix(fmt.Sprint(field(h.t, e, "seal", "last_key")), suffix) {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no SEAL event covering the event keyed ...%s within 30s", suffix)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantFailure(t *testing.T, rep verify.Report, check, contains string) verify.Result {
	t.Helper()
	for _, f := range rep.Failures {
		if f.Check == check && strings.Contains(f.Detail+" "+f.KnownCause, contains) {
			return f
		}
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	t.Fatalf("want a %s failure mentioning %q, got:\n%s", check, contains, js)
	return verify.Result{}
}

// TestVerify runs a workload with checkpoints, then shows that the trail
// verifies, and that each kind of tampering or bypass is found and named.
func TestVerify(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric, tags jsonb)`)
	h.watch("acct", "other", "bank")
	h.startAgent()
	h.exec(`INSERT INTO acct SELECT g, 'o' || g, g * 1.5, '{"a":[1,2]}' FROM generate_series(1, 40) g`)
	h.exec(`UPDATE acct SET balance = balance + 1 WHERE id % 3 = 0`)
	h.exec(`DELETE FROM acct WHERE id > 35`)
	// A session that skips triggers is still decoded: not a bypass here.
	if err := run(t, h.conn, `SET LOCAL session_replication_role = replica`, `UPDATE acct SET owner = 'srr' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	h.checkpoint("acct")
	h.exec(`INSERT INTO acct VALUES (100, 'late', 0, null)`)
	h.checkpoint("acct")
	h.waitOp("CHECKPOINT", 2)
	h.stopAgent()

	clean := h.spine.Events()
	rep := verifyEvents(clean)
	if !rep.OK() || rep.Checkpoints != 2 {
		js, _ := json.MarshalIndent(rep, "", "  ")
		t.Fatalf("a clean trail does not verify:\n%s", js)
	}

	t.Run("deleted event", func(t *testing.T) {
		evs := h.spine.Events()
		evs = append(evs[:10], evs[11:]...)
		wantFailure(t, verifyEvents(evs), verify.CheckChain, "event 12 follows event 10")
		wantFailure(t, verifyEvents(rehash(evs)), verify.CheckCompleteness, "is not in the chain")
	})
	t.Run("altered event", func(t *testing.T) {
		evs := h.spine.Events()
		evs[5].Payload["new"].(map[string]any)["balance"] = "999999"
		wantFailure(t, verifyEvents(evs), verify.CheckChain, "altered")
		wantFailure(t, verifyEvents(rehash(evs)), verify.CheckFaithfulness, "checkpoint")
	})
	t.Run("forged event", func(t *testing.T) {
		evs := h.spine.Events()
		forged := spinetest.Event{Kind: "other", Source: "bank", Timestamp: evs[0].Timestamp,
			Payload: map[string]any{"table": "public.acct", "operation": "DELETE", "old": map[string]any{"id": json.Number("7")}}}
		evs = append(evs[:20], append([]spinetest.Event{forged}, evs[20:]...)...)
		wantFailure(t, verifyEvents(rehash(evs)), verify.CheckCompleteness, "not sent by pgaudit-cdc")
	})
	t.Run("duplicate", func(t *testing.T) {
		evs := h.spine.Events()
		dup := evs[15]
		dup.Payload = deepCopyJSON(t, dup.Payload)
		evs = append(evs[:16], append([]spinetest.Event{dup}, evs[16:]...)...)
		wantFailure(t, verifyEvents(rehash(evs)), verify.CheckCompleteness, "duplicate")
	})
}

// TestVerifyFindsBypassAndWeakening: a change made while the table was
// unwatched, and a replica identity weakened mid-stream, are named.
func TestVerifyFindsBypassAndWeakening(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE acct (id int PRIMARY KEY, owner text)`)
	h.exec(`CREATE TABLE weak (id int PRIMARY KEY, owner text)`)
	h.watch("acct", "other", "bank")
	h.watch("weak", "other", "bank")
	h.startAgent()
	h.exec(`INSERT INTO acct SELECT g, 'o' FROM generate_series(1, 10) g`)
	h.exec(`INSERT INTO weak SELECT g, 'o' FROM generate_series(1, 10) g`)
	h.exec(`UPDATE weak SET owner = 'full old row' WHERE id = 1`)
	h.unwatch("acct")
	h.exec(`UPDATE acct SET owner = 'hidden' WHERE id = 3`)
	h.watch("acct", "other", "bank")
	h.exec(`ALTER TABLE weak REPLICA IDENTITY DEFAULT`)
	h.exec(`UPDATE weak SET owner = 'x' WHERE id = 2`)
	h.checkpoint("acct")
	h.waitOp("CHECKPOINT", 1)
	h.stopAgent()
	rep := verifyEvents(h.spine.Events())
	wantFailure(t, rep, verify.CheckFaithfulness, "public.acct")
	wantFailure(t, rep, verify.CheckFaithfulness, "replica identity of public.weak was weakened")
}

// TestVerifyNamesDeclaredGap: a GAP event fails completeness with its cause.
func TestVerifyNamesDeclaredGap(t *testing.T) {
	h := newHarness(t)
	h.exec(`CREATE TABLE t1 (id int PRIMARY KEY, v text)`)
	h.watch("t1", "other", "s")
	h.startAgent()
	h.insertRange(1, 5)
	h.waitEvents(5, 30*time.Second)
	h.dropSlot()
	id := h.expectGapStop("slot_missing")
	h.startAgentWith(func(c *agent.Config) { c.AcceptGap = fmt.Sprint(id) })
	h.waitOp("GAP", 1) // changes before the new slot exists are in the gap
	h.insertRange(6, 8)
	h.waitEvents(8, 30*time.Second)
	h.stopAgent()
	rep := verifyEvents(h.spine.Events())
	f := wantFailure(t, rep, verify.CheckCompleteness, "declared gap")
	if !strings.Contains(f.KnownCause, "slot_missing") {
		t.Fatalf("the gap's failure does not name its cause: %+v", f)
	}
	if len(rep.Failures) != 1 {
		t.Fatalf("want only the declared gap, got %+v", rep.Failures)
	}
}

func deepCopyJSON(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(m)
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.UseNumber()
	var out map[string]any
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}
