package decode

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// msg builds pgoutput messages for fixtures.
type msg []byte

func newMsg(tag byte) msg       { return msg{tag} }
func (m msg) u8(v uint8) msg    { return append(m, v) }
func (m msg) u16(v uint16) msg  { return binary.BigEndian.AppendUint16(m, v) }
func (m msg) u32(v uint32) msg  { return binary.BigEndian.AppendUint32(m, v) }
func (m msg) u64(v uint64) msg  { return binary.BigEndian.AppendUint64(m, v) }
func (m msg) str(s string) msg  { return append(append(m, s...), 0) }
func (m msg) text(s string) msg { return append(m.u8('t').u32(uint32(len(s))), s...) }
func (m msg) null() msg         { return m.u8('n') }
func (m msg) unchanged() msg    { return m.u8('u') }
func (m msg) tuple(cols ...msg) msg {
	m = m.u16(uint16(len(cols)))
	for _, c := range cols {
		m = append(m, c...)
	}
	return m
}
func col() msg { return msg{} }

func beginMsg(final uint64, xid uint32) msg {
	return newMsg('B').u64(final).u64(848_000_000_000_000).u32(xid)
}
func commitMsg(commit, end uint64) msg {
	return newMsg('C').u8(0).u64(commit).u64(end).u64(848_000_000_000_000)
}

// relationMsg describes public.decisions(id int4 key, status text, body text).
func relationMsg(id uint32) msg {
	return newMsg('R').u32(id).str("public").str("decisions").u8('f').u16(3).
		u8(1).str("id").u32(23).u32(0xffffffff).
		u8(0).str("status").u32(25).u32(0xffffffff).
		u8(0).str("body").u32(25).u32(0xffffffff)
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   msg
		want Message
	}{
		{"begin", beginMsg(0x1A2B3C8, 1234), &BeginMessage{FinalLSN: 0x1A2B3C8, CommitTime: 848_000_000_000_000, Xid: 1234}},
		{"commit", commitMsg(0x10, 0x20), &CommitMessage{CommitLSN: 0x10, EndLSN: 0x20, CommitTime: 848_000_000_000_000}},
		{"origin", newMsg('O').u64(7).str("node_a"), &OriginMessage{CommitLSN: 7, Name: "node_a"}},
		{"type", newMsg('Y').u32(16400).str("public").str("mood"), &TypeMessage{OID: 16400, Namespace: "public", Name: "mood"}},
		{"relation", relationMsg(16385), &RelationMessage{ID: 16385, Namespace: "public", Name: "decisions", ReplicaIdentity: 'f', Columns: []RelationColumn{
			{Flags: 1, Name: "id", TypeOID: 23, TypeMod: -1}, {Name: "status", TypeOID: 25, TypeMod: -1}, {Name: "body", TypeOID: 25, TypeMod: -1}}}},
		{"insert", newMsg('I').u32(16385).u8('N').tuple(col().text("1"), col().null(), col().text("")),
			&InsertMessage{RelationID: 16385, New: Tuple{{Kind: 't', Data: []byte("1")}, {Kind: 'n'}, {Kind: 't', Data: []byte{}}}}},
		{"update with old", newMsg('U').u32(16385).u8('O').tuple(col().text("1")).u8('N').tuple(col().unchanged()),
			&UpdateMessage{RelationID: 16385, OldKind: 'O', Old: Tuple{{Kind: 't', Data: []byte("1")}}, New: Tuple{{Kind: 'u'}}}},
		{"update without old", newMsg('U').u32(5).u8('N').tuple(col().text("x")),
			&UpdateMessage{RelationID: 5, New: Tuple{{Kind: 't', Data: []byte("x")}}}},
		{"delete key", newMsg('D').u32(5).u8('K').tuple(col().text("x"), col().null()),
			&DeleteMessage{RelationID: 5, OldKind: 'K', Old: Tuple{{Kind: 't', Data: []byte("x")}, {Kind: 'n'}}}},
		{"truncate", newMsg('T').u32(2).u8(3).u32(10).u32(11), &TruncateMessage{Options: 3, RelationIDs: []uint32{10, 11}}},
		{"message", newMsg('M').u8(1).u64(99).str("pgaudit_cdc").u32(2).u8('{').u8('}'),
			&LogicalMessage{Transactional: true, LSN: 99, Prefix: "pgaudit_cdc", Content: []byte("{}")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty message"},
		{"unknown type", []byte{'Z'}, "unsupported message type"},
		{"short begin", beginMsg(1, 1)[:10], "truncated"},
		{"trailing bytes", append(commitMsg(1, 2), 0), "trailing bytes"},
		{"unterminated name", newMsg('Y').u32(1).u8('a'), "truncated"},
		{"huge column count", newMsg('R').u32(1).str("s").str("t").u8('d').u16(65535), "truncated"},
		{"huge text length", newMsg('I').u32(1).u8('N').u16(1).u8('t').u32(0xfffffff0), "truncated"},
		{"bad tuple kind", newMsg('I').u32(1).u8('N').u16(1).u8('x'), "unknown tuple column kind"},
		{"insert without N", newMsg('I').u32(1).u8('K').u16(0), "unexpected tuple tag"},
		{"huge truncate count", newMsg('T').u32(0x7fffffff).u8(0), "truncated"},
		{"stream start (protocol 2)", []byte{'S', 0, 0, 0, 1, 1}, "unsupported message type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil || !errors.Is(err, ErrMalformedMessage) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an ErrMalformedMessage containing %q", err, tt.want)
			}
		})
	}
}

