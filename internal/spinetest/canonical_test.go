package spinetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vector is one entry of spine-hash-vectors.json.
type vector struct {
	Body          json.RawMessage `json:"body"`
	CanonicalJSON string          `json:"canonical_json"`
	Hash          string          `json:"hash"`
}

const vectorsFile = "spine-hash-vectors.json"

func loadVectors(t testing.TB) []vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", vectorsFile))
	if err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	var vs []vector
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatalf("parse vectors: %v", err)
	}
	if len(vs) != 5 {
		t.Fatalf("got %d vectors, want 5", len(vs))
	}
	return vs
}

// decodeUseNumber decodes one JSON value as the spine's input is decoded.
func decodeUseNumber(t testing.TB, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

func TestVectorsCanonicalAndHash(t *testing.T) {
	prev := GenesisHash
	for _, v := range loadVectors(t) {
		var e Event
		if err := json.Unmarshal(v.Body, &e); err != nil {
			t.Fatalf("vector body: %v", err)
		}
		t.Run(fmt.Sprintf("event_%d", e.EventID), func(t *testing.T) {
			got, err := Canonical(decodeUseNumber(t, string(v.Body)))
			if err != nil {
				t.Fatalf("Canonical: %v", err)
			}
			if string(got) != v.CanonicalJSON {
				t.Errorf("canonical: got %s, want %s", got, v.CanonicalJSON)
			}
			sum := sha256.Sum256(got)
			if h := hex.EncodeToString(sum[:]); h != v.Hash {
				t.Errorf("sha256(canonical): got %s, want %s", h, v.Hash)
			}
			if h := Hash(e); h != v.Hash {
				t.Errorf("Hash(event): got %s, want %s", h, v.Hash)
			}
			if ce, err := canonicalEvent(e); err != nil || string(ce) != v.CanonicalJSON {
				t.Errorf("canonicalEvent: got %s (err %v), want %s", ce, err, v.CanonicalJSON)
			}
			if e.PrevHash != prev {
				t.Errorf("prev_hash: got %s, want %s", e.PrevHash, prev)
			}
		})
		prev = v.Hash
	}
}

// TestVectorsCopyMatchesShared checks that testdata's copy of the vectors
// is the one in shared/ when the package sits in the project tree.
func TestVectorsCopyMatchesShared(t *testing.T) {
	compareWithShared(t, vectorsFile)
}

// compareWithShared checks that testdata/name is a byte-for-byte copy of
// shared/name, looked for in this package's directory and its parents. When
// shared/ is absent (a clone without it) there is nothing to compare and the
// committed copy is what the tests use; CI always has shared/ beside the
// clone, so there its absence is a failure.
func compareWithShared(t *testing.T, name string) {
	t.Helper()
	var shared string
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", name)
		if _, err := os.Stat(p); err == nil {
			shared = p
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	if shared == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("shared/%s not found above the package", name)
		}
		t.Skip("shared/" + name + " not found above the package: nothing to compare (the committed copy is tested)")
	}
	want, err := os.ReadFile(shared)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("testdata/%s differs from %s: got %d bytes, want %d bytes (copy it again)", name, shared, len(got), len(want))
	}
}

