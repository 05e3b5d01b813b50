package chain

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
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