// feed parses and applies messages, collecting items.
func feed(t *testing.T, s *Stream, msgs ...msg) []Item {
	t.Helper()
	var items []Item
	for i, raw := range msgs {
		m, err := Parse(raw)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if rel, ok := m.(*RelationMessage); ok {
			for c := range rel.Columns {
				rel.Columns[c].Type, _ = BuiltinType(rel.Columns[c].TypeOID)
			}
		}
		if err := s.Apply(LSN(0x1000+i), m, func(it Item) error { items = append(items, it); return nil }); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	return items
}

func testStream(watched ...uint32) *Stream {
	w := map[uint32]Watch{}
	for _, id := range watched {
		w[id] = Watch{Kind: "decision_card_status_changed", Source: "procurement-api", Active: true}
	}
	return NewStream(StreamConfig{SystemID: "7301", Slot: "pgaudit_cdc", RegistrySchema: "pgaudit_cdc", RegistryTable: "watches"}, w)
}

func TestStreamEnvelopes(t *testing.T) {
	const rel = 16385
	s := testStream(rel)
	items := feed(t, s,
		beginMsg(0x1A2B3C8, 1234),
		relationMsg(rel),
		newMsg('I').u32(rel).u8('N').tuple(col().text("1"), col().text("pending"), col().text("big")),
		// Unchanged TOAST in the new row is filled from the full old row.
		newMsg('U').u32(rel).u8('O').tuple(col().text("1"), col().text("pending"), col().text("big")).
			u8('N').tuple(col().text("1"), col().text("approved"), col().unchanged()),
		newMsg('D').u32(rel).u8('O').tuple(col().text("1"), col().text("approved"), col().text("big")),
		newMsg('T').u32(1).u8(TruncateCascade).u32(rel),
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
			last = `,"tx_events":4`
		}
		return `"metadata":{"commit_lsn":"0/1A2B3C8","lsn":"` + lsn + `","xid":1234,"commit_timestamp":"2026-11-14T19:33:20+00:00","idempotency_key":"pgaudit-cdc:7301:pgaudit_cdc:0000000001A2B3C8:` + string(rune('0'+seq)) + `","prev":` + prev + `,"tx_index":` + string(rune('0'+seq)) + last + `}`
	}
	head := `{"kind":"decision_card_status_changed","source":"procurement-api","timestamp":"2026-11-14T19:33:20+00:00","payload":{"table":"public.decisions",`
	want := []string{
		head + `"operation":"INSERT","new":{"id":1,"status":"pending","body":"big"},` + meta("0/1002", 1) + `}}`,
		head + `"operation":"UPDATE","old":{"id":1,"status":"pending","body":"big"},"new":{"id":1,"status":"approved","body":"big"},` + meta("0/1003", 2) + `}}`,
		head + `"operation":"DELETE","old":{"id":1,"status":"approved","body":"big"},` + meta("0/1004", 3) + `}}`,
		head + `"operation":"TRUNCATE","cascade":true,"restart_identity":false,` + meta("0/1005", 4) + `}}`,
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
			t.Errorf("event %d:\ngot  %s\nwant %s", i, got, w)
		}
		if !json.Valid(items[i].Event.Body) {
			t.Errorf("event %d is not valid JSON", i)
		}
	}
	if last := items[len(items)-1]; last.Kind != ItemCommit || last.EndLSN != 0x1A2B3F0 {
		t.Fatalf("got last item %+v, want the commit at 0/1A2B3F0", last)
	}
}