// The expectations below were produced by CPython 3.11:
// json.dumps(json.loads(input), sort_keys=True, separators=(",", ":")).
func TestCanonicalTable(t *testing.T) {
	groups := []struct {
		name string
		rows []struct{ in, want string }
	}{
		{"numbers", []struct{ in, want string }{
			{`1.0`, `1.0`},
			{`0.1`, `0.1`},
			{`1e16`, `1e+16`},
			{`1E16`, `1e+16`},
			{`1.5e-7`, `1.5e-07`},
			{`-0.0`, `-0.0`},
			{`123456789.123`, `123456789.123`},
			{`1e15`, `1000000000000000.0`},
			{`9999999999999998.0`, `9999999999999998.0`},
			{`1e-5`, `1e-05`},
			{`0.0001`, `0.0001`},
			{`0.00012`, `0.00012`},
			{`1e22`, `1e+22`},
			{`12.50`, `12.5`},
			{`100.0e0`, `100.0`},
			{`5e-324`, `5e-324`},
			{`1.7976931348623157e308`, `1.7976931348623157e+308`},
			{`1e400`, `Infinity`},
			{`-1e400`, `-Infinity`},
			{`1e-400`, `0.0`},
			{`-1e-400`, `-0.0`},
			{`0.30000000000000004`, `0.30000000000000004`},
			{`2.5e15`, `2500000000000000.0`},
			{`1234567890123456.7`, `1234567890123456.8`},
			{`9007199254740993.0`, `9007199254740992.0`},
			{`1e+2`, `100.0`},
			{`1E-2`, `0.01`},
			{`0e0`, `0.0`},
			{`-0e0`, `-0.0`},
			{`3.14159`, `3.14159`},
			{`1e21`, `1e+21`},
			{`123e-20`, `1.23e-18`},
			{`4.35`, `4.35`},
			{`-2.5E-10`, `-2.5e-10`},
			{`1.2345e20`, `1.2345e+20`},
			{`0`, `0`},
			{`-0`, `0`},
			{`-1`, `-1`},
			{`9223372036854775807`, `9223372036854775807`},
			{`9223372036854775808`, `9223372036854775808`},
			{`123456789012345678901234567890`, `123456789012345678901234567890`},
			{`-123456789012345678901234567890`, `-123456789012345678901234567890`},
		}},
		{"strings", []struct{ in, want string }{
			{`""`, `""`},
			{`"plain /slash"`, `"plain /slash"`},
			{`"quote\" back\\"`, `"quote\" back\\"`},
			{`"\n\r\t\b\f"`, `"\n\r\t\b\f"`},
			{`"\u0000\u0001\u001f"`, `"\u0000\u0001\u001f"`},
			{`"\u007f"`, `"\u007f"`},
			{"\"\x7f\"", `"\u007f"`},
			{`"\u0080"`, `"\u0080"`},
			{`"é"`, `"\u00e9"`},
			{`"\u2028\u2029"`, `"\u2028\u2029"`},
			{`"€"`, `"\u20ac"`},
			{`"\uffff"`, `"\uffff"`},
			{`"😀"`, `"\ud83d\ude00"`},
			{`"\ud83d\ude00"`, `"\ud83d\ude00"`},
			{`"\udbff\udfff"`, `"\udbff\udfff"`},
			{`"<>&'"`, `"<>&'"`},
			{`"a\u0000b"`, `"a\u0000b"`},
			{`"\/"`, `"/"`},
			{`"漢字"`, `"\u6f22\u5b57"`},
		}},
		{"structure", []struct{ in, want string }{
			{`{"b":1,"a":{"é":1,"z":2,"A":3,"":0},"😀":1,"ｚ":1,"aa":[{"y":1,"x":2}],"a\u0000":null}`, `{"a":{"":0,"A":3,"z":2,"\u00e9":1},"a\u0000":null,"aa":[{"x":2,"y":1}],"b":1,"\uff5a":1,"\ud83d\ude00":1}`},
			{`{ "z" : [ 1 , 2.0 , { } , [ ] ] , "a" : true , "m" : false }`, `{"a":true,"m":false,"z":[1,2.0,{},[]]}`},
			{`[]`, `[]`},
			{`{}`, `{}`},
			{`null`, `null`},
			{`true`, `true`},
			{`[null,[[]],{"":""}]`, `[null,[[]],{"":""}]`},
			{`{"k":1,"k":2}`, `{"k":2}`},
		}},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, r := range g.rows {
				got, err := Canonical(decodeUseNumber(t, r.in))
				if err != nil {
					t.Errorf("Canonical(%s): %v", r.in, err)
					continue
				}
				if string(got) != r.want {
					t.Errorf("Canonical(%s): got %s, want %s", r.in, got, r.want)
				}
			}
		})
	}
}

