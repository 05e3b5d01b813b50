package pgoutput

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/internal/pgoutputtest"
)

var newMsg, col = pgoutputtest.New, pgoutputtest.Col

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   pgoutputtest.Msg
		want Message
	}{
		{"begin", pgoutputtest.Begin(0x1A2B3C8, 1234), &BeginMessage{FinalLSN: 0x1A2B3C8, CommitTime: 848_000_000_000_000, Xid: 1234}},
		{"commit", pgoutputtest.Commit(0x10, 0x20), &CommitMessage{CommitLSN: 0x10, EndLSN: 0x20, CommitTime: 848_000_000_000_000}},
		{"origin", newMsg('O').U64(7).Str("node_a"), &OriginMessage{CommitLSN: 7, Name: "node_a"}},
		{"type", newMsg('Y').U32(16400).Str("public").Str("mood"), &TypeMessage{OID: 16400, Namespace: "public", Name: "mood"}},
		{"relation", pgoutputtest.Relation(16385), &RelationMessage{ID: 16385, Namespace: "public", Name: "decisions", ReplicaIdentity: 'f', Columns: []RelationColumn{
			{Flags: 1, Name: "id", TypeOID: 23, TypeMod: -1}, {Name: "status", TypeOID: 25, TypeMod: -1}, {Name: "body", TypeOID: 25, TypeMod: -1}}}},
		{"insert", newMsg('I').U32(16385).U8('N').Tuple(col().Text("1"), col().Null(), col().Text("")),
			&InsertMessage{RelationID: 16385, New: Tuple{{Kind: 't', Data: []byte("1")}, {Kind: 'n'}, {Kind: 't', Data: []byte{}}}}},
		{"update with old", newMsg('U').U32(16385).U8('O').Tuple(col().Text("1")).U8('N').Tuple(col().Unchanged()),
			&UpdateMessage{RelationID: 16385, OldKind: 'O', Old: Tuple{{Kind: 't', Data: []byte("1")}}, New: Tuple{{Kind: 'u'}}}},
		{"update without old", newMsg('U').U32(5).U8('N').Tuple(col().Text("x")),
			&UpdateMessage{RelationID: 5, New: Tuple{{Kind: 't', Data: []byte("x")}}}},
		{"delete key", newMsg('D').U32(5).U8('K').Tuple(col().Text("x"), col().Null()),
			&DeleteMessage{RelationID: 5, OldKind: 'K', Old: Tuple{{Kind: 't', Data: []byte("x")}, {Kind: 'n'}}}},
		{"truncate", newMsg('T').U32(2).U8(3).U32(10).U32(11), &TruncateMessage{Options: 3, RelationIDs: []uint32{10, 11}}},
		{"message", newMsg('M').U8(1).U64(99).Str("pgaudit_cdc").U32(2).U8('{').U8('}'),
			&LogicalMessage{Transactional: true, LSN: 99, Prefix: "pgaudit_cdc", Content: []byte("{}")}},
		{"stream start", newMsg('S').U32(740).U8(1), &StreamStartMessage{Xid: 740, FirstSegment: true}},
		{"stream start, later block", newMsg('S').U32(740).U8(0), &StreamStartMessage{Xid: 740}},
		{"stream stop", newMsg('E'), &StreamStopMessage{}},
		{"stream commit", newMsg('c').U32(740).U8(0).U64(0x30).U64(0x58).U64(848_000_000_000_000),
			&StreamCommitMessage{Xid: 740, CommitLSN: 0x30, EndLSN: 0x58, CommitTime: 848_000_000_000_000}},
		{"stream abort of a subtransaction", newMsg('A').U32(740).U32(741), &StreamAbortMessage{Xid: 740, SubXid: 741}},
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
		{"short begin", pgoutputtest.Begin(1, 1)[:10], "truncated"},
		{"trailing bytes", append(pgoutputtest.Commit(1, 2), 0), "trailing bytes"},
		{"unterminated name", newMsg('Y').U32(1).U8('a'), "truncated"},
		{"huge column count", newMsg('R').U32(1).Str("s").Str("t").U8('d').U16(65535), "truncated"},
		{"huge text length", newMsg('I').U32(1).U8('N').U16(1).U8('t').U32(0xfffffff0), "truncated"},
		{"bad tuple kind", newMsg('I').U32(1).U8('N').U16(1).U8('x'), "unknown tuple column kind"},
		{"insert without N", newMsg('I').U32(1).U8('K').U16(0), "unexpected tuple tag"},
		{"huge truncate count", newMsg('T').U32(0x7fffffff).U8(0), "truncated"},
		{"short stream start", []byte{'S', 0, 0, 0, 1}, "truncated"},
		{"stream abort without subxid", newMsg('A').U32(7), "truncated"},
		{"stream commit with trailing bytes", newMsg('c').U32(7).U8(0).U64(1).U64(2).U64(3).U8(0), "trailing bytes"},
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

func FuzzParse(f *testing.F) {
	for _, seed := range []pgoutputtest.Msg{pgoutputtest.Begin(1, 2), pgoutputtest.Commit(1, 2), pgoutputtest.Relation(1),
		newMsg('I').U32(1).U8('N').Tuple(col().Text("1"), col().Null(), col().Unchanged()),
		newMsg('U').U32(1).U8('O').Tuple(col().Text("1")).U8('N').Tuple(col().Text("2")),
		newMsg('D').U32(1).U8('K').Tuple(col().Text("1")),
		newMsg('T').U32(1).U8(1).U32(1), newMsg('M').U8(1).U64(1).Str("p").U32(1).U8('x'),
		newMsg('Y').U32(1).Str("a").Str("b"), newMsg('O').U64(1).Str("o")} {
		f.Add([]byte(seed))
	}
	var p Parser // shared by every input: what it reuses must not leak between them
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		// The reusing Parser gives the same message, after parsing something
		// else with the same memory first.
		if _, err := p.Parse(data[min(1, len(data)):]); err != nil && !errors.Is(err, ErrMalformedMessage) {
			t.Fatalf("Parser: error does not wrap ErrMalformedMessage: %v", err)
		}
		pm, perr := p.Parse(data)
		if (err == nil) != (perr == nil) || !reflect.DeepEqual(m, pm) {
			t.Fatalf("Parser.Parse = %#v, %v; Parse = %#v, %v", pm, perr, m, err)
		}
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

// streamedSeeds are messages as sent outside a stream, each of which
// names its transaction inside one (see withXid).
var streamedSeeds = []pgoutputtest.Msg{pgoutputtest.Relation(1),
	newMsg('I').U32(1).U8('N').Tuple(col().Text("1"), col().Null(), col().Unchanged()),
	newMsg('U').U32(1).U8('K').Tuple(col().Text("1")).U8('N').Tuple(col().Text("2")),
	newMsg('D').U32(1).U8('O').Tuple(col().Text("1")),
	newMsg('T').U32(2).U8(0).U32(1).U32(2), newMsg('M').U8(1).U64(1).Str("p").U32(1).U8('x'),
	newMsg('Y').U32(1).Str("a").Str("b")}

// withXid is m as sent inside a stream block: its xid after the tag.
func withXid(m []byte, xid uint32) []byte {
	return append(newMsg(m[0]).U32(xid), m[1:]...)
}

func TestParseStreamed(t *testing.T) {
	var p Parser
	for _, seed := range streamedSeeds {
		want, err := Parse(seed)
		if err != nil {
			t.Fatalf("Parse(%q): %v", seed[0], err)
		}
		in := withXid(seed, 741)
		if xid, ok := StreamedXid(in); !ok || xid != 741 {
			t.Errorf("StreamedXid(%q) = %d, %v; want 741", seed[0], xid, ok)
		}
		xid, got, err := p.ParseStreamed(in)
		if err != nil || xid != 741 || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseStreamed(%q) = %d, %#v, %v; want 741, %#v", seed[0], xid, got, err, want)
		}
		// Outside a stream the xid is read as the message's own first
		// field: the message is then malformed or different, never the
		// streamed one by chance.
		if m, err := Parse(in); err == nil && reflect.DeepEqual(m, want) {
			t.Errorf("Parse took the streamed %q for an unstreamed one", seed[0])
		}
	}
	// ORIGIN carries no xid in a stream block.
	origin := newMsg('O').U64(7).Str("node_a")
	if _, ok := StreamedXid(origin); ok {
		t.Errorf("StreamedXid(ORIGIN) found an xid")
	}
	if xid, m, err := p.ParseStreamed(origin); err != nil || xid != 0 || !reflect.DeepEqual(m, &OriginMessage{CommitLSN: 7, Name: "node_a"}) {
		t.Errorf("ParseStreamed(ORIGIN) = %d, %#v, %v", xid, m, err)
	}
	if _, _, err := p.ParseStreamed([]byte{'I', 0, 0}); !errors.Is(err, ErrMalformedMessage) {
		t.Errorf("ParseStreamed of a short xid: %v", err)
	}
}

// FuzzParseStreamed holds ParseStreamed to Parse: a message with an xid
// inserted after its tag parses as the message without it, with that xid.
func FuzzParseStreamed(f *testing.F) {
	for _, seed := range streamedSeeds {
		f.Add([]byte(seed), uint32(9))
	}
	var p Parser
	f.Fuzz(func(t *testing.T, data []byte, xid uint32) {
		if len(data) == 0 || !carriesXid(data[0]) {
			return
		}
		want, werr := Parse(data)
		gotXid, got, err := p.ParseStreamed(withXid(data, xid))
		if (werr == nil) != (err == nil) {
			t.Fatalf("ParseStreamed error %v, Parse error %v", err, werr)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformedMessage) {
				t.Fatalf("error does not wrap ErrMalformedMessage: %v", err)
			}
			return
		}
		if gotXid != xid || !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseStreamed = %d, %#v; want %d, %#v", gotXid, got, xid, want)
		}
	})
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
	}{{"0/0", 0}, {"16/B374D848", 0x16B374D848}, {"FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF}}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if err != nil || uint64(got) != tt.want || got.String() != tt.in {
			t.Errorf("ParseLSN(%q) = %v (%s), %v; want %X", tt.in, got, got, err, tt.want)
		}
	}
	if _, err := ParseLSN("nope"); err == nil {
		t.Errorf("ParseLSN(nope) succeeded")
	}
}