func TestStreamSkipsUnwatchedAndTracksRegistry(t *testing.T) {
	const data, registry = 100, 200
	s := testStream()
	regRel := newMsg('R').u32(registry).str("pgaudit_cdc").str("watches").u8('f').u16(4).
		u8(0).str("table_oid").u32(26).u32(0xffffffff).
		u8(0).str("kind").u32(25).u32(0xffffffff).
		u8(0).str("source").u32(25).u32(0xffffffff).
		u8(0).str("active").u32(16).u32(0xffffffff)
	ins := newMsg('I').u32(data).u8('N').tuple(col().text("1"), col().text("a"), col().text("b"))
	items := feed(t, s,
		beginMsg(0x100, 1), relationMsg(data), regRel,
		ins, // not watched yet: skipped
		newMsg('I').u32(registry).u8('N').tuple(col().text("100"), col().text("other"), col().text("src"), col().text("t")),
		ins, // watched now
		newMsg('D').u32(registry).u8('O').tuple(col().text("100"), col().text("other"), col().text("src"), col().text("t")),
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
	for i, op := range map[int]string{1: OpWatch, 3: OpInsert, 4: OpUnwatch, 5: OpInsert} {
		ev := items[i].Event
		if ev.Operation != op {
			t.Errorf("item %d: got operation %s, want %s", i, ev.Operation, op)
		}
		if (op == OpWatch || op == OpUnwatch) && (ev.Source != SelfAuditSource || ev.Kind != SelfAuditKind || !json.Valid(ev.Body)) {
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
		{"change outside transaction", []msg{relationMsg(1), newMsg('I').u32(1).u8('N').tuple(col().text("1"), col().null(), col().null())}},
		{"unknown relation", []msg{beginMsg(1, 1), newMsg('I').u32(9).u8('N').tuple(col().text("1"))}},
		{"nested begin", []msg{beginMsg(1, 1), beginMsg(2, 2)}},
		{"commit without begin", []msg{commitMsg(1, 2)}},
		{"column count mismatch", []msg{beginMsg(1, 1), relationMsg(1), newMsg('I').u32(1).u8('N').tuple(col().text("1"))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testStream(1)
			var err error
			for _, raw := range tt.msgs {
				m, perr := Parse(raw)
				if perr != nil {
					t.Fatalf("fixture does not parse: %v", perr)
				}
				if err = s.Apply(1, m, func(Item) error { return nil }); err != nil {
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
	p := Position{CommitLSN: 0xFFFFFFFF00000001, Seq: 4294967295}
	sys, slot, got, ok := ParseKey(Key("7301234567890123456", "my_slot", p))
	if !ok || sys != "7301234567890123456" || slot != "my_slot" || got != p {
		t.Fatalf("got %s %s %v %v, want the same key back", sys, slot, got, ok)
	}
	for _, bad := range []string{"", "pgaudit-cdc:", "pgaudit-cdc:a:b:zz:1", "other:1:s:0:1", "pgaudit-cdc:a:b:10:-1"} {
		if _, _, _, ok := ParseKey(bad); ok {
			t.Errorf("ParseKey(%q) succeeded, want failure", bad)
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
		if got := QualifiedName(tt.schema, tt.table); got != tt.want {
			t.Errorf("QualifiedName(%q, %q) = %s, want %s", tt.schema, tt.table, got, tt.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []msg{beginMsg(1, 2), commitMsg(1, 2), relationMsg(1),
		newMsg('I').u32(1).u8('N').tuple(col().text("1"), col().null(), col().unchanged()),
		newMsg('U').u32(1).u8('O').tuple(col().text("1")).u8('N').tuple(col().text("2")),
		newMsg('D').u32(1).u8('K').tuple(col().text("1")),
		newMsg('T').u32(1).u8(1).u32(1), newMsg('M').u8(1).u64(1).str("p").u32(1).u8('x'),
		newMsg('Y').u32(1).str("a").str("b"), newMsg('O').u64(1).str("o")} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrMalformedMessage) {
				t.Fatalf("error does not wrap ErrMalformedMessage: %v", err)
			}
			return
		}
		if m == nil {
			t.Fatalf("nil message without error")
		}
	})
}

// FuzzStream feeds a relation and a transaction whose change message is
// arbitrary: whatever parses must give valid JSON envelopes or an error.
func FuzzStream(f *testing.F) {
	f.Add([]byte(newMsg('I').u32(1).u8('N').tuple(col().text("1"), col().text("x"), col().unchanged())))
	f.Add([]byte(newMsg('U').u32(1).u8('O').tuple(col().text("1"), col().null(), col().text("b")).u8('N').tuple(col().text("2"), col().unchanged(), col().unchanged())))
	f.Add([]byte(newMsg('D').u32(1).u8('K').tuple(col().text("1"), col().null(), col().null())))
	f.Add([]byte(newMsg('T').u32(2).u8(3).u32(1).u32(1)))
	f.Fuzz(func(t *testing.T, change []byte) {
		s := testStream(1)
		m, err := Parse(change)
		if err != nil {
			return
		}
		if _, ok := m.(*RelationMessage); ok {
			return
		}
		apply := func(raw msg) error {
			pm, err := Parse(raw)
			if err != nil {
				t.Fatalf("fixture: %v", err)
			}
			if rel, ok := pm.(*RelationMessage); ok {
				for c := range rel.Columns {
					rel.Columns[c].Type, _ = BuiltinType(rel.Columns[c].TypeOID)
				}
			}
			return s.Apply(1, pm, func(Item) error { return nil })
		}
		if err := apply(beginMsg(10, 1)); err != nil {
			t.Fatal(err)
		}
		if err := apply(relationMsg(1)); err != nil {
			t.Fatal(err)
		}
		_ = s.Apply(2, m, func(it Item) error {
			if it.Kind == ItemEvent && !json.Valid(it.Event.Body) {
				t.Fatalf("invalid JSON envelope: %s", it.Event.Body)
			}
			return nil
		})
	})
}