func TestCanonicalGoValues(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"float64 integral", 1.0, "1.0"},
		{"float64 small", 1.5e-7, "1.5e-07"},
		{"float64 negative zero", math.Copysign(0, -1), "-0.0"},
		{"float64 inf", math.Inf(1), "Infinity"},
		{"float64 -inf", math.Inf(-1), "-Infinity"},
		{"float64 nan", math.NaN(), "NaN"},
		{"float32", float32(0.5), "0.5"},
		{"int", 42, "42"},
		{"int64 min", int64(math.MinInt64), "-9223372036854775808"},
		{"uint64 max", uint64(math.MaxUint64), "18446744073709551615"},
		{"nested", map[string]any{"b": []any{int8(1), uint16(2)}, "a": "x"}, `{"a":"x","b":[1,2]}`},
		{"invalid utf8 string", "a\xffb", `"a\ufffdb"`},
		{"empty map", map[string]any{}, "{}"},
		{"nil map", map[string]any(nil), "{}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Canonical(tt.in)
			if err != nil {
				t.Fatalf("Canonical: %v", err)
			}
			if string(got) != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestCanonicalErrors(t *testing.T) {
	tests := []struct {
		name string
		in   any
	}{
		{"struct", struct{}{}},
		{"map of strings", map[string]string{"a": "b"}},
		{"nested channel", map[string]any{"a": []any{make(chan int)}}},
		{"bad number", json.Number("12a")},
		{"leading zero", json.Number("012")},
		{"empty number", json.Number("")},
		{"trailing dot", json.Number("1.")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := Canonical(tt.in); err == nil {
				t.Errorf("got %s, nil error, want an error", got)
			}
		})
	}
}

func TestHashNilPayloadIsEmptyObject(t *testing.T) {
	e := Event{EventID: 1, Timestamp: "2026-11-22T10:00:00+00:00", Kind: "other", Source: "s", PrevHash: GenesisHash}
	withEmpty := e
	withEmpty.Payload = map[string]any{}
	if got, want := Hash(e), Hash(withEmpty); got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

// FuzzCanonical checks that Canonical never fails or panics on a decoded
// JSON value, and that its output is printable ASCII, valid JSON (once the
// Infinity literals Python writes for overflowing floats are set aside) and
// a fixed point: canonicalising the decoded output gives the output again.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":[1.5,-0.0,1e400,"\u00e9\ud83d\ude00"]}`, `12.50`, `-0`, `"\u007f\u0000"`,
		`[1e16,1.5e-7,123456789012345678901234567890]`, `{"":{"":[]}}`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return
		}
		out, err := Canonical(v)
		if err != nil {
			t.Fatalf("Canonical(%q): %v", data, err)
		}
		for _, c := range out {
			if c >= 0x7f || c < 0x20 {
				t.Fatalf("Canonical(%q) = %q: got byte %#x, want printable ASCII only", data, out, c)
			}
		}
		strict := bytes.ReplaceAll(out, []byte("-Infinity"), []byte("0"))
		strict = bytes.ReplaceAll(strict, []byte("Infinity"), []byte("0"))
		if !json.Valid(strict) {
			t.Fatalf("Canonical(%q) = %s: got invalid JSON, want valid", data, out)
		}
		if bytes.Contains(out, []byte("Infinity")) {
			return // Infinity does not decode again
		}
		dec = json.NewDecoder(bytes.NewReader(out))
		dec.UseNumber()
		var again any
		if err := dec.Decode(&again); err != nil {
			t.Fatalf("decode %s: %v", out, err)
		}
		out2, err := Canonical(again)
		if err != nil {
			t.Fatalf("Canonical(%s): %v", out, err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("not a fixed point: got %s, want %s", out2, out)
		}
	})
}
