package decode

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/ident"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgoutputtest"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgjson"
	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

type msg = pgoutputtest.Msg

var (
	newMsg      = pgoutputtest.New
	col         = pgoutputtest.Col
	beginMsg    = pgoutputtest.Begin
	commitMsg   = pgoutputtest.Commit
	relationMsg = pgoutputtest.Relation
)

// typeMap is the TypeLookup of the tests: a map, with a record of what the
// stream asked.
type typeMap struct {
	types   map[uint32]*pgjson.Type
	asked   []uint32
	forgets int
}

// builtinTypes is a typeMap of the built-in types the fixtures use.
func builtinTypes() *typeMap {
	m := &typeMap{types: map[uint32]*pgjson.Type{}}
	for _, oid := range []uint32{16, 23, 25, 26, 1009} {
		m.types[oid], _ = pgjson.Builtin(oid)
	}
	return m
}

func (m *typeMap) Resolve(_ context.Context, oid uint32) (*pgjson.Type, error) {
	m.asked = append(m.asked, oid)
	t, ok := m.types[oid]
	if !ok {
		return nil, fmt.Errorf("no type %d", oid)
	}
	return t, nil
}

func (m *typeMap) Forget() { m.forgets++ }

// feed parses and applies messages, collecting items.
func feed(t *testing.T, s *Stream, msgs ...msg) []Item {
	t.Helper()
	var items []Item
	for i, raw := range msgs {
		m, err := pgoutput.Parse(raw)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if err := s.Apply(context.Background(), pgoutput.LSN(0x1000+i), m, func(it Item) error { items = append(items, it); return nil }); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	return items
}

func testStream(watched ...uint32) *Stream { return testStreamWith(builtinTypes(), watched...) }

func testStreamWith(types TypeLookup, watched ...uint32) *Stream {
	w := map[uint32]Watch{}
	for _, id := range watched {
		w[id] = Watch{Kind: "decision_card_status_changed", Source: "procurement-api", Active: true}
	}
	return NewStream(StreamConfig{SystemID: "7301", Slot: "pgaudit_cdc", RegistrySchema: "pgaudit_cdc", RegistryTable: "watches",
		ControlTable: "control", Types: types}, w)
}

// TestStreamResolvesTypes: the stream asks its TypeLookup for the column
// types of each RELATION message (after Forget) and of each backfill chunk,
// maps the values with them, and stops on a lookup error.
func TestStreamResolvesTypes(t *testing.T) {
	const rel, control = 16385, 300
	types := builtinTypes()
	types.types[90001] = &pgjson.Type{OID: 90001, Name: "public.posint", Kind: pgjson.KindInteger}
	s := testStreamWith(types, rel)
	relMsg := func(amountType uint32) msg {
		return newMsg('R').U32(rel).Str("public").Str("t").U8('f').U16(2).
			U8(1).Str("id").U32(23).U32(0xffffffff).
			U8(0).Str("amount").U32(amountType).U32(0xffffffff)
	}
	chunk := `{"backfill_id":1,"table_oid":16385,"schema":"public","table":"t","chunk":1,` +
		`"columns":[{"name":"id","type_oid":23},{"name":"amount","type_oid":90001}],"rows":[["2","7"]]}`
	sum := sha256.Sum256([]byte(chunk))
	items := feed(t, s,
		beginMsg(0x100, 1),
		relMsg(90001),
		newMsg('I').U32(rel).U8('N').Tuple(col().Text("1"), col().Text("42")),
		newMsg('R').U32(control).Str("pgaudit_cdc").Str("control").U8('f').U16(3).
			U8(0).Str("action").U32(25).U32(0xffffffff).
			U8(0).Str("table_oid").U32(26).U32(0xffffffff).
			U8(0).Str("digest").U32(25).U32(0xffffffff),
		newMsg('I').U32(control).U8('N').Tuple(col().Text("backfill"), col().Text("16385"), col().Text(hex.EncodeToString(sum[:]))),
		append(newMsg('M').U8(1).U64(0x100).Str(BackfillPrefix).U32(uint32(len(chunk))), chunk...),
		commitMsg(0x100, 0x110),
	)
	if types.forgets != 2 || !slices.Equal(types.asked, []uint32{23, 90001, 25, 26, 25, 23, 90001}) {
		t.Fatalf("got %d Forget calls and lookups %v, want 2 and [23 90001 25 26 25 23 90001]", types.forgets, types.asked)
	}
	var bodies []string
	for _, it := range items {
		if it.Kind == ItemEvent {
			bodies = append(bodies, string(it.Event.Body))
		}
	}
	if len(bodies) != 2 || !strings.Contains(bodies[0], `"new":{"amount":42,"id":1}`) || !strings.Contains(bodies[1], `"new":{"amount":7,"id":2},"operation":"READ"`) {
		t.Fatalf("got events %q, want the INSERT and the READ with amount mapped as a number", bodies)
	}

	// A type the lookup cannot resolve stops the stream.
	m, err := pgoutput.Parse(relMsg(90002))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Apply(context.Background(), 0x200, m, func(Item) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "resolving the type of public.t.amount: no type 90002") {
		t.Fatalf("got %v, want the lookup's error for public.t.amount", err)
	}
}

func TestStreamEnvelopes(t *testing.T) { testStreamEnvelopes(t, "big") }

// TestStreamLargeRowsInPlace: rows over 1 MiB are built where their
// envelope is encoded (envelope.Event.BuildRowsInPlace), with the same
// bytes as small ones; an UPDATE whose new row lacks an unchanged TOAST
// value says so in the room left before the rows.
func TestStreamLargeRowsInPlace(t *testing.T) {
	big := strings.Repeat("\u00e9x\"", 200_000)
	testStreamEnvelopes(t, big)
	const rel = 16385
	s := testStream(rel)
	items := feed(t, s, beginMsg(0x10, 7), relationMsg(rel),
		newMsg('U').U32(rel).U8('K').Tuple(col().Text("1"), col().Null(), col().Null()).
			U8('N').Tuple(col().Text("1"), col().Text(big), col().Unchanged()),
		commitMsg(0x10, 0x20))
	body := items[0].Event.Body
	if !json.Valid(body) || !strings.Contains(string(body), `"unavailable_columns":["body"]`) || !strings.Contains(string(body), `"old":{"id":1}`) {
		t.Fatalf("got %s…", body[:300])
	}
	if canon, err := envelope.CanonicalRaw(body); err != nil || string(canon) != string(body) {
		t.Fatalf("not canonical: %v", err)
	}
}

func testStreamEnvelopes(t *testing.T, big string) {
	t.Helper()
	const rel = 16385
	s := testStream(rel)
	items := feed(t, s,
		beginMsg(0x1A2B3C8, 1234),
		relationMsg(rel),
		newMsg('I').U32(rel).U8('N').Tuple(col().Text("1"), col().Text("pending"), col().Text(big)),
		// Unchanged TOAST in the new row is filled from the full old row.
		newMsg('U').U32(rel).U8('O').Tuple(col().Text("1"), col().Text("pending"), col().Text(big)).
			U8('N').Tuple(col().Text("1"), col().Text("approved"), col().Unchanged()),
		newMsg('D').U32(rel).U8('O').Tuple(col().Text("1"), col().Text("approved"), col().Text(big)),
		newMsg('T').U32(1).U8(pgoutput.TruncateCascade).U32(rel),
		commitMsg(0x1A2B3C8, 0x1A2B3F0),
	)
	// Each event links to the one before it (prev) and counts itself in its
	// transaction (tx_index); the last also says how many there were.
	meta := func(lsn string, seq int) string {
		prev := "null"
		if seq > 1 {
			prev = `"0/1A2B3C8:` + string(rune('0'+seq-1)) + `"`
		}
		last := ""
		if seq == 4 {
			last = `"tx_events":4,`
		}
		return `"metadata":{"commit_lsn":"0/1A2B3C8","commit_timestamp":"2026-11-14T19:33:20+00:00","idempotency_key":"pgaudit-cdc:7301:pgaudit_cdc:0000000001A2B3C8:` + string(rune('0'+seq)) + `","lsn":"` + lsn + `","prev":` + prev + `,` + last + `"tx_index":` + string(rune('0'+seq)) + `,"xid":1234}`
	}
	// Canonical JSON: members in sorted order at every level.
	head := `{"kind":"decision_card_status_changed","payload":{`
	tail := `,"table":"public.decisions"},"source":"procurement-api","timestamp":"2026-11-14T19:33:20+00:00"}`
	want := []string{
		head + meta("0/1002", 1) + `,"new":{"body":` + jsonText(big) + `,"id":1,"status":"pending"},"operation":"INSERT"` + tail,
		head + meta("0/1003", 2) + `,"new":{"body":` + jsonText(big) + `,"id":1,"status":"approved"},"old":{"body":` + jsonText(big) + `,"id":1,"status":"pending"},"operation":"UPDATE"` + tail,
		head + meta("0/1004", 3) + `,"old":{"body":` + jsonText(big) + `,"id":1,"status":"approved"},"operation":"DELETE"` + tail,
		head + `"cascade":true,` + meta("0/1005", 4) + `,"operation":"TRUNCATE","restart_identity":false` + tail,
	}
	if len(items) != len(want)+1 {
		t.Fatalf("got %d items, want %d", len(items), len(want)+1)
	}
	for i, w := range want {
		if items[i].Kind != ItemEvent {
			t.Fatalf("item %d: got kind %d, want an event", i, items[i].Kind)
		}
		got := string(items[i].Event.Body)
		if got != w {
			t.Errorf("event %d:\ngot  %s\nwant %s", i, short(got), short(w))
		}
		if !json.Valid(items[i].Event.Body) {
			t.Errorf("event %d is not valid JSON", i)
		}
	}
	if last := items[len(items)-1]; last.Kind != ItemCommit || last.EndLSN != 0x1A2B3F0 {
		t.Fatalf("got last item %+v, want the commit at 0/1A2B3F0", last)
	}
}

// jsonText is s as canonical JSON writes it.
func jsonText(s string) string { return string(pgjson.AppendText(nil, s)) }

// short shortens a body for a failure message.
func short(s string) string {
	if len(s) > 600 {
		return s[:300] + "…" + s[len(s)-300:]
	}
	return s
}

func TestStreamSkipsUnwatchedAndTracksRegistry(t *testing.T) {
	const data, registry = 100, 200
	s := testStream()
	regRel := newMsg('R').U32(registry).Str("pgaudit_cdc").Str("watches").U8('f').U16(4).
		U8(0).Str("table_oid").U32(26).U32(0xffffffff).
		U8(0).Str("kind").U32(25).U32(0xffffffff).
		U8(0).Str("source").U32(25).U32(0xffffffff).
		U8(0).Str("active").U32(16).U32(0xffffffff)
	ins := newMsg('I').U32(data).U8('N').Tuple(col().Text("1"), col().Text("a"), col().Text("b"))
	items := feed(t, s,
		beginMsg(0x100, 1), relationMsg(data), regRel,
		ins, // not watched yet: skipped
		newMsg('I').U32(registry).U8('N').Tuple(col().Text("100"), col().Text("other"), col().Text("src"), col().Text("t")),
		ins, // watched now
		newMsg('D').U32(registry).U8('O').Tuple(col().Text("100"), col().Text("other"), col().Text("src"), col().Text("t")),
		ins, // the watch became a tombstone: still labelled (it is in the publication only if re-added)
		commitMsg(0x100, 0x110),
	)
	var kinds []ItemKind
	for _, it := range items {
		kinds = append(kinds, it.Kind)
	}
	// Each registry change is applied and audited itself (WATCH, UNWATCH).
	// Events are handed on one step late (the last of a transaction is only
	// known at its commit), so a watch change comes before the event built
	// just ahead of it.
	want := []ItemKind{ItemWatchChanged, ItemEvent, ItemWatchChanged, ItemEvent, ItemEvent, ItemEvent, ItemCommit}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("got item kinds %v, want %v", kinds, want)
	}
	if items[2].Watch.Active {
		t.Fatalf("got an active watch after the registry delete, want inactive")
	}
	for i, op := range map[int]string{1: envelope.OpWatch, 3: envelope.OpInsert, 4: envelope.OpUnwatch, 5: envelope.OpInsert} {
		ev := items[i].Event
		if ev.Operation != op {
			t.Errorf("item %d: got operation %s, want %s", i, ev.Operation, op)
		}
		if (op == envelope.OpWatch || op == envelope.OpUnwatch) && (ev.Source != envelope.SelfAuditSource || ev.Kind != envelope.SelfAuditKind || !json.Valid(ev.Body)) {
			t.Errorf("item %d: self-audit event %s", i, ev.Body)
		}
	}
	if s.InTransaction() {
		t.Fatalf("stream still in a transaction after COMMIT")
	}
}

func TestStreamProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		msgs []msg
	}{
		{"change outside transaction", []msg{relationMsg(1), newMsg('I').U32(1).U8('N').Tuple(col().Text("1"), col().Null(), col().Null())}},
		{"unknown relation", []msg{beginMsg(1, 1), newMsg('I').U32(9).U8('N').Tuple(col().Text("1"))}},
		{"nested begin", []msg{beginMsg(1, 1), beginMsg(2, 2)}},
		{"commit without begin", []msg{commitMsg(1, 2)}},
		{"column count mismatch", []msg{beginMsg(1, 1), relationMsg(1), newMsg('I').U32(1).U8('N').Tuple(col().Text("1"))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testStream(1)
			var err error
			for _, raw := range tt.msgs {
				m, perr := pgoutput.Parse(raw)
				if perr != nil {
					t.Fatalf("fixture does not parse: %v", perr)
				}
				if err = s.Apply(context.Background(), 1, m, func(Item) error { return nil }); err != nil {
					break
				}
			}
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want ErrProtocol", err)
			}
		})
	}
}

func TestKeyRoundTrip(t *testing.T) {
	p := envelope.Position{CommitLSN: 0xFFFFFFFF00000001, Seq: 4294967295}
	sys, slot, got, ok := envelope.ParseKey(envelope.Key("7301234567890123456", "my_slot", p))
	if !ok || sys != "7301234567890123456" || slot != "my_slot" || got != p {
		t.Fatalf("got %s %s %v %v, want the same key back", sys, slot, got, ok)
	}
	for _, bad := range []string{"", "pgaudit-cdc:", "pgaudit-cdc:a:b:zz:1", "other:1:s:0:1", "pgaudit-cdc:a:b:10:-1"} {
		if _, _, _, ok := envelope.ParseKey(bad); ok {
			t.Errorf("envelope.ParseKey(%q) succeeded, want failure", bad)
		}
	}
}

