package pgjson

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgaudit-cdc/pgaudit-cdc/chain"
)

// appendJSONReference is appendJSON as it was before compactJSON: encoding/json.Valid,
// then a second walk. It is the oracle of FuzzAppendJSON.
// It embeds valid JSON, without insignificant whitespace (so the
// event stays on one line) and with U+2028/U+2029 escaped; anything else is
// written as a JSON string of the text.
func appendJSONReference(dst []byte, text []byte) []byte {
	if !utf8.Valid(text) || !json.Valid(text) {
		return AppendString(dst, text)
	}
	n0 := len(dst)
	depth := 0
	start := 0
	i := 0
	for i < len(text) {
		switch c := text[i]; c {
		case ' ', '\t', '\n', '\r':
			dst = append(dst, text[start:i]...)
			i++
			start = i
		case '{', '[':
			depth++
			if depth > maxJSONDepth {
				return AppendString(dst[:n0], text)
			}
			i++
		case '}', ']':
			depth--
			i++
		case '"':
			i++
			for i < len(text) {
				b := text[i]
				if b == '\\' {
					i += 2
					continue
				}
				if b == '"' {
					i++
					break
				}
				if b == 0xE2 && i+2 < len(text) && text[i+1] == 0x80 && (text[i+2] == 0xA8 || text[i+2] == 0xA9) {
					dst = append(dst, text[start:i]...)
					dst = append(dst, `\u202`...)
					dst = append(dst, '8'+text[i+2]-0xA8)
					i += 3
					start = i
					continue
				}
				i++
			}
		default:
			if c == '-' || isDigit(c) {
				j := i
				if c == '-' {
					j++
				}
				k := skipDigits(text, j)
				if k-j > maxJSONIntDigits {
					return AppendString(dst[:n0], text)
				}
				// A fraction or an exponent makes it a float for the
				// spine (Python): one beyond the float64 range would be
				// stored as Infinity, which is not JSON.
				e, big := jsonFloatEnd(text, k)
				if e > k && (big || k-j > 300) {
					if f, err := strconv.ParseFloat(string(text[i:e]), 64); err != nil || math.IsInf(f, 0) {
						return AppendString(dst[:n0], text)
					}
				}
				i = e
				continue
			}
			i++
		}
	}
	return append(dst, text[start:]...)
}

// jsonFloatEnd returns the end of the fraction and exponent of a JSON
// number whose integer part ends at i (i itself when it has neither), and
// whether the exponent has three digits or more (only then, or with more
// than 300 integer digits, can the number overflow a float64).
func jsonFloatEnd(s []byte, i int) (int, bool) {
	big := false
	if i < len(s) && s[i] == '.' {
		i = skipDigits(s, i+1)
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := i
		for j < len(s) && s[j] == '0' {
			j++
		}
		i = skipDigits(s, i)
		big = i-j >= 3
	}
	return i, big
}

