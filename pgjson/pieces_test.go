package pgjson

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzAppendValuePieces: converted in pieces, a text or bytea value gives
// AppendValue's JSON (or its error), and the pieces handed back are the
// value, in order, each once.
func FuzzAppendValuePieces(f *testing.F) {
	f.Add([]byte("plain ascii"), 4, false)
	f.Add([]byte("é€😀\xff\xe2\x82 \"\\\n\x7f"), 5, false)
	f.Add([]byte("\x80\x80\x80\x80\x80é"), 4, false)
	f.Add([]byte(`\x00ff10AB`), 4, true)
	f.Add([]byte(`\x0g`), 4, true)
	f.Fuzz(func(t *testing.T, text []byte, piece int, bytea bool) {
		var typ *Type
		if bytea {
			typ, _ = Builtin(17)
		}
		piece = 4 + int(uint(piece)%64)
		want, wantErr := AppendValue([]byte("prefix"), typ, text)
		var back []byte
		got, ok, err := AppendValuePieces([]byte("prefix"), typ, text, piece, func(p []byte) {
			if len(p) == 0 || len(p) > piece {
				t.Fatalf("a piece of %d bytes, asked for %d", len(p), piece)
			}
			back = append(back, p...)
		})
		if !ok {
			t.Fatal("a text or bytea value was not converted in pieces")
		}
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("in pieces %q (%v), whole %q (%v)", got, err, want, wantErr)
		}
		value := text
		if bytea && err == nil {
			value = text[2:] // after the \x
		}
		if err == nil && !bytes.Equal(back, value) {
			t.Fatalf("pieces handed back %q, the value is %q", back, value)
		}
	})
}

// TestAppendValuePiecesOtherKinds: kinds whose JSON is not converted in
// pieces are left to AppendValue.
func TestAppendValuePiecesOtherKinds(t *testing.T) {
	for _, oid := range []uint32{23, 114, 3802, 1007, 1184} {
		typ, _ := Builtin(oid)
		out, ok, err := AppendValuePieces(nil, typ, []byte(strings.Repeat("1", 10)), 4, func([]byte) { t.Fatal("a piece handed back") })
		if ok || err != nil || out != nil {
			t.Errorf("type %d: converted in pieces (%q, %v)", oid, out, err)
		}
	}
}
