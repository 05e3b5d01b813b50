package verify

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// synthetic builds a chain of n INSERT events of one table in transactions
// of three, linked as the agent links them.
func synthetic(tb testing.TB, n int) []chain.Event {
	tb.Helper()
	var evs []chain.Event
	prevHash := chain.Genesis
	var prev envelope.Position
	for i := 0; i < n; i++ {
		pos := envelope.Position{CommitLSN: pgoutput.LSN(0x1000 + (i/3)*0x100), Seq: uint32(i%3 + 1)}
		meta := map[string]any{"idempotency_key": envelope.Key("7", "pgaudit_cdc", pos), "tx_index": json.Number(fmt.Sprint(i%3 + 1))}
		if prev.IsZero() {
			meta["prev"] = nil
		} else {
			meta["prev"] = prev.String()
		}
		if i%3 == 2 || i == n-1 {
			meta["tx_events"] = json.Number(fmt.Sprint(i%3 + 1))
		}
		e := chain.Event{EventID: int64(i + 1), Timestamp: "2026-11-28T00:00:00+00:00", Kind: "other", Source: "s",
			Payload: map[string]any{"table": "public.t", "operation": "INSERT",
				"new": map[string]any{"id": json.Number(fmt.Sprint(i)), "v": "value"}, "metadata": meta},
			PrevHash: prevHash}
		h, err := chain.Hash(e)
		if err != nil {
			tb.Fatal(err)
		}
		e.Hash, prevHash, prev = h, h, pos
		evs = append(evs, e)
	}
	return evs
}

func run(evs []chain.Event) Report {
	v := New(Options{Slot: "pgaudit_cdc", Trail: trail.VerifyOptions{AllowUnsigned: true}}) // synthetic events carry no seals: authenticity is tested in package trail
	for _, e := range evs {
		v.Add(e)
	}
	return v.Finish()
}

func TestSyntheticChain(t *testing.T) {
	evs := synthetic(t, 30)
	if rep := run(evs); !rep.OK() || rep.Ours != 30 {
		t.Fatalf("a clean chain: %+v", rep.Failures)
	}
	// The last transaction is cut short: its last event never arrived.
	if rep := run(evs[:29]); !rep.OK() {
		t.Fatalf("an unfinished newest transaction is not a failure: %+v", rep.Failures)
	}
	cut := append(append([]chain.Event{}, evs[:10]...), evs[12:]...)
	rep := run(cut)
	if rep.OK() {
		t.Fatalf("two events cut out of the middle verified")
	}
}

// TestMalformedCountsFail: a tx_index or tx_events that is no whole
// number fails the check instead of reading as 0 (which skips the
// transaction checks).
func TestMalformedCountsFail(t *testing.T) {
	for _, field := range []string{"tx_index", "tx_events"} {
		for _, bad := range []any{json.Number("1.5"), "2", json.Number("99999999999999999999")} {
			evs := synthetic(t, 6)
			meta := evs[2].Payload["metadata"].(map[string]any)
			meta[field] = bad
			prevHash := evs[1].Hash
			for i := 2; i < len(evs); i++ {
				evs[i].PrevHash = prevHash
				h, err := chain.Hash(evs[i])
				if err != nil {
					t.Fatal(err)
				}
				evs[i].Hash, prevHash = h, h
			}
			rep := run(evs)
			if rep.OK() {
				t.Fatalf("%s %v verified", field, bad)
			}
			found := false
			for _, f := range rep.Failures {
				found = found || (f.EventID == 3 && f.Check == CheckCompleteness)
			}
			if !found {
				t.Fatalf("%s %v: no completeness failure at event 3: %+v", field, bad, rep.Failures)
			}
		}
	}
}

func TestDigestIsOrderIndependent(t *testing.T) {
	var a, b Digest
	rows := []string{`{"id":1,"v":"x"}`, `{"v":"y","id":2}`, `{"id":1,"v":"x"}`}
	for _, r := range rows {
		if err := a.Add([]byte(r)); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(rows) - 1; i >= 0; i-- {
		if err := b.Add([]byte(rows[i])); err != nil {
			t.Fatal(err)
		}
	}
	if a.Hex() != b.Hex() || a.Rows != 3 {
		t.Fatalf("digests differ by order: %s vs %s", a.Hex(), b.Hex())
	}
	var c Digest
	_ = c.Add([]byte(`{"id":1,"v":"x"}`))
	_ = c.Add([]byte(`{"v":"y","id":2}`))
	if c.Hex() == a.Hex() {
		t.Fatalf("a duplicate row does not change the digest")
	}
}

// BenchmarkVerify measures the verifier alone (hash recomputation, links,
// fold) per event; docs/guarantees.md ("Checkpoints") gives the figure for
// 1,000,000 events.
func BenchmarkVerify(b *testing.B) {
	evs := synthetic(b, 10000)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if rep := run(evs); !rep.OK() {
			b.Fatal(rep.Failures)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(evs)), "ns/event")
}
