package chain

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestHashWithPayload: the hash from a payload encoded once is the hash.
func TestHashWithPayload(t *testing.T) {
	payloads := []string{`{}`, `{"b":1,"a":{"z":[3,2,1],"y":null}}`, `{"s":"\u00e9\ud83d\ude00 \u2028","f":1.50,"i":123456789012345678901234567890,"n":-0}`}
	for i, p := range payloads {
		dec := json.NewDecoder(strings.NewReader(p))
		dec.UseNumber()
		var payload map[string]any
		if err := dec.Decode(&payload); err != nil {
			t.Fatal(err)
		}
		e := Event{EventID: int64(i + 1), Timestamp: "2026-11-22T10:00:00+00:00", Kind: "other", Source: "s\u00e9", Payload: payload, PrevHash: Genesis}
		want, err := Hash(e)
		if err != nil {
			t.Fatal(err)
		}
		canon, err := Canonical(payload)
		if err != nil {
			t.Fatal(err)
		}
		if got := HashWithPayload(e, canon); got != want {
			t.Fatalf("payload %s: got %s, want %s", p, got, want)
		}
	}
}

// TestAppendPythonFloat: Python's repr, positional in [1e-4, 1e16).
func TestAppendPythonFloat(t *testing.T) {
	for f, want := range map[float64]string{1: "1.0", 1e16: "1e+16", 1e15: "1000000000000000.0", 1.5e-7: "1.5e-07",
		0.0001: "0.0001", math.Copysign(0, -1): "-0.0", 12.5: "12.5", math.Inf(1): "Infinity", 123.456: "123.456", 1e-5: "1e-05"} {
		if got := string(AppendPythonFloat(nil, f)); got != want {
			t.Errorf("AppendPythonFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

// writeStringByRune is writeString one character at a time: the reference
// the copying of whole runs must agree with.
func writeStringByRune(buf *bytes.Buffer, s string, ascii bool) {
	buf.WriteByte('"')
	for _, r := range s { // invalid bytes come as U+FFFD
		switch {
		case r == '"':
			buf.WriteString(`\"`)
		case r == '\\':
			buf.WriteString(`\\`)
		case r == '\n':
			buf.WriteString(`\n`)
		case r == '\r':
			buf.WriteString(`\r`)
		case r == '\t':
			buf.WriteString(`\t`)
		case r == '\b':
			buf.WriteString(`\b`)
		case r == '\f':
			buf.WriteString(`\f`)
		case r < 0x20 || ascii && r == 0x7f:
			writeU16(buf, r)
		case !ascii || r < utf8.RuneSelf:
			buf.WriteRune(r)
		case r > 0xFFFF:
			writeU16(buf, 0xD800+((r-0x10000)>>10))
			writeU16(buf, 0xDC00+((r-0x10000)&0x3FF))
		default:
			writeU16(buf, r)
		}
	}
	buf.WriteByte('"')
}

// FuzzWriteString: both modes write what the reference writes, for any
// bytes, valid UTF-8 or not.
func FuzzWriteString(f *testing.F) {
	for _, s := range []string{"", "plain", `a"b\c`, "tab\there\nnew\r\b\f\x00\x1f\x7f", "é€😀", "\xff\xfe", "a\xc3", "\xef\xbf\xbd", "\u2028\u2029", "\xed\xa0\x80", strings.Repeat("x", 1000) + "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, ascii := range []bool{true, false} {
			var got, want bytes.Buffer
			writeString(&got, s, ascii)
			writeStringByRune(&want, s, ascii)
			if !bytes.Equal(got.Bytes(), want.Bytes()) {
				t.Fatalf("writeString(%q, ascii=%v) = %q, want %q", s, ascii, got.Bytes(), want.Bytes())
			}
		}
	})
}

// BenchmarkWriteString is a 1 MiB value, mostly ASCII text, in the hash's
// form (ASCII only).
func BenchmarkWriteString(b *testing.B) {
	s := strings.Repeat("order 424242 for customer 4242 via web checkout, gift wrap \"yes\"\n", 16384)
	var buf bytes.Buffer
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		buf.Reset()
		writeString(&buf, s, true)
	}
}
