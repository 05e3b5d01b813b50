package envelope

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/pgaudit-cdc/pgaudit-cdc/pgoutput"
)

func sample() Envelope {
	return Envelope{
		Kind: "decision_card_status_changed", Source: "procurement-api \u00e9\"\\",
		Timestamp: "2026-11-22T19:34:41.416978+00:00",
		Table:     `public."Weird ""name"""`, Operation: OpUpdate,
		Old:       []byte(`{"id":1,"status":"pending"}`),
		New:       []byte(`{"id":1,"status":"approved"}`),
		Fields:    []Field{{Name: "zeta", Value: []byte(`true`)}, {Name: "alpha", Value: []byte(`{"a":1,"b":[1,2]}`)}, {Name: "nexus", Value: []byte(`"x"`)}},
		CommitLSN: 0x1A2B3C8, LSN: 0x1A2B000, Xid: 731, HasXid: true,
		CommitTimestamp: "2026-11-22T19:34:41.416978+00:00",
		Key:             Key("7301", "pgaudit_cdc", Position{CommitLSN: 0x1A2B3C8, Seq: 2}),
		Linked:          true, Prev: Position{CommitLSN: 0x1A2B3C8, Seq: 1}, TxIndex: 2, TxEvents: 2,
		OldIsKeyOnly: true, Unavailable: []string{"body", "\u65e5"},
		Annotations: []byte(`{"metadata":{"commit_lsn":"x"},"who":"alice"}`), AnnotationsError: "",
	}
}

// TestEncodeIsCanonical: what Encode writes is its own canonical form, the
// spine's, so the digest of the bytes sent is the digest a verifier
// computes from the spine's copy.
func TestEncodeIsCanonical(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Envelope)
	}{
		{"full", func(*Envelope) {}},
		{"insert", func(e *Envelope) { e.Old, e.Operation, e.OldIsKeyOnly, e.Unavailable = nil, OpInsert, false, nil }},
		{"first of the stream", func(e *Envelope) { e.Prev, e.TxEvents = Position{}, 0 }},
		{"not linked (GAP)", func(e *Envelope) { e.Linked, e.HasXid, e.CommitTimestamp = false, false, "" }},
		{"late", func(e *Envelope) { e.Late = true }},
		{"redelivered", func(e *Envelope) { e.Redelivered = true }},
		{"annotations error", func(e *Envelope) { e.Annotations, e.AnnotationsError = nil, "malformed \u2028" }},
		{"no fields", func(e *Envelope) { e.Fields = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := sample()
			tt.edit(&e)
			got := e.Encode()
			canon, err := CanonicalRaw(got)
			if err != nil {
				t.Fatalf("got %s: %v", got, err)
			}
			if !bytes.Equal(got, canon) {
				t.Fatalf("got  %s\nwant %s", got, canon)
			}
			back, err := Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if again := back.Encode(); !bytes.Equal(again, got) {
				t.Fatalf("Parse then Encode: got %s, want %s", again, got)
			}
			bu, eu := back.Unmarked(), e.Unmarked()
			if !reflect.DeepEqual(bu.Encode(), eu.Encode()) {
				t.Fatal("Unmarked differs after Parse")
			}
		})
	}
}