func TestQualifiedName(t *testing.T) {
	tests := []struct{ schema, table, want string }{
		{"public", "decisions", "public.decisions"},
		{"Mixed Case", `odd "name"`, `"Mixed Case"."odd ""name"""`},
		{"billing", "2024_invoices", `billing."2024_invoices"`},
		{"s", "Upper", `s."Upper"`},
		{"s", "a.b", `s."a.b"`},
	}
	for _, tt := range tests {
		if got := ident.Qualified(tt.schema, tt.table); got != tt.want {
			t.Errorf("ident.Qualified(%q, %q) = %s, want %s", tt.schema, tt.table, got, tt.want)
		}
	}
}

// FuzzStream feeds a relation and a transaction whose change message is
// arbitrary: whatever parses must give valid JSON envelopes or an error.
func FuzzStream(f *testing.F) {
	f.Add([]byte(newMsg('I').U32(1).U8('N').Tuple(col().Text("1"), col().Text("x"), col().Unchanged())))
	f.Add([]byte(newMsg('U').U32(1).U8('O').Tuple(col().Text("1"), col().Null(), col().Text("b")).U8('N').Tuple(col().Text("2"), col().Unchanged(), col().Unchanged())))
	f.Add([]byte(newMsg('D').U32(1).U8('K').Tuple(col().Text("1"), col().Null(), col().Null())))
	f.Add([]byte(newMsg('T').U32(2).U8(3).U32(1).U32(1)))
	f.Fuzz(func(t *testing.T, change []byte) {
		s := testStream(1)
		m, err := pgoutput.Parse(change)
		if err != nil {
			return
		}
		if _, ok := m.(*pgoutput.RelationMessage); ok {
			return
		}
		apply := func(raw msg) error {
			pm, err := pgoutput.Parse(raw)
			if err != nil {
				t.Fatalf("fixture: %v", err)
			}
			return s.Apply(context.Background(), 1, pm, func(Item) error { return nil })
		}
		if err := apply(beginMsg(10, 1)); err != nil {
			t.Fatal(err)
		}
		if err := apply(relationMsg(1)); err != nil {
			t.Fatal(err)
		}
		_ = s.Apply(context.Background(), 2, m, func(it Item) error {
			if it.Kind == ItemEvent && !json.Valid(it.Event.Body) {
				t.Fatalf("invalid JSON envelope: %s", it.Event.Body)
			}
			return nil
		})
	})
}
