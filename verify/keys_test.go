package verify

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
	"github.com/pgaudit-cdc/pgaudit-cdc/trail"
)

// row decodes a row object as events carry it (numbers as json.Number).
func row(t testing.TB, js string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// chunkOf computes a chunk's pairs and digest from the table's rows as the
// checkpoint does (RowAndKey, AppendPair), and decodes the pairs back.
func chunkOf(t testing.TB, keyCols []string, rows ...string) ([]Pair, Digest, string) {
	t.Helper()
	var raw []byte
	var d Digest
	for _, r := range rows {
		h, k, err := RowAndKey([]byte(r), keyCols)
		if err != nil || k == nil {
			t.Fatalf("row %s: %v", r, err)
		}
		d.AddHash(h)
		raw = AppendPair(raw, KeyHash(k), h)
	}
	enc := EncodePairs(raw)
	pairs, err := DecodePairs(enc)
	if err != nil {
		t.Fatal(err)
	}
	return pairs, d, enc
}

type foldStep struct {
	op  string // "+" add, "-" remove, "learn"
	row string
	at  int64
}

// TestCompareChunk: the comparison of a chunk's pairs with the fold, and of
// the keys no chunk listed, named key by key.
func TestCompareChunk(t *testing.T) {
	key := []string{"id"}
	tests := []struct {
		name string
		// fold is applied in order; learnFirst: the key columns are known
		// before the rows are folded (otherwise learnt from pending rows).
		fold       []foldStep
		learnFirst bool
		table      []string // the chunk's rows
		begin      int64    // the checkpoint's first event
		want       []string // KeyDiff.String() of the chunk's diffs, then the uncovered ones
	}{
		{name: "identical", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"b"}`}, begin: 10},
		{name: "identical, key learnt from pending rows",
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}, {"-", `{"id":2,"v":"b"}`, 3}, {"+", `{"id":2,"v":"c"}`, 3}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"c"}`}, begin: 10},
		{name: "row differs", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"changed"}`}, begin: 10,
			want: []string{`{"id":2}: the table's row differs from the trail's (chunk 1)`}},
		{name: "row differs, key learnt from pending rows",
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"changed"}`}, begin: 10,
			want: []string{`{"id":2}: the table's row differs from the trail's (chunk 1)`}},
		{name: "deleted in the trail, still in the table", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}, {"-", `{"id":2,"v":"b"}`, 3}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"b"}`}, begin: 10,
			want: []string{`{"id":2}: in the table, but deleted in the trail (chunk 1)`}},
		{name: "deleted in the trail before the key was known",
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}, {"-", `{"id":2,"v":"b"}`, 3}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"b"}`}, begin: 10,
			want: []string{`{"id":2}: in the table, but deleted in the trail (chunk 1)`}},
		{name: "never in the trail", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":7,"v":"bypass"}`}, begin: 10,
			want: []string{"a row with key hash %s the trail never saw, in chunk 1"}},
		{name: "deleted from the table without an event", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":3,"v":"c"}`, 2}},
			table: []string{`{"id":1,"v":"a"}`}, begin: 10,
			want: []string{`{"id":3}: in the trail, not in the table (deleted without an event)`}},
		{name: "added after the checkpoint began: not looked for", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":3,"v":"c"}`, 12}},
			table: []string{`{"id":1,"v":"a"}`}, begin: 10},
		{name: "several rows in the trail for one key", learnFirst: true,
			fold:  []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":1,"v":"b"}`, 2}},
			table: []string{`{"id":1,"v":"b"}`}, begin: 10,
			want: []string{`{"id":1}: the trail holds several rows with this key (it missed a change) (chunk 1)`}},
		{name: "every kind at once, named in order", learnFirst: true,
			fold: []foldStep{{"+", `{"id":1,"v":"a"}`, 1}, {"+", `{"id":2,"v":"b"}`, 2}, {"+", `{"id":3,"v":"c"}`, 3},
				{"+", `{"id":4,"v":"d"}`, 4}, {"-", `{"id":4,"v":"d"}`, 5}},
			table: []string{`{"id":1,"v":"a"}`, `{"id":2,"v":"B"}`, `{"id":4,"v":"d"}`}, begin: 10,
			want: []string{`{"id":2}: the table's row differs from the trail's (chunk 1)`,
				`{"id":4}: in the table, but deleted in the trail (chunk 1)`,
				`{"id":3}: in the trail, not in the table (deleted without an event)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ts := &tableState{rows: map[[32]byte]int{}, cps: map[string]*cpState{}}
			if tc.learnFirst {
				ts.ix.learn(key, ts.rows)
			}
			for _, s := range tc.fold {
				var err error
				switch s.op {
				case "+":
					err = ts.add(row(t, s.row), s.at)
				case "-":
					var ok bool
					if ok, err = ts.remove(row(t, s.row), true); !ok {
						t.Fatalf("removing %s: not in the fold", s.row)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if !tc.learnFirst {
				ts.ix.learn(key, ts.rows)
			}
			pairs, pg, _ := chunkOf(t, key, tc.table...)
			covered := map[uint64]struct{}{}
			diffs, fold := ts.ix.compareChunk(pairs, 1, 100, covered)
			diffs = append(diffs, ts.ix.uncovered(covered, tc.begin)...)
			var got []string
			for _, d := range diffs {
				got = append(got, d.String())
			}
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				if strings.Contains(w, "%s") {
					w = fmt.Sprintf(w, diffs[i].KeyHash)
				}
				want[i] = w
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
			}
			if len(tc.want) == 0 && (fold.Rows != pg.Rows || fold.Hex() != pg.Hex()) {
				t.Fatalf("the fold's digest for the chunk's keys: got %d rows %s, want %d rows %s", fold.Rows, fold.Hex(), pg.Rows, pg.Hex())
			}
		})
	}
}

func TestKeyJSONIsCanonical(t *testing.T) {
	a, ok1 := KeyJSON(row(t, `{"b":"x","a":1,"v":"zz"}`), []string{"b", "a"})
	b, ok2 := KeyJSON(row(t, `{"a":1,"v":"yy","b":"x"}`), []string{"a", "b"})
	if !ok1 || !ok2 || string(a) != string(b) || string(a) != `{"a":1,"b":"x"}` {
		t.Fatalf("got %s and %s, want both {\"a\":1,\"b\":\"x\"}", a, b)
	}
	for _, r := range []string{`{"é":"ü\u0001","a":1.50,"z":[1,{"y":null}],"b":true}`, `{"id":1e400,"x":"\ud83d\ude00"}`} {
		v := row(t, r)
		m := v.(map[string]any)
		var cols []string
		for k := range m {
			cols = append(cols, k)
		}
		want, err := chain.Canonical(m)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := KeyJSON(v, cols); !ok || string(got) != string(want) {
			t.Fatalf("KeyJSON of %s: got %s, want chain.Canonical's %s", r, got, want)
		}
	}
	if _, ok := KeyJSON(row(t, `{"a":1}`), []string{"a", "b"}); ok {
		t.Fatal("a row without a key column has a key")
	}
	if _, err := DecodePairs("AAAA"); err == nil {
		t.Fatal("3 bytes decode as pairs")
	}
	if _, err := DecodePairs("not base64!"); err == nil {
		t.Fatal("garbage decodes as pairs")
	}
}

// chainBuilder links events as the agent does, one transaction each.
type chainBuilder struct {
	evs      []chain.Event
	prevHash string
	prev     envelope.Position
	slot     string // the key's slot: "" is pgaudit_cdc, the first generation
	table    string // of the events that name none: "" is public.t
}

// generation starts a new capture generation (after a gap): its first
// event names no predecessor.
func (c *chainBuilder) generation(slot string) {
	c.slot, c.prev = slot, envelope.Position{}
}

func (c *chainBuilder) add(t testing.TB, payload map[string]any) {
	t.Helper()
	i := len(c.evs)
	pos := envelope.Position{CommitLSN: pgoutput.LSN(0x1000 + i*0x100), Seq: 1}
	slot := c.slot
	if slot == "" {
		slot = "pgaudit_cdc"
	}
	meta := map[string]any{"idempotency_key": envelope.Key("7", slot, pos), "tx_index": json.Number("1"), "tx_events": json.Number("1")}
	if i == 0 {
		c.prevHash = chain.Genesis
	}
	if c.prev.IsZero() {
		meta["prev"] = nil
	} else {
		meta["prev"] = c.prev.String()
	}
	payload["metadata"] = meta
	if _, ok := payload["table"]; !ok {
		payload["table"] = c.table
		if c.table == "" {
			payload["table"] = "public.t"
		}
	}
	e := chain.Event{EventID: int64(i + 1), Timestamp: "2026-11-28T00:00:00+00:00", Kind: "other", Source: "s", Payload: payload, PrevHash: c.prevHash}
	h, err := chain.Hash(e)
	if err != nil {
		t.Fatal(err)
	}
	e.Hash, c.prevHash, c.prev = h, h, pos
	c.evs = append(c.evs, e)
}

func (c *chainBuilder) insert(t testing.TB, js string) {
	c.add(t, map[string]any{"operation": "INSERT", "new": row(t, js)})
}

func (c *chainBuilder) update(t testing.TB, old, new string) {
	c.add(t, map[string]any{"operation": "UPDATE", "old": row(t, old), "new": row(t, new)})
}

func (c *chainBuilder) delete(t testing.TB, old string) {
	c.add(t, map[string]any{"operation": "DELETE", "old": row(t, old)})
}

// chunk appends a CHECKPOINT chunk of the given rows (nil keyCols: no pairs).
func (c *chainBuilder) chunk(t testing.TB, id, n int, last bool, total *Digest, keyCols []string, rows ...string) {
	t.Helper()
	cp := map[string]any{"id": json.Number(fmt.Sprint(id)), "chunk": json.Number(fmt.Sprint(n)), "last": last,
		"columns": []any{"id", "v"}}
	var d Digest
	if keyCols != nil {
		_, pd, enc := chunkOf(t, keyCols, rows...)
		d = pd
		cp["pairs"] = enc
		cp["key_columns"] = []any{"id"}
	} else {
		for _, r := range rows {
			if err := d.Add([]byte(r)); err != nil {
				t.Fatal(err)
			}
		}
		cp["key_columns"] = []any{}
	}
	cp["rows"] = json.Number(fmt.Sprint(d.Rows))
	cp["digest"] = d.Hex()
	if err := total.AddDigest(d.Rows, d.Hex()); err != nil {
		t.Fatal(err)
	}
	if last {
		cp["total_rows"] = json.Number(fmt.Sprint(total.Rows))
		cp["total_digest"] = total.Hex()
	}
	c.add(t, map[string]any{"operation": "CHECKPOINT", "checkpoint": cp})
}

// TestChunkedCheckpointInVerifier: chunks compared at their place in the
// chain, keys named in the report, legacy and keyless checkpoints compared
// as a whole.
func TestChunkedCheckpointInVerifier(t *testing.T) {
	key := []string{"id"}
	t.Run("clean, with changes between chunks", func(t *testing.T) {
		var c chainBuilder
		for i := 1; i <= 5; i++ {
			c.insert(t, fmt.Sprintf(`{"id":%d,"v":"a"}`, i))
		}
		var total Digest
		c.chunk(t, 9, 1, false, &total, key, `{"id":1,"v":"a"}`, `{"id":2,"v":"a"}`)
		c.update(t, `{"id":1,"v":"a"}`, `{"id":1,"v":"b"}`) // behind the checkpoint
		c.update(t, `{"id":4,"v":"a"}`, `{"id":4,"v":"b"}`) // ahead of it
		c.insert(t, `{"id":0,"v":"new"}`)                   // behind it, after it passed
		c.chunk(t, 9, 2, false, &total, key, `{"id":3,"v":"a"}`, `{"id":4,"v":"b"}`)
		c.chunk(t, 9, 3, true, &total, key, `{"id":5,"v":"a"}`)
		rep := run(c.evs)
		if !rep.OK() || rep.Checkpoints != 1 {
			t.Fatalf("got failures %+v, checkpoints %d; want none, 1", rep.Failures, rep.Checkpoints)
		}
	})
	t.Run("a changed row and a vanished row are named", func(t *testing.T) {
		var c chainBuilder
		for i := 1; i <= 4; i++ {
			c.insert(t, fmt.Sprintf(`{"id":%d,"v":"a"}`, i))
		}
		var total Digest
		c.chunk(t, 9, 1, false, &total, key, `{"id":1,"v":"a"}`, `{"id":2,"v":"bypassed"}`)
		c.chunk(t, 9, 2, true, &total, key, `{"id":4,"v":"a"}`)
		rep := run(c.evs)
		if len(rep.Failures) != 1 {
			t.Fatalf("got %d failures, want 1: %+v", len(rep.Failures), rep.Failures)
		}
		f := rep.Failures[0]
		if f.KeysTotal != 2 || string(f.Keys[0].Key) != `{"id":2}` || f.Keys[0].Problem != ProblemRowDiffers ||
			string(f.Keys[1].Key) != `{"id":3}` || f.Keys[1].Problem != ProblemNotInTable {
			js, _ := json.Marshal(f)
			t.Fatalf("got %s, want id 2 differing and id 3 not in the table", js)
		}
		if f.EventID != 5 || !strings.Contains(f.Detail, "2 chunks") {
			t.Fatalf("got event %d, detail %q; want event 5 (chunk 1) and the chunk count", f.EventID, f.Detail)
		}
	})
	t.Run("a missing chunk", func(t *testing.T) {
		var c chainBuilder
		c.insert(t, `{"id":1,"v":"a"}`)
		var total Digest
		c.chunk(t, 9, 1, false, &total, key, `{"id":1,"v":"a"}`)
		var other Digest
		c.chunk(t, 9, 3, true, &other, key)
		rep := run(c.evs)
		if rep.OK() || !strings.Contains(rep.Failures[0].Detail, "chunk 3 (event 3) follows chunk 1") {
			t.Fatalf("got %+v, want the missing chunk named", rep.Failures)
		}
	})
	t.Run("without a primary key: compared as a whole", func(t *testing.T) {
		var c chainBuilder
		c.insert(t, `{"id":1,"v":"a"}`)
		c.insert(t, `{"id":1,"v":"a"}`)
		var total Digest
		c.chunk(t, 9, 1, true, &total, nil, `{"id":1,"v":"a"}`, `{"id":1,"v":"a"}`)
		if rep := run(c.evs); !rep.OK() {
			t.Fatalf("got %+v, want a match", rep.Failures)
		}
		var total2 Digest
		c.chunk(t, 10, 1, true, &total2, nil, `{"id":1,"v":"a"}`)
		rep := run(c.evs)
		if rep.OK() || !strings.Contains(rep.Failures[0].Detail, "PostgreSQL had 1 rows") || !strings.Contains(rep.Failures[0].Detail, "no primary key") {
			t.Fatalf("got %+v, want the counts compared and no keys named", rep.Failures)
		}
	})
	t.Run("a checkpoint from before chunking", func(t *testing.T) {
		var c chainBuilder
		c.insert(t, `{"id":1,"v":"a"}`)
		var d Digest
		_ = d.Add([]byte(`{"id":1,"v":"a"}`))
		c.add(t, map[string]any{"operation": "CHECKPOINT", "checkpoint": map[string]any{"id": json.Number("3"),
			"rows": json.Number("1"), "digest": d.Hex(), "key_columns": []any{"id"}, "columns": []any{"id", "v"}}})
		if rep := run(c.evs); !rep.OK() || rep.Checkpoints != 1 {
			t.Fatalf("got %+v, want one matching checkpoint", rep.Failures)
		}
		c.insert(t, `{"id":2,"v":"a"}`)
		c.add(t, map[string]any{"operation": "CHECKPOINT", "checkpoint": map[string]any{"id": json.Number("4"),
			"rows": json.Number("1"), "digest": d.Hex(), "key_columns": []any{"id"}, "columns": []any{"id", "v"}}})
		rep := run(c.evs)
		if rep.OK() || !strings.Contains(rep.Failures[0].Detail, "the audit trail folds to 2 rows") {
			t.Fatalf("got %+v, want the old form compared as a whole", rep.Failures)
		}
	})
	t.Run("no last chunk", func(t *testing.T) {
		var c chainBuilder
		c.insert(t, `{"id":1,"v":"a"}`)
		var total Digest
		c.chunk(t, 9, 1, false, &total, key, `{"id":1,"v":"a"}`)
		rep := run(c.evs)
		if !rep.OK() || !strings.Contains(fmt.Sprint(rep.Results), "has no last chunk") {
			t.Fatalf("got %+v, want a pass that says the checkpoint is unfinished", rep.Results)
		}
	})
}

// BenchmarkVerifyKeyed is BenchmarkVerify for a table whose key is known
// (a checkpoint came first): each event is also indexed by key, and a
// chunked checkpoint of all rows (10 chunks) closes the chain.
func BenchmarkVerifyKeyed(b *testing.B) {
	key := []string{"id"}
	var c chainBuilder
	var total Digest
	c.chunk(b, 1, 1, true, &total, key)
	var rows []string
	for i := 0; i < 10000; i++ {
		r := fmt.Sprintf(`{"id":%d,"v":"value"}`, i)
		rows = append(rows, r)
		c.insert(b, r)
	}
	var total2 Digest
	for i := 0; i < 10; i++ {
		c.chunk(b, 2, i+1, i == 9, &total2, key, rows[i*1000:(i+1)*1000]...)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if rep := run(c.evs); !rep.OK() {
			b.Fatal(rep.Failures)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(c.evs)), "ns/event")
}

// foldOf runs a chain through a Verifier and returns the report and the
// state of public.t in the first generation.
func foldOf(evs []chain.Event) (Report, *tableState) {
	v := New(Options{Slot: "pgaudit_cdc", Trail: trail.VerifyOptions{AllowUnsigned: true}}) // synthetic events carry no seals: authenticity is tested in package trail
	for _, e := range evs {
		v.Add(e)
	}
	t := v.tables[envelope.KeyPrefix("7", "pgaudit_cdc")+"|public.t"]
	return v.Finish(), t
}

// TestPendingFollowsTheFold: until a checkpoint names the key, the index
// keeps rows for the fold as it is now, not for every row version the
// history showed; the keys of rows deleted meanwhile stay nameable, the
// newest pendingGone of them at most.
func TestPendingFollowsTheFold(t *testing.T) {
	tests := []struct {
		name  string
		build func(t testing.TB, c *chainBuilder)
		// most rows kept pending (in the fold) and deleted (gone)
		pending, gone int
	}{
		{name: "10,000 updates of one row", pending: 1, gone: 0, build: func(t testing.TB, c *chainBuilder) {
			c.insert(t, `{"id":1,"v":"0"}`)
			for i := 1; i <= 10000; i++ {
				c.update(t, fmt.Sprintf(`{"id":1,"v":"%d"}`, i-1), fmt.Sprintf(`{"id":1,"v":"%d"}`, i))
			}
		}},
		{name: "updates and deletes of a few rows", pending: 2, gone: 1, build: func(t testing.TB, c *chainBuilder) {
			for id := 1; id <= 3; id++ {
				c.insert(t, fmt.Sprintf(`{"id":%d,"v":"0"}`, id))
			}
			for i := 1; i <= 2000; i++ {
				for id := 1; id <= 3; id++ {
					c.update(t, fmt.Sprintf(`{"id":%d,"v":"%d"}`, id, i-1), fmt.Sprintf(`{"id":%d,"v":"%d"}`, id, i))
				}
			}
			c.delete(t, `{"id":2,"v":"2000"}`)
		}},
		{name: "a queue: more rows inserted and deleted than are kept", pending: 0, gone: pendingGone, build: func(t testing.TB, c *chainBuilder) {
			for id := 1; id <= pendingGone+3000; id++ {
				c.insert(t, fmt.Sprintf(`{"id":%d,"v":"job"}`, id))
				c.delete(t, fmt.Sprintf(`{"id":%d,"v":"job"}`, id))
			}
		}},
		{name: "duplicate rows leave when the last one does", pending: 1, gone: 0, build: func(t testing.TB, c *chainBuilder) {
			c.insert(t, `{"id":1,"v":"same"}`)
			c.insert(t, `{"id":1,"v":"same"}`)
			c.update(t, `{"id":1,"v":"same"}`, `{"id":1,"v":"other"}`)
			c.update(t, `{"id":1,"v":"same"}`, `{"id":1,"v":"other"}`)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c chainBuilder
			tc.build(t, &c)
			rep, ts := foldOf(c.evs)
			if !rep.OK() {
				t.Fatalf("got failures %+v", rep.Failures)
			}
			if len(ts.ix.pending) != tc.pending || len(ts.ix.gone) > tc.gone || len(ts.ix.goneOrder) != len(ts.ix.gone) {
				t.Fatalf("got %d rows pending and %d deleted (order %d), want %d pending and at most %d deleted (the fold holds %d rows)",
					len(ts.ix.pending), len(ts.ix.gone), len(ts.ix.goneOrder), tc.pending, tc.gone, ts.n)
			}
		})
	}
	t.Run("a key deleted before the first checkpoint is named", func(t *testing.T) {
		var c chainBuilder
		c.insert(t, `{"id":1,"v":"a0"}`)
		c.insert(t, `{"id":2,"v":"a"}`)
		c.insert(t, `{"id":3,"v":"a"}`)
		c.delete(t, `{"id":2,"v":"a"}`)
		for i := 0; i < 100; i++ {
			c.update(t, fmt.Sprintf(`{"id":1,"v":"a%d"}`, i), fmt.Sprintf(`{"id":1,"v":"a%d"}`, i+1))
		}
		var total Digest
		c.chunk(t, 9, 1, true, &total, []string{"id"}, `{"id":1,"v":"a100"}`, `{"id":2,"v":"a"}`, `{"id":3,"v":"a"}`)
		rep, _ := foldOf(c.evs)
		if len(rep.Failures) != 1 || rep.Failures[0].KeysTotal != 1 || string(rep.Failures[0].Keys[0].Key) != `{"id":2}` ||
			rep.Failures[0].Keys[0].Problem != ProblemDeletedInTrail {
			js, _ := json.Marshal(rep.Failures)
			t.Fatalf("got %s, want {\"id\":2} deleted in the trail", js)
		}
	})
}

// TestKeyLearntAfterKeylessCheckpoint: a table checkpointed without a
// primary key, which gets one later, is compared key by key from its first
// keyed checkpoint on.
func TestKeyLearntAfterKeylessCheckpoint(t *testing.T) {
	key := []string{"id"}
	tests := []struct {
		name  string
		table []string // the keyed checkpoint's rows
		want  []string // the keys that differ ("" : a match)
	}{
		{name: "table and trail agree", table: []string{`{"id":1,"v":"b"}`, `{"id":2,"v":"a"}`, `{"id":3,"v":"a"}`}},
		{name: "a row differs", table: []string{`{"id":1,"v":"b"}`, `{"id":2,"v":"bypassed"}`, `{"id":3,"v":"a"}`},
			want: []string{`{"id":2}: the table's row differs from the trail's (chunk 2)`}},
		{name: "a row deleted without an event", table: []string{`{"id":1,"v":"b"}`, `{"id":3,"v":"a"}`},
			want: []string{`{"id":2}: in the trail, not in the table (deleted without an event)`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c chainBuilder
			c.insert(t, `{"id":1,"v":"a"}`)
			c.insert(t, `{"id":2,"v":"a"}`)
			var t1 Digest
			c.chunk(t, 9, 1, true, &t1, nil, `{"id":1,"v":"a"}`, `{"id":2,"v":"a"}`) // no primary key yet
			// ALTER TABLE t ADD PRIMARY KEY (id), then changes:
			c.insert(t, `{"id":3,"v":"a"}`)
			c.update(t, `{"id":1,"v":"a"}`, `{"id":1,"v":"b"}`)
			var t2 Digest
			c.chunk(t, 10, 1, false, &t2, key, tc.table[:1]...)
			c.chunk(t, 10, 2, true, &t2, key, tc.table[1:]...)
			rep := run(c.evs)
			if len(tc.want) == 0 {
				if !rep.OK() || rep.Checkpoints != 2 {
					t.Fatalf("got failures %+v, checkpoints %d; want none, 2", rep.Failures, rep.Checkpoints)
				}
				return
			}
			if len(rep.Failures) != 1 {
				t.Fatalf("got %d failures, want 1: %+v", len(rep.Failures), rep.Failures)
			}
			var got []string
			for _, k := range rep.Failures[0].Keys {
				got = append(got, k.String())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("got keys %q, want %q (%s)", got, tc.want, rep.Failures[0].Detail)
			}
		})
	}
}

// TestCheckpointAcrossGap: a checkpoint whose chunks straddle a declared
// gap fails in the new generation with the gap as its known cause, once.
func TestCheckpointAcrossGap(t *testing.T) {
	key := []string{"id"}
	tests := []struct {
		name   string
		after  int  // chunks after the gap (2, 3, …)
		tables bool // the gap lists public.t
		known  string
	}{
		{name: "the last chunk after the gap", after: 1, tables: true, known: "declared gap #4 (slot_lost) covers this table"},
		{name: "several chunks after the gap, reported once", after: 3, tables: true, known: "declared gap #4 (slot_lost) covers this table"},
		{name: "a gap not listing the table explains nothing", after: 1, tables: false, known: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c chainBuilder
			c.insert(t, `{"id":1,"v":"a"}`)
			c.insert(t, `{"id":2,"v":"a"}`)
			var total Digest
			c.chunk(t, 9, 1, false, &total, key, `{"id":1,"v":"a"}`)
			c.generation("pgaudit_cdc.g1")
			tables := []any{}
			if tc.tables {
				tables = []any{"public.t"}
			}
			c.add(t, map[string]any{"operation": "GAP", "table": "pgaudit_cdc.capture_state",
				"gap": map[string]any{"id": json.Number("4"), "reason": "slot_lost", "detail": "the slot was dropped", "tables": tables}})
			c.add(t, map[string]any{"operation": "READ", "new": row(t, `{"id":1,"v":"a"}`)})
			c.add(t, map[string]any{"operation": "READ", "new": row(t, `{"id":2,"v":"a"}`)})
			for i := 0; i < tc.after; i++ {
				c.chunk(t, 9, 2+i, i == tc.after-1, &total, key, fmt.Sprintf(`{"id":%d,"v":"a"}`, 2+i))
			}
			rep := run(c.evs)
			var orphans []Result
			for _, f := range rep.Failures {
				if f.Check == CheckFaithfulness {
					orphans = append(orphans, f)
				}
			}
			if len(orphans) != 1 || !strings.Contains(orphans[0].Detail, "chunk 2 (event 7) came without the chunks before it") {
				t.Fatalf("got faithfulness failures %+v, want one for chunk 2", orphans)
			}
			if got := orphans[0].KnownCause; (tc.known == "") != (got == "") || !strings.Contains(got, tc.known) {
				t.Fatalf("got known cause %q, want %q", got, tc.known)
			}
		})
	}
}

// TestPartitionMembershipRestartsFolds: the events of a partition carry its
// partitioned table's name, so after a DETACH the trail cannot tell which
// folded rows left: a checkpoint mismatch then has a known cause, and a
// backfill re-establishes the fold.
func TestPartitionMembershipRestartsFolds(t *testing.T) {
	c := chainBuilder{table: "public.pt"}
	on := func(table string, p map[string]any) map[string]any { p["table"] = table; return p }
	for i := 1; i <= 3; i++ {
		c.insert(t, fmt.Sprintf(`{"id":%d,"v":"a"}`, i))
	}
	c.add(t, on("pgaudit_cdc.partitions", map[string]any{"operation": "DETACH",
		"partition": map[string]any{"table": "public.pt1", "partitioned_table": "public.pt", "how": "detached"}}))
	c.add(t, on("public.pt1", map[string]any{"operation": "DELETE", "old": row(t, `{"id":3,"v":"a"}`)}))
	cp := func(id int, rows ...string) { c.chunk(t, id, 1, true, &Digest{}, nil, rows...) }
	cp(1, `{"id":1,"v":"a"}`) // pt1 (rows 2 and 3) left pt
	rep := run(c.evs)
	if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].KnownCause, "DETACH of public.pt1 public.pt at event 4") {
		t.Fatalf("failures %+v, want one checkpoint mismatch whose known cause is the DETACH", rep.Failures)
	}
	// The backfill of pt re-establishes its fold: the next checkpoint matches.
	c.add(t, map[string]any{"operation": "READ", "new": row(t, `{"id":1,"v":"a"}`)})
	cp(2, `{"id":1,"v":"a"}`)
	rep = run(c.evs)
	if len(rep.Failures) != 1 || rep.Checkpoints != 2 {
		t.Fatalf("after the backfill: %d checkpoints, failures %+v; want the second to match", rep.Checkpoints, rep.Failures)
	}
}

// TestPartitionTruncateRestartsFolds: a TRUNCATE event that names a
// partition emptied only that partition, whose rows the trail cannot tell
// from the partitioned table's others: the fold restarts (a checkpoint
// mismatch has the TRUNCATE as known cause) instead of emptying. A
// TRUNCATE of the table itself empties its fold.
func TestPartitionTruncateRestartsFolds(t *testing.T) {
	c := chainBuilder{table: "public.pt"}
	for i := 1; i <= 3; i++ {
		c.insert(t, fmt.Sprintf(`{"id":%d,"v":"a"}`, i))
	}
	c.add(t, map[string]any{"operation": "TRUNCATE",
		"partition": map[string]any{"table": "public.pt1", "partitioned_table": "public.pt", "how": "truncated"}})
	cp := func(id int, rows ...string) { c.chunk(t, id, 1, true, &Digest{}, nil, rows...) }
	cp(1, `{"id":1,"v":"a"}`) // pt1 held rows 2 and 3
	rep := run(c.evs)
	if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].KnownCause, "TRUNCATE of public.pt1 public.pt at event 4") {
		t.Fatalf("failures %+v, want one checkpoint mismatch whose known cause is the partition's TRUNCATE", rep.Failures)
	}
	c.add(t, map[string]any{"operation": "TRUNCATE"})
	cp(2)
	rep = run(c.evs)
	if len(rep.Failures) != 1 || rep.Checkpoints != 2 {
		t.Fatalf("after the table's TRUNCATE: %d checkpoints, failures %+v; want the second to match an empty table", rep.Checkpoints, rep.Failures)
	}
}

// TestRewriteRestartsFold: a REWRITE event says DDL changed the table's
// stored values without row events: a checkpoint mismatch after it has the
// REWRITE as known cause.
func TestRewriteRestartsFold(t *testing.T) {
	c := chainBuilder{table: "public.rw"}
	c.insert(t, `{"id":1,"v":"a"}`)
	c.add(t, map[string]any{"operation": "REWRITE",
		"rewrite": map[string]any{"table": "public.rw", "reason": "column type", "command": "ALTER TABLE"}})
	c.chunk(t, 1, 1, true, &Digest{}, nil, `{"id":1,"v":"A"}`)
	rep := run(c.evs)
	if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].KnownCause, "REWRITE of public.rw at event 2") {
		t.Fatalf("failures %+v, want one checkpoint mismatch whose known cause is the REWRITE", rep.Failures)
	}
}