// TestSizeBoundsTheEncoding: with every member at its longest and no
// string needing an escape, Size is at least the encoded length, so that
// Finish never grows its buffer.
func TestSizeBoundsTheEncoding(t *testing.T) {
	const maxLSN = ^pgoutput.LSN(0)
	e := Envelope{
		Kind: "decision_card_status_changed", Source: "procurement-api", Timestamp: "2026-11-22T19:34:41.416978+00:00",
		Table: "public.orders", Operation: OpCheckpoint,
		Old: []byte(`{"id":1}`), New: []byte(`{"id":1}`),
		Fields:    []Field{{Name: "checkpoint", Value: []byte(`{}`)}},
		CommitLSN: maxLSN, LSN: maxLSN, Xid: ^uint32(0), HasXid: true,
		CommitTimestamp: "2026-11-22T19:34:41.416978+00:00",
		Key:             Key("18446744073709551615", "a_slot_name_of_sixty_three_characters_which_is_the_most_allowed", Position{CommitLSN: maxLSN, Seq: ^uint32(0)}),
		Linked:          true, Prev: Position{CommitLSN: maxLSN, Seq: ^uint32(0)}, TxIndex: ^uint32(0), TxEvents: ^uint32(0),
		OldIsKeyOnly: true, Unavailable: []string{"body"}, Late: true, Redelivered: true, Supersedes: math.MaxInt64,
		Annotations: []byte(`{"who":"alice"}`),
	}
	if got := len(e.Encode()); got > e.Size() {
		t.Fatalf("encoded %d bytes, Size says %d", got, e.Size())
	}
	// And each member alone: Size counts what is there, not a constant.
	for _, edit := range []func(*Envelope){
		func(e *Envelope) { e.Old, e.New, e.Fields, e.Annotations = nil, nil, nil, nil },
		func(e *Envelope) { e.Linked, e.TxEvents, e.HasXid, e.CommitTimestamp = false, 0, false, "" },
		func(e *Envelope) {
			e.Late, e.Redelivered, e.Supersedes, e.OldIsKeyOnly, e.Unavailable = false, false, 0, false, nil
		},
		func(e *Envelope) { *e = Envelope{Kind: "k", Source: "s", Operation: OpInsert} },
	} {
		c := e
		edit(&c)
		if got := len(c.Encode()); got > c.Size() || c.Size() > got+80 {
			t.Errorf("encoded %d bytes, Size says %d", got, c.Size())
		}
	}
}

// TestMarksAreFields: a mark changes the metadata of the envelope only, and
// Unmarked gives the bytes back that the change made.
func TestMarksAreFields(t *testing.T) {
	ev := &Event{Envelope: sample()}
	ev.Finish()
	before := string(ev.Body)
	ev.MarkLate()
	ev.MarkLate()
	if bytes.Count(ev.Body, []byte(`"late":true`)) != 1 {
		t.Fatalf("got %s, want one late mark", ev.Body)
	}
	if u := ev.Unmarked(); string(u.Encode()) != before {
		t.Fatalf("Unmarked: got %s, want %s", u.Encode(), before)
	}
}

func FuzzParseEnvelope(f *testing.F) {
	e := sample()
	f.Add(e.Encode())
	f.Add([]byte(`{"kind":"x","payload":{"metadata":{"commit_lsn":"0/1","lsn":"0/1","idempotency_key":"k"}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		env, err := Parse(body)
		if err != nil {
			return
		}
		out := env.Encode()
		canon, err := CanonicalRaw(out)
		if err != nil || !bytes.Equal(out, canon) {
			t.Fatalf("Encode after Parse(%q) = %s, not canonical (%v)", body, out, err)
		}
	})
}

// A kept envelope is read back only under the key it was kept with, and a
// body that is not an envelope says so: both before anything is sent.
func TestParseKept(t *testing.T) {
	e := sample()
	body := e.Encode()
	ev, err := ParseKept(e.Key, body)
	if err != nil {
		t.Fatalf("ParseKept: %v", err)
	}
	if !bytes.Equal(ev.Body, body) {
		t.Fatalf("read back as %s, want %s", ev.Body, body)
	}
	other := Key("7301", "pgaudit_cdc", Position{CommitLSN: 0x1A2B3C8, Seq: 9})
	if _, err := ParseKept(other, body); err == nil || !strings.Contains(err.Error(), "it was altered") {
		t.Errorf("under another key: %v, want it called altered", err)
	}
	if _, err := ParseKept(e.Key, []byte("<html>")); !errors.Is(err, ErrNotEnvelope) {
		t.Errorf("a body that is no envelope: %v, want ErrNotEnvelope", err)
	}
}