func TestCompactJSON(t *testing.T) {
	deep := strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth)
	tooDeep := "[" + deep + "]"
	tests := []struct {
		in   string
		want string // "" when it must be refused
	}{
		{`{"a": [1, 2.5e3, -0, true, false, null, "x"]}`, `{"a":[1,2.5e3,-0,true,false,null,"x"]}`},
		{` "\u2028 \u00e9 \" \\ \/ \b\f\n\r\t" `, `"\u2028 \u00e9 \" \\ \/ \b\f\n\r\t"`},
		{"\"a\u2028b\u2029\"", `"a\u2028b\u2029"`},
		{`{}`, `{}`},
		{`[ ]`, `[]`},
		{`[{"": {}}]`, `[{"":{}}]`},
		{deep, deep},
		{tooDeep, ""},
		{`1e308`, `1e308`},
		{`1e309`, ""},
		{`-1E-400`, `-1E-400`},
		{strings.Repeat("9", maxJSONIntDigits), strings.Repeat("9", maxJSONIntDigits)},
		{strings.Repeat("9", maxJSONIntDigits+1), ""},
		{``, ""},
		{`   `, ""},
		{`[1,]`, ""},
		{`{"a":1,}`, ""},
		{`{"a" 1}`, ""},
		{`{1:2}`, ""},
		{`[1 2]`, ""},
		{`01`, ""},
		{`1.`, ""},
		{`.5`, ""},
		{`1e`, ""},
		{`-`, ""},
		{`tru`, ""},
		{`truex`, ""},
		{`nul`, ""},
		{`"abc`, ""},
		{`"a\x"`, ""},
		{`"\u12g4"`, ""},
		{"\"a\tb\"", ""},
		{`]`, ""},
		{`[}`, ""},
		{`{]`, ""},
		{`1 2`, ""},
		{`[1]]`, ""},
		{`{"a":1}}`, ""},
	}
	for _, tt := range tests {
		out, ok := compactJSON([]byte("x"), []byte(tt.in))
		if tt.want == "" {
			if ok {
				t.Errorf("compactJSON(%.40q) = %.40q, want it refused", tt.in, out)
			}
			continue
		}
		if !ok || string(out) != "x"+tt.want {
			t.Errorf("compactJSON(%.40q) = %.40q, %v; want %.40q", tt.in, out, ok, tt.want)
		}
	}
}

// FuzzAppendJSON holds appendJSON to appendJSONReference (encoding/json.Valid,
// then a second walk) followed by the canonical form (chain.Canonical): byte
// for byte the same output.
func FuzzAppendJSON(f *testing.F) {
	for _, s := range []string{`{"a": [1, 2.5e3, -0, true, null, "x\u2028"]}`, `[1,]`, `01`, `1e999`, "\"\xe2\x80\xa8\"", `{"a":{"b":[[]]}}`, ` [ 1 , { } ] `, `"\ud800"`, `-0.0e-0`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got := appendJSON([]byte("["), in)
		want := appendJSONReference([]byte("["), in)
		if fallback := AppendString([]byte("["), in); !bytes.Equal(want, fallback) {
			if canon, err := referenceCanonical(want[1:]); err == nil {
				want = append([]byte("["), canon...)
			} else {
				want = fallback
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("appendJSON(%q) = %q, want %q", in, got, want)
		}
		if !json.Valid(got[1:]) || !utf8.Valid(got) {
			t.Fatalf("appendJSON(%q) = %q: not valid JSON", in, got)
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	doc := []byte(`{"sku": "SKU-123", "qty": 3, "tags": ["gift", "express"], "price": 12.50, "note": null}`)
	b.Run("one-pass", func(b *testing.B) {
		var dst []byte
		for i := 0; i < b.N; i++ {
			dst = appendJSON(dst[:0], doc)
		}
	})
	b.Run("reference", func(b *testing.B) {
		var dst []byte
		for i := 0; i < b.N; i++ {
			dst = appendJSONReference(dst[:0], doc)
		}
	})
}

// referenceCanonical is the canonical form through Go values: encoding/json
// with UseNumber, then chain.Canonical (checked against the spine's own
// hash vectors). canonicalJSON must agree with it byte for byte.
func referenceCanonical(text []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return chain.Canonical(v)
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[1,2.50,{"z":null,"y":"\u00e9\ud83d\ude00"}],"a":2}`, `-0`, `1e400`, `"\/\u2028x"`, `{"":{},"\u0000":[]}`, `[1E5,-0.0,123456789012345678901234567890]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if !utf8.Valid(in) {
			return
		}
		compact, ok := compactJSON(nil, in)
		if !ok {
			return
		}
		got, err := canonicalJSON(nil, compact)
		want, rerr := referenceCanonical(compact)
		if (err == nil) != (rerr == nil) || (err == nil && !bytes.Equal(got, want)) {
			t.Fatalf("canonicalJSON(%q) = %q, %v; want %q, %v", compact, got, err, want, rerr)
		}
	})
}
