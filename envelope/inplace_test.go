package envelope

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzBuildRowsInPlace: an event whose rows were built in place encodes to
// the same Body, payload and rows as one whose rows were built apart,
// whatever it gained after (unavailable columns, tx_events, a mark, a
// field between the rows) and however wrong the size estimate was.
func FuzzBuildRowsInPlace(f *testing.F) {
	f.Add(`{"id":1,"body":"x"}`, `{"id":1,"body":"y"}`, uint8(3), 10, 16, "", uint32(2))
	f.Add(``, `{"id":1}`, uint8(2), 0, 0, "body", uint32(0))
	f.Add(`{"a":"\u00e9"}`, ``, uint8(1), 1, 1000, "a,b,c", uint32(4294967295))
	f.Add(`{}`, `{}`, uint8(3|8), 5, 0, "", uint32(7))
	f.Fuzz(func(t *testing.T, newRow, oldRow string, which uint8, size, room int, unavailable string, txEvents uint32) {
		if size < 0 || size > 1<<16 || room < 0 || room > 1<<16 {
			return
		}
		withNew, withOld := which&1 != 0, which&2 != 0
		if !withNew && !withOld {
			return
		}
		e := sample()
		e.TxEvents, e.Unavailable = 0, nil
		e.New, e.Old = nil, nil
		if which&8 != 0 {
			// A field whose name sorts between new and old.
			e.Fields = append(e.Fields, Field{Name: "nz", Value: []byte(`1`)})
		}
		ev := &Event{Envelope: e}
		build := func(row string, with bool) func([]byte) []byte {
			if !with {
				return nil
			}
			return func(b []byte) []byte { return append(b, row...) }
		}
		ev.BuildRowsInPlace(size, room, build(newRow, withNew), build(oldRow, withOld))
		// What the envelope gains once the rows are built.
		if unavailable != "" {
			ev.Unavailable = strings.Split(unavailable, ",")
		}
		ev.TxEvents = txEvents
		if which&4 != 0 {
			ev.Late = true
		}
		want := &Event{Envelope: ev.Envelope}
		want.New, want.Old = bytes.Clone(ev.New), bytes.Clone(ev.Old)
		if withNew && want.New == nil {
			want.New = []byte{}
		}
		if withOld && want.Old == nil {
			want.Old = []byte{}
		}
		want.Finish()
		ev.Finish()
		if !bytes.Equal(ev.Body, want.Body) {
			t.Fatalf("in place:\n%s\napart:\n%s", ev.Body, want.Body)
		}
		if !bytes.Equal(ev.Payload(), want.Payload()) || !bytes.Equal(ev.New, want.New) || !bytes.Equal(ev.Old, want.Old) {
			t.Fatalf("payload or rows differ: %s / %s, %q / %q, %q / %q", ev.Payload(), want.Payload(), ev.New, want.New, ev.Old, want.Old)
		}
		// A mark encodes the event again, from the rows in Body.
		ev.MarkRedelivered()
		want.MarkRedelivered()
		if !bytes.Equal(ev.Body, want.Body) {
			t.Fatalf("after a mark:\n%s\n%s", ev.Body, want.Body)
		}
	})
}

// TestBuildRowsInPlaceDoesNotCopy: with room enough, the Body is the buffer
// the rows were built in.
func TestBuildRowsInPlaceDoesNotCopy(t *testing.T) {
	big := `{"body":"` + strings.Repeat("x", 1<<20) + `"}`
	for _, which := range []string{"new", "old", "both"} {
		e := sample()
		e.New, e.Old, e.Unavailable, e.TxEvents = nil, nil, nil, 0
		ev := &Event{Envelope: e}
		var built []byte
		row := func(b []byte) []byte { b = append(b, big...); built = b; return b }
		switch which {
		case "new":
			ev.BuildRowsInPlace(len(big), 64, row, nil)
		case "old":
			ev.BuildRowsInPlace(len(big), 64, nil, row)
		default:
			ev.BuildRowsInPlace(2*len(big)+16, 64, row, row)
		}
		ev.TxEvents = 3
		ev.Finish()
		if offset(ev.Body, built) < 0 {
			t.Errorf("%s: the Body is a copy of the rows, not their buffer", which)
		}
		if cap(ev.Body) == len(ev.Body) {
			t.Errorf("%s: no byte to spare after the Body for a sink's newline", which)
		}
	}
}

// offset is where body starts within buf's array, or -1.
func offset(body, buf []byte) int {
	full := buf[:cap(buf)]
	for i := range full {
		if &full[i] == &body[0] {
			return i
		}
	}
	return -1
}
